"""A worker drops requests whose broker connection is gone: after a Redis restart no phantom
request stays in ``inspect().active()``.

The restart test runs its own redis-server (append-only file, so queued jobs survive) on a
spare port: the shared Redis of the other tests is never restarted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.common import RedisServer
from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.worker.orphans import orphaned_requests
from tests.helpers import WorkerProcess, child_env, wait_for

# -- unit: which requests are orphans ----------------------------------------------------------

NOW = 1_800_000_000.0


def request(job_id: str, *, closed: bool, accepted: float = NOW - 60) -> Any:
    channel = SimpleNamespace(closed=closed)
    return SimpleNamespace(id=job_id, time_start=accepted, message=SimpleNamespace(channel=channel))


def test_a_request_of_a_closed_channel_whose_job_runs_nowhere_is_an_orphan():
    old = request("a", closed=True)
    assert orphaned_requests([old], running=[], now=NOW) == [old]


def test_a_request_whose_job_still_runs_here_is_kept_even_on_a_closed_channel():
    assert orphaned_requests([request("a", closed=True)], running=["a"], now=NOW) == []


def test_the_old_request_of_a_redelivered_running_job_is_an_orphan_and_the_new_one_is_kept():
    old, new = request("a", closed=True), request("a", closed=False)
    assert orphaned_requests([old, new], running=["a"], now=NOW) == [old]


def test_requests_of_an_open_channel_and_freshly_accepted_ones_are_kept():
    assert orphaned_requests([request("a", closed=False)], running=[], now=NOW) == []
    assert orphaned_requests([request("b", closed=True, accepted=NOW - 1)], running=[], now=NOW, grace=2) == []


def test_a_py_amqp_channel_that_is_not_open_counts_as_gone():
    amqp = SimpleNamespace(id="a", time_start=NOW - 60,
                           message=SimpleNamespace(channel=SimpleNamespace(is_open=False)))
    assert orphaned_requests([amqp], running=[], now=NOW) == [amqp]


# -- real path: a Redis restart ------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


def active_of(app: Any, name: str) -> list[dict[str, Any]] | None:
    """The worker's active requests, or None when inspect got no answer (broker reconnecting)."""
    try:
        replies = app.control.inspect(destination=[name], timeout=1.0).active() or {}
    except Exception:
        return None
    return replies.get(name)


@pytest.mark.timeout(240)
def test_a_redis_restart_leaves_no_phantom_active_request(private_redis: RedisServer, tmp_path: Path):
    # Given a worker on a private Redis, running the first of three short jobs that report progress
    settings = Settings(broker_url=private_redis.url(0), machine_id="orphans", visibility_timeout=6.0,
                        lease_interval=1.0, output_dir=str(tmp_path / "out")).resolved()
    app = create_app(settings)
    worker = WorkerProcess(child_env(settings.to_env()), "gpu0", log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(app)
        jobs = [submit_job("simulation", {"steps": 6, "step_seconds": 0.5, "output": f"j{n}"}, app=app)
                for n in range(3)]
        wait_for(lambda: jobs[0].progress()["step"] >= 1, 30, what="the first job to make progress")
        # When Redis is killed mid-job and comes back 4 s later (same port, same data): the job
        # ends while the broker is gone (progress is best effort, so only its end hits the dead
        # connection), which is what leaves a request of a dead connection behind
        private_redis.kill()
        time.sleep(4.0)  # not synchronisation: the outage under test
        private_redis.start()
        # Then every job completes (the interrupted one redelivered) ...
        for job in jobs:
            assert job.wait(timeout=120)["output"].startswith("j")
        assert all(job.status() == JobStatus.COMPLETED for job in jobs)
        # ... and the worker's active list empties: no request of a dead connection stays
        wait_for(lambda: active_of(app, worker.node_name) == [], 30, interval=0.5,
                 what="the worker's active list to be empty")
        # (and stays empty: the sweep does not race with a late phantom)
        for _ in range(3):
            assert active_of(app, worker.node_name) in ([], None)
    finally:
        worker.stop()
        app.close()
    log = worker.log_text()
    # The restart did leave an orphan behind, and the worker dropped it (not Celery on its own)
    assert "dropped orphaned request of job" in log, log[-3000:]
