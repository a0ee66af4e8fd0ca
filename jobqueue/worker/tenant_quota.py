"""A tenant's quota of running jobs, enforced where jobs start (:mod:`jobqueue.shared.running`).

* :func:`with_running_quota` wraps the job task's strategy (the function the consumer calls for
  each message, before the task is accepted): a job of a tenant with a ``running`` quota
  claims a place first. At the quota, the message goes back to its queue with
  ``requeue=True`` (no retry used, no event, no state: the job is simply still queued) and the
  worker leaves that queue alone for :data:`HOLD_OFF` seconds
  (:meth:`~jobqueue.worker.capabilities.CapabilityGate.hold_off`): under fair share it is the
  tenant's own queue, so the worker goes on with the other tenants' jobs, and each worker
  refuses a tenant's job at most once per hold, never in a busy loop. A job this worker would
  hand back anyway (requirements) claims nothing.
* The place is released when the attempt ends (``task_postrun``) or when a revoked job is
  dropped (``task_revoked``); :class:`RunningQuotaStep` refreshes the held places every
  ``JOBQUEUE_LEASE_INTERVAL`` seconds, so a killed worker's places go stale after
  :func:`stale_after` seconds and its tenant is not blocked for longer.

A job waiting in a worker's hands for its retry's countdown holds its place.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from jobqueue.shared import running
from jobqueue.shared.queued import job_tenant
from jobqueue.shared.records import result_client
from jobqueue.shared.tenants import quota_for
from jobqueue.worker.handback import lacking
from jobqueue.worker.loop import IntervalLoop

log = logging.getLogger(__name__)

#: Seconds a worker leaves a queue alone after it refused one of its jobs over a running quota.
HOLD_OFF = 1.0
#: The attribute of the app where the worker's :class:`RunningClaims` live.
CLAIMS_ATTR = "jobqueue_running_claims"


def stale_after(settings: Any) -> float:
    """Seconds after which a place nobody refreshed is free again: a few lease rounds, and not
    before the visibility timeout (the dead worker's job is redelivered then)."""
    return float(max(3 * settings.lease_interval, settings.visibility_timeout))


class RunningClaims:
    """The places this worker holds (job id -> tenant), claimed, refreshed and released."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()

    def claim(self, tenant: str, job_id: str, quota: int) -> bool:
        """Claim a place for ``job_id``; False when ``tenant`` is at its quota (or on error:
        better a job waits than a quota is overrun)."""
        client = result_client(self.app)
        if client is None:
            return True
        try:
            granted, count = running.claim(client, tenant, job_id, quota, stale_after=stale_after(self.app.settings),
                                           expires=int(self.app.conf.result_expires or 86400))
        except Exception:
            log.warning("job %s: could not claim a running place of tenant %s", job_id, tenant, exc_info=True)
            return False
        if granted:
            with self._lock:
                self._held[job_id] = tenant
        else:
            log.info("job %s: tenant %s runs %d job(s), its quota: back to its queue", job_id, tenant, count)
        return granted

    def release(self, job_id: str) -> None:
        """Give back ``job_id``'s place, if this worker holds one."""
        with self._lock:
            tenant = self._held.pop(job_id, None)
        client = result_client(self.app)
        if tenant is None or client is None:
            return
        try:
            running.release(client, tenant, job_id)
        except Exception:  # it goes stale instead
            log.warning("job %s: could not release its running place", job_id, exc_info=True)

    def refresh(self) -> None:
        """Mark every held place as still held."""
        with self._lock:
            held = dict(self._held)
        client = result_client(self.app)
        if client is not None:
            running.refresh(client, held)


def claims_of(app: Any) -> RunningClaims:
    """The worker's :class:`RunningClaims` (made on first use)."""
    claims = getattr(app, CLAIMS_ATTR, None)
    if claims is None:
        claims = RunningClaims(app)
        setattr(app, CLAIMS_ATTR, claims)
    return claims


def _message_job(message: Any) -> tuple[str | None, str | None]:
    """``(job id, tenant)`` of a ``run_job`` message."""
    try:
        payload = message.payload
        kwargs = payload[1] if isinstance(payload, (list, tuple)) and len(payload) > 1 else {}
    except Exception:  # undecodable: Celery's own strategy reports it
        return None, None
    job_id = (message.headers or {}).get("id")
    return (job_id if isinstance(job_id, str) else None), job_tenant(kwargs)


def with_running_quota(strategy: Any) -> Any:
    """``strategy`` (a Celery task strategy) behind the running-quota check (see the module doc)."""

    def quota_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
        handler = strategy(task, app, consumer, **kwargs)

        def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
            job_id, tenant = _message_job(message)
            quota = quota_for(app.settings, tenant).running if tenant is not None else None
            if quota is None or job_id is None or tenant is None or lacking(app, message):
                return handler(message, body, ack, reject, callbacks, **kw)
            if claims_of(app).claim(tenant, job_id, quota):
                return handler(message, body, ack, reject, callbacks, **kw)
            queue = (message.delivery_info or {}).get("routing_key")
            message.reject_log_error(log, consumer.connection_errors, requeue=True)
            gate = getattr(getattr(app, "runtime", None), "capability_gate", None)
            if gate is not None and queue:
                gate.hold_off(queue, HOLD_OFF)
            return None

        return task_message_handler

    return quota_strategy


def on_task_postrun(sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
    """An attempt ended: its place is free."""
    app = getattr(sender, "app", None)
    if app is not None and task_id and getattr(app, CLAIMS_ATTR, None) is not None:
        claims_of(app).release(task_id)


def on_task_revoked(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    """A revoked job was dropped before it ran: its place is free."""
    app = getattr(sender, "app", None)
    job_id = getattr(request, "id", None)
    if app is not None and job_id and getattr(app, CLAIMS_ATTR, None) is not None:
        claims_of(app).release(job_id)


class RunningQuotaStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Worker step: refresh the held places every lease interval."""

    label = "jobqueue running quota"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.loop: IntervalLoop | None = None

    def include_if(self, worker: Any) -> bool:
        return bool(worker.app.settings.tenant_quotas)

    def start(self, worker: Any) -> None:
        claims = claims_of(worker.app)
        self.loop = IntervalLoop(claims.refresh, interval=worker.app.settings.lease_interval,
                                 name="jobqueue-running-quota").start()

    def stop(self, worker: Any) -> None:
        if self.loop is not None:
            self.loop.stop()
            self.loop = None

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)
