"""The one thread that runs TensorFlow in a worker process.

Jobs submit blocking work here and await it, so the event loop stays free for arq's polling,
progress writes and the heartbeat that keeps a running job claimed. Work runs one item at a
time, in priority order; a long item (a training) calls :meth:`TFThread.run_urgent` between its
steps, so urgent items (generation) run there instead of waiting for the training to end. The
device is shared by one thread only, so no two jobs ever hold models in memory at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["NORMAL", "URGENT", "StopToken", "Stopped", "TFThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

URGENT = 0
NORMAL = 1


class Stopped(Exception):
    """Raised inside a running item when its job was cancelled or its worker is stopping."""


class StopToken:
    """A flag the event loop sets and the TensorFlow thread checks between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def stop(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Stopped(self.reason)


@dataclass(order=True)
class _Item:
    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)


class TFThread:
    """A daemon thread with a priority queue of blocking calls."""

    def __init__(self, name: str = "tensorflow") -> None:
        self._heap: list[_Item] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._running = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, priority: int = NORMAL) -> asyncio.Future[T]:
        """Queue ``fn``; await the returned future in the calling event loop."""
        return asyncio.wrap_future(self.submit_future(fn, priority))

    def submit_future(self, fn: Callable[[], T], priority: int = NORMAL) -> Future[T]:
        """Queue ``fn``. Cancelling the future before ``fn`` starts drops ``fn``; once started,
        ``fn`` runs to its end (stop it early with a :class:`StopToken`)."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the TensorFlow thread is closed")
            heapq.heappush(self._heap, _Item(priority, next(self._seq), fn, future))
            self._cond.notify()
        return future

    def run_urgent(self) -> int:
        """Run every queued urgent item now (called by a long item between its steps, on this
        thread); returns how many ran."""
        if threading.current_thread() is not self._thread:
            raise RuntimeError("run_urgent is for the TensorFlow thread itself")
        ran = 0
        while True:
            with self._cond:
                if not self._heap or self._heap[0].priority != URGENT:
                    return ran
                item = heapq.heappop(self._heap)
            self._run(item)
            ran += 1

    @property
    def busy(self) -> bool:
        """Whether an item is running now."""
        return self._running

    def _run(self, item: _Item) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            result = item.fn()
        except BaseException as exc:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return
                item = heapq.heappop(self._heap)
            self._running = True
            try:
                self._run(item)
            finally:
                self._running = False

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
