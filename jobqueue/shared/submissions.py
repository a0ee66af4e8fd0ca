"""Which job ids were ever submitted: tells a queued job from an id nobody knows.

Celery's result backend learns of a job only when a worker writes its first state, so a job
still waiting in its queue and an id that was never submitted both read ``PENDING``. The
client therefore writes one small key per job (:func:`~jobqueue.shared.records.submitted_key`)
into the result backend *before* the message is sent (so a worker can never see a job that has no record),
expiring with the results (``result_expires``). ``PENDING`` and no key means the job is
unknown: never submitted, or forgotten together with its result.

A result backend without key/value access (none that jobqueue configures) records nothing;
:func:`was_submitted` then answers ``None`` ("cannot tell") and jobs read as queued.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobqueue.shared.records import result_client, submitted_key


def queue_records(pipe: Any, app: Any, job_ids: Iterable[str]) -> None:
    """Add the submit records of ``job_ids`` to ``pipe`` (a pipeline on
    :func:`~jobqueue.shared.records.result_client`): they then travel in the caller's round trip."""
    expires = getattr(app.backend, "expires", None)
    ttl = int(expires) if expires else None
    for job_id in job_ids:
        pipe.set(submitted_key(job_id), b"1", ex=ttl)


def record_submitted(app: Any, job_ids: Iterable[str]) -> None:
    """Record ``job_ids`` as submitted (one round trip on Redis, however many ids)."""
    backend = app.backend
    ids = list(job_ids)
    if not ids:
        return
    client = result_client(app)
    if client is not None:
        with client.pipeline(transaction=False) as pipe:
            queue_records(pipe, app, ids)
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
