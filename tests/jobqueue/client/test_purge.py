"""``purge()`` and ``jobqueue purge``: the jobs a purge removes are recorded cancelled, free their
places in the queue caps, and a worker started afterwards runs none of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobqueue import get_job, submit_job
from jobqueue.client.purge import purge
from jobqueue.errors import JobFailed
from jobqueue.shared import queued
from jobqueue.states import JobStatus
from tests.conftest import settings_env
from tests.helpers import child_env, quick, wait_for


def test_purged_jobs_read_cancelled_with_the_reason_and_free_their_queue_places(app, machine_id):
    # Given three jobs of mixed priority waiting in a queue nobody consumes
    queue = f"held.{machine_id}"
    handles = [submit_job("simulation", quick(n), priority=p, queue=queue, app=app) for n, p in enumerate((1, 5, 9))]
    assert queued.counts(app, ["simulation"])["simulation"] == 3
    # When the queue is purged
    report = purge(queue, app=app)
    # Then every job is removed and reads cancelled, saying why
    assert report.removed == 3 and sorted(report.jobs) == sorted(h.id for h in handles)
    for handle in handles:
        assert get_job(handle.id, app=app).status() == JobStatus.CANCELLED
        with pytest.raises(JobFailed, match=f"purged from queue {queue}"):
            get_job(handle.id, app=app).wait(timeout=5)
    # And their places in the service's queue are free again
    assert queued.counts(app, ["simulation"])["simulation"] == 0


def test_a_worker_started_after_a_purge_runs_none_of_the_purged_jobs(app, start_worker, machine_id):
    queue = f"gpu0.{machine_id}"
    purged = [submit_job("simulation", quick(n), queue=queue, app=app) for n in range(3)]
    assert purge(queue, app=app).removed == 3
    # When a worker starts on the queue and a new job is sent
    start_worker("gpu0")
    fresh = submit_job("simulation", quick("after"), queue=queue, app=app)
    # Then the new job runs and the purged ones stay cancelled
    assert fresh.wait(timeout=30)["output"] == "after"
    assert all(get_job(h.id, app=app).status() == JobStatus.CANCELLED for h in purged)


def test_the_purge_command_asks_first_and_reports_what_it_removed(app, settings, machine_id, tmp_path):
    queue = f"held.{machine_id}"
    submit_job("simulation", quick(1), queue=queue, app=app)
    env = child_env(settings_env(settings))
    # When the command is answered "no", nothing is removed
    refused = subprocess.run([sys.executable, "-m", "jobqueue.cli", "purge", queue], input="n\n", env=env,
                             capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert refused.returncode == 1 and "Aborted" in refused.stderr
    assert queued.counts(app, ["simulation"])["simulation"] == 1
    # And with --yes the message is removed and counted
    done = subprocess.run([sys.executable, "-m", "jobqueue.cli", "purge", queue, "--yes"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"purged 1 message(s) from {queue} (1 job(s) cancelled)" in done.stdout
    wait_for(lambda: queued.counts(app, ["simulation"])["simulation"] == 0, 5, what="the place freed")
