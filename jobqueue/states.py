"""Job and connector states: the one module that owns them.

Workers, the client API and the monitor all speak these values. Celery has its own task
states (PENDING, STARTED, ...); :func:`job_status_from_celery` maps them onto ours, and
:data:`JOB_PRECEDENCE` lets a consumer merge out-of-order reports: a late "processing" never
moves a completed job back.
"""

from __future__ import annotations

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


#: States a job never leaves.
FINAL_JOB_STATES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)

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
#: them from queued jobs by their submit record (:mod:`jobqueue.submitted`).
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


def job_status_from_celery(state: str, error_type: str | None = None) -> JobStatus:
    """Map a Celery task state (and, for failures, the exception type) to a job status."""
    if state == "FAILURE" and error_type == "JobTimedOut":
        return JobStatus.TIMED_OUT
    if state == "FAILURE" and error_type == "JobCancelled":
        return JobStatus.CANCELLED
    return _CELERY_TO_JOB.get(state, JobStatus.QUEUED)


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
