"""One load-generating client process: its own channel(s) and event loop, driven by commands from loadgen.

A Python client spends tens of microseconds per request, so one process cannot load a fast server; several of
these, each a separate interpreter with its own grpc.aio loop, can. The hot loops only move pre-serialised
bytes (identity serialisers) and append two floats per reply; decoding is kept for the sampled checks.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import grpc
import numpy as np

from skewless.protos import grpc_service_pb2 as pb

from .workload import CHANNEL_OPTIONS, SERVICE, Workload, check_reply, id_suffix

perf = time.perf_counter


@dataclass(frozen=True)
class WorkerOptions:
    target: str
    connections: int = 1
    streams: int = 1  # ModelStreamInfer calls per connection
    timeout: float = 30.0  # gRPC deadline of each request
    check_every: int = 100
    use_uvloop: bool = True


@dataclass(frozen=True)
class PointSpec:
    """One point of a sweep as seen by one process: its share of the concurrency or of the arrival rate."""

    index: int
    mode: str  # "closed" (``share`` requests outstanding) or "open" (Poisson arrivals at ``share``/s)
    stream: bool
    share: float
    t0_wall: float  # start, on the wall clock every process shares
    warmup: float
    duration: float
    drain_timeout: float
    max_outstanding: int
    seed: int


@dataclass
class PointResult:
    index: int
    worker: int
    latencies: np.ndarray  # seconds, requests sent in the window that succeeded
    completed: int  # successful replies that arrived inside the window: the throughput count
    sent: int  # requests sent (or scheduled, open loop) inside the window
    errors: dict[str, int]  # by status code name, requests sent inside the window
    warmup_errors: int
    checked: int
    check_failures: int
    first_failure: str | None
    send_lag: np.ndarray  # open loop: actual minus scheduled send time (s), a client-side delay to disclose
    error_messages: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Per-point bookkeeping; requests are attributed to the window by their (scheduled) send time."""

    def __init__(self, wl: Workload, t_w: float, t_end: float, check_every: int, counters, slot: int):
        self.wl, self.t_w, self.t_end = wl, t_w, t_end
        self.every = max(0, check_every)
        self.lat: list[float] = []
        self.lag: list[float] = []
        self.completed = self.sent = self.done = self.failed = self.warmup_errors = 0
        self.checked = self.check_failures = 0
        self.first_failure: str | None = None
        self.errors: Counter[str] = Counter()
        self.messages: dict[str, str] = {}
        self._n = 0
        self.counters, self.slot = counters, slot

    def ok(self, t_send: float, t_done: float) -> bool:
        """Record a success; True when this reply is due for a spot-check (the first, then every Nth)."""
        self.done += 1
        if self.t_w <= t_send < self.t_end:
            self.lat.append(t_done - t_send)
        if self.t_w <= t_done < self.t_end:
            self.completed += 1
        if not self.every:
            return False
        self._n += 1
        return self._n == 1 or self._n % self.every == 0

    def error(self, t_send: float, code: str, message: str = "") -> None:
        self.failed += 1
        if t_send < self.t_w:
            self.warmup_errors += 1
        else:
            self.errors[code] += 1
        self.messages.setdefault(code, message[:300])

    def check(self, resp: pb.ModelInferResponse, variant: int | None) -> None:
        self.checked += 1
        problem = check_reply(resp, self.wl, variant)
        if problem:
            self.check_failures += 1
            self.first_failure = self.first_failure or problem

    def publish(self) -> None:
        self.counters[2 * self.slot] = self.done
        self.counters[2 * self.slot + 1] = self.failed

    def result(self, spec: PointSpec, worker: int) -> PointResult:
        return PointResult(spec.index, worker, np.asarray(self.lat, dtype=np.float64), self.completed, self.sent,
                           dict(self.errors), self.warmup_errors, self.checked, self.check_failures,
                           self.first_failure, np.asarray(self.lag, dtype=np.float64), self.messages)


class PoissonArrivals:
    """Poisson arrival times at ``rate`` per second between ``t0`` and ``t_end`` (perf-counter seconds)."""

    def __init__(self, rng: np.random.Generator, rate: float, t0: float, t_end: float, block: int = 4096):
        self.rng, self.scale, self.t, self.t_end, self.block = rng, 1.0 / rate, t0, t_end, block
        self.gaps = rng.exponential(self.scale, block)  # drawn in blocks: one draw per request costs ~1 us
        self.i = 0

    async def wait_next(self) -> tuple[float, float, float] | None:
        """Sleep until the next arrival; return (scheduled, send, now) times, or None past ``t_end``.

        Latency counts from the send time: the schedule when the client is late (the delay is the system's),
        the real send when a timer fired early (uvloop rounds to the millisecond), never a time still ahead.
        """
        if self.i == self.block:
            self.gaps, self.i = self.rng.exponential(self.scale, self.block), 0
        self.t += self.gaps[self.i]
        self.i += 1
        if self.t >= self.t_end:
            return None
        wait = self.t - perf()
        if wait > 0:
            await asyncio.sleep(wait)
        now = perf()
        return self.t, min(self.t, now), now


def _code(exc: grpc.aio.AioRpcError) -> str:
    return exc.code().name if exc.code() is not None else "UNKNOWN"


class Client:
    def __init__(self, worker: int, opts: WorkerOptions, wl: Workload, counters):
        self.worker, self.opts, self.wl, self.counters = worker, opts, wl, counters
        self.channels: list[grpc.aio.Channel] = []
        self.unary: list = []
        self.streams: list = []

    async def connect(self) -> None:
        for _ in range(max(1, self.opts.connections)):
            ch = grpc.aio.insecure_channel(self.opts.target, options=CHANNEL_OPTIONS)
            await asyncio.wait_for(ch.channel_ready(), 30)
            self.channels.append(ch)
            # No serialisers: requests go out as the bytes built once, replies come back as bytes.
            self.unary.append(ch.unary_unary(SERVICE + "ModelInfer"))
            self.streams += [ch.stream_stream(SERVICE + "ModelStreamInfer")] * max(1, self.opts.streams)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()

    async def run_point(self, spec: PointSpec) -> PointResult:
        t0 = spec.t0_wall - time.time() + perf()
        t_w = t0 + spec.warmup
        t_end = t_w + spec.duration
        rec = Recorder(self.wl, t_w, t_end, self.opts.check_every, self.counters, self.worker)
        rec.publish()
        delay = t0 - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        ticker = asyncio.create_task(self._tick(rec))
        rng = np.random.default_rng(spec.seed)
        n = len(self.streams if spec.stream else self.channels)
        try:
            if spec.mode == "closed":
                total = int(spec.share)
                shares = [total // n + (1 if i < total % n else 0) for i in range(n)]
                if spec.stream:
                    jobs = [self._stream(self.streams[i], rec, s, None, rng, t0, t_end, spec)
                            for i, s in enumerate(shares) if s]
                else:
                    jobs = [self._closed_unary(self.unary[k % n], rec, k, t_end) for k in range(total)]
            else:
                if spec.stream:
                    jobs = [self._stream(s, rec, 0, spec.share / n, np.random.default_rng(spec.seed + i), t0, t_end,
                                         spec) for i, s in enumerate(self.streams)]
                else:
                    jobs = [self._open_unary(rec, spec.share, rng, t0, t_end, spec)]
            await asyncio.gather(*jobs)
        finally:
            ticker.cancel()
            rec.publish()
        return rec.result(spec, self.worker)

    async def _tick(self, rec: Recorder) -> None:
        while True:
            await asyncio.sleep(0.2)
            rec.publish()

    async def _closed_unary(self, call, rec: Recorder, k: int, t_end: float) -> None:
        reqs, timeout = self.wl.requests, self.opts.timeout
        nvar = len(reqs)
        v = k % nvar
        while True:
            t = perf()
            if t >= t_end:
                return
            if t >= rec.t_w:
                rec.sent += 1
            v = v + 1 if v + 1 < nvar else 0
            try:
                reply = await call(reqs[v], timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                rec.error(t, _code(exc), exc.details() or "")
                continue
            if rec.ok(t, perf()):
                rec.check(pb.ModelInferResponse.FromString(reply), v)

    async def _open_unary(self, rec: Recorder, rate: float, rng: np.random.Generator, t0: float, t_end: float,
                          spec: PointSpec) -> None:
        """Poisson arrivals; latency counts from the scheduled time, so a late send is the system's delay."""
        reqs, timeout, calls = self.wl.requests, self.opts.timeout, self.unary
        nvar, ncall = len(reqs), len(calls)
        inflight: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()

        async def one(call, v: int, t_sched: float) -> None:
            try:
                reply = await call(reqs[v], timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                rec.error(t_sched, _code(exc), exc.details() or "")
                return
            except asyncio.CancelledError:
                rec.error(t_sched, "DRAIN_TIMEOUT", "still unanswered when the drain timeout ran out")
                return
            if rec.ok(t_sched, perf()):
                rec.check(pb.ModelInferResponse.FromString(reply), v)

        schedule = PoissonArrivals(rng, rate, t0, t_end)
        i = 0
        while (arrival := await schedule.wait_next()) is not None:
            t, t_send, now = arrival
            i += 1
            if t >= rec.t_w:
                rec.sent += 1
                rec.lag.append(now - t)
            if len(inflight) >= spec.max_outstanding:
                rec.error(t, "CLIENT_MAX_OUTSTANDING", f"more than {spec.max_outstanding} requests outstanding")
                continue
            task = loop.create_task(one(calls[i % ncall], i % nvar, t_send))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            _, late = await asyncio.wait(set(inflight), timeout=spec.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)

    async def _stream(self, method, rec: Recorder, n: int, rate: float | None, rng: np.random.Generator,
                      t0: float, t_end: float, spec: PointSpec) -> None:
        """Closed loop (``n`` in flight) or open loop (``rate``) over ModelStreamInfer, reopening on failure.

        gRPC allows one write in flight per call, so a single writer task drains a queue of send times while
        the reader matches replies: reads never wait behind writes. Latency counts from the time a request
        was queued (a reply's arrival in the closed loop, the scheduled time in the open loop). Replies are
        matched by the request id appended to the pre-serialised bytes; a server that does not echo ids (a
        bare echo) is matched first-in first-out, which is exact when it answers in order.
        """
        reqs = self.wl.requests
        nvar = len(reqs)
        seq = 0
        # The arrival schedule carries on across a reopened stream.
        schedule = PoissonArrivals(rng, rate, t0, t_end) if rate else None
        while True:
            call = method()
            pending: dict[str, tuple[float, int]] = {}
            todo: asyncio.Queue[float | None] = asyncio.Queue()
            drained = asyncio.Event()

            async def writer(call=call, pending=pending, todo=todo) -> None:
                nonlocal seq
                while (t_sched := await todo.get()) is not None:
                    seq += 1
                    rid = str(seq)
                    v = seq % nvar
                    pending[rid] = (t_sched, v)
                    if t_sched >= rec.t_w:
                        rec.sent += 1
                    await call.write(reqs[v] + id_suffix(rid))
                await call.done_writing()

            async def arrivals(pending=pending, todo=todo, drained=drained) -> None:
                while (arrival := await schedule.wait_next()) is not None:
                    t, t_send, now = arrival
                    if t >= rec.t_w:
                        rec.lag.append(now - t)
                    if len(pending) + todo.qsize() >= spec.max_outstanding:
                        rec.error(t, "CLIENT_MAX_OUTSTANDING", f"more than {spec.max_outstanding} outstanding")
                        continue
                    todo.put_nowait(t_send)
                while pending or todo.qsize():
                    drained.clear()
                    await drained.wait()
                todo.put_nowait(None)

            async def reader(call=call, pending=pending, todo=todo, drained=drained) -> None:
                async for raw in call:
                    t_done = perf()
                    msg = pb.ModelStreamInferResponse.FromString(raw)
                    entry = pending.pop(msg.infer_response.id, None)
                    if entry is None:
                        if not pending:
                            continue
                        entry = pending.pop(next(iter(pending)))
                    t_send, v = entry
                    if msg.error_message:
                        rec.error(t_send, "STREAM_ERROR", msg.error_message)
                    elif rec.ok(t_send, t_done):
                        rec.check(msg.infer_response, v)
                    if rate is None and t_done < t_end:
                        todo.put_nowait(t_done)
                    elif not pending:
                        if rate is not None:
                            drained.set()
                        elif not todo.qsize():
                            todo.put_nowait(None)

            if rate is None:
                now = perf()
                for _ in range(n):
                    todo.put_nowait(now)
                tasks = [asyncio.ensure_future(writer()), asyncio.ensure_future(reader())]
            else:
                tasks = [asyncio.ensure_future(f()) for f in (writer, reader, arrivals)]
            failed = False
            try:
                budget = max(0.0, t_end - perf()) + spec.drain_timeout
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=budget)
            except asyncio.TimeoutError:
                code, message = "DRAIN_TIMEOUT", "still unanswered when the drain timeout ran out"
            except grpc.aio.AioRpcError as exc:
                code, message, failed = _code(exc), exc.details() or "", True
            else:
                code, message = "STREAM_ENDED", "the server ended the stream without answering"
            finally:
                for task in tasks:
                    task.cancel()
                call.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for t_send, _ in pending.values():
                rec.error(t_send, code, message)
            if not failed or perf() >= t_end:
                return
            await asyncio.sleep(0.01)  # a server refusing streams outright must not spin this loop


async def serve_points(worker: int, client, cmd_q, res_q) -> None:
    """Tell the parent this process is ready, then run each point it sends until it sends None."""
    res_q.put(("ready", worker, os.getpid()))
    loop = asyncio.get_running_loop()
    while True:
        spec = await loop.run_in_executor(None, cmd_q.get)
        if spec is None:
            return
        res_q.put(("result", worker, await client.run_point(spec)))


def run_worker(serve: Callable[[], Coroutine], use_uvloop: bool, worker: int, res_q) -> None:
    """Run a client process's main coroutine (on uvloop when asked and installed); failures travel back
    as text so the parent can report them."""
    try:
        if use_uvloop:
            try:
                import uvloop
            except ImportError:
                uvloop = None
            if uvloop is not None:
                uvloop.run(serve())
                return
        asyncio.run(serve())
    except BaseException:
        res_q.put(("error", worker, traceback.format_exc()))


async def _serve(worker: int, opts: WorkerOptions, wl: Workload, cmd_q, res_q, counters) -> None:
    client = Client(worker, opts, wl, counters)
    await client.connect()
    try:
        await serve_points(worker, client, cmd_q, res_q)
    finally:
        await client.close()


def worker_main(worker: int, opts: WorkerOptions, wl: Workload, cmd_q, res_q, counters) -> None:
    """Entry point of a spawned gRPC client process."""
    run_worker(functools.partial(_serve, worker, opts, wl, cmd_q, res_q, counters), opts.use_uvloop, worker,
               res_q)
