"""Turn a connector's raw progress reports into the progress the world sees.

The connector says what it knows (step x of y, or a percent, which node runs); the tracker
derives a percent, keeps it monotonic within one attempt, estimates the time left from the
observed rate, and publishes. Nothing here invents progress: with no report, nothing moves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from jobqueue.states import empty_progress

Publish = Callable[[dict[str, Any]], None]

#: The ETA uses the rate over the last this many movements of the percent: a steady rate then
#: gives an ETA that only falls, and a slow start (a model load before step 1) stops weighing
#: on it after a few steps.
RATE_WINDOW = 4


class ProgressTracker:
    """Merge progress reports of one job attempt and publish each real change.

    ``min_interval`` drops changes that only move the percent when the last publication is
    that recent; ``window`` publishes at most once per that many seconds, holding the latest
    change until the window ends (a timer thread publishes it then, or :meth:`close` does).
    With ``hold_start`` the attempt's start counts as a publication: reports of its first
    ``window`` seconds are held like any other, so a job that ends within the window and
    succeeds writes no progress at all (``close(superseded=True)``: its result says more).
    """

    def __init__(
        self,
        publish: Publish,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.0,
        window: float = 0.0,
        timer: Callable[[float, Callable[[], None]], Any] = threading.Timer,
        hold_start: bool = False,
    ) -> None:
        self._publish = publish
        self._clock = clock
        self._min_interval = min_interval
        self._window = window
        self._timer_factory = timer
        self._timer: Any = None
        #: The latest change held back by the window, published when it ends (or at close).
        self._held: dict[str, Any] | None = None
        self._closed = False
        self._started = clock()
        self._last_sent = self._started if hold_start else float("-inf")
        self.current: dict[str, Any] = empty_progress()
        # Reports come from the job's thread, annotations (previews) from a timer thread.
        self._lock = threading.RLock()
        #: (time, percent) where the percent moved, oldest first; starts at (start, 0).
        self._points: deque[tuple[float, float]] = deque([(self._started, 0.0)], maxlen=RATE_WINDOW + 1)

    def report(
        self,
        *,
        step: int | None = None,
        total_steps: int | None = None,
        percent: float | None = None,
        message: str | None = None,
        node: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge one report; publish and return the new progress when something changed."""
        with self._lock:
            return self._report(step, total_steps, percent, message, node)

    def _report(self, step: int | None, total_steps: int | None, percent: float | None, message: str | None,
                node: str | None) -> dict[str, Any] | None:
        new = dict(self.current)
        if step is not None:
            new["step"] = int(step)
        if total_steps is not None:
            new["total_steps"] = int(total_steps)
        if message is not None:
            new["message"] = str(message)
        if node is not None:
            new["node"] = str(node)
        if percent is None and new["total_steps"]:
            percent = 100.0 * new["step"] / new["total_steps"]
        if percent is not None:
            # Monotonic within an attempt, and never 100 before the job has really ended.
            new["percent"] = round(max(self.current["percent"], min(float(percent), 100.0)), 2)
        now = self._clock()
        if new["percent"] > self._points[-1][1]:
            self._points.append((now, new["percent"]))
        new["eta_seconds"] = self._eta(new["percent"], now)
        significant = any(new[k] != self.current[k] for k in ("step", "total_steps", "node", "message"))
        moved = new["percent"] != self.current["percent"]
        self.current = new
        if not (significant or moved):
            return None
        if not significant and now - self._last_sent < self._min_interval:
            return None
        self._emit(dict(new), now)
        return dict(new)

    def annotate(self, **fields: Any) -> dict[str, Any]:
        """Merge extra fields (e.g. ``preview``: the sequence number of the job's latest live
        preview) into the progress and publish it at once; later reports carry them too."""
        with self._lock:
            self.current = {**self.current, **fields}
            self._emit(dict(self.current), self._clock())
            return dict(self.current)

    def _emit(self, progress: dict[str, Any], now: float) -> None:
        """Publish now, or, within ``window`` s of the last publication, hold it (replacing
        any held one) until the window ends. Caller holds the lock."""
        if self._closed:
            return
        due = self._last_sent + self._window - now
        if due > 0:
            self._held = progress
            if self._timer is None:
                self._timer = self._timer_factory(due, self._release)
                self._timer.daemon = True
                self._timer.start()
            return
        self._held = None
        self._last_sent = now
        self._publish(progress)

    def _release(self) -> None:
        """The window ended: publish what it held."""
        with self._lock:
            self._timer = None
            if self._held is not None and not self._closed:
                held, self._held = self._held, None
                self._last_sent = self._clock()
                self._publish(held)

    def close(self, *, superseded: bool = False) -> None:
        """The attempt ended: publish what the window still holds (the last report is never
        lost) and nothing after, so the job's final state is stored after its last progress.
        ``superseded``: the job succeeded, and its result, stored next, says more than a held
        report would; that one is dropped."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            held, self._held = self._held, None
            if held is not None and not self._closed and not superseded:
                self._last_sent = self._clock()
                self._publish(held)
            self._closed = True

    def _eta(self, percent: float, now: float) -> float | None:
        """Time left at the rate of the last :data:`RATE_WINDOW` movements."""
        since, base = self._points[0]
        elapsed = now - since
        if percent <= base or elapsed <= 0:
            return None
        rate = (percent - base) / elapsed
        return round((100.0 - percent) / rate, 2)

