"""The worker's side of fair share (:mod:`jobqueue.shared.fairshare`): it consumes the tenant
queues of its own queues, and takes them in weighted turns.

:class:`FairShareStep` (a consumer step, after the queue gates) hands the Redis transport a
:class:`~jobqueue.shared.fairshare.FairOrder` (the order of each fetch) and keeps a
:class:`TenantQueues` bound to the consumer: every :data:`REFRESH_INTERVAL` seconds a thread
reads the noted tenant queues (one Redis read) and asks the consumer's event loop to add
``<tenant>/<q>`` for every ``<q>`` the consumer consumes, and to cancel a tenant queue whose
base it no longer consumes (a drain, an unhealthy service, a lost model; on Redis the fetch
order leaves such a queue out at once). A queue held off after a hand-back or a refusal over a
running quota (:meth:`~jobqueue.worker.capabilities.CapabilityGate.hold_off`) is not added back
before its hold ends. With ``JOBQUEUE_FAIR_SHARE`` off a worker still consumes the noted tenant
queues (jobs queued there before fair share was turned off are not stranded) but fetches in
kombu's own order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from jobqueue.shared.fairshare import FairOrder, known_queues, split_tenant_queue
from jobqueue.shared.records import result_client
from jobqueue.shared.tenants import quota_for
from jobqueue.transport.kombu_redis import set_fair_order
from jobqueue.worker.gate import can_take_messages
from jobqueue.worker.loop import IntervalLoop

log = logging.getLogger(__name__)

#: How often (s) a worker looks for new tenant queues: a new tenant's first job waits that long
#: at most before an idle worker listens to its queue.
REFRESH_INTERVAL = 1.0


class TenantQueues:
    """Keeps a consumer's tenant queues in line with its own queues (see the module doc)."""

    def __init__(self, read: Callable[[], list[str]], held: Callable[[], list[str]]) -> None:
        self._read = read
        self._held = held
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._known: list[str] = []

    def bind(self, consumer: Any) -> None:
        with self._lock:
            self._consumer = consumer

    def unbind(self) -> None:
        with self._lock:
            self._consumer = None

    def refresh(self) -> None:
        """Read the noted tenant queues (this thread), then sync on the consumer's loop."""
        known = self._read()
        with self._lock:
            self._known = known
            hub = getattr(self._consumer, "hub", None)
        if hub is not None:
            hub.call_soon(self.sync_now)
        else:
            self.sync_now()

    def sync_now(self) -> dict[str, bool]:
        """Add and cancel tenant queues to match (the consumer's thread); return the changes."""
        with self._lock:
            consumer, known = self._consumer, list(self._known)
        if consumer is None or not can_take_messages(consumer):
            return {}
        current = {q.name for q in consumer.task_consumer.queues}
        bases = {q for q in current if split_tenant_queue(q)[0] is None}
        held = set(self._held())
        want = {q for q in known if split_tenant_queue(q)[1] in bases and q not in held}
        changed: dict[str, bool] = {}
        try:
            for queue in sorted(want - current):
                consumer.add_task_queue(queue)
                changed[queue] = True
            for queue in sorted(current):
                tenant, base = split_tenant_queue(queue)
                if tenant is not None and base not in bases:
                    consumer.cancel_task_queue(queue)
                    changed[queue] = False
        except Exception:  # a broken connection: the restarted consumer syncs again
            log.exception("could not update the tenant queues")
        if changed:
            log.info("tenant queues changed: %s", changed)
        return changed


def _held_queues(app: Any) -> list[str]:
    gate = getattr(getattr(app, "runtime", None), "capability_gate", None)
    return list(gate.held()) if gate is not None else []


class FairShareStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consumer step: the fetch order on Redis, and the tenant queues' upkeep."""

    label = "jobqueue fair share"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        app = c.app
        settings = app.settings
        self.order = FairOrder(lambda tenant: quota_for(settings, tenant).weight)
        expires = int(app.conf.result_expires or 86400)

        def read() -> list[str]:
            client = result_client(app)
            return known_queues(client, expires) if client is not None else []

        self.queues = TenantQueues(read, lambda: _held_queues(app))
        self.loop: IntervalLoop | None = None

    def start(self, c: Any) -> None:
        if c.connection is not None and c.app.settings.is_redis and c.app.settings.fair_share:
            set_fair_order(c.connection, self.order)
        self.queues.bind(c)
        if self.loop is None:
            self.loop = IntervalLoop(self.queues.refresh, interval=REFRESH_INTERVAL, name="jobqueue-tenant-queues").start()

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        """The consumer can take messages now: the tenant queues come in before it consumes."""
        try:
            self.queues.refresh()
        except Exception:  # Redis out of reach: the loop tries again
            log.exception("could not read the tenant queues")

    def stop(self, c: Any) -> None:
        self.queues.unbind()

    def shutdown(self, c: Any) -> None:
        self.queues.unbind()
        if self.loop is not None:
            self.loop.stop()
            self.loop = None
