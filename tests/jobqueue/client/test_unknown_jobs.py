"""Unknown job ids read ``unknown``; a job still waiting in its queue never does (real Redis)."""

from __future__ import annotations

import pytest

from jobqueue import get_job, submit_batch, submit_job, submit_workflow
from jobqueue.errors import JobNotFound
from jobqueue.shared.records import submitted_key
from jobqueue.states import JobStatus
from tests.helpers import quick


def test_an_id_never_submitted_reads_unknown_and_cannot_be_waited_for(app):
    # Given a handle on an id nobody submitted
    handle = get_job("never-submitted-0001", app=app)
    # Then its status is unknown, and waiting or asking for the result says so at once
    assert handle.status() == JobStatus.UNKNOWN
    with pytest.raises(JobNotFound, match="never-submitted-0001"):
        handle.wait(timeout=30)
    with pytest.raises(JobNotFound):
        handle.result()
    # and there is nothing to cancel
    assert handle.cancel() is False
    assert get_job("never-submitted-0001", app=app).status() == JobStatus.UNKNOWN


def test_jobs_waiting_in_their_queue_read_queued_from_a_fresh_handle(app):
    # Given a job, a batch and a workflow submitted while no worker runs
    job = submit_job("simulation", quick("a"), queue="gpu7", app=app)
    batch = submit_batch("simulation", quick("b", seed=1), 3, vary={"seed": "increment"}, queue="gpu7", app=app)
    flow = submit_workflow([("simulation", quick("c")), ("simulation", quick("d"))], queue="gpu7", app=app)
    # When fresh handles (as another process would build) ask for their status
    ids = [job.id, *(h.id for h in batch), *(h.id for h in flow.steps)]
    # Then every one is queued (the workflow's second step too, though nobody sent it yet)
    assert [get_job(i, app=app).status() for i in ids] == [JobStatus.QUEUED] * len(ids)


def test_the_submit_record_expires_with_the_results(app, redis_client):
    # Given a submitted job
    job = submit_job("simulation", quick("x"), queue="gpu7", app=app)
    # Then its record lives as long as results do, not for ever
    ttl = redis_client.ttl(submitted_key(job.id))
    assert 0 < ttl <= app.conf.result_expires
