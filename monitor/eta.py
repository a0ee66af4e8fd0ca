"""Estimated time left for unfinished jobs.

* processing: from the job's own observed rate (percent done over time since it started);
* queued: its position in its queue (priority first, then age) times the median completion
  time of its service, shared by the workers that consume that queue.

ETAs depend on the clock and on other jobs, so they are computed when a snapshot or a job is
read, not stored with a sequence number.
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def processing_eta(job: dict[str, Any], now: float) -> float | None:
    """Seconds left for a processing job from its observed progress rate (None: unknown)."""
    progress = job.get("progress") or {}
    percent = float(progress.get("percent") or 0.0)
    started = job.get("started_at")
    if not started or percent <= 0.0:
        return None
    elapsed = now - float(started)
    if elapsed <= 0:
        return None
    if percent >= 100.0:
        return 0.0
    return round((100.0 - percent) * elapsed / percent, 2)


def annotate(jobs: list[dict[str, Any]], durations: dict[str, list[float]],
             consumers: dict[str, int] | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Fill ``eta_seconds`` and ``queue_position`` of ``jobs`` in place; return them."""
    now = time.time() if now is None else now
    medians = {svc: statistics.median(v) for svc, v in durations.items() if v}
    queued = sorted((j for j in jobs if j.get("status") == "queued"),
                    key=lambda j: (-(j.get("priority") or 0), j.get("submitted_at") or 0.0, j["id"]))
    positions: dict[str, int] = {}
    for job in queued:
        queue = job.get("queue") or job.get("service") or ""
        positions[queue] = positions.get(queue, 0) + 1
        job["queue_position"] = positions[queue]
        median = medians.get(job.get("service") or "")
        if median is not None:
            parallel = max(1, (consumers or {}).get(queue, 1))
            job["eta_seconds"] = round(positions[queue] * median / parallel, 2)
    for job in jobs:
        if job.get("status") == "processing":
            job["eta_seconds"] = processing_eta(job, now)
    return jobs
