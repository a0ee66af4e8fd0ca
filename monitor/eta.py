"""Estimated time left for unfinished jobs.

* processing: the ETA its worker computed from the job's observed rate with its last progress
  report (``progress.eta_seconds``, as of ``eta_at``). It is stored with the job, so snapshots
  and websocket deltas carry the same value; a page counts it down from ``eta_at``.
* queued: its position in its queue (priority first, then age) times the median completion
  time of its service (``services`` in the snapshot, a ``service`` delta when it changes),
  divided by the online workers that consume that queue. It depends on other jobs, so it is
  computed when read: here for REST and snapshots, and by the dashboard
  (``JQ.queueEstimates`` in ``static/js/common.js``) from the live state with the same rule —
  recomputing it server-side would mean a delta for every job behind any queue change.
"""

from __future__ import annotations

from typing import Any


def queue_order_key(job: dict[str, Any]) -> tuple[int, float, str]:
    """The order in which queued jobs are taken: higher priority first, then older first."""
    return (-(job.get("priority") or 0), job.get("submitted_at") or 0.0, job["id"])


def annotate(jobs: list[dict[str, Any]], medians: dict[str, float | None],
             consumers: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Fill ``queue_position`` and ``eta_seconds`` of the queued ones among ``jobs`` (which
    must hold every queued job for the positions to be right); return ``jobs``."""
    positions: dict[str, int] = {}
    for job in sorted((j for j in jobs if j.get("status") == "queued"), key=queue_order_key):
        queue = job.get("queue") or job.get("service") or ""
        positions[queue] = positions.get(queue, 0) + 1
        job["queue_position"] = positions[queue]
        median = medians.get(job.get("service") or "")
        if median is not None:
            parallel = max(1, (consumers or {}).get(queue, 1))
            job["eta_seconds"] = round(positions[queue] * median / parallel, 2)
    return jobs
