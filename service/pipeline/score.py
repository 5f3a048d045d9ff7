"""The score stage: a request's rows through its version's batcher, or straight to its backend.

The request's deadline goes with them: the batcher hands a batch's earliest one to the backend.
"""

from __future__ import annotations

import time

from service.batching import Tensors
from service.pipeline.request import RequestContext
from service.pipeline.served import Served


async def score(served: Served, inputs: Tensors, ctx: RequestContext) -> Tensors:
    if served.batcher is not None:
        ctx.queued()
        return await served.batcher.submit(inputs, priority=ctx.priority, deadline=ctx.deadline)
    started = time.perf_counter()
    outputs = await served.run(inputs, ctx.deadline)
    # Without a batcher nothing waits: the request is its own batch.
    served.stats.queued(0.0)
    rows = len(next(iter(inputs.values()))) if served.mv.config.max_batch_size > 0 else 1
    served.stats.executed(time.perf_counter() - started, rows, 1)
    return outputs
