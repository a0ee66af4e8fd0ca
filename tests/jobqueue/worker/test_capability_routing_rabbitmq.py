"""Capability routing with RabbitMQ as the broker: a tag queue consumed only by the worker
that declares the tag, a hand-back through RabbitMQ's own reject-and-requeue, and a worker
that starts while a job already waits in its model queue.

The tag is unique to the test, so its queues are the test's own on the shared RabbitMQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.shared.routing import gpu_queue, model_queue, tag_queue
from jobqueue.sims.comfyui.models import checkpoint_workflow
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from tests.capability_fixtures import start_sim
from tests.conftest import RABBITMQ_URL, settings_env
from tests.helpers import WorkerProcess, child_env, wait_for
from tests.jobqueue.transport.test_rabbitmq import rabbit_settings

pytestmark = pytest.mark.rabbitmq
__all__ = ["rabbit_settings", "start_sim"]  # fixtures


def test_a_tagged_job_runs_on_the_tagged_worker_and_one_it_cannot_run_is_handed_back_on_rabbitmq(
        rabbit_settings: Settings, tmp_path: Path):
    # Given a worker on RabbitMQ declaring a tag of this test's own
    tag = f"customer:{rabbit_settings.machine_id}"
    app = create_app(rabbit_settings)
    gpu = rabbit_settings.gpu
    assert gpu is not None
    worker = WorkerProcess(child_env(settings_env(rabbit_settings), JOBQUEUE_WORKER_TAGS=tag),
                           queues=gpu_queue(gpu), log_path=tmp_path / "worker.log")
    try:
        worker.start().wait_ready(app, timeout=60)
        # When a job needing the tag comes in, it runs there
        done = submit_job("simulation", {"steps": 1, "step_seconds": 0.05, "output": "acme"}, app=app,
                          requires={"tags": [tag]})
        assert done.wait(timeout=60)["worker"] == worker.node_name
        # When a job needs the tag and VRAM this worker does not have (it is routed on the tag)
        stuck = submit_job("simulation", {"steps": 1, "step_seconds": 0.05}, app=app,
                           requires={"tags": [tag], "vram_gb": 24})
        # Then the worker hands it back before starting it, and it stays queued, saying why
        wait_for(lambda: "handing it back" in worker.log_text(), 30, what="the hand-back")
        assert stuck.status() == JobStatus.QUEUED
        assert stuck.waiting_for() == "no online worker has 24 GiB of VRAM"
        assert stuck.cancel()
    finally:
        worker.stop()
        app.close()
        with Connection(RABBITMQ_URL) as conn:
            conn.default_channel.queue_delete(tag_queue("simulation", tag))


def test_a_worker_started_while_a_job_waits_in_its_model_queue_runs_it_on_rabbitmq(
        rabbit_settings: Settings, tmp_path: Path, start_sim: Any):
    # Given jobs needing a model (a name of this test's own) submitted while no worker runs
    model = f"{rabbit_settings.machine_id}.safetensors"
    app = create_app(rabbit_settings)
    jobs = [submit_job("comfyui", {"workflow": checkpoint_workflow(model, f"j{i}")}, app=app) for i in range(8)]
    sim = start_sim(model)
    worker = WorkerProcess(child_env(settings_env(rabbit_settings), JOBQUEUE_CONNECTORS="comfyui",
                                     JOBQUEUE_COMFYUI_URL=sim.url),
                           queues=gpu_queue(rabbit_settings.gpu or 0), log_path=tmp_path / "worker.log")
    worker.cmd.remove("--without-gossip")  # as `celery worker` runs by default: one more step opening a channel
    try:
        # When a worker whose machine has the model starts (its model queue holds the jobs)
        worker.start().wait_ready(app, timeout=60)
        # Then it runs them (it did not die at start-up on the waiting messages)
        for job in jobs:
            result = job.wait(timeout=60)
            assert result["worker"] == worker.node_name and result["attempt"] == 0
        assert worker.exited_with() is None, worker.log_text()[-3000:]
    finally:
        worker.stop()
        app.close()
        with Connection(RABBITMQ_URL) as conn:
            conn.default_channel.queue_delete(model_queue("comfyui", model))
