"""Queue caps (``JOBQUEUE_MAX_QUEUED``): over the cap nothing is enqueued and ``QueueFull`` says
when to come back; batches and workflows get in whole or not at all; the count follows real
workers (a start frees a place, a retry takes it again) and concurrent clients."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue import get_job, submit_batch, submit_job, submit_workflow
from jobqueue.config import Settings
from jobqueue.errors import ConfigError, QueueFull
from jobqueue.shared import queued
from jobqueue.shared.records import submitted_key
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.transport.internals import redis_queue_keys
from tests.helpers import quick, wait_for

SLOW = {"steps": 1, "step_seconds": 30.0, "output": "slow"}


def messages(redis_client: Any, queue: str = "simulation") -> int:
    return int(sum(redis_client.llen(key) for key in redis_queue_keys(queue)))


@pytest.fixture
def capped(settings: Settings) -> Iterator[Any]:
    """A client app whose simulation queue is capped at 3 (comfyui at 1)."""
    app = create_app(settings.model_copy(update={"max_queued": 3, "max_queued_by_service": {"comfyui": 1}}))
    yield app
    app.close()


def test_a_cap_of_zero_or_below_is_refused_with_the_variable_named():
    with pytest.raises(ConfigError, match="JOBQUEUE_MAX_QUEUED must be >= 1"):
        Settings.from_env({"JOBQUEUE_MAX_QUEUED": "0"})
    with pytest.raises(ConfigError, match="JOBQUEUE_MAX_QUEUED_BY_SERVICE"):
        Settings.from_env({"JOBQUEUE_MAX_QUEUED_BY_SERVICE": "comfyui=-2"})
    with pytest.raises(ConfigError, match="JOBQUEUE_MAX_QUEUED_BY_SERVICE"):
        Settings.from_env({"JOBQUEUE_MAX_QUEUED_BY_SERVICE": "comfyui"})
    settings = Settings.from_env({"JOBQUEUE_MAX_QUEUED": "7", "JOBQUEUE_MAX_QUEUED_BY_SERVICE": "comfyui=2"})
    assert (settings.max_queued_for("comfyui"), settings.max_queued_for("simulation")) == (2, 7)
    assert Settings.from_env({}).max_queued_for("simulation") is None


def test_over_the_cap_submit_raises_queue_full_and_enqueues_nothing(capped, redis_client):
    # Given a queue holding its cap of 3 jobs
    jobs = [submit_job("simulation", quick(n), app=capped) for n in range(3)]
    assert messages(redis_client) == 3
    # When a fourth is submitted
    with pytest.raises(QueueFull) as refused:
        submit_job("simulation", quick(4), app=capped, job_id="over-the-cap")
    # Then it is refused with the count, the cap and when to come back, and nothing was written
    assert (refused.value.service, refused.value.queued, refused.value.cap) == ("simulation", 3, 3)
    assert refused.value.retry_after > 0
    assert messages(redis_client) == 3
    assert not redis_client.exists(submitted_key("over-the-cap"))
    assert get_job("over-the-cap", app=capped).status() == JobStatus.UNKNOWN
    # And a cancel frees a place at once
    assert jobs[0].cancel() is True
    submit_job("simulation", quick(5), app=capped)
    assert queued.counts(capped, ["simulation"]) == {"simulation": 3}


def test_a_services_own_cap_is_counted_apart_from_the_others(capped, redis_client):
    from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW

    # Given comfyui capped at 1 (simulation at 3)
    submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=capped)
    with pytest.raises(QueueFull) as refused:
        submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=capped)
    assert (refused.value.service, refused.value.cap) == ("comfyui", 1)
    # Then simulation still has its own 3 places
    for n in range(3):
        submit_job("simulation", quick(n), app=capped)
    assert queued.counts(capped, ["comfyui", "simulation"]) == {"comfyui": 1, "simulation": 3}


def test_a_batch_gets_in_whole_or_not_at_all(capped, redis_client):
    submit_job("simulation", quick(0), app=capped)
    # When a batch of 3 would go one over the cap of 3
    with pytest.raises(QueueFull):
        submit_batch("simulation", quick("b"), 3, app=capped)
    # Then none of it is enqueued
    assert messages(redis_client) == 1
    # And a batch that fits gets in whole
    assert len(submit_batch("simulation", quick("b"), 2, app=capped)) == 2
    assert messages(redis_client) == 3


def test_a_workflow_gets_in_with_all_its_steps_or_not_at_all(capped, redis_client):
    submit_job("simulation", quick(0), app=capped)
    steps = [("simulation", quick(n)) for n in range(3)]
    # A workflow of 3 steps counts 3 places (its later steps are queued from the start)
    with pytest.raises(QueueFull):
        submit_workflow(steps, app=capped)
    assert messages(redis_client) == 1
    flow = submit_workflow(steps[:2], app=capped)
    assert queued.counts(capped, ["simulation"]) == {"simulation": 3}
    assert messages(redis_client) == 2  # its first step, and the job before it
    assert flow.status() == JobStatus.QUEUED


def test_two_clients_at_the_cap_never_both_get_in(settings, redis_client):
    # Given a cap of 5 and 8 clients racing for the last places from their own apps
    apps = [create_app(settings.model_copy(update={"max_queued": 5})) for _ in range(8)]
    submit_job("simulation", quick("first"), app=apps[0])
    start = threading.Barrier(len(apps))
    outcomes: list[str] = []

    def client(app: Any) -> None:
        start.wait()
        try:
            submit_job("simulation", quick("race"), app=app)
            outcomes.append("in")
        except QueueFull:
            outcomes.append("full")

    threads = [threading.Thread(target=client, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for app in apps:
        app.close()
    # Then exactly the 4 free places were taken, and the queue holds exactly its cap
    assert sorted(outcomes) == ["full"] * 4 + ["in"] * 4
    assert messages(redis_client) == 5


def test_a_real_worker_starting_a_job_frees_its_place(capped, start_worker, redis_client):
    # Given a full queue
    jobs = [submit_job("simulation", dict(SLOW, output=n), app=capped) for n in range(3)]
    with pytest.raises(QueueFull):
        submit_job("simulation", quick("late"), app=capped)
    # When a worker starts the first one
    start_worker("gpu0")
    wait_for(lambda: jobs[0].status() == JobStatus.PROCESSING, 30, what="the first job to start")
    # Then a place is free again, and only one (the others still wait: one worker, one job)
    wait_for(lambda: queued.counts(capped, ["simulation"])["simulation"] == 2, 10, what="the count to drop")
    late = submit_job("simulation", quick("late"), app=capped)
    with pytest.raises(QueueFull):
        submit_job("simulation", quick("later"), app=capped)
    for job in (*jobs, late):
        job.cancel()


def test_a_retried_job_takes_its_place_again_until_it_restarts(capped, start_worker, settings, tmp_path):
    # Given a worker whose simulated service goes down while it runs a job
    down = tmp_path / "down"
    start_worker("gpu0", simulation_down_file=str(down))
    job = submit_job("simulation", {"steps": 40, "step_seconds": 0.1, "output": "r"}, app=capped)
    wait_for(lambda: job.status() == JobStatus.PROCESSING, 30, what="the job to start")
    assert queued.counts(capped, ["simulation"])["simulation"] == 0
    # When the service goes down mid-job, the job goes back to its queue
    down.touch()
    wait_for(lambda: queued.counts(capped, ["simulation"])["simulation"] == 1, 20, what="the job to count again")
    # And once the service is back it restarts (its place freed again) and completes
    down.unlink()
    assert job.wait(timeout=60)["output"] == "r"
    assert queued.counts(capped, ["simulation"])["simulation"] == 0
