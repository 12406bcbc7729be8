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
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")


class FreshThreadExecutor(Executor):
    """An executor that runs each call on a thread of its own, one call at a time (FIFO).

    Use it where a `ThreadPoolExecutor(1)` would run torch: the calls are serialised the same
    way, but no thread (and no OpenMP pool) outlives its call.
    """

    def __init__(self, thread_name_prefix: str = "torch-helper"):
        self._prefix = thread_name_prefix
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._queue: list[tuple[threading.Event, Future, threading.Thread]] = []  # started first, then waiting
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args, **kwargs) -> Future:
        future: Future = Future()
        turn = threading.Event()
        thread = threading.Thread(target=self._run, args=(turn, future, fn, args, kwargs),
                                  name=f"{self._prefix}-{next(self._counter)}", daemon=True)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.append((turn, future, thread))
            if len(self._queue) == 1:
                turn.set()
        thread.start()
        return future

    def _run(self, turn: threading.Event, future: Future, fn, args, kwargs) -> None:
        turn.wait()
        try:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:  # the caller gets it
                    future.set_exception(error)
        finally:
            with self._lock:
                self._queue = [entry for entry in self._queue if entry[0] is not turn]
                if self._queue:
                    self._queue[0][0].set()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls. cancel_futures: calls not started yet are cancelled. wait: return
        once every thread has ended (a running call is never interrupted)."""
        with self._lock:
            self._closed = True
            queue = list(self._queue)
        if cancel_futures:
            for _, future, _ in queue:
                future.cancel()  # False for the running one: it goes on
        if wait:
            for _, _, thread in queue:
                thread.join()


async def run_in_fresh_thread(fn: Callable[..., T], *args) -> T:
    """`await asyncio.to_thread(fn, *args)`, but on a thread that ends with the call."""
    executor = FreshThreadExecutor()
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    finally:
        executor.shutdown(wait=False)


__all__ = ["FreshThreadExecutor", "run_in_fresh_thread"]
