"""A job that already succeeded never runs again: a copy of its message that comes back (its
acknowledgement was lost with a broker that failed over or restarted) is dropped by the worker,
its result and facts left as they were (real Redis, a real worker)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from jobqueue.client.jobs import prepare_job, submit_job
from jobqueue.shared import job_record
from jobqueue.shared.names import RUN_JOB_TASK
from tests.helpers import quick, wait_for

pytestmark = pytest.mark.timeout(120)


def test_a_copy_of_a_succeeded_jobs_message_is_dropped_without_running(
        app: Any, start_worker: Any, redis_client: redis.Redis) -> None:
    # Given a job that ran and succeeded on a real worker
    worker = start_worker("gpu0")
    handle = submit_job("simulation", quick("first run"), app=app)
    assert handle.wait(timeout=60)["output"] == "first run"
    before = job_record.read_many(redis_client, [handle.id])[handle.id]
    # When a copy of its message is delivered again (same job id, as a restored message is)
    kwargs, options = prepare_job("simulation", quick("first run"), is_redis=True, job_id=handle.id)
    app.send_task(RUN_JOB_TASK, kwargs=kwargs, **options)
    # Then the worker drops it: it says so, and the copy is acknowledged (nothing left unacked)
    wait_for(lambda: "already succeeded" in worker.log_text(), 30, what="the copy to be dropped")
    wait_for(lambda: redis_client.hlen("unacked") == 0, 10, what="the copy to be acknowledged")
    # And the job's result and facts are those of its one run
    assert handle.result()["output"] == "first run"
    after = job_record.read_many(redis_client, [handle.id])[handle.id]
    assert (after["started_at"], after["finished_at"], after["worker"]) == \
        (before["started_at"], before["finished_at"], before["worker"])
    assert worker.log_text().count(f"Task {RUN_JOB_TASK}[{handle.id}] succeeded") == 1
