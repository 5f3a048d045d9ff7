"""Which version answers a request, and how a rollout is judged and changed.

config        the `routing` section of config.yaml and the shared per-model policy
router        sticky assignment of a request to stable, canary or an A/B arm; overrides
rollout       windows of traffic figures, and the thresholds that roll a canary back
mirror        shadow copies, off the request path
policy_store  where every process's policies and window counts live (Redis or a file)
"""
