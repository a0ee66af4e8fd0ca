"""A worker's capabilities and the capability queues it consumes because of them.

* :func:`enrich` adds what a connector's service offers (models, VRAM: the connector's
  :meth:`~jobqueue.connectors.base.Connector.capabilities`) and the worker's declared tags to
  the details of each health check, under ``capabilities``. Status events and the
  ``connector_status`` command carry them from there, so the monitor sees the same facts the
  worker routes on. A check that could not read them keeps the last known ones.
* :class:`CapabilityGate` keeps the consumer's capability queues (``<service>.model.<m>``,
  ``<service>.tag.<t>``, ``<service>.vram.<step>``, :mod:`jobqueue.shared.routing`) in line with
  those capabilities, with the same in-process ``add_task_queue``/``cancel_task_queue`` calls
  as the ``add_consumer``/``cancel_consumer`` control commands: a worker that gains a model
  starts taking its jobs, one that loses it (or whose service turns unhealthy) stops.
  :meth:`CapabilityGate.hold_off` stops consuming one queue for a while after the worker
  handed a job of it back (:mod:`jobqueue.worker.handback`), so another worker gets it.
* Warm routing (:mod:`jobqueue.worker.warm`): :func:`desired_queues` leaves out the model queues
  of checkpoints this worker has not loaded while its :class:`~jobqueue.worker.warm.WarmState`
  keeps them closed; :meth:`CapabilityGate.sync_later` re-syncs when the grace ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from jobqueue.shared.requirements import (
    DETAILS_KEY,
    Capabilities,
    capabilities_from_details,
    capability_queues,
)
from jobqueue.shared.routing import is_capability_queue, model_queue
from jobqueue.shared.warm import closed_queues
from jobqueue.states import ConnectorStatus
from jobqueue.worker.gate import ConsumerGate

log = logging.getLogger(__name__)

#: Most model queues kept in order of preference (beyond, a reorder would cancel and consume
#: too many queues at once: they are read in the order they were consumed).
MAX_ORDERED = 64


def enrich(connector: Any, status: ConnectorStatus, details: Mapping[str, Any] | None,
           tags: tuple[str, ...], warm: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``details`` of a health check plus ``capabilities`` (read now when the service is
    healthy, else the last known ones, which the gate ignores while unhealthy), with the
    worker's tags and ``warm``: what it has loaded (:meth:`~jobqueue.worker.warm.WarmState.capabilities`)."""
    out = dict(details or {})
    last = connector.details.get(DETAILS_KEY)
    caps: dict[str, Any] = dict(last) if isinstance(last, Mapping) else {}
    if status.is_healthy:
        try:
            fresh = connector.capabilities(out)
        except Exception:  # capabilities() must not raise; never let it break the health loop
            log.exception("connector %s failed to report its capabilities", connector.service)
            fresh = None
        if fresh is not None:
            caps = dict(fresh)
    caps["tags"] = list(tags)
    caps.update(warm or {})
    out[DETAILS_KEY] = caps
    return out


def has_models(details: Mapping[str, Any] | None) -> bool:
    """True when ``details`` list any model (so there are model queues to route on)."""
    caps = (details or {}).get(DETAILS_KEY)
    folders = caps.get("models") if isinstance(caps, Mapping) else None
    return isinstance(folders, Mapping) and any(isinstance(v, list) and v for v in folders.values())


def worker_capabilities(node_name: str, connectors: Mapping[str, Any], *, healthy_only: bool = True) -> dict[str, Capabilities]:
    """Capabilities per service of this worker (only healthy connectors' by default)."""
    return {
        service: capabilities_from_details(node_name, service, c.details)
        for service, c in connectors.items()
        if not healthy_only or ConnectorStatus(c.status).is_healthy
    }


class CapabilityGate(ConsumerGate):
    """Consume exactly the capability queues this worker's capabilities call for."""

    def __init__(self, desired: Callable[[], set[str]], services: tuple[str, ...], *,
                 clock: Callable[[], float] = time.monotonic, order: Callable[[], list[str]] | None = None) -> None:
        super().__init__(dict)
        #: The model queues in the order they are to be read (warm routing), or None.
        self._order = order
        # Re-entrant: on RabbitMQ, cancelling a queue waits for the broker's answer and may
        # deliver messages meanwhile, whose hand-back calls hold_off() in this same thread.
        self._lock = threading.RLock()  # type: ignore[assignment]
        self._desired = desired
        self._services = services
        self._clock = clock
        #: queue -> monotonic time until which it is not consumed (after a hand-back).
        self._held: dict[str, float] = {}
        #: Held queues that are not capability queues, to consume again when the hold ends.
        self._restore: set[str] = set()

    def _managed(self, queue: str) -> bool:
        return is_capability_queue(queue, self._services)

    def sync_now(self) -> dict[str, bool]:
        """Add and cancel capability queues to match; return queue -> consuming (changed ones).

        Must run in the consumer's thread (or before its loop started).
        """
        with self._lock:
            consumer = self._ready_consumer()
            if consumer is None:
                return {}
            now = self._clock()
            ended = [q for q, until in self._held.items() if until <= now]
            for queue in ended:
                del self._held[queue]
            want = {q for q in self._desired() if q not in self._held}
            want |= {q for q in self._restore if q not in self._held}
            self._restore -= want
            current = {q.name for q in consumer.task_consumer.queues}
            changed: dict[str, bool] = {}
            try:
                for queue in sorted(want - current):
                    consumer.add_task_queue(queue)
                    changed[queue] = True
                for queue in sorted(current):
                    held = queue in self._held
                    if held or (self._managed(queue) and queue not in want):
                        if held and not self._managed(queue):
                            self._restore.add(queue)
                        consumer.cancel_task_queue(queue)
                        changed[queue] = False
                self._reorder(consumer, changed)
            except Exception:  # a broken connection: the restarted consumer syncs again
                log.exception("could not update the capability queues")
            if changed:
                log.info("capability queues changed: %s", changed)
            return changed

    def hold_off(self, queue: str, seconds: float) -> None:
        """Stop consuming ``queue`` for ``seconds`` (call from the consumer's thread), then
        consume it again if it is still wanted."""
        with self._lock:
            self._held[queue] = self._clock() + seconds
            consumer = self._consumer
        self.sync_now()
        hub = getattr(consumer, "hub", None) if consumer is not None else None
        if hub is not None:
            hub.call_later(seconds + 0.05, self.sync_now)
        else:  # no event loop: the next health check's sync resumes it
            log.debug("no hub: %s resumes with the next sync", queue)

    def _reorder(self, consumer: Any, changed: dict[str, bool]) -> None:
        """Consume the queues of :attr:`_order` in that order: from the first one out of place,
        cancel them and consume them again in order (a Redis consumer reads its queues by
        priority, then in the order it consumes them; elsewhere the order does not matter)."""
        order = self._order() if self._order is not None else []
        if not 2 <= len(order) <= MAX_ORDERED:
            return
        rank = {q: i for i, q in enumerate(order)}
        current = [q.name for q in consumer.task_consumer.queues if q.name in rank]
        want = sorted(current, key=rank.__getitem__)
        if current == want:
            return
        first = next(i for i, (a, b) in enumerate(zip(current, want, strict=True)) if a != b)
        for queue in current[first:]:
            consumer.cancel_task_queue(queue)
        for queue in want[first:]:
            consumer.add_task_queue(queue)
            changed.setdefault(queue, True)

    def sync_later(self, seconds: float) -> None:
        """Sync again in ``seconds`` (from any thread): when a warm-routing grace ends."""
        with self._lock:
            consumer = self._consumer
        hub = getattr(consumer, "hub", None) if consumer is not None else None
        if hub is not None:  # without a loop the next health check's sync does it
            hub.call_soon(lambda: hub.call_later(seconds, self.sync_now))

    def held(self) -> list[str]:
        """Queues on hold right now."""
        with self._lock:
            now = self._clock()
            return sorted(q for q, until in self._held.items() if until > now)


def _model_queues(runtime: Any) -> tuple[set[str], list[str]]:
    """The capability queues to consume, and the model queues among them in the order to read
    them: loaded checkpoints first, then the open cold ones as warm routing prefers them."""
    caps = worker_capabilities(runtime.identity.node_name, runtime.connectors)
    warm = getattr(runtime, "warm", None)
    out: set[str] = set()
    order: list[str] = []
    for service, cap in caps.items():
        queues = capability_queues(cap)
        if warm is not None and warm.grace > 0:  # 0: warm routing off, every queue as it comes
            loaded = warm.loaded(service)
            cold = sorted(m for m in cap.models if m not in loaded)
            opened = warm.cold_to_open(service, cold)
            closed = closed_queues(service, cold, loaded, opened)
            queues = [q for q in queues if q not in closed]
            order += [model_queue(service, m) for m in loaded if m in cap.models]
            order += [model_queue(service, m) for m in warm.preferred(service, sorted(opened))]
        out.update(queues)
    return out, order


def desired_queues(runtime: Any) -> set[str]:
    """The capability queues ``runtime``'s healthy connectors and tags call for, without the
    cold model queues warm routing keeps closed now (:mod:`jobqueue.worker.warm`)."""
    return _model_queues(runtime)[0]


def preferred_order(runtime: Any) -> list[str]:
    """The consumed model queues in the order warm routing reads them (warm first)."""
    return _model_queues(runtime)[1]
