"""One inference request on its way through the data plane, and its completion.

The transports' entry points (dataplane.py) build one ``Request``; ``DataPlane.submit`` decodes it, queues it
on its model version's scheduler and hands the request itself to the scheduler as the completion: calling it
records the statistics, releases the in-flight count and hands the outcome (reply bytes, or output names and
arrays) to the caller's future or a stream's callback. Side modules wrap that completion through the hooks
(server/hooks.py) only when a model uses them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from .batching.batcher import settle
from .encode import reply_bytes
from .hooks import Complete, FlaggedArrays, Trace
from .models.stats import failure_reason
from .models.version import ModelVersion

# gRPC's own timer may cancel a call at its deadline a little before the loop clock (millisecond resolution
# under uvloop) reads it as passed: a cancel this close to the deadline is the deadline's.
DEADLINE_SLACK_S = 0.005

# A stream's callback: (reply, None) or (None, error); never called for a cancelled request.
Deliver = Callable[[Any, "BaseException | None"], None]


class Request:
    """What the path knows of one request: its model version, its inputs (decoded by the compiled plan, or
    left for the general decoder), its scheduling, how its reply is wanted and who receives it.

    ``encodes``: the reply is encoded at completion into bytes (``tag``: the stream's wrapper, or None), else
    the outcome is (output names, arrays). ``deliver``: a stream's callback instead of a future; cancelling
    ``watch`` drops the request while it is queued. ``trace``: a sampled request's trace (None: not sampled).
    """

    __slots__ = ("mv", "id", "received_ns", "time_remaining_s", "decoded", "tensors", "raw", "output_names",
                 "params", "encodes", "tag", "deliver", "watch", "trace", "traffic_key", "names", "target",
                 "inner", "rows", "deadline")

    def __init__(self, mv: ModelVersion, request_id: str, received_ns: int, tensors: Sequence[Any],
                 raw: Sequence[Any], output_names: Sequence[str], params: Any, *, decoded: tuple | None = None,
                 time_remaining_s: float | None = None, encodes: bool = False, tag: bytes | None = None,
                 deliver: Deliver | None = None, watch: asyncio.Future | None = None, trace: Trace | None = None,
                 traffic_key: str | None = None):
        self.mv = mv
        self.id = request_id
        self.received_ns = received_ns
        self.tensors = tensors
        self.raw = raw
        self.output_names = output_names
        self.params = params
        self.decoded = decoded  # (feeds, rows, output names) from the compiled plan, or None
        self.time_remaining_s = time_remaining_s
        self.encodes = encodes
        self.tag = tag
        self.deliver = deliver
        self.watch = watch
        self.trace = trace
        self.traffic_key = traffic_key  # the caller's key from a header, for shadow sampling and canary arms
        self.names: list[str] = []  # the outputs to compute, once decoded
        self.target: Deliver | asyncio.Future | None = None  # who receives the outcome
        self.inner: Complete | None = None  # a sampled request's completion below its trace
        self.rows = 0  # once decoded: what nv_inference_count adds if it succeeds
        self.deadline: float | None = None  # the client's deadline on the loop clock, once queued

    def __call__(self, outcome: Any, exc: BaseException | None, cancelled: bool) -> None:
        """Completion of a queued or running request (the scheduler's callback): statistics, in-flight count,
        and the outcome handed to the target. A cancelled request delivers nothing; its future is cancelled
        (it may have been dropped for a stream's end, not its own). A request whose caller went away while it
        computed (its deadline passed, or it was cancelled) is counted as that, never as a success: its reply
        reached nobody."""
        target = self.target
        mv = self.mv
        is_future = isinstance(target, asyncio.Future)
        ok = False
        queue_ns = 0
        reason = "cancelled"
        try:
            if cancelled or (is_future and target.cancelled()) or (self.watch is not None and self.watch.cancelled()):
                reason = self.gone_reason()
                if is_future:
                    target.cancel()
                return
            if exc is None:
                arrays, queue_ns, _ = outcome
                try:
                    value = reply_bytes(mv, self.id, self.tag, self.names, arrays) if self.encodes \
                        else (self.names, arrays)
                    ok = True
                except Exception as e:
                    exc = e
            if not ok:
                reason = failure_reason(exc)
            if is_future:
                settle(target, value if ok else None, exc)
            else:
                target(value if ok else None, exc)
        finally:
            if ok and type(outcome[0]) is FlaggedArrays:  # answered, but the model failed: counted as it failed
                ok, reason = False, outcome[0].failure
            mv.stats.record_request(ok, time.perf_counter_ns() - self.received_ns, queue_ns, reason, self.rows)
            mv.leave()

    def gone_reason(self) -> str:
        """Why a request whose caller stopped waiting failed: ``deadline`` when its own deadline has passed
        (gRPC cancels a call at its deadline, so the cancel alone cannot tell), else ``cancelled``."""
        deadline = self.deadline
        if deadline is not None and asyncio.get_running_loop().time() >= deadline - DEADLINE_SLACK_S:
            return "deadline"
        return "cancelled"

    def traced(self, outcome: Any, exc: BaseException | None, cancelled: bool) -> None:
        """The completion of a sampled request: the batch that ran it and the reply's encoding are noted around
        ``inner``, and the trace finished (its spans are built after this, off the reply's way). Unless the
        reply is encoded here, the caller encodes it and finishes the trace itself, unless the request failed."""
        trace = self.trace
        if not cancelled and exc is None:
            trace.batch = outcome[2]
        t = time.perf_counter_ns()
        self.inner(outcome, exc, cancelled)
        if cancelled:
            return
        if exc is not None:
            trace.finish(self.mv, self.id, self.received_ns, 0, t, exc)
        elif self.encodes:
            trace.finish(self.mv, self.id, self.received_ns, t, time.perf_counter_ns())


__all__ = ["Deliver", "Request"]
