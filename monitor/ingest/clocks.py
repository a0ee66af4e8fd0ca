"""Each worker's clock offset, estimated from its heartbeats, and its events' times corrected.

A worker stamps its events with its own clock. One whose clock runs 400 s ahead would have
every event refused as out of the timestamp window (:mod:`monitor.ingest.validate`), be shown
offline while it works and its jobs queued; one 60 s ahead would show a minute of queue wait
that never happened. So the monitor estimates each worker's offset the way NTP does without a
round trip: a heartbeat sent at the worker's ``timestamp`` arrives at the monitor's
``local_received`` after some non-negative delay, so ``received - timestamp`` is the delay
minus the offset, and its minimum over a window of heartbeats (the quickest delivery) bounds
the offset best. The second-smallest sample is taken instead when the smallest stands more than
:data:`AGREE` apart from it: one forged heartbeat cannot move a worker's clock.

An offset beyond :data:`THRESHOLD` is taken off every event of that worker (its ``timestamp``
and, for ``task-*`` events, nothing else: their other times are durations) before the window
check, so the forged-event window applies to corrected times and a live worker is never
refused for its clock alone. Its heartbeats then carry ``clock_skew`` (seconds, + ahead),
which the worker card and ``/metrics`` show. Offsets within the threshold are left alone:
events then carry exactly the times the job's record holds (:mod:`jobqueue.worker.event_times`).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

#: Heartbeats kept per worker for the estimate.
WINDOW = 30
#: Offsets (s) up to this are network delay and scheduling noise: not corrected.
THRESHOLD = 1.0
#: The two smallest delay samples must agree within this (s) for the smallest to count.
AGREE = 1.0
#: The offset applied moves only when the estimate moves further than this (s): the times
#: already corrected and those repair corrects (by the stored offset) stay the same.
STEADY = 0.1
#: Events that sample a worker's clock.
_SAMPLES = ("worker-online", "worker-heartbeat")
#: Workers tracked at most (names nobody sends any more are dropped, oldest first).
MAX_WORKERS = 10_000


class ClockSkew:
    """Per-worker clock offsets from heartbeats (thread-safe; no I/O)."""

    def __init__(self, window: int = WINDOW, threshold: float = THRESHOLD) -> None:
        self.window = window
        self.threshold = threshold
        self._lock = threading.Lock()
        self._delays: dict[str, deque[float]] = {}
        self._applied: dict[str, float] = {}

    def offset(self, worker: str) -> float | None:
        """The worker's estimated clock offset (s, positive: ahead), None before any sample
        (its first heartbeat or ``worker-online`` is the only evidence there is then)."""
        with self._lock:
            delays = sorted(self._delays.get(worker) or ())
        if not delays:
            return None
        quickest = delays[0] if len(delays) < 2 or delays[1] - delays[0] <= AGREE else delays[1]
        return -quickest

    def _steady(self, worker: str) -> None:
        """Move the offset applied to the worker's events (ms precision) when the estimate
        moved further than :data:`STEADY` (called on each sample, not on each event)."""
        estimate = self.offset(worker)
        if estimate is None:
            return
        with self._lock:
            applied = self._applied.get(worker)
            if applied is None or abs(estimate - applied) > STEADY:
                self._applied[worker] = round(estimate, 3)

    def offsets(self) -> dict[str, float]:
        """Every tracked worker's offset (those with an estimate)."""
        with self._lock:
            names = list(self._delays)
        return {name: off for name in names if (off := self.offset(name)) is not None}

    def _sample(self, worker: str, delay: float) -> None:
        with self._lock:
            kept = self._delays.get(worker)
            if kept is None:
                if len(self._delays) >= MAX_WORKERS:
                    gone = next(iter(self._delays))
                    self._delays.pop(gone)
                    self._applied.pop(gone, None)
                kept = self._delays[worker] = deque(maxlen=self.window)
            kept.append(delay)

    def correct(self, event: Any, received: float) -> None:
        """Sample ``event`` (received at ``received``) when it is a heartbeat, and take its
        worker's offset off its ``timestamp`` when beyond the threshold (in place)."""
        if not isinstance(event, dict):
            return
        event.pop("clock_skew", None)  # the monitor's estimate only, never the wire's
        worker, ts = event.get("hostname"), event.get("timestamp")
        if not isinstance(worker, str) or isinstance(ts, bool) or not isinstance(ts, (int, float)):
            return
        if ts != ts or abs(ts) == float("inf"):
            return
        if event.get("type") in _SAMPLES:
            self._sample(worker, received - float(ts))
            self._steady(worker)
        skew = self._applied.get(worker)  # (a dict read: atomic)
        if skew is None:
            return
        if event.get("type") in _SAMPLES:
            event["clock_skew"] = skew if abs(skew) > self.threshold else 0.0
        if abs(skew) > self.threshold:
            event["timestamp"] = float(ts) - skew
