"""The consumer gate: a worker consumes a service's queue only while that connector is healthy.

When a connector turns unhealthy (error, offline, waiting_for_service) its worker stops
consuming the service queue (:func:`~jobqueue.shared.routing.service_queue`), so the broker hands
the service's jobs to workers whose service is up; when it recovers, consuming resumes. Jobs
pinned to this worker's GPU/machine queues still arrive: those queues stay.

The change is made in-process on the Celery consumer (``cancel_task_queue`` /
``add_task_queue``, the same calls the ``cancel_consumer``/``add_consumer`` control commands
make), never by broadcast. Both calls also update ``app.amqp.queues``' selection, so a consumer
rebuilt after a broker reconnection starts with the right set. The kombu consumer is not
thread-safe, so other threads only *request* a sync: it runs on the consumer's event loop
(``hub.call_soon``), which re-reads the current statuses, so the last word always wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from jobqueue.shared.names import RUN_JOB_TASK
from jobqueue.shared.routing import service_queue
from jobqueue.states import ConnectorStatus
from jobqueue.transport.internals import wake_scheduled

log = logging.getLogger(__name__)

Statuses = Callable[[], Mapping[str, ConnectorStatus]]


def can_take_messages(consumer: Any) -> bool:
    """True once ``consumer``'s task consumer has somewhere to hand a message (kombu's
    ``Consumer.on_message`` or ``callbacks``; Celery's event loop sets ``on_message`` just
    before it starts consuming).

    Adding a queue calls ``basic_consume`` for every queue of the set at once: on RabbitMQ a
    waiting message is then pushed straight away, and read while another step waits for the
    broker (opening a channel); a consumer without callbacks raises ``NotImplementedError``
    there and the worker dies at start-up. So no gate touches a consumer before this is true.
    """
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return False
    return getattr(task_consumer, "on_message", None) is not None or bool(getattr(task_consumer, "callbacks", None))


def consumes(consumer: Any, queue: str) -> bool:
    """True when ``consumer``'s task consumer has ``queue`` in its set."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return False
    return any(q.name == queue for q in task_consumer.queues)


class ConsumerGate:
    """Keeps a consumer's service queues in line with its connectors' health."""

    def __init__(self, statuses: Statuses, *, queue_of: Callable[[str], str] = service_queue) -> None:
        self._statuses = statuses
        self._queue_of = queue_of
        self._consumer: Any = None
        self._lock = threading.Lock()
        #: Each service's health at the last sync (a recovery wakes its waiting retries).
        self._was_healthy: dict[str, bool] = {}

    def bind(self, consumer: Any) -> None:
        """Gate ``consumer`` from now on and sync at once if it can take messages already
        (call from the consumer's thread)."""
        with self._lock:
            self._consumer = consumer
        self.sync_now()

    def unbind(self) -> None:
        """Forget the consumer (it is restarting or stopping)."""
        with self._lock:
            self._consumer = None

    def _ready_consumer(self) -> Any:
        """The gated consumer once it can take messages (:func:`can_take_messages`), else None
        (call holding the lock): before that there is nothing to sync, and the worker's
        :class:`~jobqueue.worker.bootsteps.QueueGateStep` syncs when the event loop starts."""
        consumer = self._consumer
        if consumer is None or not can_take_messages(consumer):
            return None
        return consumer

    def sync_now(self) -> dict[str, bool]:
        """Cancel or add service queues so they match health; return queue -> consuming.

        Must run in the consumer's thread (or before its loop started).
        """
        with self._lock:
            consumer = self._ready_consumer()
            if consumer is None:
                return {}
            result: dict[str, bool] = {}
            for service, status in self._statuses().items():
                queue = self._queue_of(service)
                healthy = ConnectorStatus(status).is_healthy
                try:
                    if healthy and not consumes(consumer, queue):
                        log.info("%s is %s: consuming %s again", service, status, queue)
                        consumer.add_task_queue(queue)
                    elif not healthy and consumes(consumer, queue):
                        log.warning("%s is %s: no longer consuming %s", service, status, queue)
                        consumer.cancel_task_queue(queue)
                except Exception:  # a broken connection: the restarted consumer syncs again
                    log.exception("could not update consumption of %s", queue)
                result[queue] = consumes(consumer, queue)
                if healthy and self._was_healthy.get(service) is False:
                    self._wake_retries(consumer, service)
                self._was_healthy[service] = healthy
            return result

    @staticmethod
    def _wake_retries(consumer: Any, service: str) -> None:
        """``service`` is back: its jobs this worker holds for a retry's countdown (an attempt
        that did not reach it; the backoff grows to a minute) start now, not when the
        countdown ends -- a job pinned here starts within a health check of the recovery."""
        def of_service(request: Any) -> bool:
            kwargs = getattr(request, "kwargs", None)
            return getattr(request, "task_name", None) == RUN_JOB_TASK and isinstance(kwargs, dict) \
                and kwargs.get("service") == service

        try:
            woken = wake_scheduled(consumer, of_service)
        except Exception:  # best effort: the countdown still runs out
            log.exception("could not start the waiting retries of %s", service)
            return
        if woken:
            log.info("%s is back: starting %d job(s) waiting for a retry now", service, woken)

    def request_sync(self) -> threading.Event:
        """Ask for a sync from any thread; the returned event is set once it ran."""
        done = threading.Event()
        with self._lock:
            consumer = self._consumer
        hub = getattr(consumer, "hub", None) if consumer is not None else None
        if consumer is None:
            done.set()  # nothing bound: the next bind() syncs
            return done
        if hub is None:  # no event loop (e.g. solo pool without one): do it here
            try:
                self.sync_now()
            finally:
                done.set()
            return done

        def run() -> None:
            try:
                self.sync_now()
            finally:
                done.set()

        hub.call_soon(run)
        return done
