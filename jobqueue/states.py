"""Job and connector states: the one module that owns them.

Workers, the client API and the monitor all speak these values. Celery has its own task
states (PENDING, STARTED, ...); :func:`job_status_from_celery` maps them onto ours, and
:data:`JOB_PRECEDENCE` lets a consumer merge out-of-order reports: a late "processing" never
moves a completed job back.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class JobStatus(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    #: Shown by the monitor only: its worker went offline while it ran and the broker has
    #: not handed it out again yet.
    LOST = "lost"
    #: Read by the client only: no worker and no submit record knows the id (never
    #: submitted, or forgotten with its result after ``result_expires``).
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        """True for the states a job never leaves."""
        return self in FINAL_JOB_STATES

    def __str__(self) -> str:
        return self.value


#: States a job never leaves: the one definition of "final" (everything else derives from it).
FINAL_JOB_STATES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)
#: The final states as the strings stored and sent (a ``str`` read back from a store or an
#: event is not found in :data:`FINAL_JOB_STATES`, whose members hash by name), in
#: :class:`JobStatus` order: for SQL ``IN`` and plain-string membership.
FINAL_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus if s in FINAL_JOB_STATES)

#: Merge order: a report only moves a job to a state of higher (or, for retrying/processing
#: cycles, see :func:`may_move`) precedence.
JOB_PRECEDENCE: dict[JobStatus, int] = {
    JobStatus.UNKNOWN: -1,
    JobStatus.QUEUED: 0,
    JobStatus.ASSIGNED: 1,
    JobStatus.PROCESSING: 2,
    JobStatus.LOST: 3,
    JobStatus.RETRYING: 3,
    JobStatus.COMPLETED: 10,
    JobStatus.FAILED: 10,
    JobStatus.CANCELLED: 10,
    JobStatus.TIMED_OUT: 10,
}


def may_move(current: JobStatus | None, new: JobStatus, *, new_attempt: bool = False) -> bool:
    """Return True when a job in ``current`` may move to ``new``.

    Final states are never left. A retried or lost job starts a new attempt, so it may go
    back to assigned/processing when the report belongs to that new attempt
    (``new_attempt``); otherwise the state only moves forward.
    """
    if current is None:
        return True
    if current.is_final:
        return False
    if new.is_final:
        return True
    if current in (JobStatus.RETRYING, JobStatus.LOST) and new_attempt:
        return True
    return JOB_PRECEDENCE[new] > JOB_PRECEDENCE[current]


class ConnectorStatus(str, Enum):
    """Health of one connector on one worker."""

    STARTING = "starting"
    WAITING_FOR_SERVICE = "waiting_for_service"
    IDLE = "idle"
    ACTIVE = "active"
    ERROR = "error"
    OFFLINE = "offline"

    @property
    def is_healthy(self) -> bool:
        """True when the connector can take jobs."""
        return self in (ConnectorStatus.IDLE, ConnectorStatus.ACTIVE)

    def __str__(self) -> str:
        return self.value


#: Our custom Celery task state for a running job with progress in its meta.
PROGRESS = "PROGRESS"

#: Celery task state -> our job status. Unknown ids are PENDING in Celery too: the client tells
#: them from queued jobs by their submit record (:mod:`jobqueue.shared.submissions`).
_CELERY_TO_JOB = {
    "PENDING": JobStatus.QUEUED,
    "RECEIVED": JobStatus.ASSIGNED,
    "STARTED": JobStatus.PROCESSING,
    PROGRESS: JobStatus.PROCESSING,
    "RETRY": JobStatus.RETRYING,
    "SUCCESS": JobStatus.COMPLETED,
    "FAILURE": JobStatus.FAILED,
    "REVOKED": JobStatus.CANCELLED,
    "REJECTED": JobStatus.FAILED,
    "IGNORED": JobStatus.FAILED,
}


#: Exception type names that end a job with a status other than failed.
_ERROR_STATUS = {"JobTimedOut": JobStatus.TIMED_OUT, "JobCancelled": JobStatus.CANCELLED}


def status_for_error(error_type: str | None) -> JobStatus:
    """The final status of a job that raised ``error_type`` (an exception class name): timed
    out, cancelled, or failed. The worker's result, the client and the monitor all end a
    failed job through this one rule."""
    return _ERROR_STATUS.get(error_type or "", JobStatus.FAILED)


#: Exception type names of a retry that hands a job back without using a retry (a model it
#: needs vanished from the worker; it ran out of memory and was moved up to a larger card; the
#: worker stopped and the job outlived its soft-shutdown grace): the job is simply queued again,
#: not retrying.
HANDED_BACK_ERRORS = frozenset({"ModelsVanished", "OutOfMemory", "WorkerStopping"})


def status_for_retry(error_type: str | None, message: str | None = None) -> JobStatus:
    """The status of a job sent back to its queue because of ``error_type``: ``queued`` when it
    was handed back (:data:`HANDED_BACK_ERRORS`), else ``retrying``. The client and the
    monitor both read a retry through this one rule. A ``task-retried`` event names Celery's
    ``Retry`` with the error inside its ``message`` (``Retry(..., ModelsVanished(...), 0)``)."""
    if error_type in HANDED_BACK_ERRORS or any(f"{name}(" in (message or "") for name in HANDED_BACK_ERRORS):
        return JobStatus.QUEUED
    return JobStatus.RETRYING


def job_status_from_celery(state: str, error_type: str | None = None) -> JobStatus:
    """Map a Celery task state (and, for failures and retries, the exception type) to a job status."""
    if state == "FAILURE":
        return status_for_error(error_type)
    if state == "RETRY":
        return status_for_retry(error_type)
    return _CELERY_TO_JOB.get(state, JobStatus.QUEUED)


#: Step statuses that end a workflow with that status (the first such step's): every final
#: status but completed.
_BAD_STEP = tuple(s for s in JobStatus if s in FINAL_JOB_STATES and s != JobStatus.COMPLETED)


def workflow_status(statuses: Sequence[str], total: int | None = None) -> JobStatus:
    """A workflow's status from its known steps' statuses, in step order: the first
    failed/timed-out/cancelled step's; completed when all ``total`` steps are (default: the
    steps given); processing once any step left the queue; else queued.

    ``WorkflowHandle.status`` and the monitor's workflow view both answer with this; the
    monitor may know fewer steps than ``total`` (later steps are published as earlier ones end).
    """
    for status in statuses:
        if status in _BAD_STEP:
            return JobStatus(status)
    if len(statuses) >= (len(statuses) if total is None else total) and \
            all(s == JobStatus.COMPLETED for s in statuses):
        return JobStatus.COMPLETED
    if any(s != JobStatus.QUEUED for s in statuses):
        return JobStatus.PROCESSING
    return JobStatus.QUEUED


def empty_progress() -> dict[str, object]:
    """The progress dict before the connector has reported anything."""
    return {
        "percent": 0.0,
        "step": 0,
        "total_steps": 0,
        "message": "",
        "node": None,
        "eta_seconds": None,
    }
