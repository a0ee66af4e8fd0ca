"""Estimated time left for unfinished jobs.

* processing: the ETA its worker computed from the job's recent rate with its last progress
  report (``progress.eta_seconds``, as of ``eta_at``). It is stored with the job, so snapshots
  and websocket deltas carry the same value; a page counts it down from ``eta_at``.
* queued: its position in its queue (priority first, then age) and the time until it is
  expected to have run, which follows from the work ahead of it: every online worker that consumes the queue is free once its running
  job ends (that job's ETA counted down, else its service's median minus the time it has run),
  and each job ahead takes its service's completion-time median on the first worker free
  (``services`` in the snapshot, a ``service`` delta when it changes). It depends on other jobs,
  so it is computed when read, here only: for REST, snapshots and ``GET /api/estimates``, which
  the dashboard asks whenever the live state changes and then counts down — recomputing it on
  every change would mean a delta for every job behind any queue change.
* loading: a queued job of a checkpoint's queue (``<service>.model.<checkpoint>``) that no
  online worker has loaded (the ``loaded`` its capabilities report, warm routing) waits a
  checkpoint load more, the smallest ``load_seconds`` the service's workers measured (none
  measured: nothing added), when it is the first of that queue expected on its worker; the
  ones after it on the same worker find it loaded. The job's ``load_seconds`` says so.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobqueue.shared.routing import model_queue
from jobqueue.states import JobStatus
from monitor.store.statuses import WorkerStatus

#: Most running jobs read for the queues' ETAs.
MAX_RUNNING = 1000


def consumers_per_queue(workers: list[dict[str, Any]]) -> dict[str, int]:
    """How many online workers consume each queue."""
    counts: dict[str, int] = {}
    for worker in workers:
        if worker.get("status") == WorkerStatus.ONLINE:
            for queue in worker.get("queues") or []:
                counts[queue] = counts.get(queue, 0) + 1
    return counts


def store_estimates(store: Any, now: float) -> list[dict[str, Any]]:
    """Every queued job (the fields of ``Store.queue_order``) with its ``queue_position`` and
    ``eta_seconds`` as of ``now``: the one place the monitor computes queue ETAs (the API,
    ``/metrics`` and a 429's ``Retry-After`` all read it)."""
    medians, workers = store.service_medians(), store.workers()
    running = {j["id"]: j for j in store.jobs(state=[JobStatus.PROCESSING.value], limit=MAX_RUNNING)[0]}
    return annotate(store.queue_order(), medians, consumers_per_queue(workers),
                    busy_until(workers, running, medians, now), cold_loads(workers))


@dataclass(frozen=True)
class ColdLoads:
    """What loading adds to queued jobs' waits: the checkpoint queues some online worker has
    loaded, and per service the smallest load its online workers measured."""

    warm: frozenset[str] = frozenset()
    cost: Mapping[str, float] = field(default_factory=dict)

    def of(self, queue: str, service: str) -> float:
        """The load the next job of ``queue`` waits for (0: a worker has it loaded, it is no
        checkpoint queue, or nothing was measured)."""
        if queue in self.warm or not queue.startswith(f"{service}.model."):
            return 0.0
        return self.cost.get(service, 0.0)


def cold_loads(workers: list[dict[str, Any]]) -> ColdLoads:
    """:class:`ColdLoads` of the online ``workers`` (their capabilities' ``loaded`` and
    ``load_seconds``, warm routing)."""
    warm: set[str] = set()
    cost: dict[str, float] = {}
    for worker in workers:
        if worker.get("status") != WorkerStatus.ONLINE:
            continue
        caps = worker.get("capabilities") or {}
        seconds = caps.get("load_seconds")
        for service in worker.get("services") or []:
            warm.update(model_queue(service, m) for m in caps.get("loaded") or [])
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                cost[service] = min(cost.get(service, float(seconds)), float(seconds))
    return ColdLoads(frozenset(warm), cost)


def queue_order_key(job: dict[str, Any]) -> tuple[int, float, str]:
    """The order in which queued jobs are taken: higher priority first, then older first."""
    return (-(job.get("priority") or 0), job.get("submitted_at") or 0.0, job["id"])


def remaining(job: dict[str, Any] | None, median: float | None, now: float) -> float:
    """Seconds a running job still needs: its ETA counted down, else its service's median
    minus the time it has run (0 when nothing is known)."""
    if job is None:
        return 0.0
    eta = job.get("eta_seconds")
    if isinstance(eta, (int, float)):
        at = job.get("eta_at")
        return max(0.0, float(eta) - (now - at)) if isinstance(at, (int, float)) else float(eta)
    if median is None:
        return 0.0
    started = job.get("started_at")
    return max(0.0, median - (now - started)) if isinstance(started, (int, float)) else median


def busy_until(workers: list[dict[str, Any]], jobs: dict[str, dict[str, Any]], medians: dict[str, float | None],
               now: float | None = None) -> dict[str, list[float]]:
    """For each queue, when (seconds from now) each online worker consuming it is free."""
    now = time.time() if now is None else now
    out: dict[str, list[float]] = {}
    for worker in workers:
        if worker.get("status") != WorkerStatus.ONLINE:
            continue
        current = jobs.get(worker.get("current_job") or "")
        free = remaining(current, medians.get((current or {}).get("service") or ""), now) if current else 0.0
        for queue in worker.get("queues") or []:
            out.setdefault(queue, []).append(free)
    return out


def annotate(jobs: list[dict[str, Any]], medians: dict[str, float | None],
             consumers: dict[str, int] | None = None, busy: dict[str, list[float]] | None = None,
             loads: ColdLoads | None = None) -> list[dict[str, Any]]:
    """Fill ``queue_position`` and ``eta_seconds`` of the queued ones among ``jobs`` (which
    must hold every queued job for the positions to be right); return ``jobs``.

    ``busy``: per queue, when each consuming worker is free (:func:`busy_until`); without it
    ``consumers`` idle workers per queue are assumed. ``loads``: what loading a checkpoint no
    worker has loaded adds (:func:`cold_loads`) to the first of its jobs on each worker, also
    set as that job's ``load_seconds``."""
    loads = loads or ColdLoads()
    positions: dict[str, int] = {}
    #: Per queue, a heap of (when free, worker slot); and the slots that loaded its checkpoint.
    free: dict[str, list[tuple[float, int]] | None] = {}
    loaded: set[tuple[str, int]] = set()
    for job in sorted((j for j in jobs if j.get("status") == JobStatus.QUEUED), key=queue_order_key):
        queue = job.get("queue") or job.get("service") or ""
        positions[queue] = positions.get(queue, 0) + 1
        job["queue_position"] = positions[queue]
        if queue not in free:
            times = list((busy or {}).get(queue) or [0.0] * max(1, (consumers or {}).get(queue, 1)))
            free[queue] = [(t, slot) for slot, t in enumerate(times)]
            heapq.heapify(free[queue])  # type: ignore[arg-type]
        heap = free[queue]
        median = medians.get(job.get("service") or "")
        if heap is None:
            continue
        if median is None:
            free[queue] = None  # this job and the ones behind it need an unknown time
            continue
        at, slot = heapq.heappop(heap)
        load = 0.0 if (queue, slot) in loaded else loads.of(queue, job.get("service") or "")
        loaded.add((queue, slot))  # that worker has the checkpoint loaded from now on
        if load > 0:
            job["load_seconds"] = load
        done = at + median + load
        job["eta_seconds"] = round(done, 2)  # until it is expected to have run, like a running job's
        heapq.heappush(heap, (done, slot))
    return jobs


def first_start_in(jobs: list[dict[str, Any]], service: str, median: float | None) -> float | None:
    """Seconds until the first of ``service``'s queued jobs is expected to start (a place in its
    queue frees then): the smallest of their ETAs (:func:`annotate`) less one run of the
    service's median. None when none of them has an ETA."""
    waits = [float(j["eta_seconds"]) for j in jobs
             if j.get("service") == service and isinstance(j.get("eta_seconds"), (int, float))]
    if not waits:
        return None
    return max(0.0, min(waits) - (median or 0.0))
