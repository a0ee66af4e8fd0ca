"""The worker's runtime: its connectors, their lifecycle, and the jobs it is running right now.

One :class:`WorkerRuntime` lives in each worker process (the bootstep creates it and hangs it
on ``app.runtime``). Tasks ask it for their connector and register the job they run, so a
``cancel_job`` control command can reach the running job, and so connector status follows
jobs.

Each connector goes through ``starting -> waiting_for_service -> idle <-> active``, ``error``
(with the reason) and ``offline``:

* ``starting`` while the connector opens its resources;
* the first health check that fails gives ``waiting_for_service`` (the service is not up yet),
  one that succeeds gives ``idle``; after the service was healthy once, a failed check gives
  ``error`` with the service's reason;
* ``active`` while a job runs, ``idle`` when it ends; a job that fails because the service went
  away (:class:`~jobqueue.errors.ServiceUnavailable`, :class:`~jobqueue.errors.JobStalled`)
  turns the connector to ``error`` with that message at once, without waiting for the next
  health check;
* ``offline`` when the worker stops (:meth:`WorkerRuntime.mark_offline`); nothing changes a
  status after that.

Every change reaches the status reporter (events) and the consumer gate (which stops consuming
the service's queue while the connector is unhealthy).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from jobqueue.config import Settings
from jobqueue.connectors import Connector, Job, connector_class
from jobqueue.errors import JobStalled, ServiceUnavailable, UnknownServiceError
from jobqueue.shared.requirements import DETAILS_KEY
from jobqueue.shared.warm import checkpoint_of
from jobqueue.states import ConnectorStatus
from jobqueue.worker import capabilities
from jobqueue.worker.identity import WorkerIdentity
from jobqueue.worker.timers import TimerThread
from jobqueue.worker.warm import WarmState

log = logging.getLogger(__name__)

ConnectorFactory = Callable[[str, Settings, int], Connector]

#: Errors that say the service itself is gone: the connector turns to ``error`` at once.
SERVICE_ERRORS: tuple[type[BaseException], ...] = (ServiceUnavailable, JobStalled)

#: The timer thread's tick while calls keep coming (:mod:`jobqueue.worker.timers`): most of a
#: progress window (50 ms, ``jobqueue.worker.task.PROGRESS_WINDOW``), so the window a job's
#: first report opens within 10 ms of its start never wakes the thread (it is cancelled when
#: a fast job ends, and runs on time when the job runs on).
TIMER_TICK = 0.04
#: Seconds the timer thread keeps ticking after the last call was scheduled (then it sleeps).
TIMER_LINGER = 2.0

#: Longest a task thread waits for the consumer to stop taking the service's jobs after the
#: service failed under it (so its ack cannot let the same worker pick up the retry).
STEP_ASIDE_WAIT = 2.0


def default_connector_factory(service: str, settings: Settings, gpu: int) -> Connector:
    """Instantiate the registered connector for ``service``."""
    return connector_class(service)(settings, gpu=gpu)


class WorkerRuntime:
    """Connectors and running jobs of one worker process."""

    def __init__(
        self,
        settings: Settings,
        identity: WorkerIdentity,
        *,
        factory: ConnectorFactory = default_connector_factory,
        reporter: Any = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.connectors: dict[str, Connector] = {
            service: factory(service, settings, identity.gpu) for service in identity.connectors
        }
        self._jobs: dict[str, tuple[Job, Connector]] = {}
        #: Jobs given up because the lease was lost (newest last, bounded).
        self._given_up: collections.deque[str] = collections.deque(maxlen=1000)
        #: Jobs interrupted to be handed back to their queue (the worker is stopping).
        self._handing_back: set[str] = set()
        self._lock = threading.RLock()
        self._ever_healthy: set[str] = set()
        #: (healthy, details) of each connector when its change last asked the gates to sync.
        self._synced: dict[str, tuple[bool, dict[str, Any]]] = {}
        self._closing = False
        #: The :class:`~jobqueue.worker.status.StatusReporter` (None: statuses are not sent).
        self.reporter = reporter
        #: The :class:`~jobqueue.worker.gate.ConsumerGate`, set by the consumer bootstep.
        self.gate: Any = None
        #: The :class:`~jobqueue.worker.capabilities.CapabilityGate`, set by the consumer bootstep.
        self.capability_gate: Any = None
        #: The Celery consumer whose event dispatcher jobs' events leave through (see
        #: :meth:`send_events_through`); None outside a worker's consumer.
        self._events_consumer: Any = None
        #: One thread for the jobs' progress windows (a timer thread per held report is slow).
        self.timers = TimerThread(tick=TIMER_TICK, linger=TIMER_LINGER)
        #: The checkpoints each service has loaded and when cold jobs are taken (warm routing).
        self.warm = WarmState(settings.warm_grace, settings.warm_max_wait)
        #: The :class:`~jobqueue.worker.warm_peers.WarmPeers` (Redis result backend only).
        self.warm_peers: Any = None
        for connector in self.connectors.values():
            connector.add_listener(self._on_status)
            self._report(connector)

    # -- status plumbing -------------------------------------------------------------------
    def _report(self, connector: Connector) -> None:
        if self.reporter is not None:
            # Read the connector's *current* status, not the listener's argument: two threads
            # may change it at once and their listeners may run in either order.
            self.reporter.record(connector.service, connector.status, connector.message, connector.details)

    def _on_status(self, connector: Connector, status: ConnectorStatus, message: str) -> None:
        self._report(connector)
        # What the consumer must take follows health and details only: a job starting or
        # ending (active <-> idle, same details) needs no sync, which saves two per job.
        seen = (connector.status.is_healthy, connector.details)  # (a copy)
        with self._lock:
            unchanged = self._synced.get(connector.service) == seen
            self._synced[connector.service] = seen
        if unchanged:
            return
        if self.gate is not None:
            self.gate.request_sync()
        if self.capability_gate is not None:
            self.capability_gate.request_sync()

    def send_events_through(self, consumer: Any) -> None:
        """Send jobs' events (progress) through ``consumer``'s event dispatcher from now on, or
        through none (``consumer`` None: the consumer is restarting or stopping). Called by
        the worker's status bootstep; the dispatcher itself is looked up on every send, as the
        consumer replaces it when it reconnects."""
        self._events_consumer = consumer

    def event_dispatcher(self) -> Any:
        """The worker consumer's current event dispatcher, or None outside a worker's consumer."""
        consumer = self._events_consumer
        return getattr(consumer, "event_dispatcher", None) if consumer is not None else None

    def statuses(self) -> dict[str, ConnectorStatus]:
        """Every connector's current status (lock-free: the gate calls it from the event loop)."""
        return {service: c.status for service, c in self.connectors.items()}

    @property
    def closing(self) -> bool:
        """True once the worker is stopping: statuses no longer change."""
        return self._closing

    def keep_orphans_in(self, client: Any) -> None:
        """Give every connector an orphan book in Redis (``client``), one key per worker
        identity and service, so prompts abandoned before a restart are still cleaned up."""
        from jobqueue.connectors.orphans import OrphanBook
        from jobqueue.shared.records import orphan_book_key

        for service, connector in self.connectors.items():
            connector.orphans = OrphanBook(client, orphan_book_key(self.identity.node_name, service))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start every connector (open sockets...); they stay ``starting`` until checked."""
        for connector in self.connectors.values():
            try:
                connector.start()
            except Exception as exc:  # a broken service must not stop the worker
                log.exception("connector %s failed to start", connector.service)
                connector.set_status(ConnectorStatus.ERROR, f"start failed: {exc}")

    def mark_offline(self, message: str = "worker stopping") -> None:
        """Report every connector ``offline``; from now on nothing changes a status."""
        with self._lock:
            self._closing = True
            for connector in self.connectors.values():
                connector.set_status(ConnectorStatus.OFFLINE, message)

    def stop(self) -> None:
        """Report offline, then stop every connector (and the timers)."""
        self.mark_offline()
        self.timers.stop()
        for connector in self.connectors.values():
            try:
                connector.stop()
            except Exception:
                log.exception("connector %s failed to stop", connector.service)

    # -- jobs ------------------------------------------------------------------------------
    def connector(self, service: str) -> Connector:
        """The connector for ``service`` or :class:`UnknownServiceError` if this worker lacks it."""
        try:
            return self.connectors[service]
        except KeyError:
            raise UnknownServiceError(
                f"worker {self.identity.node_name} has no {service!r} connector "
                f"(it has: {', '.join(sorted(self.connectors)) or 'none'})"
            ) from None

    def _busy_with(self, connector: Connector) -> list[str]:
        return [job_id for job_id, (_, c) in self._jobs.items() if c is connector]

    def job_started(self, job: Job, connector: Connector) -> None:
        """Register a running job; a healthy connector becomes active.

        An unhealthy connector keeps its status: a job that reached it anyway (pinned to this
        worker, or taken just before the service failed) must not make it look healthy and
        resume consumption.
        """
        self.warm.started(job.id, connector.service, checkpoint_of(job.options.get("requires")))
        with self._lock:
            self._jobs[job.id] = (job, connector)
            if job.id in self._given_up:  # handed to this worker again: a new, live attempt
                self._given_up.remove(job.id)
            self._handing_back.discard(job.id)
            if not self._closing and connector.status.is_healthy:
                connector.set_status(ConnectorStatus.ACTIVE, f"running job {job.id}", self._warm_details(connector))
        self._warm_sync(connector, 0.0)

    def job_finished(self, job: Job, connector: Connector, error: BaseException | None = None) -> None:
        """Forget a job; its connector goes back to idle, or to error when the service failed.

        After a service failure, wait (briefly) until the consumer no longer takes the
        service's queue, so the retry this job just published goes to a healthy worker.
        """
        service_failed = isinstance(error, SERVICE_ERRORS)
        self.warm.finished(job.id, ok=error is None)
        with self._lock:
            self._jobs.pop(job.id, None)
            busy = self._busy_with(connector)
            if self._closing:
                return
            if service_failed:
                connector.set_status(ConnectorStatus.ERROR, str(error))
            elif connector.status == ConnectorStatus.ACTIVE:
                if busy:
                    connector.set_status(ConnectorStatus.ACTIVE, f"running job {busy[0]}", self._warm_details(connector))
                else:
                    connector.set_status(ConnectorStatus.IDLE, "", self._warm_details(connector))
        self._warm_sync(connector, self.warm.grace)
        if service_failed and self.gate is not None:
            if not self.gate.request_sync().wait(STEP_ASIDE_WAIT):
                log.warning("consumer did not stop taking %s jobs within %s s", connector.service, STEP_ASIDE_WAIT)

    def _warm_details(self, connector: Connector) -> dict[str, Any]:
        """``connector``'s details with what it has loaded now (warm routing)."""
        details = connector.details
        caps = details.get(DETAILS_KEY)
        details[DETAILS_KEY] = {**(caps if isinstance(caps, dict) else {}), **self.warm.capabilities(connector.service)}
        return details

    def _warm_sync(self, connector: Connector, grace: float) -> None:
        """With warm routing on and models to route on: have the capability gate follow the
        job's start or end now (its next take follows the rule), and again when ``grace`` ends."""
        gate = self.capability_gate
        if gate is None or self.warm.grace <= 0 or not capabilities.has_models(connector.details):
            return
        if self.warm_peers is not None:  # peers learn at once that this worker is busy, or idle
            self.warm_peers.publish()
        gate.request_sync()
        if grace > 0:
            gate.sync_later(grace + 0.05)

    def running_jobs(self) -> list[str]:
        """Ids of the jobs running now."""
        with self._lock:
            return list(self._jobs)

    def cancel(self, job_id: str) -> bool:
        """Cancel a running job: flag it and tell its service. False if it is not running here."""
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return False
        job, connector = entry
        job.cancelled.set()
        try:
            connector.cancel(job)
        except Exception:
            log.exception("connector %s failed to cancel job %s", connector.service, job_id)
        return True

    def give_up(self, job_ids: list[str]) -> None:
        """Stop jobs whose lease was lost (the broker may already run them elsewhere): they are
        interrupted on their service like a cancel, but end reporting nothing (see
        :meth:`is_given_up` and :func:`jobqueue.worker.lease.forget_message`)."""
        for job_id in job_ids:
            with self._lock:
                self._given_up.append(job_id)
            log.warning("giving up job %s: its lease is lost", job_id)
            self.cancel(job_id)

    def hand_back(self, job_ids: list[str]) -> None:
        """Interrupt jobs on their service so that they go back to their queue (the worker is
        stopping and they outlived their grace, see :mod:`jobqueue.worker.shutdown`)."""
        for job_id in job_ids:
            with self._lock:
                self._handing_back.add(job_id)
            log.warning("handing job %s back to its queue: the worker is stopping", job_id)
            self.cancel(job_id)

    def is_handed_back(self, job_id: str) -> bool:
        """True when ``job_id`` was interrupted here to go back to its queue."""
        with self._lock:
            return job_id in self._handing_back

    def is_given_up(self, job_id: str) -> bool:
        """True when ``job_id`` was given up here after its lease was lost."""
        with self._lock:
            return job_id in self._given_up

    def snapshot(self) -> dict[str, Any]:
        """Identity plus every connector's status, as the control command returns it.

        With a reporter, the statuses are the ones last reported, with the ``seq`` of the
        event that carried them, so a monitor can merge this answer with the event stream.
        """
        with self._lock:
            running = list(self._jobs)
            if self.reporter is not None:
                reported = self.reporter.snapshot()
            else:
                reported = {
                    "seq": None,
                    "interval": None,
                    "connectors": {
                        s: {"status": c.status.value, "message": c.message, "details": c.details}
                        for s, c in self.connectors.items()
                    },
                }
        return {**self.identity.as_fields(), **reported, "running": running}

    # -- health ----------------------------------------------------------------------------
    def check_health(self) -> None:
        """Ask every connector's service once and record the answer (see the module doc)."""
        for connector in self.connectors.values():
            try:
                health = connector.check_health()
                status, message, details = health.status, health.message, dict(health.details)
            except Exception as exc:  # check_health must not raise; be safe anyway
                status, message, details = ConnectorStatus.ERROR, f"health check failed: {exc}", None
            if not ConnectorStatus(status).is_healthy:
                self.warm.forget(connector.service)
            details = capabilities.enrich(connector, ConnectorStatus(status), details, self.identity.tags,
                                          self.warm.capabilities(connector.service))
            self._apply_health(connector, ConnectorStatus(status), message, details)
        # Models may come and go without a status change: the capability gate syncs every time.
        # A consumer without an event loop gets the service gate's first sync here, once it can
        # take messages (see QueueGateStep); after that only a health change syncs it, so a
        # drained worker (its queues cancelled by a control command) stays drained.
        if self.capability_gate is not None:
            self.capability_gate.request_sync()
        if self.gate is not None and not self.gate.synced:
            self.gate.request_sync()

    def _apply_health(
        self, connector: Connector, status: ConnectorStatus, message: str, details: dict[str, Any] | None
    ) -> None:
        service = connector.service
        with self._lock:
            if self._closing:
                return
            if status.is_healthy:
                self._ever_healthy.add(service)
                busy = self._busy_with(connector)
                if busy:
                    status, message = ConnectorStatus.ACTIVE, f"running job {busy[0]}"
                else:
                    status = ConnectorStatus.IDLE
            elif service not in self._ever_healthy and status in (
                ConnectorStatus.ERROR,
                ConnectorStatus.OFFLINE,  # e.g. ComfyUI refusing connections: not up yet
                ConnectorStatus.WAITING_FOR_SERVICE,
                ConnectorStatus.STARTING,
            ):
                status = ConnectorStatus.WAITING_FOR_SERVICE
                message = message or "waiting for the service to come up"
            elif status in (ConnectorStatus.WAITING_FOR_SERVICE, ConnectorStatus.STARTING):
                # It was up before: a service that is not answering now is an error.
                status = ConnectorStatus.ERROR
                message = message or "service not ready"
            if not connector.set_status(status, message, details):
                self._report(connector)  # same status: only the service's facts may be new
