"""A job's facts in the result backend: what a monitor needs to rebuild the job exactly.

Celery's result record holds a job's state, result or error, and (with ``result_extended``)
its kwargs and worker; it holds no times but ``date_done``, no attempt count, and a client's
``store_result(REVOKED)`` drops the kwargs. Events carry the rest, but events are lossy and
anyone on the broker can send one. So the worker (and a cancelling client) also keeps one Redis
hash per job (:func:`jobqueue.shared.records.facts_key`), next to Celery's record and expiring with it:

``submitted_at``, ``received_at``, ``started_at``, ``finished_at``, ``runtime`` (seconds,
``finished_at - started_at`` of the last attempt), ``attempt`` (0 for the first), ``worker``,
``machine_id``, ``meta`` (the job's options, service and payload summary), ``name`` and
``history`` (earlier attempts: ``{attempt, worker, received_at, started_at, ended_at, how}``
with ``how`` ``retried`` or ``lost``), ``cancelled_at`` (when a client cancelled it: unlike
Celery's REVOKED record, which the worker's STARTED overwrites, it survives until a worker
reaches the message), ``task`` (what the task-sent event says of its route and canvas:
``routing_key``, ``parent_id``, ``root_id``; written at submit). Every value is JSON.

The monitor's truth repair reads these records; the backend is the authority for a job's
outcome and times, events are the fast path. On a result backend that is not Redis nothing is
written and repair falls back to Celery's record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from typing import Any

from jobqueue.shared.records import facts_key

log = logging.getLogger(__name__)

#: Fields a facts hash may hold.
FACT_FIELDS = ("submitted_at", "received_at", "started_at", "finished_at", "runtime", "attempt",
               "worker", "machine_id", "meta", "name", "history", "retried_at", "cancelled_at", "task")
#: Earlier attempts kept in ``history``.
MAX_HISTORY = 20


#: ``json.dumps(value, default=str)``, the same text, without building an encoder per call
#: (``json.dumps`` builds one whenever an option is given): facts are written on every submit
#: and at every start and end of a job.
to_json = json.JSONEncoder(default=str).encode


def encode(fields: dict[str, Any]) -> dict[str, str]:
    """Facts as the hash stores them (JSON values; None values left out)."""
    return {k: to_json(v) for k, v in fields.items() if v is not None}


def decode(raw: dict[Any, Any] | None, fields: Collection[str] = FACT_FIELDS) -> dict[str, Any]:
    """A facts hash as read (bytes or str keys and values) back into values: those of
    ``fields`` (a reader that needs a few leaves the job's metadata unparsed)."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name not in fields or name not in FACT_FIELDS:
            continue
        try:
            out[name] = json.loads(value)
        except (ValueError, TypeError):
            continue
    return out


def queue_write(pipe: Any, job_id: str, fields: dict[str, Any], *, expires: int,
                remove: tuple[str, ...] = (), only_new: tuple[str, ...] = ()) -> None:
    """Add :func:`write`'s commands to ``pipe`` (a Redis pipeline the caller executes): the
    facts then travel in the same round trip as whatever else the caller sends."""
    key = facts_key(job_id)
    values = encode({k: v for k, v in fields.items() if k not in only_new})
    if values:
        pipe.hset(key, mapping=values)
    for name, value in encode({k: v for k, v in fields.items() if k in only_new}).items():
        pipe.hsetnx(key, name, value)
    if remove:
        pipe.hdel(key, *remove)
    pipe.expire(key, max(1, int(expires)))


def write(client: Any, job_id: str, fields: dict[str, Any], *, expires: int,
          remove: tuple[str, ...] = (), only_new: tuple[str, ...] = ()) -> None:
    """Set ``fields`` on the job's facts (``only_new``: only where not set yet), delete
    ``remove``, and (re)arm the expiry, in one round trip. Never raises: a backend hiccup
    must not fail a job."""
    try:
        pipe = client.pipeline()
        queue_write(pipe, job_id, fields, expires=expires, remove=remove, only_new=only_new)
        pipe.execute()
    except Exception:
        log.warning("could not record the facts of job %s", job_id, exc_info=True)


def replace(client: Any, job_id: str, raw: dict[Any, Any], fields: dict[str, Any], *, expires: int,
            only_new: tuple[str, ...] = ()) -> None:
    """Put the job's facts back to ``raw`` (a hash as read earlier) and then write ``fields``
    like :func:`write`, atomically: undoes a write made in anticipation that turned out wrong
    (a job found cancelled only once its start was recorded). Never raises."""
    key = facts_key(job_id)
    try:
        pipe = client.pipeline()
        pipe.delete(key)
        if raw:
            pipe.hset(key, mapping=dict(raw))
        queue_write(pipe, job_id, fields, expires=expires, only_new=only_new)
        pipe.execute()
    except Exception:
        log.warning("could not record the facts of job %s", job_id, exc_info=True)


def read_many(client: Any, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The facts of ``job_ids`` (ids without facts left out), one pipeline per 500."""
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start:start + 500]
        pipe = client.pipeline()
        for job_id in chunk:
            pipe.hgetall(facts_key(job_id))
        for job_id, raw in zip(chunk, pipe.execute(), strict=True):
            if raw:
                out[job_id] = decode(raw)
    return out
