"""Quorum queues on RabbitMQ (``JOBQUEUE_RABBITMQ_QUEUE_TYPE=quorum``): their arguments, publisher
confirms, dead letters through the exchange to ``<queue>.dead``, and the clear error when a
queue exists with the other type. The integration tests use the RabbitMQ on 127.0.0.1:5672
(vhost of ``JOBQUEUE_TEST_RABBITMQ_URL``) and fail, never skip, when it does not answer; the
3-node drill is tests/bench/test_rabbit_failover.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.errors import ConfigError, QueueTypeMismatch
from jobqueue.shared.routing import gpu_queue, machine_queue, worker_queue
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.transport.rabbitmq import DEAD_LETTER_EXCHANGE, explain_declare_error
from jobqueue.up.embedded import broker_answers
from tests.conftest import RABBITMQ_URL, settings_env
from tests.helpers import WorkerProcess, child_env, quick, wait_for

#: RabbitMQ 3.10's own words when a quorum queue is declared over a classic one.
REFUSAL = ("Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue "
           "'gpu7' in vhost 'h4': received the value 'jobqueue.dead' of type 'longstr' but current is none")


def _settings(broker: str, backend: str, tmp_path: Path, **values: Any) -> Settings:
    return Settings(broker_url=broker, result_backend=backend, machine_id=f"m{random.randint(0, 10**8)}",
                    heartbeat_interval=1.0, output_dir=str(tmp_path / "outputs"), **values).resolved()


def test_quorum_queues_get_type_delivery_limit_and_dead_letters_and_no_priority_argument(redis_url: str, tmp_path: Path):
    # Given an app on RabbitMQ asking for quorum queues
    app = create_app(_settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum",
                               rabbitmq_delivery_limit=4))
    # When it names a queue it has not seen
    queue = app.amqp.queues["gpu3"]
    # Then the queue is quorum, dead-letters to gpu3.dead after 4 deliveries, has no
    # x-max-priority (RabbitMQ 3.x refuses it on quorum queues), and submits wait for confirms
    assert queue.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 4,
                                     "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                                     "x-dead-letter-routing-key": "gpu3.dead"}
    assert app.conf.task_queue_max_priority is None and app.conf.worker_detect_quorum_queues
    assert app.conf.broker_transport_options["confirm_publish"] is True
    app.close()


def test_classic_queues_keep_their_twenty_priority_levels(redis_url: str, tmp_path: Path):
    # Given an app on RabbitMQ with the default (classic) queues
    app = create_app(_settings(RABBITMQ_URL, redis_url, tmp_path))
    # Then a new queue is classic with x-max-priority 19, and an unknown type is refused by name
    assert app.amqp.queues["gpu3"].queue_arguments == {"x-max-priority": 19}
    with pytest.raises(ConfigError, match="JOBQUEUE_RABBITMQ_QUEUE_TYPE='stream'"):
        Settings.from_env({"JOBQUEUE_RABBITMQ_QUEUE_TYPE": "stream"})
    app.close()


def test_the_brokers_refusal_becomes_an_error_that_names_the_queue_and_the_migration():
    # When RabbitMQ refuses a quorum declaration over a classic queue
    error = explain_declare_error(Exception(REFUSAL))
    # Then the error says which queue, which types, and how to migrate
    assert isinstance(error, QueueTypeMismatch) and isinstance(error, ConfigError)
    text = str(error)
    assert "'gpu7'" in text and "exists as a classic queue" in text and "as a quorum queue" in text
    assert "rabbitmqctl delete_queue -p h4 gpu7" in text
    # and any other error is left as it is
    other = RuntimeError("connection refused")
    assert explain_declare_error(other) is other


# -- on the broker ----------------------------------------------------------------------------


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A GPU queue of the test's own on the test vhost, deleted (with its dead letters) after."""
    if not broker_answers(RABBITMQ_URL, timeout=3):
        pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ_URL}")
    gpu = random.randint(10_000, 99_999)
    # The service and webhook queues every worker consumes are shared by the vhost's tests:
    # other tests leave them classic, so they go before and after (the RabbitMQ tests are serial).
    names = [gpu_queue(gpu), "simulation", "webhooks"]
    _delete(names + [f"{name}.dead" for name in names])
    yield gpu_queue(gpu)
    _delete(names + [f"{name}.dead" for name in names])


def _delete(names: list[str]) -> None:
    with Connection(RABBITMQ_URL) as conn:
        for name in names:
            try:
                conn.channel().queue_delete(name)
            except Exception:  # never declared
                pass


@pytest.mark.rabbitmq
def test_a_quorum_submit_over_an_existing_classic_queue_is_refused_clearly_and_sends_nothing(
        queue_name: str, redis_url: str, tmp_path: Path):
    # Given a classic queue made by a client with the default settings, holding one job
    classic = create_app(_settings(RABBITMQ_URL, redis_url, tmp_path))
    submit_job("simulation", quick("classic"), app=classic, queue=queue_name)
    classic.close()
    # When a client (a new process, so nothing is cached) submits with quorum queues
    script = ("import sys\nfrom jobqueue.client.jobs import submit_job\nfrom jobqueue.transport.app import create_app\n"
              "try:\n    submit_job('simulation', {'steps': 1}, app=create_app(), queue=sys.argv[1])\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    env = child_env(settings_env(_settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum")))
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", script, queue_name], env=env, capture_output=True, text=True,
                         timeout=60).stdout
    # Then it gets QueueTypeMismatch naming the queue and the migration, and nothing was queued
    assert out.startswith("QueueTypeMismatch"), out
    assert f"{queue_name!r}" in out and "exists as a classic queue" in out and "delete_queue" in out
    with Connection(RABBITMQ_URL) as conn:
        assert conn.channel().queue_declare(queue_name, passive=True).message_count == 1


@pytest.mark.rabbitmq
def test_jobs_run_on_a_quorum_queue_and_a_poison_message_goes_to_its_dead_letter_queue(
        queue_name: str, redis_url: str, tmp_path: Path):
    # Given a real worker consuming a quorum queue
    settings = _settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum",
                         gpu=int(queue_name.removeprefix("gpu")))
    app = create_app(settings)
    worker = WorkerProcess(child_env(settings_env(settings)), queues=queue_name, log_path=tmp_path / "worker.log")
    try:
        worker.start().wait_ready(app, timeout=60)
        # When a message that is no task (no task header) and one Celery cannot decode (a
        # content type it refuses) are published to the queue, then a real job
        with Connection(RABBITMQ_URL) as conn:
            producer = conn.Producer()
            exchange = Exchange(queue_name, "direct")
            producer.publish({"not": "a task"}, exchange=exchange, routing_key=queue_name, serializer="json")
            producer.publish(b"\x80\x04K\x01.", exchange=exchange, routing_key=queue_name,
                             content_type="application/x-python-serialize", content_encoding="binary")
        handle = submit_job("simulation", quick("after poison"), app=app, queue=queue_name)
        # Then the job completes on the quorum queue, the worker lives, and both poison
        # messages sit in <queue>.dead with RabbitMQ's x-death header naming the queue
        assert handle.wait(timeout=60)["output"] == "after poison"
        assert handle.status() == JobStatus.COMPLETED and worker.alive()
        dead: list[Any] = []
        with Connection(RABBITMQ_URL) as conn:
            bound = Queue(queue_name + ".dead", channel=conn.channel())

            def drained() -> bool:
                while (message := bound.get(no_ack=True)) is not None:
                    dead.append(message)
                return len(dead) >= 2

            wait_for(drained, timeout=30, interval=0.2)
        assert {m.headers["x-death"][0]["queue"] for m in dead} == {queue_name}
        assert {m.content_type for m in dead} == {"application/json", "application/x-python-serialize"}
        assert json.loads(dead[0].body if dead[0].content_type == "application/json" else dead[1].body) == {"not": "a task"}
    finally:
        worker.stop()
        app.close()


@pytest.mark.rabbitmq
def test_a_message_returned_more_often_than_the_delivery_limit_goes_to_its_dead_letter_queue(
        queue_name: str, redis_url: str, tmp_path: Path):
    # Given a quorum queue declared by jobqueue with a delivery limit of 1, holding one job
    app = create_app(_settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum",
                               rabbitmq_delivery_limit=1))
    handle = submit_job("simulation", quick("crashes its worker"), app=app, queue=queue_name)
    app.close()
    with Connection(RABBITMQ_URL) as conn:
        queue = Queue(queue_name, channel=conn.channel())
        dead = Queue(queue_name + ".dead", channel=conn.channel())
        # When it is delivered and handed back without an ack twice (as a worker dying would)
        for _ in range(2):
            message = wait_for(lambda: queue.get(no_ack=False), timeout=10, interval=0.1)
            assert message.headers["id"] == handle.id
            message.requeue()
        # Then it is not delivered again but sits in <queue>.dead, with the reason
        got = wait_for(lambda: dead.get(no_ack=True), timeout=10, interval=0.1)
        assert got.headers["id"] == handle.id
        assert got.headers["x-death"][0]["reason"] == "delivery_limit"
        assert queue.get(no_ack=True) is None


@pytest.mark.rabbitmq
def test_a_quorum_worker_on_an_existing_classic_queue_stops_saying_which_queue_and_how_to_migrate(
        queue_name: str, redis_url: str, tmp_path: Path):
    # Given a classic queue made by a client with the default settings, holding one job
    classic = create_app(_settings(RABBITMQ_URL, redis_url, tmp_path))
    submit_job("simulation", quick("classic"), app=classic, queue=queue_name)
    classic.close()
    # When a worker with quorum queues is started on it
    settings = _settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum")
    worker = WorkerProcess(child_env(settings_env(settings)), queues=queue_name, log_path=tmp_path / "worker.log")
    try:
        worker.start()
        # Then it exits, its log naming the queue, both types and the migration,
        wait_for(lambda: not worker.alive(), timeout=60, interval=0.2)
        log = worker.log_text()
        assert "QueueTypeMismatch" in log and f"{queue_name!r}" in log and "exists as a classic queue" in log, log[-3000:]
        # and the job waits in the classic queue, untouched
        with Connection(RABBITMQ_URL) as conn:
            assert conn.channel().queue_declare(queue_name, passive=True).message_count == 1
    finally:
        worker.stop()


def _close_connections_of(pid: int) -> int:
    """Close (as a dying node would) every RabbitMQ connection of process ``pid`` and its children."""
    import subprocess

    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    ports = {c.laddr.port for p in procs for c in p.net_connections("tcp") if c.raddr and c.raddr.port == 5672}
    listing = subprocess.run(["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "peer_port"],
                             capture_output=True, text=True, timeout=30).stdout
    closed = 0
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip().isdigit() and int(parts[1]) in ports:
            subprocess.run(["rabbitmqctl", "close_connection", parts[0], "test: its node died"],
                           capture_output=True, timeout=30)
            closed += 1
    return closed


@pytest.mark.rabbitmq
def test_a_job_redelivered_while_its_first_worker_still_runs_it_waits_and_runs_once(
        queue_name: str, redis_url: str, tmp_path: Path):
    # Given two idle workers on one quorum queue
    workers = []
    own_queues: list[str] = []  # each worker's GPU, machine and worker queues: quorum, deleted after
    app = create_app(_settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum"))
    try:
        for gpu in (random.randint(100, 9999), random.randint(10_000, 20_000)):
            settings = _settings(RABBITMQ_URL, redis_url, tmp_path, rabbitmq_queue_type="quorum", gpu=gpu)
            own_queues += [gpu_queue(gpu), machine_queue(settings.machine_id), worker_queue(settings.machine_id, gpu)]
            worker = WorkerProcess(child_env(settings_env(settings)), queues=f"gpu{gpu},{queue_name}",
                                   log_path=tmp_path / f"worker-{gpu}.log")
            workers.append(worker.start().wait_ready(app, timeout=60))
        # and a 4 s job running on one of them
        handle = submit_job("simulation", {"steps": 4, "step_seconds": 1.0, "output": "once"}, app=app,
                            queue=queue_name)
        first = wait_for(lambda: next((w for w in workers if handle.id in w.log_text()), None), timeout=30)
        wait_for(lambda: handle.status() == JobStatus.PROCESSING, timeout=30)
        other = next(w for w in workers if w is not first)
        # When that worker's broker connections die (its node crashed): RabbitMQ gives the job
        # to the idle worker at once, while the first one still runs it and reconnects
        assert _close_connections_of(first.pid) >= 1
        # Then the copy waits for the first attempt, the job succeeds, and it ran once
        assert handle.wait(timeout=60)["output"] == "once"
        wait_for(lambda: handle.id in other.log_text() and "dropped" in other.log_text(), timeout=30)
        assert "waiting for that attempt to end" in other.log_text()
        succeeded = sum(w.log_text().count(f"run_job[{handle.id}] succeeded") for w in workers)
        assert succeeded == 1, [w.log_text()[-2000:] for w in workers]
    finally:
        for worker in workers:
            worker.stop()
        app.close()
        # Left behind, a quorum gpuN would refuse a later classic test's worker on the same N
        _delete(own_queues + [f"{name}.dead" for name in own_queues])
