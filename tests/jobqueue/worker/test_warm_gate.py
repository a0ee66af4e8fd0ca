"""The capability gate keeps a worker's model queues in warm routing's order of preference
(a Redis consumer reads them in the order it consumes them): unit tests on a stub consumer;
tests/jobqueue/worker/test_warm_routing.py and bench/warm_routing.py take the real path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobqueue.worker.capabilities import MAX_ORDERED, CapabilityGate


@dataclass
class Queue:
    name: str


@dataclass
class TaskConsumer:
    queues: list[Queue] = field(default_factory=list)
    on_message: Any = print


class Consumer:
    """What the gate uses of Celery's consumer, recording the calls."""

    hub = None

    def __init__(self, names: list[str]) -> None:
        self.task_consumer = TaskConsumer([Queue(n) for n in names])
        self.calls: list[str] = []

    def add_task_queue(self, name: str) -> None:
        self.calls.append(f"+{name}")
        self.task_consumer.queues.append(Queue(name))

    def cancel_task_queue(self, name: str) -> None:
        self.calls.append(f"-{name}")
        self.task_consumer.queues = [q for q in self.task_consumer.queues if q.name != name]


def names(consumer: Consumer) -> list[str]:
    return [q.name for q in consumer.task_consumer.queues]


def test_queues_out_of_the_preferred_order_are_consumed_again_in_order_from_the_first_misplaced_one():
    # Given a consumer reading the service queue, then model queues a, b, c
    consumer = Consumer(["comfyui", "m.a", "m.b", "m.c"])
    gate = CapabilityGate(lambda: {"m.a", "m.b", "m.c"}, ("m",), order=lambda: ["m.a", "m.c", "m.b"])
    # When the gate syncs with c preferred to b
    gate.bind(consumer)
    # Then only b and c were cancelled and consumed again, in the preferred order
    assert names(consumer) == ["comfyui", "m.a", "m.c", "m.b"]
    assert consumer.calls == ["-m.b", "-m.c", "+m.c", "+m.b"]
    # And a second sync changes nothing
    consumer.calls.clear()
    gate.sync_now()
    assert consumer.calls == []


def test_too_many_model_queues_are_left_in_the_order_they_were_consumed():
    many = [f"m.{i:03d}" for i in range(MAX_ORDERED + 1)]
    consumer = Consumer(many)
    gate = CapabilityGate(lambda: set(many), ("m",), order=lambda: list(reversed(many)))
    gate.bind(consumer)
    assert names(consumer) == many and consumer.calls == []
