"""The hand-off of a batch from the event loop to a model's worker threads, without run_in_executor's layers.

``loop.run_in_executor(ThreadPoolExecutor)`` wraps each job in a concurrent.futures.Future (a lock and a
condition), chains it to an asyncio future through done callbacks, and sends the result back through
``call_soon_threadsafe`` plus a state copy. At one client every batch of a model slower than the inline limit
pays that round trip: a p50 of 43-115 µs beyond the job's own time on a 2-core VM, by the machine's load.
``Handoff.to_thread`` puts the job on a ``queue.SimpleQueue`` read by the worker threads and delivers the
result straight onto an asyncio future with one ``call_soon_threadsafe``: 20-32 µs less at p50 in three runs
(``python -m skewless.benchmarks.handoff_bench``).

It is still a ``concurrent.futures.Executor`` (``submit``, ``shutdown``), so ``run_in_executor`` and code
that expects an executor keep working on the same threads. Like ThreadPoolExecutor it starts its threads
as jobs need them, up to ``workers`` (a model's instance count: that many batches run at once), and any idle
thread takes the next job. The threads are daemons: a thread the watchdog abandoned (hung inside a model
run) never holds the process at exit; ``shutdown(wait=True)`` joins the others.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, TypeVar

T = TypeVar("T")

# A job: (fn, args, the loop to answer on or None for a concurrent future, the future)
_Job = tuple[Callable[..., Any], tuple, "asyncio.AbstractEventLoop | None", Any]


def _settle(future: asyncio.Future, result: Any) -> None:
    """On the loop: the waiter may have been cancelled (a client hung up, the watchdog gave up on it)."""
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Handoff(Executor):
    """``workers`` threads fed by one queue; ``to_thread`` (on the event loop) is the lean path."""

    def __init__(self, workers: int, name: str = "handoff"):
        if workers < 1:
            raise ValueError("a Handoff needs at least one worker thread")
        self.workers = workers
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # _pending, _threads and _closed
        self._pending = 0  # jobs queued or running
        self._threads: list[threading.Thread] = []
        self._closed = False

    def to_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a worker thread; call on the event loop, await the returned future. Its result
        or exception arrives through one ``call_soon_threadsafe``. Cancelling the future before a thread takes
        the job skips the job; once it runs, it runs to the end and its result is dropped."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put((fn, args, loop, future))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> ConcurrentFuture[T]:
        """The Executor interface (``run_in_executor``, non-hot callers), on the same threads."""
        future: ConcurrentFuture[T] = ConcurrentFuture()
        self._put((functools.partial(fn, *args, **kwargs) if kwargs else fn, args if not kwargs else (), None,
                   future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new jobs; the threads finish the queued ones (or cancel them: ``cancel_futures``) and exit.
        ``wait``: join them (a hung thread would never be joined: the watchdog's path passes False)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    self._cancel_queued()
                self._jobs.put(None)  # each thread that sees it puts it back for the next
            threads = list(self._threads)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()

    @property
    def thread_ids(self) -> list[int]:
        """The idents of the threads started so far (tests, diagnostics)."""
        with self._lock:
            return [t.ident for t in self._threads if t.ident is not None]

    # -- internals ---------------------------------------------------------------------------------------
    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cannot schedule new work on {self.name}: it was shut down")
            self._pending += 1
            started = len(self._threads)
            if self._pending > started and started < self.workers:  # every thread is busy: one more
                t = threading.Thread(target=self._work, name=f"{self.name}_{started}", daemon=True)
                t.start()
                self._threads.append(t)
        self._jobs.put(job)

    def _cancel_queued(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            _, _, loop, future = job
            self._pending -= 1
            if loop is None:
                future.cancel()
            else:
                self._post(loop, future.cancel)

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
        try:  # noqa: SIM105 - per batch: contextlib.suppress costs a context manager each time
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _work(self) -> None:
        jobs, post, lock = self._jobs, self._post, self._lock
        while True:
            job = jobs.get()
            if job is None:
                jobs.put(None)
                return
            fn, args, loop, future = job
            del job
            # _pending drops before the answer goes out: delivering it is the last thing this thread does
            # before it blocks (and releases the GIL the woken loop is about to ask for).
            if loop is not None:
                if future.cancelled():  # cancelled while queued: skip it, as run_in_executor does
                    with lock:
                        self._pending -= 1
                else:
                    try:
                        result = fn(*args)
                    except BaseException as exc:  # every failure goes to the waiter
                        if isinstance(exc, StopIteration):  # an asyncio future refuses StopIteration
                            exc = RuntimeError(f"{fn!r} raised StopIteration")
                        with lock:
                            self._pending -= 1
                        post(loop, _fail, future, exc)
                    else:
                        with lock:
                            self._pending -= 1
                        post(loop, _settle, future, result)
                        del result
            else:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args)
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                        del result
                with lock:
                    self._pending -= 1
            del fn, args, loop, future  # an idle thread holds no batch's arrays
