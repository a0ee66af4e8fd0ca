"""Scale to zero: ``jobqueue worker --exit-when-idle N`` (or ``JOBQUEUE_EXIT_WHEN_IDLE``) exits
with code 0 after N idle seconds, never while a job runs, and loses no job."""

from __future__ import annotations

import sys
import time
from typing import Any

from jobqueue import submit_job
from jobqueue.config import Settings
from jobqueue.up.procs import WORKER_OPTIONS, ChildProcess
from jobqueue.worker.idle import IdleWatch
from tests.conftest import settings_env
from tests.helpers import WorkerProcess, child_env, quick, wait_for


def cli_worker(settings: Settings, tmp_path: Any, *args: str, **env: str) -> WorkerProcess:
    """``jobqueue worker -Q gpu0 ARGS...`` through the CLI, as an operator runs it."""
    worker = WorkerProcess(child_env(settings_env(settings), **env), log_path=tmp_path / "cli-worker.log")
    worker.cmd = [sys.executable, "-m", "jobqueue.cli", "worker", "-Q", "gpu0", *WORKER_OPTIONS, *args]
    return worker


def test_the_idle_watch_fires_once_after_the_limit_and_a_busy_moment_restarts_the_count():
    now = [0.0]
    busy = [False]
    fired: list[float] = []
    watch = IdleWatch(10.0, lambda: fired.append(now[0]), busy=lambda: busy[0], clock=lambda: now[0])
    now[0] = 6.0
    busy[0] = True
    assert watch.check() is False  # a job: the count starts again
    busy[0] = False
    now[0] = 15.0
    assert watch.check() is False and fired == []
    now[0] = 16.0
    assert watch.check() is True and fired == [16.0]


def test_a_worker_exits_cleanly_after_its_idle_time_and_not_while_a_job_runs(settings, app, tmp_path):
    # Given a worker started by the CLI with --exit-when-idle 3
    worker: ChildProcess = cli_worker(settings, tmp_path, "--exit-when-idle", "3").start()
    try:
        worker.wait_ready(app)  # type: ignore[attr-defined]
        # When it runs a job longer than its idle time
        started = time.monotonic()
        job = submit_job("simulation", {"steps": 10, "step_seconds": 0.5, "output": "long"}, app=app)
        assert job.wait(timeout=60)["output"] == "long"
        # Then it was still there for the whole job, and exits with 0 about 3 s after it
        assert worker.exited_with() is None
        code = wait_for(lambda: worker.exited_with() is not None, 30, what="the idle worker to exit")
        assert worker.exited_with() == 0, worker.log_text()[-2000:]
        assert code and time.monotonic() - started >= 5.0 + 3.0
        assert "JOBQUEUE_EXIT_WHEN_IDLE" in worker.log_text()
        assert "Warm shutdown" in worker.log_text() or "warm shutdown" in worker.log_text().lower()
    finally:
        worker.stop()


def test_a_job_waiting_out_its_retry_on_a_worker_that_exits_idle_is_not_lost(settings, app, tmp_path, start_worker):
    # Given a worker (--exit-when-idle from the setting: 2 s) whose service is down, and a job
    # pinned to it: the job is not reached, and waits for its retry's countdown on that worker
    down = tmp_path / "down"
    down.touch()
    worker = cli_worker(settings, tmp_path, JOBQUEUE_EXIT_WHEN_IDLE="2",
                        JOBQUEUE_SIMULATION_DOWN_FILE=str(down)).start()
    worker.wait_ready(app)
    job = submit_job("simulation", quick("pinned"), queue="gpu0", app=app)
    wait_for(lambda: job.status().value == "retrying", 30, what="the job to be retried")
    # When the worker exits idle (code 0)
    wait_for(lambda: worker.exited_with() is not None, 30, what="the idle worker to exit")
    assert worker.exited_with() == 0, worker.log_text()[-2000:]
    # Then the job is back in its queue, and the next worker of that GPU runs it
    down.unlink()
    start_worker("gpu0")
    assert job.wait(timeout=60)["output"] == "pinned"
    worker.stop()
