"""A service that comes back: the simulation connector refuses a job with ``ServiceNotReached``
while its service is down (as ComfyUI's and A1111's do), and a job pinned to that worker, held
for a retry's countdown (up to a minute), starts within a health check of the recovery."""

from __future__ import annotations

import time

from jobqueue import submit_job
from jobqueue.states import JobStatus
from jobqueue.worker.retrying import BACKOFF_CAP
from tests.helpers import quick, wait_for


def test_a_pinned_job_starts_within_seconds_of_its_service_returning_not_after_its_backoff(
        app, start_worker, redis_client, tmp_path):
    # Given a worker whose simulated service is down, and a pinned job that already waited
    # through several unreached attempts (its next backoff is the full minute)
    down = tmp_path / "down"
    down.touch()
    worker = start_worker("gpu0", simulation_down_file=str(down))
    job_id = "pinned-after-an-outage"
    redis_client.hset(f"jobqueue-retry-{job_id}", mapping={"uncounted": 6, "first": repr(time.time())})
    job = submit_job("simulation", quick("back"), queue="gpu0", job_id=job_id, app=app)
    # When it arrives while the service is down: not reached, retried (not failed, not counted)
    wait_for(lambda: job.status() == JobStatus.RETRYING, 30, what="the unreached job to be retried")
    assert "ServiceNotReached" in worker.log_text() or "not reached" in worker.log_text()
    assert redis_client.hget(f"jobqueue-retry-{job_id}", "uncounted") == b"7"
    # And the service comes back
    down.unlink()
    back = time.monotonic()
    # Then the job runs at once (one health check, 1 s here), not after its 60 s countdown
    assert job.wait(timeout=BACKOFF_CAP)["output"] == "back"
    assert time.monotonic() - back < 10.0
    assert "starting 1 job(s) waiting for a retry now" in worker.log_text()
