"""Fair share with RabbitMQ as the broker: a worker consumes the tenant queues of its service
queue and a second tenant's jobs do not wait behind the first one's backlog (RabbitMQ gives a
channel's consumers their turns itself; weights apply on Redis only). Tenant names are the
test's own, so their queues are too on the shared RabbitMQ."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.shared.fairshare import tenant_queue
from jobqueue.shared.routing import gpu_queue
from jobqueue.transport.app import create_app
from tests.capability_fixtures import consumes
from tests.conftest import RABBITMQ_URL, settings_env
from tests.helpers import WorkerProcess, child_env, wait_for
from tests.jobqueue.transport.test_rabbitmq import rabbit_settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]
__all__ = ["rabbit_settings"]  # a fixture


def test_a_second_tenants_jobs_do_not_wait_behind_the_first_ones_backlog_on_rabbitmq(
        rabbit_settings: Settings, tmp_path: Path):
    a, b = f"a-{rabbit_settings.machine_id}", f"b-{rabbit_settings.machine_id}"
    app = create_app(rabbit_settings)
    assert rabbit_settings.gpu is not None
    worker = WorkerProcess(child_env(settings_env(rabbit_settings)), queues=gpu_queue(rabbit_settings.gpu),
                           log_path=tmp_path / "worker.log")
    try:
        worker.start().wait_ready(app, timeout=60)
        # Given tenant a's backlog of 20 jobs in its own queue, consumed by the worker
        a_jobs = [submit_job("simulation", {"steps": 1, "step_seconds": 0.1, "output": f"a{i}"}, tenant=a, app=app)
                  for i in range(20)]
        wait_for(lambda: consumes(app, worker, tenant_queue("simulation", a)), 30, what="a's queue consumed")
        # When tenant b submits 2 jobs
        b_jobs = [submit_job("simulation", {"steps": 1, "step_seconds": 0.1, "output": f"b{i}"}, tenant=b, app=app)
                  for i in range(2)]
        for handle in b_jobs:
            handle.wait(timeout=90)
        # Then b's jobs are done while a's backlog is not
        assert sum(app.AsyncResult(h.id).state == "SUCCESS" for h in a_jobs) < 20
        for handle in a_jobs:
            handle.wait(timeout=90)
    finally:
        worker.stop()
        app.close()
        with Connection(RABBITMQ_URL) as conn:
            for tenant in (a, b):
                try:
                    conn.default_channel.queue_delete(tenant_queue("simulation", tenant))
                except Exception:  # never declared
                    pass
