"""The broker's queues as the broker holds them, and a purge that empties every priority level
(stock ``celery purge`` empties only level 0 of a priority queue), on real Redis and RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue

from jobqueue import submit_job
from jobqueue.shared.names import RUN_JOB_TASK
from jobqueue.transport.app import create_app
from jobqueue.transport.broker_queues import BrokerError, list_queues, purge_queue
from tests.conftest import RABBITMQ_URL
from tests.helpers import quick, wait_for

#: RabbitMQ's management API (the plugin .ci/run enables).
MANAGEMENT_URL = os.environ.get("JOBQUEUE_TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")


def _submit(app: Any, queue: str, priorities: list[int]) -> list[str]:
    return [submit_job("simulation", quick(n), priority=p, queue=queue, app=app).id for n, p in enumerate(priorities)]


def test_a_queue_is_listed_with_its_messages_per_priority_level(app, machine_id):
    # Given jobs waiting in a queue nobody consumes, at three priorities
    queue = f"held.{machine_id}"
    _submit(app, queue, [0, 5, 5, 9])
    # When the broker's queues are listed (the monitor knows no name)
    found = {q.name: q for q in list_queues(app, known=[])}
    # Then the queue is found in kombu's bindings, with every message counted at its level
    assert queue in found
    assert found[queue].depth == 4
    assert sum(found[queue].levels.values()) == 4 and len(found[queue].levels) == 3


def test_a_purge_removes_every_level_where_stock_celery_purge_leaves_the_priority_messages(app, machine_id, redis_url,
                                                                                           tmp_path):
    queue = f"held.{machine_id}"
    ids = _submit(app, queue, [0, 3, 5, 9])
    # Given stock `celery purge` run on the queue first
    subprocess.run([sys.executable, "-m", "celery", "-b", redis_url, "purge", "-f", "-Q", queue],
                   cwd=str(tmp_path), capture_output=True, text=True, timeout=60, check=True)
    left = {q.name: q.depth for q in list_queues(app, known=[queue])}[queue]
    assert left >= 3, "stock purge should leave the messages above level 0 (else this test proves nothing)"
    # When our purge runs
    removed = purge_queue(app, queue)
    # Then nothing is left, and the removed messages are named by task id and task
    assert {q.name: q.depth for q in list_queues(app, known=[queue])}[queue] == 0
    assert len(removed) == left
    assert {r.task_id for r in removed} <= set(ids) and {r.task for r in removed} == {RUN_JOB_TASK}


def test_a_purge_of_a_queue_that_holds_nothing_removes_nothing(app, machine_id):
    assert purge_queue(app, f"empty.{machine_id}") == []


def test_a_purge_refuses_a_name_that_is_not_a_queue_name(app):
    with pytest.raises(BrokerError, match="not a queue name"):
        purge_queue(app, "")


def test_an_unreachable_broker_is_a_clear_error(settings):
    dead = create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    try:
        with pytest.raises(BrokerError, match="cannot read the broker's queues"):
            list_queues(dead, known=["gpu0"])
    finally:
        dead.close()


@pytest.mark.rabbitmq
def test_on_rabbitmq_a_purge_empties_a_priority_queue_and_names_the_removed_tasks(settings, machine_id):
    # Given a priority queue on RabbitMQ holding three task messages
    queue = f"held.{machine_id}"
    rabbit = create_app(settings.model_copy(update={"broker_url": RABBITMQ_URL}))
    try:
        with Connection(RABBITMQ_URL) as conn:
            bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue,
                          queue_arguments={"x-max-priority": 10})
            producer = Producer(conn.default_channel)
            for n in range(3):
                producer.publish({"n": n}, exchange=bound.exchange, routing_key=queue, declare=[bound],
                                 headers={"id": f"task-{n}", "task": "plain.add"}, priority=n * 4)
        # (publishes without confirms are routed after the connection's close returns: poll for the count)
        def depth() -> int:
            return {q.name: q.depth for q in list_queues(rabbit, known=[queue])}[queue]

        wait_for(lambda: depth() == 3, what="three messages in the RabbitMQ queue")
        # When it is purged
        removed = purge_queue(rabbit, queue)
        # Then it is empty and the tasks are named
        assert sorted(r.task_id or "" for r in removed) == ["task-0", "task-1", "task-2"]
        assert {q.name: q.depth for q in list_queues(rabbit, known=[queue])}[queue] == 0
    finally:
        with Connection(RABBITMQ_URL) as conn:
            conn.default_channel.queue_delete(queue)
        rabbit.close()


@pytest.mark.rabbitmq
def test_on_rabbitmq_the_management_api_lists_a_queue_nobody_named_with_its_depth_and_consumers(settings,
                                                                                             machine_id):
    # Given a queue on RabbitMQ that the monitor never heard of, holding 2 messages, with one consumer
    queue = f"unnamed.{machine_id}"
    rabbit = create_app(settings.model_copy(update={"broker_url": RABBITMQ_URL}))
    try:
        with Connection(RABBITMQ_URL) as conn:
            bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
            producer = Producer(conn.default_channel)
            for n in range(2):
                producer.publish({"n": n}, exchange=bound.exchange, routing_key=queue, declare=[bound])
            listener = conn.channel()
            listener.basic_consume(queue, callback=lambda *_: None, no_ack=False, consumer_tag="probe")

            # When the queues are listed through the management API
            def listed() -> Any:
                found = {q.name: q for q in list_queues(rabbit, known=[], management_url=MANAGEMENT_URL)}
                return found.get(queue) if found.get(queue) and found[queue].consumers == 1 else None

            info = wait_for(listed, 15, interval=0.5, what="the management API's view of the queue")
            listener.close()
        # Then it is there with its consumer (the management API's statistics lag a few seconds)
        assert info.consumers == 1 and info.depth in (0, 1, 2)
    finally:
        with Connection(RABBITMQ_URL) as conn:
            conn.default_channel.queue_delete(queue)
        rabbit.close()


def test_a_management_api_that_does_not_answer_is_a_clear_error(settings):
    rabbit = create_app(settings.model_copy(update={"broker_url": RABBITMQ_URL}))
    try:
        with pytest.raises(BrokerError, match="management API"):
            list_queues(rabbit, known=[], management_url="http://guest:guest@127.0.0.1:1")
    finally:
        rabbit.close()
