"""Purge a queue: every message waiting in it, at every priority level, is removed, and every job
that will now never run is told so.

Stock ``celery purge`` empties only a priority queue's level 0 and leaves the removed jobs
``queued`` forever in the result backend and on every monitor. Here a purged jobqueue job is
recorded cancelled (``REVOKED``, reason ``purged from queue <name>``, its place in the queue caps
freed, the later steps of its workflow cancelled too) and a ``task-revoked`` event with
``cancelled_by="purge"`` goes out for every removed task, a foreign app's included, so monitors
show at once that it will not run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import states as celery_states

from jobqueue.client.cancels import cancel_later_steps
from jobqueue.client.jobs import default_app
from jobqueue.connectors import CONNECTORS
from jobqueue.errors import JobCancelled
from jobqueue.shared import job_record as facts
from jobqueue.shared import queued
from jobqueue.shared.names import RUN_JOB_TASK, TASK_REVOKED
from jobqueue.shared.records import result_client
from jobqueue.transport.broker_queues import purge_queue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    """What a purge removed: ``removed`` messages, of which ``jobs`` were jobqueue jobs (now
    cancelled) and ``tasks`` the ids of every Celery task among them."""

    queue: str
    removed: int
    jobs: list[str]
    tasks: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "removed": self.removed, "jobs_cancelled": len(self.jobs),
                "tasks": self.tasks[:1000]}


def purge(queue: str, app: Any = None) -> PurgeReport:
    """Empty ``queue`` on the broker (every priority level) and cancel the jobs it held; raises
    :class:`~jobqueue.transport.broker_queues.BrokerError` when the broker cannot do it."""
    app = app or default_app()
    removed = purge_queue(app, queue)
    tasks = [r.task_id for r in removed if r.task_id]
    jobs = [r.task_id for r in removed if r.task_id and r.task == RUN_JOB_TASK]
    _cancel(app, queue, jobs)
    _announce(app, tasks)
    return PurgeReport(queue, len(removed), jobs, tasks)


def _cancel(app: Any, queue: str, jobs: list[str]) -> None:
    now = time.time()
    client = result_client(app)
    for job_id in jobs:
        app.backend.store_result(job_id, JobCancelled(f"purged from queue {queue}"), celery_states.REVOKED)
        if client is not None:
            facts.write(client, job_id, {"finished_at": now, "cancelled_at": now},
                        expires=int(app.conf.result_expires or 86400), only_new=("finished_at", "cancelled_at"))
        cancel_later_steps(job_id, app)
    queued.forget(app, CONNECTORS, jobs)


def _announce(app: Any, tasks: list[str]) -> None:
    """Tell every monitor at once (best effort: the result backend holds the truth for our jobs)."""
    if not tasks:
        return
    try:
        with app.events.default_dispatcher() as dispatcher:
            for task_id in tasks:
                dispatcher.send(TASK_REVOKED, uuid=task_id, terminated=False, signum=None, expired=False,
                                timestamp=time.time(), cancelled_by="purge")
    except Exception:
        log.warning("could not announce the purge of %d tasks", len(tasks), exc_info=True)
