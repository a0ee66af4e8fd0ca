"""Soft shutdown (jobqueue/worker/shutdown.py): on SIGTERM a worker stops taking jobs, gives the
running one ``JOBQUEUE_SOFT_SHUTDOWN_TIMEOUT`` s, then hands it back to its queue (no retry
used) and exits before the orchestrator's SIGKILL. Real subprocess workers on the real Redis;
"exactly once" is counted from the workers' own ``task-succeeded`` events."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.states import JobStatus, job_status_from_celery, status_for_retry
from jobqueue.worker.shutdown import SoftShutdown
from tests.helpers import wait_for
from tests.jobqueue.event_capture import EventCapture

pytestmark = pytest.mark.timeout(240)

#: The orchestrator's patience in these drills: SIGKILL this long after SIGTERM.
KILL_AFTER = 10.0


@pytest.fixture
def capture(app: Any) -> Iterator[EventCapture]:
    events = EventCapture(app).start()
    yield events
    events.stop()


def long_job(app: Any, seconds: float, output: str) -> Any:
    return submit_job("simulation", {"steps": int(seconds / 0.25), "step_seconds": 0.25, "output": output}, app=app)


def orchestrator_stop(worker: Any, kill_after: float = KILL_AFTER) -> dict[str, float | bool]:
    """SIGTERM ``worker``'s process group, then SIGKILL it ``kill_after`` s later if it is still
    there (what Kubernetes or systemd does); return when it exited and whether it was killed."""
    assert worker.proc is not None
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)  # the worker's main process, as an orchestrator does
    try:
        worker.proc.wait(timeout=kill_after)
        return {"after": time.monotonic() - sent, "killed": False}
    except Exception:
        worker.kill(signal.SIGKILL)
        return {"after": time.monotonic() - sent, "killed": True}


def succeeded_on(capture: EventCapture, job_id: str) -> list[str]:
    return [e.get("hostname", "") for e in capture.matching("task-succeeded", uuid=job_id)]


def test_a_stopping_workers_hand_back_reads_queued_not_retrying():
    assert status_for_retry("WorkerStopping") == JobStatus.QUEUED
    assert job_status_from_celery("RETRY", "WorkerStopping") == JobStatus.QUEUED
    assert status_for_retry("Retry", "Retry(WorkerStopping('worker gpu0@m stopped'), 0)") == JobStatus.QUEUED


def test_the_soft_shutdown_waits_for_a_job_that_ends_within_the_grace_and_hands_back_nothing():
    # Given a job that ends 0.3 s into a 5 s grace
    running = ["job-1"]
    threading.Timer(0.3, running.clear).start()
    handed: list[list[str]] = []
    started = time.monotonic()
    # When the worker stops
    result = SoftShutdown(5.0, running=lambda: list(running), hand_back=handed.append).run()
    # Then nothing is handed back, and the stop returned as soon as the job ended
    assert result == [] and handed == []
    assert time.monotonic() - started < 3.0


def test_the_soft_shutdown_hands_back_a_job_that_outlives_the_grace_once():
    # Given a job that only ends when it is interrupted
    running = ["job-1"]
    handed: list[list[str]] = []

    def hand_back(ids: list[str]) -> None:
        handed.append(ids)
        threading.Timer(0.3, running.clear).start()  # the service reacts to the cancel

    started = time.monotonic()
    # When the worker stops with a 0.5 s grace
    result = SoftShutdown(0.5, running=lambda: list(running), hand_back=hand_back).run()
    # Then it was handed back once, after the grace
    assert result == ["job-1"] and handed == [["job-1"]]
    assert 0.5 <= time.monotonic() - started < 5.0


@pytest.mark.slow
def test_sigterm_hands_a_long_job_back_after_the_grace_and_it_completes_exactly_once_elsewhere(
        start_worker, app, capture):
    # Given a worker with a 3 s grace running a 12 s job, and a second worker for the service
    first = start_worker("gpu0", soft_shutdown_timeout="3")
    job = long_job(app, 12, "handed-back")
    wait_for(lambda: job.status() == JobStatus.PROCESSING, 30, what="the job to start on the first worker")
    second = start_worker("gpu1")
    # When the orchestrator SIGTERMs the first worker, SIGKILL 10 s later
    stopped = orchestrator_stop(first)
    # Then the worker handed the job back and exited on its own, cleanly, before the SIGKILL
    assert stopped["killed"] is False, first.log_text()[-3000:]
    assert first.exited_with() == 0
    assert stopped["after"] < KILL_AFTER
    assert "handed back to its queue" in first.log_text()
    # And the job completes exactly once, on the second worker, its retries untouched
    assert job.wait(timeout=90)["output"] == "handed-back"
    wait_for(lambda: succeeded_on(capture, job.id), 15, what="the task-succeeded event")
    assert succeeded_on(capture, job.id) == [second.node_name]
    meta = app.backend.get_task_meta(job.id)
    assert meta["result"]["worker"] == second.node_name
    assert (meta.get("retries") or 0) == 0
    # (a hand-back, not a retry: the first worker said it went back to its queue)
    retried = capture.matching("task-retried", uuid=job.id)
    assert retried and "WorkerStopping" in str(retried[0].get("exception"))


@pytest.mark.slow
def test_sigterm_lets_a_job_shorter_than_the_grace_complete_on_the_same_worker(start_worker, app, capture):
    # Given a worker with an 8 s grace running a 3 s job
    worker = start_worker("gpu0", soft_shutdown_timeout="8")
    job = long_job(app, 3, "finished-here")
    wait_for(lambda: job.status() == JobStatus.PROCESSING, 30, what="the job to start")
    # When the orchestrator SIGTERMs it
    stopped = orchestrator_stop(worker)
    # Then the job completed there, and the worker exited right after it, not at the grace's end
    assert stopped["killed"] is False and worker.exited_with() == 0
    assert stopped["after"] < 8.0, worker.log_text()[-3000:]
    assert job.wait(timeout=10)["output"] == "finished-here"
    wait_for(lambda: succeeded_on(capture, job.id), 15, what="the task-succeeded event")
    assert succeeded_on(capture, job.id) == [worker.node_name]
    assert "handed back to its queue (the worker is stopping)" not in worker.log_text()
    assert not capture.matching("task-retried", uuid=job.id)


@pytest.mark.slow
def test_a_worker_sigkilled_during_its_grace_loses_nothing_and_the_job_completes_once_elsewhere(
        start_worker, app, capture):
    # Given a worker with the default 20 s grace running a 16 s job, and a second worker
    first = start_worker("gpu0")
    job = long_job(app, 16, "after-kill")
    wait_for(lambda: job.status() == JobStatus.PROCESSING, 30, what="the job to start on the first worker")
    second = start_worker("gpu1")
    # When the orchestrator SIGTERMs it and SIGKILLs it 10 s later, in the middle of the grace
    stopped = orchestrator_stop(first)
    assert stopped["killed"] is True
    # Then the job was kept leased during the grace (the second worker did not take it), and
    # once the lease lapses it runs on the second worker and completes exactly once
    assert job.wait(timeout=120)["output"] == "after-kill"
    wait_for(lambda: succeeded_on(capture, job.id), 15, what="the task-succeeded event")
    assert succeeded_on(capture, job.id) == [second.node_name]
    starts = [e.get("hostname") for e in capture.matching("task-started", uuid=job.id)]
    assert starts == [first.node_name, second.node_name]
