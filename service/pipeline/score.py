"""The score stage: a request's rows through its version's batcher, or straight to its backend.

The request's deadline goes with them: the batcher hands a batch's earliest one to the backend.
"""

from __future__ import annotations

from service.batching import Tensors
from service.pipeline.request import RequestContext
from service.pipeline.served import Served


async def score(served: Served, inputs: Tensors, ctx: RequestContext) -> Tensors:
    if served.batcher is not None:
        ctx.queued()
        return await served.batcher.submit(inputs, priority=ctx.priority, deadline=ctx.deadline)
    return await served.run(inputs, ctx.deadline)
