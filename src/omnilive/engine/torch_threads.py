"""Where torch may run: the engine thread, and helper threads that end with their work.

torch's CPU kernels run on OpenMP (libgomp). Every thread that runs a parallel kernel gets its
own pool of OpenMP workers, kept until that thread exits. Once the live pools hold more threads
than the machine has cores, libgomp cuts its workers' spin between kernels to ~100 iterations,
so nearly every kernel has to wake a sleeping worker: measured here, a decode-sized bf16
linear takes 1.5x as long (200 → 305 µs) while a second thread that once ran torch is merely
alive, and the embedded LLM's decode step 58 → 75 ms. A long-lived pool thread
(`asyncio.to_thread`, a `ThreadPoolExecutor` worker) that loaded a model or encoded an image
is such a thread. So helper work that runs torch goes through `FreshThreadExecutor`: each call
on a new thread that exits when it returns, taking its pool with it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")


class FreshThreadExecutor(Executor):
    """An executor that runs each call on a thread of its own, one call at a time (FIFO).

    Use it where a `ThreadPoolExecutor(1)` would run torch: the calls are serialised the same
    way, but no thread (and no OpenMP pool) outlives its call. Queued calls wait as plain
    entries: a call's thread starts the next one's as it ends.
    """

    def __init__(self, thread_name_prefix: str = "torch-helper"):
        self._prefix = thread_name_prefix
        self._counter = itertools.count()
        self._lock = threading.Condition()
        self._queue: deque[tuple[Future, Callable, tuple, dict]] = deque()
        self._running = False  # a call's thread is alive (guarded by _lock)
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.append((future, fn, args, kwargs))
            if self._running:
                return future
            self._running = True
        self._start_next()
        return future

    def _start_next(self) -> None:
        """Start the next call's thread; or, with none queued, mark the executor idle."""
        with self._lock:
            if not self._queue:
                self._running = False
                self._lock.notify_all()
                return
            call = self._queue.popleft()
        threading.Thread(target=self._run, args=call, name=f"{self._prefix}-{next(self._counter)}",
                         daemon=True).start()

    def _run(self, future: Future, fn: Callable, args: tuple, kwargs: dict) -> None:
        try:
            if future.set_running_or_notify_cancel():  # False: cancelled while queued
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:  # the caller gets it
                    future.set_exception(error)
        finally:
            self._start_next()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls. cancel_futures: calls not started yet are cancelled. wait: return
        once no call is running (a running call is never interrupted)."""
        with self._lock:
            self._closed = True
            queued = [call[0] for call in self._queue] if cancel_futures else []
        for future in queued:
            future.cancel()
        if wait:
            with self._lock:
                self._lock.wait_for(lambda: not self._running)


def set_torch_threads(threads: int | None) -> None:
    """torch's CPU threads for the calling thread's kernels (None: leave torch's default).
    Per thread: an engine thread sets its own, the loader's setting does not carry over."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


async def run_in_fresh_thread(fn: Callable[..., T], *args) -> T:
    """`await asyncio.to_thread(fn, *args)`, but on a thread that ends with the call."""
    executor = FreshThreadExecutor()
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    finally:
        executor.shutdown(wait=False)


__all__ = ["FreshThreadExecutor", "run_in_fresh_thread", "set_torch_threads"]
