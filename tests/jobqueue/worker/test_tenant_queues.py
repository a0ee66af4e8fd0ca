"""The worker's tenant queues follow its own queues (unit: a stand-in consumer with kombu's
queue list and Celery's add/cancel calls; the real path is tests/jobqueue/worker/test_fair_share.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from jobqueue.worker.fairshare import TenantQueues


class Consumer:
    """What :class:`TenantQueues` uses of Celery's consumer."""

    def __init__(self, *queues: str) -> None:
        self.names = list(queues)
        self.task_consumer = SimpleNamespace(on_message=lambda *a: None, queues=[])
        self._sync()

    def _sync(self) -> None:
        self.task_consumer.queues = [SimpleNamespace(name=n) for n in self.names]

    def add_task_queue(self, name: str) -> None:
        self.names.append(name)
        self._sync()

    def cancel_task_queue(self, name: str) -> None:
        self.names.remove(name)
        self._sync()


def mirror(consumer: Any, known: list[str], held: list[str] | None = None) -> TenantQueues:
    queues = TenantQueues(lambda: list(known), lambda: list(held or []))
    queues.bind(consumer)
    queues.refresh()  # no hub: syncs at once
    return queues


def test_the_tenant_queues_of_the_consumers_own_queues_are_added_and_no_others():
    consumer = Consumer("gpu0", "simulation", "comfyui.model.a")
    mirror(consumer, ["acme/simulation", "acme/comfyui.model.a", "acme/comfyui.model.b", "zeta/a1111"])
    assert sorted(consumer.names) == ["acme/comfyui.model.a", "acme/simulation", "comfyui.model.a", "gpu0",
                                      "simulation"]


def test_a_tenant_queue_goes_when_its_base_queue_goes_and_comes_back_with_it():
    # Given a worker consuming acme's simulation queue
    consumer = Consumer("gpu0", "simulation")
    queues = mirror(consumer, ["acme/simulation"])
    assert "acme/simulation" in consumer.names
    # When the service queue is cancelled (a drain, an unhealthy service)
    consumer.cancel_task_queue("simulation")
    queues.sync_now()
    # Then acme's queue goes too, and comes back when the service queue does
    assert consumer.names == ["gpu0"]
    consumer.add_task_queue("simulation")
    queues.sync_now()
    assert sorted(consumer.names) == ["acme/simulation", "gpu0", "simulation"]


def test_a_held_off_tenant_queue_is_not_added_back_before_its_hold_ends():
    consumer = Consumer("simulation")
    held = ["acme/simulation"]
    queues = TenantQueues(lambda: ["acme/simulation", "beta/simulation"], lambda: list(held))
    queues.bind(consumer)
    queues.refresh()
    assert sorted(consumer.names) == ["beta/simulation", "simulation"]
    held.clear()
    queues.sync_now()
    assert "acme/simulation" in consumer.names


def test_nothing_is_touched_before_the_consumer_can_take_messages():
    consumer = Consumer("simulation")
    consumer.task_consumer.on_message = None
    mirror(consumer, ["acme/simulation"])
    assert consumer.names == ["simulation"]
