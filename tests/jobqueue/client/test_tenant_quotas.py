"""A tenant's quota of queued jobs (``JOBQUEUE_TENANT_QUOTAS``): over it ``QuotaExceeded`` says
when to come back and nothing is enqueued; counted atomically with the queue caps, freed by a
start (a real worker) or a cancel. Over HTTP: tests/monitor/web/test_tenant_quota_api.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue import get_job, submit_batch, submit_job, submit_workflow
from jobqueue.config import Settings
from jobqueue.errors import QuotaExceeded, SubmitError
from jobqueue.shared.records import submitted_key, tenant_queued_key
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.transport.internals import redis_queue_keys
from tests.helpers import quick, wait_for

pytestmark = [pytest.mark.timeout(180)]

QUOTAS = "acme=queued:3;*=queued:5"


def messages(redis_client: Any, *queues: str) -> int:
    return int(sum(redis_client.llen(key) for queue in queues for key in redis_queue_keys(queue)))


@pytest.fixture
def quota_app(settings: Settings) -> Iterator[Any]:
    """A client app where tenant acme may have 3 jobs queued, every other tenant 5."""
    app = create_app(settings.model_copy(update={"tenant_quotas": QUOTAS}))
    yield app
    app.close()


def test_over_its_quota_a_tenants_submit_raises_quota_exceeded_and_enqueues_nothing(quota_app, redis_client):
    # Given acme with its 3 jobs queued
    jobs = [submit_job("simulation", quick(n), tenant="acme", app=quota_app) for n in range(3)]
    assert messages(redis_client, "acme/simulation") == 3
    # When it submits a fourth
    with pytest.raises(QuotaExceeded) as refused:
        submit_job("simulation", quick(4), tenant="acme", app=quota_app, job_id="over-quota")
    # Then it is refused saying whose quota, how full and when to come back; nothing was written
    assert isinstance(refused.value, SubmitError)
    assert (refused.value.tenant, refused.value.queued, refused.value.quota) == ("acme", 3, 3)
    assert refused.value.retry_after > 0 and "acme" in str(refused.value)
    assert messages(redis_client, "acme/simulation", "simulation") == 3
    assert not redis_client.exists(submitted_key("over-quota"))
    assert get_job("over-quota", app=quota_app).status() == JobStatus.UNKNOWN
    # And other tenants (and jobs without a tenant) are not held by acme's quota
    submit_job("simulation", quick("other"), tenant="other", app=quota_app)
    submit_job("simulation", quick("none"), app=quota_app)
    # And a cancel frees acme a place at once
    assert jobs[0].cancel() is True
    submit_job("simulation", quick(5), tenant="acme", app=quota_app)
    assert redis_client.zcard(tenant_queued_key("acme")) == 3


def test_a_tenants_batch_or_workflow_gets_in_whole_or_not_at_all(quota_app, redis_client):
    submit_job("simulation", quick(0), tenant="acme", app=quota_app)
    with pytest.raises(QuotaExceeded):
        submit_batch("simulation", quick("b"), 3, tenant="acme", app=quota_app)
    with pytest.raises(QuotaExceeded):
        submit_workflow([("simulation", quick(n)) for n in range(3)], tenant="acme", app=quota_app)
    assert messages(redis_client, "acme/simulation") == 1
    assert len(submit_batch("simulation", quick("b"), 2, tenant="acme", app=quota_app)) == 2
    assert redis_client.zcard(tenant_queued_key("acme")) == 3


def test_two_clients_at_a_tenants_quota_never_both_get_in(settings, redis_client):
    apps = [create_app(settings.model_copy(update={"tenant_quotas": "acme=queued:4"})) for _ in range(6)]
    submit_job("simulation", quick("first"), tenant="acme", app=apps[0])
    start = threading.Barrier(len(apps))
    outcomes: list[str] = []

    def client(app: Any) -> None:
        start.wait()
        try:
            submit_job("simulation", quick("race"), tenant="acme", app=app)
            outcomes.append("in")
        except QuotaExceeded:
            outcomes.append("full")

    threads = [threading.Thread(target=client, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for app in apps:
        app.close()
    assert sorted(outcomes) == ["full"] * 3 + ["in"] * 3
    assert messages(redis_client, "acme/simulation") == 4


def test_a_real_worker_starting_a_tenants_job_frees_its_place(quota_app, start_worker, redis_client):
    # Given acme at its quota of 3, with slow jobs
    slow = {"steps": 1, "step_seconds": 30.0}
    jobs = [submit_job("simulation", dict(slow, output=n), tenant="acme", app=quota_app) for n in range(3)]
    with pytest.raises(QuotaExceeded):
        submit_job("simulation", quick("late"), tenant="acme", app=quota_app)
    # When a worker starts the first one
    start_worker("gpu0")
    wait_for(lambda: jobs[0].status() == JobStatus.PROCESSING, 30, what="the first job to start")
    # Then acme has a place again
    submit_job("simulation", quick("now"), tenant="acme", app=quota_app)
    assert redis_client.zcard(tenant_queued_key("acme")) == 3
    for handle in jobs:
        handle.cancel()


def test_a_tenants_retried_job_takes_its_place_again_until_it_restarts(quota_app, start_worker, redis_client,
                                                                       tmp_path):
    # Given a tenant's job running on a worker whose simulated service goes down mid-job
    down = tmp_path / "down"
    start_worker("gpu0", simulation_down_file=str(down))
    job = submit_job("simulation", {"steps": 40, "step_seconds": 0.1, "output": "r"}, tenant="acme", app=quota_app)
    wait_for(lambda: job.status() == JobStatus.PROCESSING, 30, what="the job to start")
    assert redis_client.zcard(tenant_queued_key("acme")) == 0
    # When the service goes down, the job goes back to its queue, and counts against acme again
    down.touch()
    wait_for(lambda: redis_client.zcard(tenant_queued_key("acme")) == 1, 20, what="the job to count again")
    # And once the service is back it restarts in acme's queue and completes
    down.unlink()
    assert job.wait(timeout=60)["output"] == "r"
    assert redis_client.zcard(tenant_queued_key("acme")) == 0
