"""Which workers the fleet view leaves out: those offline for longer than
``JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER`` (Flower's ``--purge_offline_workers``), so a fleet that
replaced its machines long ago does not list every worker it ever had.

Nothing is deleted: the snapshot and the websocket's deltas carry every worker (a page open all
along and one opened late apply the same rule to the same data, so they agree), ``GET
/api/workers?status=all`` and the fleet page's ``?status=all`` list them all, and a hidden worker
that comes back is shown again at once. "Offline since" is the worker's last sign of life
(``heartbeat_at``: its last heartbeat, or the time of its offline event), as Flower counts it; a
worker that never gave one is hidden once offline. The dashboard repeats this rule in
``monitor/static/js/common.js`` (``JQ.hiddenOffline``).
"""

from __future__ import annotations

from typing import Any

from jobqueue.errors import ConfigError
from monitor.store.statuses import WorkerStatus

#: ``?status=`` values of ``GET /api/workers``: ``all``, or one status (hidden ones included).
STATUS_CHOICES = ["all", *(s.value for s in WorkerStatus)]


def check(after: float) -> float:
    """``after`` (``JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER``) when usable, else :class:`ConfigError`."""
    if not after >= 0:
        raise ConfigError(f"JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER must be >= 0 (0: never hide), got {after!r}")
    return after


def is_hidden(worker: dict[str, Any], now: float, after: float) -> bool:
    """True when ``worker`` (its API shape) is offline and was last heard of more than
    ``after`` seconds before ``now`` (``after`` 0: never)."""
    if after <= 0 or worker.get("status") != WorkerStatus.OFFLINE.value:
        return False
    last = worker.get("heartbeat_at")
    return not isinstance(last, (int, float)) or now - last > after


def shown(workers: list[dict[str, Any]], status: str | None, now: float, after: float) -> list[dict[str, Any]]:
    """``workers`` as ``GET /api/workers?status=...`` lists them: none given, without the hidden
    ones; ``all``, every one; a status, every worker in it."""
    if status == "all":
        return workers
    if status is not None:
        return [w for w in workers if w.get("status") == status]
    return [w for w in workers if not is_hidden(w, now, after)]
