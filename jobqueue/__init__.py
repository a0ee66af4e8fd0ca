"""jobqueue: image-generation jobs on a GPU fleet through Celery.

``celery -A jobqueue worker -Q gpu0`` finds :data:`app`, the Celery app built from the
environment (``JOBQUEUE_*``) on first use. The client API is :func:`submit_job` and
:func:`get_job`, :func:`submit_workflow` and :func:`submit_batch`.
"""

from __future__ import annotations

from typing import Any

from jobqueue.client.batches import submit_batch
from jobqueue.client.jobs import JobHandle, default_app, get_job, submit_job
from jobqueue.client.workflows import WorkflowHandle, get_workflow, submit_workflow
from jobqueue.errors import (
    InvalidPayloadError,
    JobFailed,
    JobNotFound,
    JobqueueError,
    SubmitError,
    UnknownServiceError,
    WorkflowFailed,
)
from jobqueue.shared.names import WORKER_CLASS
from jobqueue.states import ConnectorStatus, JobStatus

__all__ = [
    "ConnectorStatus",
    "InvalidPayloadError",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobStatus",
    "JobqueueError",
    "SubmitError",
    "UnknownServiceError",
    "WORKER_CLASS",
    "WorkflowFailed",
    "WorkflowHandle",
    "app",
    "get_app",
    "get_job",
    "get_workflow",
    "submit_batch",
    "submit_job",
    "submit_workflow",
]

def get_app() -> Any:
    """The process's default Celery app, built from the environment on first use."""
    return default_app()


def __getattr__(name: str) -> Any:
    # ``celery -A jobqueue`` looks up ``jobqueue.app`` (or ``jobqueue.celery``).
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(f"module 'jobqueue' has no attribute {name!r}")
