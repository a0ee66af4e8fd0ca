"""Turn a job's records in the result backend into synthetic events: pure, no I/O.

Two records describe a job there: Celery's result record (``celery-task-meta-<id>``: state,
result or error, ``date_done``, with ``result_extended`` the kwargs and worker) and the job's
facts (:mod:`jobqueue.shared.job_record`: times, attempt, worker, machine, metadata, earlier attempts).
:func:`job_events` makes from them

* the lifecycle a monitor that saw no event would need (``task-sent``, for every earlier
  attempt ``task-received``/``task-started`` and ``task-retried`` or ``job-lost``, then the
  last attempt's ``task-received``/``task-started`` and the end), stamped with the recorded
  times, so a rebuilt job's fields and timeline hold the real times; and
* one ``job-truth`` event (:mod:`monitor.merge.truth`) that sets every field the backend knows, so
  a monitor that saw the events, or forged ones, ends up with the same values.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from jobqueue.errors import error_info
from jobqueue.shared.names import (
    TASK_FAILED,
    TASK_PROGRESS,
    TASK_RECEIVED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
    job_meta_from_kwargs,
)
from jobqueue.shared.summary import summarize_payload
from jobqueue.states import JobStatus, job_status_from_celery
from monitor.merge.truth import JOB_LOST, JOB_TRUTH

#: Celery states that say nothing about where the job is.
_SILENT = ("PENDING", "RECEIVED")


def ts_of(value: Any) -> float | None:
    """A timestamp from a number or an ISO date (Celery's ``date_done``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


#: The times in a job's facts that its worker's clock wrote.
_WORKER_TIMES = ("received_at", "started_at", "finished_at", "retried_at")


def deskew(facts: dict[str, Any], skews: dict[str, float]) -> dict[str, Any]:
    """``facts`` with the times each worker wrote taken back by its clock offset (``skews``:
    worker → seconds ahead, :mod:`monitor.ingest.clocks`), as its events' times are."""
    if not skews or not facts:
        return facts
    out = dict(facts)
    skew = skews.get(facts.get("worker") or "")
    if skew:
        for key in _WORKER_TIMES:
            if isinstance(out.get(key), (int, float)) and not isinstance(out.get(key), bool):
                out[key] = out[key] - skew
    history = facts.get("history")
    if isinstance(history, list):
        out["history"] = [_deskew_past(past, skews) for past in history]
    return out


def _deskew_past(past: Any, skews: dict[str, float]) -> Any:
    skew = skews.get(past.get("worker") or "") if isinstance(past, dict) else None
    if not skew:
        return past
    return {k: v - skew if k in ("received_at", "started_at", "ended_at") and isinstance(v, (int, float))
            and not isinstance(v, bool) else v for k, v in past.items()}


def meta_of(kwargs: Any) -> dict[str, Any]:
    """Job metadata from a task's real kwargs (``{"service", "payload", "options"}``) or repr."""
    if isinstance(kwargs, dict) and isinstance(kwargs.get("options"), dict):
        service = kwargs.get("service", kwargs["options"].get("service"))
        meta = {**kwargs["options"], "service": service}
        summary = summarize_payload(service, kwargs.get("payload"))
        if summary is not None and "payload_summary" not in meta:
            meta["payload_summary"] = summary
        return meta
    return job_meta_from_kwargs(kwargs)


def status_of(meta: dict[str, Any] | None) -> JobStatus | None:
    """The job status Celery's record shows (None: the record says nothing)."""
    state = (meta or {}).get("status")
    if not isinstance(state, str) or state in _SILENT:
        return None
    result = (meta or {}).get("result")
    etype = result.get("exc_type") if isinstance(result, dict) else None
    return job_status_from_celery(state, etype if isinstance(etype, str) else None)


def _truth_fields(meta: dict[str, Any] | None, facts: dict[str, Any], status: JobStatus | None,
                  job_meta: dict[str, Any]) -> dict[str, Any]:
    record = meta or {}
    fields: dict[str, Any] = {}
    submitted = ts_of(facts.get("submitted_at")) or ts_of(job_meta.get("submitted_at"))
    if submitted is not None:
        fields["submitted_at"] = submitted
    if job_meta:
        fields["meta"] = job_meta
        for key in ("service", "queue", "priority", "workflow_id", "step", "tenant"):
            if job_meta.get(key) is not None:
                fields[key] = job_meta[key]
    name = facts.get("name") or record.get("name")
    if isinstance(name, str):
        fields["name"] = name
    if status is None or not status.is_final:
        return fields
    # A final job: everything the backend knows, including what it knows is empty.
    if facts:
        fields.update({k: facts.get(k) for k in ("received_at", "started_at", "runtime")})
        if "attempt" in facts:
            fields["attempt"] = facts["attempt"]
        if facts.get("worker") or not record.get("worker"):
            fields["worker"] = facts.get("worker")
            fields["machine_id"] = facts.get("machine_id")
    elif isinstance(record.get("retries"), int):
        fields["attempt"] = record["retries"]
    if record.get("worker") and not fields.get("worker"):
        fields["worker"] = record["worker"]
    fields["finished_at"] = ts_of(facts.get("finished_at")) or ts_of(record.get("date_done"))
    result = record.get("result")
    fields["result"] = result if status == JobStatus.COMPLETED else None
    fields["error"] = None if status == JobStatus.COMPLETED else error_info(result)
    return fields


def job_events(job_id: str, meta: dict[str, Any] | None, facts: dict[str, Any], now: float, *,
               lifecycle: bool = True) -> list[dict[str, Any]]:
    """Synthetic events for one job from its backend records (``meta`` Celery's record or
    None, ``facts`` the job's facts or {}). ``lifecycle``: also the events that rebuild the job
    and its timeline (for a job the store does not hold yet, or holds unfinished)."""
    record = meta or {}
    status = status_of(meta)
    known_meta = facts.get("meta")
    job_meta: dict[str, Any] = known_meta if isinstance(known_meta, dict) else meta_of(record.get("kwargs"))
    base = {"uuid": job_id, "source": "repair", "local_received": now}
    done = ts_of(facts.get("finished_at")) or ts_of(record.get("date_done")) or now
    known = ts_of(facts.get("submitted_at")) or ts_of(job_meta.get("submitted_at"))
    submitted = known or done
    events: list[dict[str, Any]] = []
    if lifecycle:
        # (no metadata: a task nobody recorded, whose kwargs are unknown, not "{}")
        kwargs = json.dumps(job_meta, default=str) if job_meta else None
        events.append({**base, "type": TASK_SENT, "timestamp": submitted, **_stand_in(known), "name": facts.get("name") or record.get("name"),
                       "kwargs": kwargs, "queue": record.get("queue") or job_meta.get("queue"),
                       **_links(record, facts)})
        events.extend(_attempts(base, record, facts, status, kwargs, done, submitted))
    events.append({**base, "type": JOB_TRUTH, "timestamp": now,
                   "status": status.value if status is not None else None,
                   "fields": _truth_fields(meta, facts, status, job_meta), "links": _links(record, facts)})
    return events


def _links(record: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """What the records say of the task's place in a canvas and its route, as task-sent
    carries it: parent and group (Celery's record), root and routing key (the submit record)."""
    given = facts.get("task")
    task: dict[str, Any] = given if isinstance(given, dict) else {}
    found = {"parent_id": record.get("parent_id") or task.get("parent_id"), "root_id": task.get("root_id"),
             "group": record.get("group_id") or task.get("group_id"), "routing_key": task.get("routing_key")}
    return {key: value for key, value in found.items() if isinstance(value, str) and value}


def _stand_in(known: float | None) -> dict[str, Any]:
    """Marks an event whose timestamp no record holds (:func:`monitor.merge.job_rules.time_unknown`):
    it orders the rebuilt timeline, and the time field it would set stays unknown."""
    return {} if known else {"time_unknown": True}


def _attempts(base: dict[str, Any], record: dict[str, Any], facts: dict[str, Any], status: JobStatus | None,
              kwargs: str | None, done: float, submitted: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for past in facts.get("history") or []:
        if not isinstance(past, dict) or not isinstance(past.get("worker"), str):
            continue
        at = {**base, "hostname": past["worker"]}
        received = ts_of(past.get("received_at")) or submitted
        started = ts_of(past.get("started_at")) or received
        events.append({**at, "type": TASK_RECEIVED, "timestamp": received, "kwargs": kwargs,
                       "retries": past.get("attempt") if isinstance(past.get("attempt"), int) else 0})
        events.append({**at, "type": TASK_STARTED, "timestamp": started})
        if past.get("how") == "retried":
            events.append({**at, "type": TASK_RETRIED, "timestamp": ts_of(past.get("ended_at")) or started,
                           "error": {"type": "Retry", "message": "retried on another worker", "details": {}}})
        else:
            events.append({**at, "type": JOB_LOST, "timestamp": started, "worker": past["worker"]})
    worker = facts.get("worker") or (record.get("worker") if isinstance(record.get("worker"), str) else None)
    attempt = facts.get("attempt") if isinstance(facts.get("attempt"), int) else record.get("retries")
    attempt = attempt if isinstance(attempt, int) else 0
    final = {**base, "timestamp": done, "hostname": worker}
    if worker and (facts.get("started_at") is not None or (not facts and record.get("worker"))):
        known = ts_of(facts.get("received_at"))
        received = known or min(submitted, done)
        events.append({**base, "type": TASK_RECEIVED, "timestamp": received, "hostname": worker,
                       "retries": attempt, "kwargs": kwargs, **_stand_in(known)})
        if facts.get("started_at") is not None or status in (JobStatus.PROCESSING, JobStatus.COMPLETED,
                                                                JobStatus.FAILED, JobStatus.TIMED_OUT):
            known = ts_of(facts.get("started_at"))
            events.append({**base, "type": TASK_STARTED, "timestamp": known or received, "hostname": worker,
                           **_stand_in(known)})
    result = record.get("result")
    runtime = facts.get("runtime")
    if status == JobStatus.COMPLETED:
        if runtime is None and isinstance(result, dict):
            runtime = result.get("duration")
        events.append({**final, "type": TASK_SUCCEEDED, "result": result, "runtime": runtime})
    elif status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
        events.append({**final, "type": TASK_FAILED, "error": error_info(result), "runtime": runtime})
    elif status == JobStatus.CANCELLED:
        events.append({**final, "type": TASK_REVOKED})
    elif status == JobStatus.RETRYING:
        events.append({**final, "type": TASK_RETRIED, "error": error_info(result)})
    elif status == JobStatus.PROCESSING and worker and record.get("status") == "PROGRESS" and isinstance(result, dict):
        events.append({**final, **{k: result.get(k) for k in (
            "percent", "step", "total_steps", "message", "node", "eta_seconds", "attempt")},
            "type": TASK_PROGRESS})
    return events


def queue_message_event(raw: bytes | str, queue: str, now: float) -> dict[str, Any] | None:
    """A synthetic ``task-sent`` for one message waiting in a broker queue list."""
    try:
        message = json.loads(raw)
        headers = message["headers"]
        job_id = headers["id"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(job_id, str):
        return None
    meta = job_meta_from_kwargs(headers.get("kwargsrepr"))
    return {"type": TASK_SENT, "uuid": job_id, "name": headers.get("task"), "source": "repair",
            "kwargs": json.dumps(meta, default=str) if meta else None, "queue": queue,
            "timestamp": ts_of(meta.get("submitted_at")) or now, "local_received": now}
