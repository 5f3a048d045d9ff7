"""The one request path, as named stages in the order data flows.

route -> validate -> features -> score (batcher or backend) -> guard (with fallback) ->
record (audit, metrics) -> shadow. `Pipeline` (pipeline.py) runs them; a `RequestContext`
(request.py) travels from the front through every stage to the backend; `Registry` (served.py)
holds the loaded versions, which the lifecycle changes and the pipeline leases.
"""
