"""The same job round trip with RabbitMQ as the broker (results in the test's Redis database).

RabbitMQ must run on 127.0.0.1:5672 (``.ci/run`` starts it): this test fails, never skips,
when it does not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.shared.routing import gpu_queue, machine_queue, worker_queue
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.up.embedded import broker_answers
from tests.conftest import RABBITMQ_URL, settings_env
from tests.helpers import WorkerProcess, child_env

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def rabbit_settings(redis_url: str, machine_id: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on RabbitMQ with a GPU index of the test's own, so its queues are its own."""
    if not broker_answers(RABBITMQ_URL, timeout=3):
        pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ_URL}")
    settings = Settings(
        broker_url=RABBITMQ_URL,
        result_backend=redis_url,
        machine_id=machine_id,
        gpu=random.randint(100, 9999),
        heartbeat_interval=1.0,
        output_dir=str(tmp_path / "outputs"),
    ).resolved()
    yield settings
    assert settings.gpu is not None
    with Connection(RABBITMQ_URL) as conn:
        for name in (gpu_queue(settings.gpu), machine_queue(machine_id), worker_queue(machine_id, settings.gpu)):
            try:
                conn.default_channel.queue_delete(name)
            except Exception:  # never declared: nothing to clean
                pass


def test_a_job_round_trip_works_on_rabbitmq(rabbit_settings: Settings, tmp_path: Path):
    # Given a real worker whose broker is RabbitMQ
    app = create_app(rabbit_settings)
    gpu = rabbit_settings.gpu
    assert gpu is not None
    worker = WorkerProcess(child_env(settings_env(rabbit_settings)), queues=gpu_queue(gpu),
                           log_path=tmp_path / "worker.log")
    try:
        worker.start().wait_ready(app, timeout=60)
        seen: list[float] = []
        # When a job pinned to that worker is submitted and waited on
        handle = submit_job("simulation", {"steps": 5, "step_seconds": 0.2, "output": "rabbit"}, app=app,
                            queue=worker_queue(rabbit_settings.machine_id, gpu), priority=7)
        result = handle.wait(timeout=60, on_progress=lambda p: seen.append(p["percent"]))
        # Then it ran there, with at least three increasing progress updates, and completed
        assert result["output"] == "rabbit"
        assert result["worker"] == worker.node_name == f"gpu{gpu}@{rabbit_settings.machine_id}"
        assert len(seen) >= 3 and seen == sorted(seen) and len(set(seen)) == len(seen)
        assert handle.status() == JobStatus.COMPLETED
        assert "amqp://" in worker.log_text()
    finally:
        worker.stop()
        app.close()
