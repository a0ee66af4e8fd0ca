"""One thread that runs short callbacks after a delay, for a whole worker.

A job's progress window (:class:`jobqueue.worker.progress.ProgressTracker`) holds a report and
publishes it when the window ends. With ``threading.Timer`` that is a new thread per held
report, most of them cancelled a few milliseconds later when the job ends: about 3% of a
busy worker's CPU on short jobs. A :class:`TimerThread` runs every such callback from one
thread, started on first use and stopped with the worker. It is a drop-in timer factory:
``timers(delay, fn)`` returns a call with ``start()`` and ``cancel()``, like
``threading.Timer``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class TimedCall:
    """One callback of a :class:`TimerThread`: runs ``delay`` s after :meth:`start`."""

    __slots__ = ("_entry", "_owner", "cancelled", "daemon", "delay", "function")

    def __init__(self, owner: TimerThread, delay: float, function: Callable[[], None]) -> None:
        self._owner = owner
        self.delay = delay
        self.function = function
        self.cancelled = False
        self._entry: tuple[float, int, TimedCall] | None = None  # its place in the owner's heap
        self.daemon = True  # what ``threading.Timer`` users set; always true here

    def start(self) -> None:
        """Schedule the call."""
        self._owner.schedule(self)

    def cancel(self) -> None:
        """Never run it (a no-op once it ran); it leaves the owner's queue at once."""
        self.cancelled = True
        self._owner.unschedule(self)


class TimerThread:
    """Runs :class:`TimedCall` callbacks in order of their due time, from one thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, name: str = "jobqueue-timers") -> None:
        self._clock = clock
        self._name = name
        self._heap: list[tuple[float, int, TimedCall]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: When the thread wakes next by itself (it sleeps until the first call due; inf: none).
        self._wake_at = float("inf")

    def __call__(self, delay: float, function: Callable[[], None]) -> TimedCall:
        """A call of ``function`` in ``delay`` s, once started (``threading.Timer``'s signature)."""
        return TimedCall(self, delay, function)

    def schedule(self, call: TimedCall) -> None:
        """Run ``call`` when its delay has passed (from now)."""
        with self._cond:
            if self._stopping:
                return
            entry = call._entry = (self._clock() + call.delay, next(self._order), call)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            # Wake the thread only when this call is due before it wakes anyway: every job's
            # progress window schedules a call that is mostly cancelled a few ms later, and a
            # wake-up per call is two context switches for nothing (a thread that wakes early
            # finds nothing due and sleeps on until the first call that is).
            if entry[0] < self._wake_at:
                self._cond.notify()

    def unschedule(self, call: TimedCall) -> None:
        """Take a cancelled ``call`` out of the queue (it never wakes the thread)."""
        with self._cond:
            entry, call._entry = call._entry, None
            if entry is None:
                return
            if self._heap and self._heap[0] is entry:
                heapq.heappop(self._heap)
            elif entry in self._heap:
                self._heap.remove(entry)
                heapq.heapify(self._heap)

    def _next(self) -> TimedCall | None:
        with self._cond:
            while not self._stopping:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake_at = float("inf")
                    self._cond.wait()
                    continue
                self._wake_at = self._heap[0][0]
                due = self._wake_at - self._clock()
                if due <= 0:
                    call = heapq.heappop(self._heap)[2]
                    call._entry = None
                    return call
                self._cond.wait(due)
            return None

    def _run(self) -> None:
        while (call := self._next()) is not None:
            if call.cancelled:
                continue
            try:
                call.function()
            except Exception:  # one failing callback must not stop the others
                log.exception("timer callback failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; calls not yet due never run."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
