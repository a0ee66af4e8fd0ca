"""The client API: submit a job, follow it, cancel it.

    from jobqueue import submit_job
    job = submit_job("simulation", {"steps": 5, "step_seconds": 0.2})
    result = job.wait(on_progress=print)

Submitting validates everything first (service, payload, options): a job that would fail
for a reason we can see now is refused with a clear :class:`~jobqueue.errors.SubmitError`,
and nothing is enqueued.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import states as celery_states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from redis.sentinel import MasterNotFoundError

from jobqueue.client.cancels import cancel_later_steps
from jobqueue.client.input_owners import check_input_owners
from jobqueue.client.records import send_job
from jobqueue.client.waiting import job_expected_load, job_waiting_for
from jobqueue.connectors import CONNECTORS, connector_class
from jobqueue.errors import (
    InvalidPayloadError,
    JobCancelled,
    JobError,
    JobFailed,
    JobNotFound,
    QueueFull,
    QuotaExceeded,
    SubmitError,
    WaitTimeout,
    error_info,
)
from jobqueue.shared import fairshare, queued
from jobqueue.shared import job_record as facts
from jobqueue.shared.masking import DEFAULT_PATTERN, mask
from jobqueue.shared.names import CONTROL_CANCEL_JOB, RUN_JOB_TASK, TASK_REVOKED, WORKER_CLASS
from jobqueue.shared.records import result_client
from jobqueue.shared.requirements import resolve, route_queue
from jobqueue.shared.routing import broker_priority, check_priority
from jobqueue.shared.submissions import was_submitted
from jobqueue.shared.summary import summarize_payload
from jobqueue.shared.tenants import check_tenant
from jobqueue.shared.webhooks import check_webhook_url
from jobqueue.states import FINAL_JOB_STATES, PROGRESS, JobStatus, empty_progress, job_status_from_celery
from jobqueue.transport.rabbitmq import raise_clearly
from jobqueue.transport.redis_clients import unreachable
from jobqueue.transport.result_watch import check_subscription

log = logging.getLogger(__name__)

#: How often ``wait()`` polls a result backend without pub/sub.
POLL_INTERVAL = 0.05
#: On a pub/sub backend, how often ``wait()`` reads the stored state all the same (a safety
#: net for a message lost while the subscription reconnected).
REREAD_INTERVAL = 2.0
#: ``wait()`` keeps waiting through a result-backend outage this long (Redis restarting)...
OUTAGE_GRACE = 30.0
#: ... trying again after this pause.
RECONNECT_PAUSE = 0.2

ProgressCallback = Callable[[dict[str, Any]], None]


class JobNotFinished(JobError):
    """``result()`` was asked for a job that has not ended yet."""


#: The process's default Celery app, once built (see :func:`default_app`).
_default_apps: list[Any] = []


def default_app() -> Any:
    """The process's default Celery app, built from the environment on first use: the app of
    callers given none, ``jobqueue.get_app()`` and ``celery -A jobqueue``."""
    if not _default_apps:
        from jobqueue.transport.app import create_app

        _default_apps.append(create_app(worker_class=WORKER_CLASS))
    return _default_apps[0]


def _error_type(info: Any) -> str | None:
    return type(info).__name__ if isinstance(info, BaseException) else None


class _StateWatch:
    """The states of one job as the result consumer hands them over: progress to the
    callback (each change once, none after the end), the final state kept."""

    def __init__(self, job_id: str, on_progress: ProgressCallback | None) -> None:
        self.job_id = job_id
        self.on_progress = on_progress
        self.last: dict[str, Any] | None = None
        #: ``(state, info)`` once the job ended.
        self.final: tuple[str, Any] | None = None

    def on_message(self, meta: dict[str, Any]) -> None:
        """Celery calls this for every state it reads or is sent (other jobs' included)."""
        if self.final is not None or meta.get("task_id") != self.job_id:
            return
        state, info = meta.get("status", celery_states.PENDING), meta.get("result")
        # (REJECTED and IGNORED read as failed too, but Celery stores neither: the states
        # that end a job here are the ones that end Celery's wait.)
        if job_status_from_celery(state, _error_type(info)) in FINAL_JOB_STATES:
            self.final = (state, info)
        elif state == PROGRESS and isinstance(info, dict) and info != self.last:
            self.last = dict(info)
            if self.on_progress is not None:
                self.on_progress(dict(info))


class JobHandle:
    """A handle on one job, by id. Cheap to create; every call asks the result backend."""

    def __init__(self, job_id: str, app: Any = None) -> None:
        self.id = job_id
        self.app = app or default_app()
        #: True once the id is known to have been submitted (it never becomes unknown again).
        self.submitted = False
        #: The result ``send_task`` returned: kept, its subscription stays (Celery drops it
        #: when that object is collected, and ``wait()`` would subscribe again).
        self._sent: Any = None

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    @property
    def _result(self) -> Any:
        return self._sent if self._sent is not None else self.app.AsyncResult(self.id)

    def _state(self) -> tuple[JobStatus, Any]:
        res = self._result
        # One read for both: ``res.state`` then ``res.info`` are two, and a job ending between
        # them would pair PROGRESS with its final result.
        meta = res.backend.get_task_meta(res.id)
        state, info = meta.get("status", celery_states.PENDING), meta.get("result")
        status = job_status_from_celery(state, _error_type(info))
        if state == celery_states.PENDING and not self.submitted:
            known = was_submitted(self.app, self.id)
            if known is False:
                status = JobStatus.UNKNOWN
            self.submitted = bool(known)
        return status, (state, info)

    def status(self) -> JobStatus:
        """The job's lifecycle state: ``queued`` until a worker takes it, ``unknown`` for an id
        that was never submitted (or was forgotten with its result)."""
        return self._state()[0]

    def progress(self) -> dict[str, Any]:
        """``{percent, step, total_steps, message, node, eta_seconds}`` as last reported."""
        status, (state, info) = self._state()
        progress = empty_progress()
        if state == PROGRESS and isinstance(info, dict):
            progress.update({k: info.get(k, v) for k, v in progress.items()})
        elif status == JobStatus.COMPLETED:
            progress.update(percent=100.0, eta_seconds=0.0)
        return progress

    def wait(self, timeout: float | None = None, on_progress: ProgressCallback | None = None) -> Any:
        """Block until the job ends; return its result.

        Calls ``on_progress(progress)`` for every change seen (never after the final state).
        Raises :class:`JobFailed` when the job failed, timed out or was cancelled,
        :class:`WaitTimeout` after ``timeout`` s, :class:`JobNotFound` at once for an unknown id.

        On a result backend with pub/sub (Redis) every state the worker stores arrives as a
        message the moment it is written: no polling. The stored state is read again every
        :data:`REREAD_INTERVAL` s all the same, so a message lost with a dropped connection
        delays the answer, never loses it; a subscription whose link froze (no answer to its
        health-check PINGs, or a re-read that failed on a dead connection) is replaced within
        about ``max(5, 2 × JOBQUEUE_REDIS_HEALTH_INTERVAL)`` + 4 s
        (:mod:`jobqueue.transport.result_watch`), so progress flows again. Other backends are polled every :data:`POLL_INTERVAL` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.submitted:
            # Known jobs skip this read: the subscription below reads the state anyway.
            status, (state, info) = self._state()
            if status in FINAL_JOB_STATES:
                return self._final(status, state, info)
            if status == JobStatus.UNKNOWN:
                raise JobNotFound(f"no job {self.id} (never submitted, or forgotten with its result)")
        if getattr(self._result.backend, "is_async", False):
            return self._wait_pushed(deadline, timeout, on_progress)
        return self._wait_polled(deadline, timeout, on_progress)

    def _wait_pushed(self, deadline: float | None, timeout: float | None,
                     on_progress: ProgressCallback | None) -> Any:
        """``wait()`` on the result backend's pub/sub (Celery's result consumer)."""
        res = self._result
        seen = _StateWatch(self.id, on_progress)
        lost = tuple(getattr(res.backend, "connection_errors", ())) or (ConnectionError,)
        outage_since: float | None = None
        try:
            while seen.final is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"job {self.id} still {self.status().value} after {timeout} s")
                slice_ = REREAD_INTERVAL if remaining is None else min(REREAD_INTERVAL, remaining)
                try:
                    check_subscription(res.backend)  # a frozen link: subscribe again (PING, 2 missed)
                    # Subscribes, reads the stored state once (a job that ended before the
                    # subscription is seen there), then takes every published state.
                    res.get(timeout=slice_, propagate=False, interval=POLL_INTERVAL,
                            on_message=seen.on_message, disable_sync_subtasks=False)
                except CeleryTimeoutError:
                    outage_since = None
                    continue
                except lost:
                    # The backend is restarting under us: Celery's consumer reconnects and
                    # subscribes again; keep waiting, unless it stays away too long.
                    outage_since = outage_since if outage_since is not None else time.monotonic()
                    if time.monotonic() - outage_since > OUTAGE_GRACE:
                        raise
                    log.warning("job %s: result backend out of reach; waiting on", self.id)
                    _resubscribe_if_frozen(res.backend, lost)
                    time.sleep(RECONNECT_PAUSE if remaining is None else max(0.0, min(RECONNECT_PAUSE, remaining)))
                    continue
                if seen.final is None:  # ready without a message: a cached final state
                    seen.on_message({"task_id": self.id, "status": res.state, "result": res.info})
        finally:
            try:
                res.backend.remove_pending_result(res)  # unsubscribe (also after a timeout)
            except lost:  # the connection is gone, and the subscription with it
                pass
        state, info = seen.final
        return self._final(job_status_from_celery(state, _error_type(info)), state, info)

    def _wait_polled(self, deadline: float | None, timeout: float | None,
                     on_progress: ProgressCallback | None) -> Any:
        """``wait()`` on a result backend without pub/sub: read the state every poll."""
        last: dict[str, Any] | None = None
        while True:
            status, (state, info) = self._state()
            if state == PROGRESS and isinstance(info, dict) and on_progress is not None and info != last:
                last = dict(info)
                on_progress(dict(info))
            if status in FINAL_JOB_STATES:
                return self._final(status, state, info)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {self.id} still {status.value} after {timeout} s")
            time.sleep(POLL_INTERVAL)

    def _final(self, status: JobStatus, state: str, info: Any) -> Any:
        if status == JobStatus.COMPLETED:
            return info
        if state == celery_states.REVOKED:
            # A REVOKED result is an exception (Celery cannot read back a dict there).
            reason = info.get("reason") if isinstance(info, dict) else (str(info) if info else None)
            raise JobFailed(self.id, JobStatus.CANCELLED.value, {"type": "JobCancelled", "message": reason or "cancelled"})
        raise JobFailed(self.id, status.value, error_info(info))

    def result(self) -> Any:
        """The result of a completed job; :class:`JobFailed` if it ended badly;
        :class:`JobNotFinished` if it is still going."""
        status, (state, info) = self._state()
        if status == JobStatus.UNKNOWN:
            raise JobNotFound(f"no job {self.id} (never submitted, or forgotten with its result)")
        if status not in FINAL_JOB_STATES:
            raise JobNotFinished(f"job {self.id} is {status.value}")
        return self._final(status, state, info)

    def waiting_for(self, timeout: float = 1.0) -> str | None:
        """Why this queued (or retrying) job is not running (e.g. ``"no online worker has
        model c.safetensors"``), asking the online workers; None when it is not waiting or
        some worker can run it."""
        if self.status() not in (JobStatus.QUEUED, JobStatus.RETRYING):
            return None
        return job_waiting_for(self.app, self.id, timeout)

    def expected_load(self, timeout: float = 1.0) -> float:
        """Seconds of checkpoint loading this queued job should expect: 0 when an online worker
        that can run it has its checkpoint loaded (it takes the job first), else the smallest
        load those workers measured (docs/connectors.md, "Warm routing")."""
        return job_expected_load(self.app, self.id, timeout)

    def cancel(self) -> bool:
        """Cancel the job: a queued one never runs, a running one is stopped on its service;
        when it is a workflow step, the steps after it are cancelled too.

        Returns False when the job had already ended, or is unknown.
        """
        current = self.status()
        if current in FINAL_JOB_STATES or current == JobStatus.UNKNOWN:
            return False
        # Mark it first, so a worker that starts it later (and never saw the revoke) skips it.
        now = time.time()
        self.app.backend.store_result(self.id, JobCancelled("cancelled by client"), celery_states.REVOKED)
        client = result_client(self.app)
        if client is not None:
            facts.write(client, self.id, {"finished_at": now, "cancelled_at": now},
                        expires=int(self.app.conf.result_expires or 86400), only_new=("finished_at", "cancelled_at"))
        queued.forget(self.app, CONNECTORS, [self.id])
        self.app.control.revoke(self.id)
        self.app.control.broadcast(CONTROL_CANCEL_JOB, arguments={"job_id": self.id})
        self._announce_cancel(now)
        # A workflow step takes the steps after it along.
        cancel_later_steps(self.id, self.app)
        return True

    def _announce_cancel(self, now: float) -> None:
        """Tell every monitor at once (a queued job sends no other event until a worker
        reaches its message). Best effort: the result backend already holds the truth."""
        try:
            with self.app.events.default_dispatcher() as dispatcher:
                dispatcher.send(TASK_REVOKED, uuid=self.id, terminated=False, signum=None,
                                expired=False, timestamp=now, cancelled_by="client")
        except Exception:
            log.warning("could not announce the cancel of job %s", self.id, exc_info=True)


def get_job(job_id: str, *, app: Any = None) -> JobHandle:
    """A handle for any job id."""
    return JobHandle(job_id, app)


def _resubscribe_if_frozen(backend: Any, lost: tuple[type[BaseException], ...]) -> None:
    """After a read failed on a dead connection: replace the result subscription too if its
    health check went unanswered (the backend may be down: then Celery's consumer does it)."""
    try:
        check_subscription(backend, suspect=True)
    except lost:
        pass


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise SubmitError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _check_queue(queue: str | None) -> str | None:
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise SubmitError(f"queue must be a non-empty string, got {queue!r}")
    return queue


def prepare_job(
    service: str,
    payload: dict[str, Any],
    *,
    is_redis: bool,
    priority: int | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    workflow_id: str | None = None,
    step: int | None = None,
    job_id: str | None = None,
    extra: dict[str, Any] | None = None,
    continuation: bool = False,
    requires: dict[str, Any] | None = None,
    secret_keys: str = DEFAULT_PATTERN,
    tenant: str | None = None,
    fair_share: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate one job and build its message: ``(task kwargs, send options)``.

    The send options (``task_id``, ``queue``, broker ``priority``, ``kwargsrepr``) go to
    ``send_task`` or a canvas signature. ``continuation`` marks a workflow step after the
    first (it takes the upper broker level of its priority). Raises like :func:`submit_job`.
    A job with requirements (``requires`` plus the models its payload names) goes to its
    capability queue unless ``queue`` pins it (:func:`jobqueue.shared.requirements.route_queue`).
    ``kwargsrepr`` (what events and logs show) has values under ``secret_keys`` masked; the
    task's kwargs keep them. ``tenant``: the job's owner (its queue's too with ``fair_share``).
    """
    tenant = check_tenant(tenant)
    connector = connector_class(service)
    payload = connector.validate(payload)
    req = resolve(requires, connector.required_models(payload))
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidPayloadError(f"{service}: payload is not JSON-serialisable: {exc}") from None
    priority = check_priority(priority)
    timeout = _check_timeout(timeout)
    target = _check_queue(queue) or fairshare.route_for_tenant(route_queue(service, req), tenant, fair_share)
    job_id = job_id or str(uuid.uuid4())
    meta: dict[str, Any] = {
        "service": service,
        "priority": priority,
        "queue": target,
        "workflow_id": workflow_id,
        "step": step,
        "timeout": timeout,
        "submitted_at": time.time(),
        **({"requires": req.as_dict()} if not req.is_empty else {}),
        **({"tenant": tenant} if tenant is not None else {}),
        **(extra or {}),
    }
    send_options = {
        "task_id": job_id,
        "queue": target,
        "priority": broker_priority(priority, is_redis=is_redis, continuation=continuation),
        "kwargsrepr": facts.to_json(mask({**meta, "payload_summary": summarize_payload(service, payload, secret_keys)},
                                         secret_keys)),
    }
    return {"service": service, "payload": payload, "options": dict(meta)}, send_options


def _master_not_found(exc: BaseException | None) -> MasterNotFoundError | None:
    """The ``MasterNotFoundError`` behind ``exc`` (Celery's result consumer wraps it in a
    ``RuntimeError`` once its reconnects ran out), if any."""
    while exc is not None and not isinstance(exc, MasterNotFoundError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _admit(app: Any, send: dict[str, Any], service: str, tenant: str | None) -> bool:
    """The job's place in its service's and tenant's counts when they are capped (:mod:`~.queued`:
    ``QueueFull``, ``QuotaExceeded``); True when it took one there."""
    capped = queued.is_capped(app, service, tenant)
    if capped:
        queued.admit(app, {service: [send["task_id"]]}, tenant=tenant)
    return capped


def submit_job(
    service: str,
    payload: dict[str, Any],
    *,
    priority: int | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    workflow_id: str | None = None,
    step: int | None = None,
    app: Any = None,
    job_id: str | None = None,
    extra: dict[str, Any] | None = None,
    webhook_url: str | None = None,
    requires: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> JobHandle:
    """Validate and enqueue one job; return its handle.

    ``requires`` (``{"models": [...], "vram_gb": 20, "tags": ["customer:acme"]}``) plus the
    models the payload names itself make the job run only on a worker that has them all
    (:mod:`jobqueue.shared.requirements`); a malformed one raises
    :class:`~jobqueue.errors.InvalidRequirementError`.

    ``queue`` pins the job (``gpu0``, ``machine.<id>``, ``gpu0.<machine>``); by default it
    goes to the service's queue. ``priority`` is 0 (lowest) .. 9 (most urgent), default 5.
    Raises :class:`~jobqueue.errors.UnknownServiceError`, :class:`~jobqueue.errors.InvalidPayloadError`,
    :class:`~jobqueue.errors.QueueFull` over the service's cap (``JOBQUEUE_MAX_QUEUED``) or
    :class:`~jobqueue.errors.QuotaExceeded` over the tenant's (``JOBQUEUE_TENANT_QUOTAS``): nothing enqueued.
    ``webhook_url`` (http or https only, else :class:`~jobqueue.errors.SubmitError`; an IP
    literal outside the public addresses and ``JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS`` raises
    :class:`~jobqueue.errors.WebhookTargetRefused`) gets a signed POST when the job ends (see
    :mod:`jobqueue.worker.webhooks`). ``tenant`` names the customer the job belongs to
    (letters, digits, ``.``, ``_``, ``-``; at most 64 characters; else :class:`SubmitError`).
    """
    app = app or default_app()
    if webhook_url is not None:
        url = check_webhook_url(webhook_url, app.settings.webhook_allowed_networks)
        extra = {**(extra or {}), "webhook_url": url}
    kwargs, send_options = prepare_job(
        service, payload, is_redis=app.settings.is_redis, priority=priority, queue=queue, timeout=timeout,
        workflow_id=workflow_id, step=step, job_id=job_id, extra=extra, requires=requires, tenant=tenant,
        secret_keys=app.settings.secret_keys_pattern, fair_share=app.settings.fair_share,
    )
    check_input_owners(app, service, kwargs["payload"], tenant)
    try:  # the submit record first (in the message's round trip when they share the Redis server)
        sent = send_job(app, send_options, service, kwargs["options"], _admit(app, send_options, service, tenant),
                        lambda: app.send_task(RUN_JOB_TASK, kwargs=kwargs, **send_options))
    except (QueueFull, QuotaExceeded):  # no place taken
        raise
    except Exception as exc:  # never sent: its place in the queue is free again
        missing = _master_not_found(exc)
        if missing is not None:  # nothing sent: say which sentinels and master
            raise unreachable(app.settings.result_backend, app.settings, missing) from exc
        queued.forget(app, [service], [send_options["task_id"]])
        raise_clearly(exc)  # a queue declared with another type than it has: say how to migrate
        raise
    handle = JobHandle(send_options["task_id"], app)
    handle.submitted = True
    handle._sent = sent
    return handle
