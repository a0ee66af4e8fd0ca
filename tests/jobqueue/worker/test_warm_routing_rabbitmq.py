"""Warm routing with RabbitMQ as the broker (the result backend, and so the warm hash, on
Redis): a job goes to the idle worker that has its checkpoint loaded, and to a cold idle worker
while the warm one is busy. The checkpoints are unique to the test, so their queues are its own
on the shared RabbitMQ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.shared.routing import gpu_queue, model_queue
from jobqueue.sims.comfyui.models import checkpoint_workflow
from jobqueue.transport.app import create_app
from tests.capability_fixtures import consumes, start_sim
from tests.conftest import RABBITMQ_URL, settings_env
from tests.helpers import WorkerProcess, child_env, wait_for
from tests.jobqueue.transport.test_rabbitmq import rabbit_settings

pytestmark = pytest.mark.rabbitmq
__all__ = ["rabbit_settings", "start_sim"]  # fixtures


def test_on_rabbitmq_a_job_goes_to_the_idle_worker_holding_its_checkpoint_and_else_to_a_cold_idle_one(
        rabbit_settings: Settings, start_sim: Any, tmp_path: Path):
    # Given two machines with checkpoints a and b of this test's own, a worker on each
    a, b = (f"{rabbit_settings.machine_id}-{n}.safetensors" for n in "ab")
    app = create_app(rabbit_settings)
    assert rabbit_settings.gpu is not None
    sims = [start_sim(a, b), start_sim(a, b)]
    workers = [WorkerProcess(child_env(settings_env(rabbit_settings), JOBQUEUE_COMFYUI_URL=sim.url,
                                       JOBQUEUE_CONNECTORS="comfyui", JOBQUEUE_WARM_GRACE="1.0",
                                       JOBQUEUE_MACHINE_ID=f"{rabbit_settings.machine_id}-{i}"),
                             queues=gpu_queue(rabbit_settings.gpu), log_path=tmp_path / f"worker{i}.log")
               for i, sim in enumerate(sims)]
    try:
        for worker in workers:
            worker.start().wait_ready(app, timeout=60)
        for worker in workers:
            wait_for(lambda w=worker: consumes(app, w, model_queue("comfyui", a)), 60, what="both to take a's jobs")
        # When a job of a ran on one of them
        first = submit_job("comfyui", {"workflow": checkpoint_workflow(a, "first")}, app=app).wait(timeout=60)
        warm = next(w for w in workers if w.node_name == first["worker"])
        other = next(w for w in workers if w is not warm)
        # Then the other leaves a's jobs to it while it is idle, and the next job of a runs there
        wait_for(lambda: not consumes(app, other, model_queue("comfyui", a)), 30, what="the other to leave a's jobs")
        assert submit_job("comfyui", {"workflow": checkpoint_workflow(a, "next")}, app=app).wait(
            timeout=60)["worker"] == warm.node_name
        # When a's worker is busy (its server frozen mid-job), a job of a goes to the other
        sims[workers.index(warm)].fault("freeze")
        try:
            busy = submit_job("comfyui", {"workflow": checkpoint_workflow(a, "busy")}, app=app)
            wait_for(lambda: busy.status() == "processing", 30, what="a's worker to be busy")
            waiting = submit_job("comfyui", {"workflow": checkpoint_workflow(a, "waiting")}, app=app)
            assert waiting.wait(timeout=60)["worker"] == other.node_name
            assert busy.status() == "processing"
        finally:
            sims[workers.index(warm)].fault("none")
        busy.wait(timeout=120)
    finally:
        for worker in workers:
            worker.stop()
        app.close()
        with Connection(RABBITMQ_URL) as conn:
            for name in (model_queue("comfyui", a), model_queue("comfyui", b)):
                try:
                    conn.default_channel.queue_delete(name)
                except Exception:  # never declared: nothing to clean
                    pass
