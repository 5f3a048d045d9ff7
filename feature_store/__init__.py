"""Online feature store: view declarations, the packed row codec, and async stores.

Knows nothing of the serving layer (`service`); the serving layer imports from here. Import
what you need from its modules: views, codec, store (interface and statuses), open (URL ->
store), memory_store, redis_store, coalescing, loader, errors.
"""
