"""The one error hierarchy of jobqueue. Every exception we raise on purpose derives from
:class:`JobqueueError`, so callers can catch ours without catching everything."""

from __future__ import annotations

import ast
import re
from typing import Any

#: ``Type(args...)``: an exception's repr, as a ``task-failed`` event carries it.
_REPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.S)


class JobqueueError(Exception):
    """Base class of every jobqueue error."""


class ConfigError(JobqueueError):
    """A setting or environment variable has a value we cannot use."""


class SubmitError(JobqueueError):
    """A job was refused at submit time; nothing was enqueued."""


class UnknownServiceError(SubmitError):
    """The job names a service no connector provides."""


class InvalidPayloadError(SubmitError):
    """The job's payload was rejected by its connector's validation."""


class WebhookTargetRefused(SubmitError):
    """The job's ``webhook_url`` names an address workers may not reach (loopback, private,
    link-local, metadata...; see :mod:`jobqueue.shared.safe_http`); nothing was enqueued."""


class TargetRefused(JobqueueError):
    """An outgoing request's target resolves to an address jobqueue may not reach (see
    :mod:`jobqueue.shared.safe_http`); ``details`` names the host, address and reason."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})


class QueueFull(SubmitError):
    """The service's queue holds its cap of jobs (``JOBQUEUE_MAX_QUEUED``): nothing was enqueued.

    ``retry_after`` is how many seconds to wait before trying again (the monitor's API puts its
    queue ETA there; a client alone has only :data:`DEFAULT_RETRY_AFTER`)."""

    #: Seconds a client is told to wait when nothing better is known.
    DEFAULT_RETRY_AFTER = 10.0

    def __init__(self, service: str, cap: int, queued: int, retry_after: float | None = None) -> None:
        self.service = service
        self.cap = cap
        self.queued = queued
        self.retry_after = self.DEFAULT_RETRY_AFTER if retry_after is None else float(retry_after)
        super().__init__(f"{service}: queue full ({queued} queued, cap {cap}); "
                         f"retry in {self.retry_after:.0f} s")


class QuotaExceeded(SubmitError):
    """The tenant holds its quota of queued jobs (``JOBQUEUE_TENANT_QUOTAS``): nothing was
    enqueued. ``retry_after``: seconds to wait before trying again, as for :class:`QueueFull`."""

    #: Seconds a client is told to wait when nothing better is known.
    DEFAULT_RETRY_AFTER = 10.0

    def __init__(self, tenant: str, quota: int, queued: int, retry_after: float | None = None) -> None:
        self.tenant = tenant
        self.quota = quota
        self.queued = queued
        self.retry_after = self.DEFAULT_RETRY_AFTER if retry_after is None else float(retry_after)
        super().__init__(f"tenant {tenant}: quota of queued jobs reached ({queued} queued, quota {quota}); "
                         f"retry in {self.retry_after:.0f} s")


class ProcessFailed(JobqueueError):
    """A process started by ``jobqueue up`` failed to start or died while running."""


class MalformedEvent(JobqueueError):
    """An event the monitor cannot use: unknown name, missing field or wrong type."""


class JobError(JobqueueError):
    """Something went wrong with a job after it was enqueued."""


class JobFailed(JobError):
    """The job ended failed, timed out or cancelled; ``error`` holds what the worker reported."""

    def __init__(self, job_id: str, status: str, error: dict[str, Any] | None = None) -> None:
        self.job_id = job_id
        self.status = status
        self.error = dict(error or {})
        message = self.error.get("message") or status
        kind = self.error.get("type")
        text = f"job {job_id} {status}: {kind}: {message}" if kind else f"job {job_id} {status}: {message}"
        super().__init__(text)


class WorkflowFailed(JobFailed):
    """A workflow ended at a failed, timed-out or cancelled step; ``step`` is its 1-based number."""

    def __init__(self, workflow_id: str, step: int, failed: JobFailed) -> None:
        super().__init__(failed.job_id, failed.status, failed.error)
        self.workflow_id = workflow_id
        self.step = step
        self.args = (f"workflow {workflow_id} {failed.status} at step {step}: {failed}",)


class WaitTimeout(JobError):
    """``JobHandle.wait()`` gave up before the job ended (the job itself goes on)."""


class JobNotFound(JobError):
    """No job with that id is on record (never submitted, or forgotten with its result)."""


class WorkflowNotFound(JobError):
    """No workflow with that id is on record (never submitted, or its record expired)."""


class ConnectorError(JobqueueError):
    """A connector could not do what was asked; the message says why."""

    #: Whether another attempt (on this or another worker) may succeed.
    retryable: bool = False

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        # Both go into ``args`` so the JSON result backend can rebuild the exception whole.
        super().__init__(message, dict(details or {}))
        self.message = message
        self.details = dict(details or {})

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as the job reports it: type, message and details."""
        return {"type": type(self).__name__, "message": self.message, "details": self.details}


class ServiceUnavailable(ConnectorError):
    """The connector's service is down or unreachable; the job may run elsewhere."""

    retryable = True


class ServiceNotReached(ServiceUnavailable):
    """The service was down before the job was handed to it: the attempt does not count as a retry."""


class ModelsVanished(ServiceNotReached):
    """The service refused the job because a model it needs is no longer on this worker: the
    job goes back to its queue (it reads ``queued``, with its ``waiting_for``), no retry used."""


class WorkerStopping(ConnectorError):
    """The worker was asked to stop (SIGTERM) and the job outlived its grace: the job goes back
    to its queue (it reads ``queued``), no retry used."""


class ServerCrashed(ServiceUnavailable):
    """The service exited or restarted while it ran the job (its connections refused, or it came
    back without the job): handed back at once; a job that does it on two machines is poison."""


class JobStalled(ConnectorError):
    """The service showed no sign of progress within the stall timeout; the job may run elsewhere."""

    retryable = True


class JobTimedOut(ConnectorError):
    """The job exceeded its absolute timeout."""


class JobCancelled(ConnectorError):
    """The job was cancelled while it ran."""


class ExecutionFailed(ConnectorError):
    """The service ran the job and reported an error (bad workflow, node failure...)."""


class OutOfMemory(ExecutionFailed):
    """The service ran out of GPU memory on this worker: the worker moves the job up to a
    larger card (``requires.vram_gb`` raised), or fails it naming the VRAM tried."""


class CrashesServers(ExecutionFailed):
    """The job took its service down on two different machines: failed, never retried again."""


class InputImageFailed(ExecutionFailed):
    """An input image of the job could not be fetched, decoded or uploaded; the message says which and why."""


class InvalidRequirementError(SubmitError):
    """The job's ``requires`` (models, VRAM, tags) is malformed: no worker could ever run it."""


class MessageDiscarded(JobqueueError):
    """The job's broker message could not be decoded; the worker moved it to ``<queue>.dead``."""


class QueueTypeMismatch(ConfigError):
    """A RabbitMQ queue exists with another type (classic or quorum) than jobqueue declares it with."""


class SentinelUnreachable(JobqueueError):
    """No Redis Sentinel of a ``sentinel://`` URL answered, or none of them knows the master."""


class NotReplicated(JobqueueError):
    """A write reached the Redis master but fewer replicas than asked confirmed it in time
    (``JOBQUEUE_REDIS_WAIT_REPLICAS`` / ``_TIMEOUT``): it is lost if the master fails now.

    A job's message was queued all the same (``job_id`` says which): it will run unless the
    master fails before replicating it; read its state rather than submitting it again."""

    def __init__(self, message: str, *, job_id: str | None = None, replicas: int = 0) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.replicas = replicas


def error_info(error: Any) -> dict[str, Any]:
    """``{"type", "message", "details"}`` of a job's error, in whichever form it reaches us.

    The one rule for reading an error, used by the client (the exception the result backend
    rebuilt), the monitor's event reader (the repr a ``task-failed`` event carries) and its
    truth repair (the ``{"exc_type", "exc_message"}`` record of Celery's JSON backend):

    * an exception (or anything with ``to_dict()``, like :class:`ConnectorError`) gives its own
      description; another exception its class name and ``str()``;
    * a backend record and a repr both give ``args[0]`` as the message and ``args[1]`` as the
      details when it is a dict: ``ExecutionFailed('node 3 failed', {'node_id': '3'})`` gives
      ``{"type": "ExecutionFailed", "message": "node 3 failed", "details": {"node_id": "3"}}``;
    * anything else (a repr we cannot parse, None) is kept whole as the message.
    """
    to_dict = getattr(error, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error), "details": {}}
    if isinstance(error, dict) and "exc_type" in error:
        args = error.get("exc_message")
        return _from_args(error.get("exc_type"), args if isinstance(args, (list, tuple)) else [args])
    if isinstance(error, str):
        match = _REPR.match(error)
        if match:
            kind, inner = match.group(1).rsplit(".", 1)[-1], match.group(2)
            try:
                args = tuple(ast.literal_eval(f"({inner},)")) if inner.strip() else ()
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return {"type": kind, "message": inner, "details": {}}
            return _from_args(kind, args)
    return {"type": None, "message": "" if error is None else str(error), "details": {}}


def _from_args(kind: Any, args: Any) -> dict[str, Any]:
    """An error from its type name and its exception ``args``."""
    message = str(args[0]) if args else ""
    details = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    return {"type": kind, "message": message, "details": details}


class LeaseLost(JobqueueError):
    """This monitor does not hold the writer's lease of its shared PostgreSQL store (it is a
    standby, or another monitor took over): it may not write (:mod:`monitor.store.lease`)."""
