"""One thread that runs short callbacks after a delay, for a whole worker.

A job's progress window (:class:`jobqueue.worker.progress.ProgressTracker`) holds a report and
publishes it when the window ends. With ``threading.Timer`` that is a new thread per held
report, most of them cancelled a few milliseconds later when the job ends: about 3% of a
busy worker's CPU on short jobs. A :class:`TimerThread` runs every such callback from one
thread, started on first use and stopped with the worker. It is a drop-in timer factory:
``timers(delay, fn)`` returns a call with ``start()`` and ``cancel()``, like
``threading.Timer``.

Waking the thread is what a call costs the thread that schedules it: a notify, and the GIL
handed to the timer thread and back on the job's critical path. The thread is woken only for
a call due before it wakes anyway; and with a ``tick``, while calls keep coming (the last one
scheduled at most ``linger`` s ago), it wakes every ``tick`` s even with nothing due. A call
due at least one tick after it is scheduled -- a fast job's progress window, cancelled a
few ms later when the job ends -- then wakes nothing, and still runs when it is due: the
thread wakes before it and sleeps on until then. An idle worker's thread sleeps without a
deadline once ``linger`` s have passed without a call.
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

    def __init__(self, clock: Callable[[], float] = time.monotonic, name: str = "jobqueue-timers", *,
                 tick: float = 0.0, linger: float = 0.0) -> None:
        self._clock = clock
        self._name = name
        #: With nothing due sooner, the thread wakes every ``tick`` s while calls keep coming (0: never).
        self._tick = tick
        #: How long after the last call was scheduled the thread keeps ticking.
        self._linger = linger
        #: When the last call was scheduled (clock time).
        self._scheduled_at = float("-inf")
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
            now = self._scheduled_at = self._clock()
            entry = call._entry = (now + call.delay, next(self._order), call)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            # Wake the thread only when this call is due before it wakes anyway: every job's
            # progress window schedules a call that is mostly cancelled a few ms later, and a
            # wake-up per call is two context switches for nothing (a thread that wakes early
            # finds nothing due and sleeps on until the first call that is). A ticking thread
            # (see the module doc) wakes within a tick anyway.
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
                now = self._clock()
                if self._heap and self._heap[0][0] <= now:
                    call = heapq.heappop(self._heap)[2]
                    call._entry = None
                    return call
                self._wake_at = self.wake_time(now)
                self._cond.wait(None if self._wake_at == float("inf") else self._wake_at - now)
            return None

    def wake_time(self, now: float) -> float:
        """When the thread, going to sleep at ``now`` with nothing due yet, wakes by itself:
        when its first call is due, or within a tick while calls keep coming (inf: never).
        Caller holds the condition."""
        wake = self._heap[0][0] if self._heap else float("inf")
        if self._tick > 0 and now - self._scheduled_at < self._linger:
            wake = min(wake, now + self._tick)
        return wake

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
