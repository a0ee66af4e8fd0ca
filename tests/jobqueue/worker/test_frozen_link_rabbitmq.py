"""A frozen broker link is noticed on RabbitMQ too: AMQP heartbeats (JOBQUEUE_BROKER_HEARTBEAT).
A worker whose AMQP connections go through a proxy that silently stops forwarding (no FIN, no
RST) drops them after about two heartbeats, reconnects and takes jobs again (before the bound
on the old event dispatcher's close in jobqueue/worker/linkwatch.py, it hung in that close).

Not asserted: remote control. After this reconnect the worker's pidbox did not answer pings
again in our runs (Celery's Control step on AMQP); jobs run.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.shared.routing import gpu_queue
from jobqueue.transport.app import create_app
from tests.blackhole import BlackholeProxy
from tests.conftest import RABBITMQ_URL, settings_env
from tests.helpers import WorkerProcess, child_env, wait_for
from tests.jobqueue.transport.test_rabbitmq import rabbit_settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(180)]
__all__ = ["rabbit_settings"]  # fixture

#: The AMQP heartbeat the worker runs with (s).
HEARTBEAT = 2.0


def test_a_worker_behind_a_frozen_amqp_link_notices_by_heartbeats_reconnects_and_takes_jobs(
        rabbit_settings: Settings, tmp_path: Path):
    # Given a worker whose RabbitMQ connections go through the proxy (heartbeat 2 s)
    parts = urlsplit(RABBITMQ_URL)
    proxy = BlackholeProxy(parts.port or 5672, parts.hostname or "127.0.0.1").start()
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    via = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    app = create_app(rabbit_settings)
    gpu = rabbit_settings.gpu
    assert gpu is not None
    env = child_env(settings_env(rabbit_settings), JOBQUEUE_BROKER_URL=via, JOBQUEUE_BROKER_HEARTBEAT=str(HEARTBEAT))
    worker = WorkerProcess(env, queues=gpu_queue(gpu), log_path=tmp_path / "worker.log")
    try:
        worker.start().wait_ready(app, timeout=60)
        first = submit_job("simulation", {"steps": 1, "step_seconds": 0.05, "output": "before"}, app=app,
                           queue=gpu_queue(gpu))
        assert first.wait(timeout=60)["output"] == "before"
        # When the proxy silently freezes every open connection
        assert proxy.blackhole() >= 1
        frozen_at = time.monotonic()
        # Then the worker misses two heartbeats and reconnects (new connections relay), within
        # about three heartbeats plus a reconnect
        wait_for(lambda: "Connection to broker lost" in worker.log_text(), 60, interval=0.2,
                 what="the worker to notice the frozen link")
        noticed = time.monotonic() - frozen_at
        assert noticed <= 3 * HEARTBEAT + 5.0, worker.log_text()[-3000:]
        wait_for(lambda: worker.log_text().count("Connected to amqp://") >= 2, 30, interval=0.2,
                 what="the worker to reconnect")
        # And it takes jobs again
        after = submit_job("simulation", {"steps": 1, "step_seconds": 0.05, "output": "after"}, app=app,
                           queue=gpu_queue(gpu))
        assert after.wait(timeout=60)["output"] == "after"
    finally:
        worker.stop()
        proxy.stop()
