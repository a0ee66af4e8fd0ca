"""The health loop: ask every connector's service on a steady interval.

An :class:`~jobqueue.worker.loop.IntervalLoop` calls ``check()`` (the runtime's :meth:`~jobqueue.worker.runtime.WorkerRuntime.check_health`)
every ``interval`` seconds until :meth:`HealthLoop.stop`. The check records each connector's
status; the status reporter and the consumer gate react to the changes. A failing check is
logged and the loop goes on: a health loop that dies would leave statuses frozen, which is
exactly the stale-badge bug this exists to prevent.
"""

from __future__ import annotations

from collections.abc import Callable

from jobqueue.worker.loop import IntervalLoop


class HealthLoop(IntervalLoop):
    """Thread that runs ``check`` every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, check: Callable[[], None], *, interval: float, name: str = "jobqueue-health") -> None:
        super().__init__(check, interval=interval, name=name)
        self.check = check

    @property
    def checks(self) -> int:
        """How many checks ran (for tests and logs)."""
        return self.ticks

    def start(self) -> HealthLoop:
        """Start checking in a daemon thread (the first check runs after one interval)."""
        super().start()
        return self
