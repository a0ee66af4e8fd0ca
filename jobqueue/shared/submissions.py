"""Which job ids were ever submitted: tells a queued job from an id nobody knows.

Celery's result backend learns of a job only when a worker writes its first state, so a job
still waiting in its queue and an id that was never submitted both read ``PENDING``. The
client therefore writes one small key per job (:func:`~jobqueue.shared.records.submitted_key`)
into the result backend *before* the message is sent (so a worker can never see a job that has no record),
expiring with the results (``result_expires``). ``PENDING`` and no key means the job is
unknown: never submitted, or forgotten together with its result.

The job's facts (:mod:`jobqueue.shared.job_record`) start in the same round trip
(:func:`queue_submit_facts`): submit time, name, metadata as the events show it and the task's
route and canvas links, so a monitor that saw none of its events (a job cancelled while still
queued, that no worker ever received) shows it as one that saw them all.

A result backend without key/value access (none that jobqueue configures) records nothing;
:func:`was_submitted` then answers ``None`` ("cannot tell") and jobs read as queued.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobqueue.shared import job_record
from jobqueue.shared.names import RUN_JOB_TASK, job_meta_from_kwargs
from jobqueue.shared.records import result_client, submitted_key


def queue_records(pipe: Any, app: Any, job_ids: Iterable[str]) -> None:
    """Add the submit records of ``job_ids`` to ``pipe`` (a pipeline on
    :func:`~jobqueue.shared.records.result_client`): they then travel in the caller's round trip."""
    expires = getattr(app.backend, "expires", None)
    ttl = int(expires) if expires else None
    for job_id in job_ids:
        pipe.set(submitted_key(job_id), b"1", ex=ttl)


def submit_facts(app: Any, name: str, send_options: dict[str, Any],
                 links: dict[str, str | None] | None = None) -> dict[str, Any]:
    """What a late monitor needs of a job about to be sent with ``send_options`` (``task_id``,
    ``queue``, ``kwargsrepr``): exactly what its task-sent event carries. ``links``: its
    ``parent_id`` and ``root_id`` when known in advance (a chain's steps); by default those of
    the task that sends it, as Celery sets them (none from a client)."""
    meta = job_meta_from_kwargs(send_options.get("kwargsrepr"))
    if links is None:
        request = getattr(getattr(app, "current_worker_task", None), "request", None)
        parent_id = getattr(request, "id", None)
        links = {"parent_id": parent_id, "root_id": (getattr(request, "root_id", None) or parent_id)}
    task = {"routing_key": send_options.get("queue"), **links}
    return {"submitted_at": meta.get("submitted_at"), "meta": meta or None, "name": name,
            "task": {k: v for k, v in task.items() if isinstance(v, str)} or None}


def queue_submit_facts(pipe: Any, app: Any, job_id: str, fields: dict[str, Any]) -> None:
    """Add the job's first facts (:func:`submit_facts`) to ``pipe``; a worker's own writes win."""
    expires = getattr(app.backend, "expires", None)
    job_record.queue_write(pipe, job_id, fields, expires=int(expires or 86400), only_new=tuple(fields))


def queue_job_submit(pipe: Any, app: Any, send_options: dict[str, Any]) -> None:
    """Add a job's submit record and first facts (:func:`submit_facts`) to ``pipe``."""
    queue_records(pipe, app, [send_options["task_id"]])
    queue_submit_facts(pipe, app, send_options["task_id"], submit_facts(app, RUN_JOB_TASK, send_options))


def queue_submitted(pipe: Any, app: Any, job_ids: Iterable[str],
                    facts: dict[str, dict[str, Any]] | None = None) -> None:
    """Add the submit records of ``job_ids`` and their first ``facts`` (job id →
    :func:`submit_facts`) to ``pipe``."""
    queue_records(pipe, app, job_ids)
    for job_id, fields in (facts or {}).items():
        queue_submit_facts(pipe, app, job_id, fields)


def record_submitted(app: Any, job_ids: Iterable[str], facts: dict[str, dict[str, Any]] | None = None) -> None:
    """Record ``job_ids`` as submitted, with their first ``facts`` (job id → :func:`submit_facts`),
    in one round trip on Redis, however many ids."""
    backend = app.backend
    ids = list(job_ids)
    if not ids:
        return
    client = result_client(app)
    if client is not None:
        with client.pipeline(transaction=False) as pipe:
            queue_submitted(pipe, app, ids, facts)
            pipe.execute()
        return
    setter = getattr(backend, "set", None)
    if callable(setter):
        for job_id in ids:
            setter(submitted_key(job_id), "1")


def was_submitted(app: Any, job_id: str) -> bool | None:
    """True when ``job_id`` has a submit record, False when it has none, None when the result
    backend cannot tell."""
    getter = getattr(app.backend, "get", None)
    if not callable(getter):
        return None
    return bool(getter(submitted_key(job_id)))
