"""Workers' capabilities and queued jobs' ``waiting_for``, as the monitor shows them.

Pure functions over the store's dicts (no I/O), so the API, the websocket snapshot and the
tests read the same values; the rules themselves live in :mod:`jobqueue.shared.requirements`.

* A worker's capability summary for the fleet view is
  :func:`jobqueue.shared.requirements.capability_summary`, which the store's worker dicts
  carry (``{"models": [...], "vram_total_gb", "vram_free_gb", "tags": [...]}``): a monitor
  started late reads the same details from ``connector_status`` as one that followed the
  events, so both show the same.
* :func:`annotate_waiting` sets ``waiting_for`` on queued jobs with requirements that no
  online worker satisfies (None otherwise). It is computed when read, from the workers
  online at that moment, so it never goes stale in the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jobqueue.shared.requirements import (
    Capabilities,
    Requirements,
    waiting_for,
    worker_capabilities,
)
from jobqueue.states import JobStatus
from monitor.store.statuses import WorkerStatus

#: Worker statuses that take jobs (a draining or offline worker does not).
TAKING_JOBS = (WorkerStatus.ONLINE.value,)
#: Job statuses of a job waiting in a queue for a worker.
WAITING = (JobStatus.QUEUED.value, JobStatus.RETRYING.value)




def online_capabilities(workers: Iterable[Mapping[str, Any]]) -> list[Capabilities]:
    """Capabilities of the workers that take jobs now (healthy connectors only)."""
    out: list[Capabilities] = []
    for worker in workers:
        if worker.get("status") in TAKING_JOBS:
            out += worker_capabilities(str(worker.get("name")), worker.get("connectors") or {})
    return out


def job_waiting_for(job: Mapping[str, Any], caps: list[Capabilities]) -> str | None:
    """Why a job waits (None when it is not waiting in a queue, needs nothing, or someone can
    run it)."""
    if job.get("status") not in WAITING:
        return None
    req = Requirements.from_dict(job.get("requires"))
    service = job.get("service")
    return waiting_for(service if isinstance(service, str) else None, req, caps)


def annotate_waiting(jobs: Iterable[dict[str, Any]], workers: Iterable[Mapping[str, Any]]) -> None:
    """Set ``waiting_for`` on every job of ``jobs`` (in place)."""
    jobs = list(jobs)
    caps = online_capabilities(workers) if any(j.get("requires") for j in jobs) else []
    for job in jobs:
        job["waiting_for"] = job_waiting_for(job, caps) if job.get("requires") else None


def waiting_reasons(jobs: Iterable[Mapping[str, Any]], workers: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{job id: reason}`` for the queued jobs no online worker can run."""
    caps = online_capabilities(workers)
    out: dict[str, str] = {}
    for job in jobs:
        if job.get("requires"):
            reason = job_waiting_for(job, caps)
            if reason:
                out[str(job.get("id"))] = reason
    return out
