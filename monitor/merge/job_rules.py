"""The merge rules for job events: (stored job, event) → changes, with no I/O.

Each rule reads a :class:`JobState` (a plain copy of the stored job's fields) and one event,
and returns a :class:`JobOutcome`: the job's new state, whether anything changed, and the
effects on other objects the I/O layer (:mod:`monitor.merge.apply`) carries out -- the job's new
worker (its machine and ended counts follow), a worker's current job, a job that left its
worker. Nothing here touches a database, so the rules are tested on plain values
(tests/monitor/merge/test_apply_rules.py), like :mod:`jobqueue.connectors.comfyui.protocol`.

The rules move a job only forward (:func:`jobqueue.states.may_move`): a late
``task-started`` never moves a completed job back, a duplicate changes nothing, and progress
never goes backwards within one attempt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from jobqueue.errors import error_info
from jobqueue.shared.names import (
    TASK_FAILED,
    TASK_PROGRESS,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
    job_meta_from_kwargs,
)
from jobqueue.shared.tenants import is_tenant
from jobqueue.states import (
    FINAL_STATUSES,
    HANDED_BACK_ERRORS,
    JobStatus,
    empty_progress,
    may_move,
    status_for_error,
    status_for_retry,
)
from monitor.merge.fields import (
    MAX_ID,
    error_from,
    event_int,
    event_num,
    json_blob,
    progress_fields,
    result_from_repr,
    shallow_copy,
    task_details,
)

#: Job statuses by their stored string.
_BY_VALUE = {s.value: s for s in JobStatus}
#: Statuses a job leaves when a report of its next attempt arrives.
_BETWEEN_ATTEMPTS = (JobStatus.RETRYING, JobStatus.LOST)


@dataclass
class JobState:
    """The stored fields of one job the rules read and write (``status`` "" = not yet known)."""

    id: str
    status: str = ""
    attempt: int = 0
    attempt_since: float | None = None
    progress: dict[str, Any] | None = None
    worker: str | None = None
    name: str | None = None
    service: str | None = None
    queue: str | None = None
    priority: int | None = None
    workflow_id: str | None = None
    step: int | None = None
    tenant: str | None = None
    meta: dict[str, Any] | None = None
    submitted_at: float | None = None
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    runtime: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    parent_id: str | None = None
    root_id: str | None = None

    @property
    def job_status(self) -> JobStatus | None:
        """The status as a :class:`JobStatus` (None when unset or unknown)."""
        return _BY_VALUE.get(self.status)

    def copy(self) -> JobState:
        """A shallow copy (the rules replace values, never change them in place)."""
        return shallow_copy(self)

    @classmethod
    def of_values(cls, values: tuple[Any, ...]) -> JobState:
        """The state whose fields, in :data:`JOB_FIELDS` order, are ``values`` (what
        ``JobState(**dict(zip(JOB_FIELDS, values)))`` makes, without the keyword call: the
        merge builds one per event)."""
        state = object.__new__(cls)
        state.__dict__.update(zip(JOB_FIELDS, values, strict=True))
        return state


#: The names of :class:`JobState`'s fields (the job columns the rules own).
JOB_FIELDS = tuple(f.name for f in fields(JobState))


@dataclass
class JobOutcome:
    """What merging one event into a job changes."""

    #: The job after the event.
    state: JobState
    #: Whether the job changed (it then gets a timeline entry and a change).
    changed: bool = False
    #: The job's worker became this one: its machine follows, and an ended job's count moves
    #: from the old worker to this one when ``recount``.
    new_worker: str | None = None
    recount: bool = True
    #: This worker now runs the job (its ``current_job``).
    claimed_by: str | None = None
    #: The job left its worker: it ended (count it there) or will be retried.
    left_worker: bool = False
    #: ... and it failed (the worker's failed count changes).
    failed: bool = False
    #: The progress last reported before the job ended (kept in its final timeline entry).
    progress_at_end: dict[str, Any] | None = field(default=None)


def new_attempt(state: JobState, ts: float) -> bool:
    """True when a report at ``ts`` belongs to a new attempt of a retried or lost job."""
    return state.job_status in _BETWEEN_ATTEMPTS and ts > (state.attempt_since or 0.0)


def move(state: JobState, new: JobStatus, ts: float, *, new_attempt: bool = False) -> bool:
    """Move ``state`` (in place) to ``new`` when :func:`may_move` allows; a job that starts
    a new attempt sheds the last one's progress, start time and error. Returns whether it moved."""
    current = state.job_status
    if current == new or not may_move(current, new, new_attempt=new_attempt):
        return False
    state.status = new.value
    if new in _BETWEEN_ATTEMPTS:
        state.attempt_since = ts
    if current in _BETWEEN_ATTEMPTS and new in (JobStatus.ASSIGNED, JobStatus.PROCESSING):
        state.progress = empty_progress()
        state.started_at = None
        state.error = None
    return True


def final_progress(status: str, progress: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A finished job's canonical progress (100 % when completed, empty otherwise), so a
    monitor that rebuilt the job from the result backend shows the same; and the progress
    last reported, when there was any (kept in the final timeline entry)."""
    at_end = dict(progress) if progress and progress != empty_progress() else None
    canonical = empty_progress()
    if status == JobStatus.COMPLETED.value:
        canonical.update(percent=100.0, eta_seconds=0.0)
    return canonical, at_end


def job_rule(stored: JobState, ev: dict[str, Any], ts: float, hostname: str | None) -> JobOutcome:
    """Merge job event ``ev`` (type in :data:`JOB_RULES`, fields already checked) that
    happened at ``ts`` on worker ``hostname`` into ``stored``; ``stored`` is not changed."""
    out = JobOutcome(state=stored.copy())
    out.changed = JOB_RULES[ev["type"]](out.state, ev, ts, hostname, out)
    return out


def _set_worker(s: JobState, out: JobOutcome, hostname: str | None, *, recount: bool = True) -> bool:
    if not hostname or s.worker == hostname:
        return False
    s.worker = hostname
    out.new_worker = hostname
    out.recount = recount
    return True


def _ended(s: JobState, out: JobOutcome, *, failed: bool) -> None:
    out.left_worker = True
    out.failed = failed
    if s.status in FINAL_STATUSES:
        s.progress, out.progress_at_end = final_progress(s.status, s.progress)


def _short_str(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_ID


def _small_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**31


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fill_meta(s: JobState, ev: dict[str, Any]) -> bool:
    """Fill job metadata from the kwargs JSON of task-sent/-received (never overwrite)."""
    meta = job_meta_from_kwargs(ev.get("kwargs"))
    if isinstance(meta.get("options"), dict):  # full kwargs (repair from inspect/backend)
        meta = {**meta["options"], **{k: v for k, v in meta.items() if k == "service"}}
    changed = False
    for attr, value, ok in (
        ("name", ev.get("name"), _short_str),
        ("service", meta.get("service"), _short_str),
        ("queue", meta.get("queue") or ev.get("queue"), _short_str),
        ("priority", meta.get("priority"), _small_int),
        ("workflow_id", meta.get("workflow_id"), _short_str),
        ("step", meta.get("step"), _small_int),
        ("tenant", meta.get("tenant"), is_tenant),
        ("submitted_at", meta.get("submitted_at"), _finite),
    ):
        if getattr(s, attr) is None and value is not None and ok(value):
            setattr(s, attr, value)
            changed = True
    if s.meta is None and meta:
        s.meta = json_blob(meta)
        changed = True
    return fill_task(s, ev) or changed


def fill_task(s: JobState, ev: dict[str, Any]) -> bool:
    """Fill what task-sent/-received say of any Celery task (never overwrite): parent and root
    ids, and in ``task`` its ETA and expiry (Unix time), routing key, exchange, group id and --
    for a task that is no jobqueue job -- its args and kwargs as the events carry them (Celery's
    ``argsrepr``/``kwargsrepr`` when the sender set them; masked by the writer before this)."""
    changed = False
    for attr in ("parent_id", "root_id"):
        value = ev.get(attr)
        if getattr(s, attr) is None and _short_str(value) and value != s.id:
            setattr(s, attr, value)
            changed = True
    found = {key: value for key, value in task_details(ev, foreign=s.service is None).items()
             if key not in (s.task or {})}
    if found:
        s.task = {**(s.task or {}), **found}
        changed = True
    return changed

def time_unknown(ev: dict[str, Any]) -> bool:
    """True for repair's stand-in lifecycle event whose timestamp is no recorded time (a task
    nobody recorded): it orders the timeline but sets no time field -- unknown stays null."""
    return ev.get("time_unknown") is True and ev.get("source") == "repair"


def _on_sent(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    changed = _fill_meta(s, ev)
    if s.submitted_at is None and not time_unknown(ev):
        s.submitted_at = ts
        changed = True
    if not s.status:
        s.status = JobStatus.QUEUED.value
        changed = True
    return changed


def _on_received(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    retries = event_int(ev, "retries", 0) or 0
    changed = _fill_meta(s, ev)
    moved = move(s, JobStatus.ASSIGNED, ts, new_attempt=new_attempt(s, ts) or retries > s.attempt)
    if retries > s.attempt:
        s.attempt = retries
        changed = True
    if (moved or s.received_at is None) and not time_unknown(ev):
        s.received_at = ts
        changed = True
    if moved or s.worker is None:
        changed |= _set_worker(s, out, hostname)
    return changed or moved


def _on_started(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    changed = _fill_meta(s, ev)
    moved = move(s, JobStatus.PROCESSING, ts, new_attempt=new_attempt(s, ts))
    if (moved or s.started_at is None) and not time_unknown(ev):
        s.started_at = ts
        changed = True
    if moved or s.worker is None:
        changed |= _set_worker(s, out, hostname)
    if moved and hostname:
        out.claimed_by = hostname
    return changed or moved


def _on_progress(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    attempt = event_int(ev, "attempt")
    progress = progress_fields(ev)
    status = s.job_status
    if status is not None and status.is_final:
        return False
    if attempt is not None and attempt < s.attempt:
        return False  # a report from an attempt that is over
    changed = False
    later = (attempt is not None and attempt > s.attempt) or new_attempt(s, ts)
    if attempt is not None and attempt > s.attempt:
        s.attempt = attempt
        s.progress = empty_progress()
        changed = True
    moved = move(s, JobStatus.PROCESSING, ts, new_attempt=later)
    if s.job_status != JobStatus.PROCESSING:
        return changed or moved
    if moved and s.started_at is None:
        s.started_at = ts
    if s.worker is None:
        _set_worker(s, out, hostname)
    if s.service is None and isinstance(ev.get("service"), str) and len(ev["service"]) <= MAX_ID:
        s.service = ev["service"]
    old = {**empty_progress(), **(s.progress or {})}
    point, old_point = (progress["percent"], progress["step"]), (old["percent"], old["step"])
    old.pop("reported_at", None)
    if point > old_point or (point == old_point and progress != old and (
            progress["message"] != old["message"] or progress.get("preview", 0) > old.get("preview", 0))):
        s.progress = {**progress, "reported_at": ts}  # when its eta_seconds was true
        changed = True
    return changed or moved


def _on_succeeded(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    runtime = event_num(ev, "runtime")
    result = ev.get("result")
    if isinstance(result, str):
        result = result_from_repr(result)
    if not move(s, JobStatus.COMPLETED, ts):
        return False
    s.finished_at = ts
    s.runtime = runtime
    s.result = json_blob(result)
    s.error = None
    if s.worker is None:
        _set_worker(s, out, hostname, recount=False)
    _ended(s, out, failed=False)
    return True


def _on_failed(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    error = error_from(ev)
    if not move(s, status_for_error(error["type"]), ts):
        return False
    s.finished_at = ts
    s.runtime = event_num(ev, "runtime") or (ts - s.started_at if s.started_at else None)
    s.error = error
    if s.worker is None:
        _set_worker(s, out, hostname, recount=False)
    _ended(s, out, failed=True)
    return True


def _inner_error(error: dict[str, Any]) -> dict[str, Any]:
    """The error inside Celery's ``Retry(message, ModelsVanished(...), when)`` repr (as is when
    it is not one)."""
    message = str(error.get("message") or "")
    for name in HANDED_BACK_ERRORS:
        start = message.find(f"{name}(")
        if start >= 0:
            return error_info(re.sub(r",\s*[\d.]+\)?\s*$", "", message[start:]))
    return error


def _handed_back(s: JobState, error: dict[str, Any], ts: float) -> bool:
    """A job handed back without using a retry (a model it needs vanished; out of memory): it
    is queued again, with the reason as its error (the one step down the rules allow) and, when
    it was moved up to a larger card, its raised ``requires``."""
    current = s.job_status
    if current is None or current.is_final or current == JobStatus.QUEUED:
        return False
    s.status = JobStatus.QUEUED.value
    s.attempt += 1
    s.attempt_since = ts
    s.progress = empty_progress()
    s.started_at = None
    s.error = error
    raised = (error.get("details") or {}).get("requires")
    if isinstance(raised, dict) and isinstance(s.meta, dict):  # moved up after out of memory
        s.meta = {**s.meta, "requires": json_blob(raised)}
    return True


def _on_retried(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    error = error_from(ev)
    if status_for_retry(error["type"], error.get("message")) == JobStatus.QUEUED:
        return _handed_back(s, _inner_error(error), ts)
    if not move(s, JobStatus.RETRYING, ts):
        return False
    s.attempt += 1
    s.error = error
    _ended(s, out, failed=False)
    return True


def _on_revoked(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    if not move(s, JobStatus.CANCELLED, ts):
        return False
    s.finished_at = ts
    reason = "expired" if ev.get("expired") is True else "cancelled"
    s.error = {"type": "JobCancelled", "message": reason, "details": {}}
    _ended(s, out, failed=False)
    return True


def _on_rejected(s: JobState, ev: dict[str, Any], ts: float, hostname: str | None, out: JobOutcome) -> bool:
    if ev.get("requeue") is True:
        return move(s, JobStatus.RETRYING, ts)
    moved = move(s, JobStatus.FAILED, ts)
    if moved:
        s.finished_at = ts
        s.error = {"type": "Rejected", "message": "rejected by the worker", "details": {}}
        _ended(s, out, failed=True)
    return moved


Rule = Callable[[JobState, dict[str, Any], float, "str | None", JobOutcome], bool]

#: The rule of each job event type.
JOB_RULES: dict[str, Rule] = {
    TASK_SENT: _on_sent,
    TASK_RECEIVED: _on_received,
    TASK_STARTED: _on_started,
    TASK_PROGRESS: _on_progress,
    TASK_SUCCEEDED: _on_succeeded,
    TASK_FAILED: _on_failed,
    TASK_RETRIED: _on_retried,
    TASK_REVOKED: _on_revoked,
    TASK_REJECTED: _on_rejected,
}
