"""Issue 2, the rest of the job lifecycle through the real path (real Redis, real worker
processes): pinning a job to a GPU, a worker or a machine; cancelling a queued and a running
job; the absolute job timeout."""

from __future__ import annotations

import time

import pytest

from jobqueue.client.jobs import submit_job
from jobqueue.errors import JobFailed
from jobqueue.states import JobStatus
from tests.helpers import wait_for


def test_a_job_pinned_to_a_gpu_a_worker_or_a_machine_runs_only_there(app, start_worker, machine_id):
    # Given three idle workers that all consume the simulation queue: gpu0 and gpu1 of our
    # machine, and gpu0 of another machine
    gpu0 = start_worker("gpu0")
    gpu1 = start_worker("gpu1")
    other_machine = f"{machine_id}-other"
    elsewhere = start_worker("gpu0", MACHINE_ID=other_machine)
    assert elsewhere.node_name == f"gpu0@{other_machine}"
    pins = {
        "gpu1": gpu1.node_name,
        f"gpu0.{machine_id}": gpu0.node_name,
        f"machine.{other_machine}": elsewhere.node_name,
    }
    # When several short jobs are pinned to each target (one unpinned worker could win by luck
    # once, not four times out of four)
    handles = [(queue, submit_job("simulation", {"steps": 1, "output": queue}, queue=queue, app=app))
               for queue in pins for _ in range(4)]
    # Then every job ran on the one worker its pin names
    for queue, handle in handles:
        result = handle.wait(timeout=60)
        assert result["output"] == queue
        assert result["worker"] == pins[queue], (queue, result)


def test_cancelling_a_queued_and_a_running_simulation_job_ends_both_cancelled(app, start_worker):
    # Given one worker busy with a long job, and a second job queued behind it
    worker = start_worker("gpu0")
    running = submit_job("simulation", {"steps": 200, "step_seconds": 0.1}, app=app)
    wait_for(lambda: running.progress()["step"] >= 1, 30, what="the first job to start")
    queued = submit_job("simulation", {"steps": 1, "output": "must not run"}, app=app)
    assert queued.status() == JobStatus.QUEUED
    # When both are cancelled, the queued one first
    assert queued.cancel() is True
    cancelled_at = time.monotonic()
    assert running.cancel() is True
    # Then the running one stops long before its 20 s of work and both end cancelled
    for handle in (running, queued):
        with pytest.raises(JobFailed) as caught:
            handle.wait(timeout=30)
        assert caught.value.status == JobStatus.CANCELLED.value
        assert handle.status() == JobStatus.CANCELLED
    assert time.monotonic() - cancelled_at < 10
    assert running.progress()["step"] < 200
    # and the queued one never ran: the worker stays free and no step of it was reported
    follow_up = submit_job("simulation", {"steps": 1, "output": "after"}, app=app)
    assert follow_up.wait(timeout=30)["output"] == "after"
    assert queued.status() == JobStatus.CANCELLED
    assert f"jobqueue.run_job[{queued.id}] succeeded" not in worker.log_text()
    # and cancelling a job that has ended changes nothing
    assert follow_up.cancel() is False
    assert follow_up.status() == JobStatus.COMPLETED


def test_a_job_cancelled_while_no_worker_is_online_never_runs_once_one_starts(app, start_worker):
    # Given a job queued while no worker is online (no worker hears the revoke), then cancelled
    queued = submit_job("simulation", {"steps": 1, "output": "must not run"}, app=app)
    assert queued.cancel() is True
    assert queued.status() == JobStatus.CANCELLED
    # When a worker starts and reaches its message (a job sent after it runs behind it)
    worker = start_worker("gpu0")
    follow_up = submit_job("simulation", {"steps": 1, "output": "after"}, app=app)
    assert follow_up.wait(timeout=60)["output"] == "after"
    # Then the cancelled job never ran and still reads cancelled
    assert queued.status() == JobStatus.CANCELLED
    with pytest.raises(JobFailed) as caught:
        queued.wait(timeout=5)
    assert caught.value.status == JobStatus.CANCELLED.value
    assert f"jobqueue.run_job[{queued.id}] succeeded" not in worker.log_text()


def test_a_job_longer_than_its_own_timeout_ends_timed_out(app, start_worker):
    # Given a worker (whose default job timeout is an hour)
    start_worker("gpu0")
    # When a job of 30 s of work is submitted with a 2 s timeout
    started = time.monotonic()
    handle = submit_job("simulation", {"steps": 60, "step_seconds": 0.5}, timeout=2, app=app)
    with pytest.raises(JobFailed) as caught:
        handle.wait(timeout=30)
    # Then it ends timed_out soon after 2 s, saying which limit it hit
    elapsed = time.monotonic() - started
    assert caught.value.status == JobStatus.TIMED_OUT.value
    assert handle.status() == JobStatus.TIMED_OUT
    assert "timeout of 2.0 s" in caught.value.error["message"]
    assert 2 <= elapsed < 10
    # and a job within its timeout is unaffected
    assert submit_job("simulation", {"steps": 2, "step_seconds": 0.1, "output": "ok"}, timeout=5,
                      app=app).wait(timeout=30)["output"] == "ok"
