"""Worker bootsteps: what a jobqueue worker adds to Celery's worker.

* :class:`RuntimeStep` builds the :class:`~jobqueue.worker.runtime.WorkerRuntime`
  (identity + connectors), its :class:`~jobqueue.worker.status.StatusReporter` and its
  :class:`~jobqueue.worker.health.HealthLoop`, and starts and stops them with the worker. It
  lives as long as the worker process, so a broker reconnection never rebuilds the identity.
* :class:`StatusStep` (a consumer step: it restarts with the broker connection) sends the
  reporter's events and jobs' progress through the consumer's event dispatcher. On worker
  shutdown it reports every connector ``offline`` before the dispatcher closes.
* :class:`QueueGateStep` (a consumer step) gates the service queues
  (:class:`~jobqueue.worker.gate.ConsumerGate`) and the capability queues
  (:class:`~jobqueue.worker.capabilities.CapabilityGate`), only once the consumer can take
  messages.
* :class:`LeaseStep` keeps running jobs' Redis leases fresh (see :mod:`jobqueue.worker.lease`).
* :class:`OrphanStep` drops requests whose connection is gone (:mod:`jobqueue.worker.orphans`).
* :class:`~jobqueue.worker.poison.PoisonStep` moves undecodable messages aside and fails their
  jobs instead of letting them stop the worker (see :mod:`jobqueue.worker.poison`).

Which of them a worker runs, and in which order, is :data:`jobqueue.worker.concerns.CONCERNS`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.bootsteps import CLOSE, TERMINATE

from jobqueue.connectors.base import Connector
from jobqueue.transport.event_publish import lean_event_publish
from jobqueue.transport.event_windows import flush_in_windows
from jobqueue.transport.internals import buffer_event_group, unacked_index_key
from jobqueue.transport.redis_clients import redis_client
from jobqueue.transport.redis_health import redis_kwargs
from jobqueue.transport.redis_urls import is_redis_url
from jobqueue.worker.capabilities import CapabilityGate, desired_queues, preferred_order
from jobqueue.worker.gate import ConsumerGate
from jobqueue.worker.health import HealthLoop
from jobqueue.worker.identity import WorkerIdentity
from jobqueue.worker.lease import LeaseKeeper, held_delivery_tags
from jobqueue.worker.orphans import OrphanSweeper
from jobqueue.worker.runtime import WorkerRuntime
from jobqueue.worker.status import Sender, StatusReporter
from jobqueue.worker.warm_peers import WarmPeers

#: Event group of ``connector-status`` (Celery filters events by the part before the first "-").
CONNECTOR_GROUP = "connector"
#: The event group Celery buffers on a worker with an event loop.
TASK_GROUP = "task"
#: Connector status changes wait at most this long (s) to leave together (the progress
#: window's length: a badge is never later than a progress bar).
STATUS_WINDOW = 0.05
#: Longest the shutdown waits for the offline events to be sent.
OFFLINE_FLUSH_TIMEOUT = 3.0

log = logging.getLogger(__name__)


def _runtime_of(c: Any) -> WorkerRuntime | None:
    """The worker's runtime (None where no :class:`RuntimeStep` built one)."""
    runtime = getattr(c.app, "runtime", None)
    return runtime if isinstance(runtime, WorkerRuntime) else None


def _identity_of(worker: Any) -> WorkerIdentity:
    identity = getattr(worker, "jobqueue_identity", None)
    if identity is None:  # a worker not built by our Worker class (e.g. test fixtures)
        queues = list(worker.app.amqp.queues.consume_from or ())
        identity = WorkerIdentity.build(worker.app.settings, queues, worker.hostname)
        worker.jobqueue_identity = identity
    return identity


def _warm_peers(runtime: WorkerRuntime, client: Any) -> WarmPeers | None:
    """Warm routing's view of the other workers (:mod:`jobqueue.worker.warm_peers`): ticks
    twice per grace (at most every health interval), and a change re-syncs the capability gate.
    None when no connector's jobs can name a checkpoint."""
    settings = runtime.settings

    def resync() -> None:
        if runtime.capability_gate is not None:
            runtime.capability_gate.request_sync()

    # Only services whose jobs can name a checkpoint are warm-routed (not the simulation's).
    services = tuple(s for s, c in runtime.connectors.items()
                     if type(c).required_models.__func__ is not Connector.required_models.__func__)  # type: ignore[attr-defined]
    if not services:
        return None
    interval = max(0.25, min(settings.warm_grace / 2, settings.health_interval))
    return WarmPeers(client, runtime.identity.node_name, services, runtime.warm, interval=interval, on_change=resync)


class RuntimeStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Own the worker's connectors, status reporter and health loop for the worker's life."""

    label = "jobqueue runtime"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.runtime: WorkerRuntime | None = None
        self.reporter: StatusReporter | None = None
        self.health: HealthLoop | None = None

    def create(self, worker: Any) -> None:
        settings = worker.app.settings
        identity = _identity_of(worker)
        self.reporter = StatusReporter(identity, beat_interval=settings.status_beat, window=STATUS_WINDOW)
        self.runtime = WorkerRuntime(settings, identity, reporter=self.reporter)
        if is_redis_url(settings.result_backend):
            client = redis_client(settings.result_backend, settings, socket_timeout=5, socket_connect_timeout=5)
            self.runtime.keep_orphans_in(client)
            if settings.warm_grace > 0:
                self.runtime.warm_peers = _warm_peers(self.runtime, client)
        self.health = HealthLoop(self.runtime.check_health, interval=settings.health_interval)
        worker.app.runtime = self.runtime

    def start(self, worker: Any) -> None:
        assert self.runtime is not None and self.reporter is not None and self.health is not None
        self.reporter.start()
        self.runtime.start()
        # The first check runs before the consumer starts, so a service that is not up yet
        # never has its queue consumed (waiting_for_service until a check succeeds).
        self.runtime.check_health()
        self.health.start()
        if self.runtime.warm_peers is not None:
            self.runtime.warm_peers.start()

    def stop(self, worker: Any) -> None:
        if self.health is not None:
            self.health.stop()
        if self.runtime is not None and self.runtime.warm_peers is not None:
            self.runtime.warm_peers.stop()
        if self.runtime is not None:
            self.runtime.stop()
        if self.reporter is not None:
            self.reporter.flush(OFFLINE_FLUSH_TIMEOUT)
            self.reporter.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


def dispatcher_sender(consumer: Any) -> Sender:
    """A sender that publishes through ``consumer``'s current event dispatcher.

    The dispatcher is looked up on every send: the consumer replaces it when it reconnects.
    Celery's dispatcher serialises publishing with its own lock, so the reporter's thread
    may share it with the event loop (heartbeats) and the pool (task events).

    Where Celery buffers task events (a worker with an event loop: the ``task`` group is
    collected and the loop publishes it as one message soon after), connector events are
    buffered with them: a job's ``active`` leaves with its ``task-started`` and its ``idle``
    with its ``task-succeeded``, in the loop's flush, so the monitor gets each status
    together with the lifecycle event that caused it, and the job's own thread never waits
    for (or competes with) a publish of its connector's status.
    """

    def send(event_type: str, fields: dict[str, Any]) -> None:
        dispatcher = consumer.event_dispatcher
        if dispatcher is None:
            raise ConnectionError("the worker's event dispatcher is not connected")
        groups = dispatcher.groups
        if groups and CONNECTOR_GROUP not in groups:
            groups.add(CONNECTOR_GROUP)
        buffered = dispatcher.buffer_group
        if TASK_GROUP in buffered and CONNECTOR_GROUP not in buffered:
            buffer_event_group(dispatcher, CONNECTOR_GROUP)
        dispatcher.send(event_type, **fields)

    return send


class StatusStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Connect the runtime to the consumer's events: connector statuses and jobs' progress
    leave through its event dispatcher. On worker shutdown every connector is reported
    ``offline`` before the dispatcher closes."""

    label = "jobqueue status"
    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c: Any) -> None:
        flush_in_windows(c)  # a job's events leave together (jobqueue.transport.event_windows)
        lean_event_publish(c.event_dispatcher)  # and with less kombu machinery (jobqueue.transport.event_publish)
        runtime = _runtime_of(c)
        if runtime is None:
            return
        dispatcher = c.event_dispatcher
        if dispatcher is None or not dispatcher.enabled:
            log.warning("worker events are disabled: connector status events will not be sent")
        if runtime.reporter is not None:
            runtime.reporter.attach(dispatcher_sender(c))
        runtime.send_events_through(c)

    def stop(self, c: Any) -> None:
        if c.blueprint.state in (CLOSE, TERMINATE):
            self._offline(c)  # the worker is stopping, not just reconnecting
            return
        runtime = _runtime_of(c)
        if runtime is None:
            return
        runtime.send_events_through(None)
        if runtime.reporter is not None:
            runtime.reporter.detach()

    def shutdown(self, c: Any) -> None:
        self._offline(c)

    def terminate(self, c: Any) -> None:
        self._offline(c)

    def _offline(self, c: Any) -> None:
        """Report every connector offline and send it while the dispatcher still works."""
        runtime = _runtime_of(c)
        if runtime is None:
            return
        runtime.mark_offline()
        _unbind_gates(runtime)
        if runtime.reporter is not None:
            if not runtime.reporter.flush(OFFLINE_FLUSH_TIMEOUT):
                log.warning("could not send every offline status before shutdown")
            runtime.reporter.detach()
        dispatcher = c.event_dispatcher
        if dispatcher is not None:
            try:  # buffered events (the offline statuses among them) leave before the loop stops
                dispatcher.flush()
            except Exception:
                log.warning("could not flush the worker's events before shutdown", exc_info=True)


def _unbind_gates(runtime: WorkerRuntime) -> None:
    if runtime.gate is not None:
        runtime.gate.unbind()
    if runtime.capability_gate is not None:
        runtime.capability_gate.unbind()


class QueueGateStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Keep the consumer's service queues in line with health (:class:`ConsumerGate`) and its
    capability queues with capabilities (:class:`CapabilityGate`).

    Start-up order: the gates bind to the consumer when it starts, but add or cancel nothing
    until it can take messages (:func:`~jobqueue.worker.gate.can_take_messages`). Celery's
    event loop sets the consumer's handler, then registers the steps with the loop
    (:meth:`register_with_event_loop`: the first sync, before the loop consumes anything), and
    only then consumes: a message already waiting in a capability, pinned or service queue
    is never delivered to a consumer without callbacks (on RabbitMQ that killed the worker at
    start-up). Without an event loop the next health check syncs.
    """

    label = "jobqueue queue gates"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        runtime = _runtime_of(c)
        if runtime is None:
            return
        if runtime.gate is None:
            runtime.gate = ConsumerGate(runtime.statuses)
        if runtime.capability_gate is None:
            runtime.capability_gate = CapabilityGate(lambda: desired_queues(runtime), runtime.identity.connectors,
                                                     order=(lambda: preferred_order(runtime)) if runtime.settings.is_redis
                                                     else None)  # only a Redis consumer reads its queues in order
        runtime.gate.bind(c)
        runtime.capability_gate.bind(c)

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        """The consumer can take messages now and consumes nothing yet: unhealthy services'
        queues go before a single message is fetched, wanted capability queues come in."""
        runtime = _runtime_of(c)
        if runtime is None:
            return
        for gate in (runtime.gate, runtime.capability_gate):
            if gate is not None:
                gate.sync_now()
        if runtime.capability_gate is not None and runtime.warm.grace > 0:
            runtime.capability_gate.sync_later(runtime.warm.grace + 0.05)  # cold queues open after the grace

    def stop(self, c: Any) -> None:
        runtime = _runtime_of(c)
        if runtime is not None:
            _unbind_gates(runtime)

    def shutdown(self, c: Any) -> None:
        self.stop(c)


class LeaseStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Renew the Redis lease of held messages (no-op on RabbitMQ, which acks for real)."""

    label = "jobqueue lease"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.keeper: LeaseKeeper | None = None

    def include_if(self, worker: Any) -> bool:
        return bool(worker.app.settings.is_redis)

    def create(self, worker: Any) -> None:
        settings = worker.app.settings
        # Short socket timeouts: a renewal that hangs on a dead link must not delay fencing;
        # keepalive and PING notice a dead peer (jobqueue.transport.redis_health).
        timeout = min(5.0, max(1.0, settings.lease_interval))
        options = {**redis_kwargs(settings.redis_health_interval), "socket_timeout": timeout}
        client = redis_client(settings.broker_url, settings, socket_connect_timeout=timeout, **options)
        app = worker.app

        def tags() -> list[str]:
            # Only jobs still running (or waiting) keep their lease; see held_delivery_tags.
            runtime = app.runtime
            running = runtime.running_jobs() if runtime is not None else None
            return held_delivery_tags(running, grace=max(2.0, 2 * settings.lease_interval))

        def give_up() -> None:
            # The broker is out of reach: these jobs' messages go to other workers now.
            runtime = app.runtime
            if runtime is not None:
                runtime.give_up(runtime.running_jobs())

        # Give up a little before the visibility timeout, so the job never runs in two places
        # for longer than one renewal round.
        lost_after = max(settings.lease_interval, settings.visibility_timeout - settings.lease_interval)
        self.keeper = LeaseKeeper(client, interval=settings.lease_interval, tags=tags,
                                  index_key=unacked_index_key(app.conf.broker_transport_options),
                                  lost_after=lost_after, on_lost=give_up)

    def start(self, worker: Any) -> None:
        assert self.keeper is not None
        self.keeper.start()

    def stop(self, worker: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


class OrphanStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Drop requests whose broker connection is gone and whose job runs nowhere here."""

    label = "jobqueue orphans"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.sweeper: OrphanSweeper | None = None

    def create(self, worker: Any) -> None:
        settings = worker.app.settings
        app = worker.app

        def running() -> list[str]:
            runtime = app.runtime
            return runtime.running_jobs() if runtime is not None else []

        self.sweeper = OrphanSweeper(running, interval=settings.lease_interval,
                                     grace=max(2.0, 2 * settings.lease_interval))

    def start(self, worker: Any) -> None:
        assert self.sweeper is not None
        self.sweeper.start()

    def stop(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)
