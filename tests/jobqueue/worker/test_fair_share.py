"""Fair share and tenant quotas through the real path: real worker processes on the test's
Redis, jobs submitted with ``submit_job(..., tenant=...)``."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.shared.records import tenant_running_key
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from tests.capability_fixtures import consumes
from tests.helpers import wait_for

pytestmark = [pytest.mark.timeout(180)]


def job(seconds: float, output: Any) -> dict[str, Any]:
    return {"steps": 1, "step_seconds": seconds, "output": output}


def finish_order(app: Any, handles: list[Any]) -> list[str]:
    """The outputs of ``handles`` in the order their results were stored."""
    done = []
    for handle in handles:
        result = app.AsyncResult(handle.id)
        assert result.state == "SUCCESS", (handle.id, result.state)
        done.append((result.date_done, result.result["output"]))
    return [output for _, output in sorted(done)]


def test_a_second_tenants_jobs_are_taken_in_turns_with_the_first_tenants_backlog(app, start_worker):
    # Given one worker, and tenant a's backlog of 30 jobs
    worker = start_worker("gpu0")
    a_jobs = [submit_job("simulation", job(0.15, f"a{i}"), tenant="a", app=app) for i in range(30)]
    wait_for(lambda: consumes(app, worker, "a/simulation"), 20, what="the worker to consume a's queue")
    # When tenant b submits 3 jobs behind them
    b_jobs = [submit_job("simulation", job(0.15, f"b{i}"), tenant="b", app=app) for i in range(3)]
    # Then they went to b's own queue, and the worker takes them in turns with a's
    assert app.AsyncResult(b_jobs[0].id).state == "PENDING"
    for handle in a_jobs + b_jobs:
        handle.wait(timeout=90)
    order = finish_order(app, a_jobs + b_jobs)
    last_b = max(order.index(f"b{i}") for i in range(3))
    assert last_b < 20, order  # FIFO would put them at 30..32
    b_positions = sorted(order.index(f"b{i}") for i in range(3))
    assert b_positions[2] - b_positions[0] <= 5, order  # one in every other job, not in a burst at the end
    # And each tenant's own jobs kept their order
    assert [o for o in order if o.startswith("a")] == [f"a{i}" for i in range(30)]


def test_with_fair_share_off_the_second_tenant_waits_behind_the_whole_backlog(app, settings, start_worker):
    # Given a job queued in tenant c's queue while fair share was on
    stranded = submit_job("simulation", job(0.05, "c0"), tenant="c", app=app)
    # And clients and a worker with fair share off (one queue per service, FIFO in a priority)
    fifo = create_app(settings.model_copy(update={"fair_share": False}))
    try:
        start_worker("gpu0", FAIR_SHARE="0")
        a_jobs = [submit_job("simulation", job(0.05, f"a{i}"), tenant="a", app=fifo) for i in range(10)]
        b_jobs = [submit_job("simulation", job(0.05, f"b{i}"), tenant="b", app=fifo) for i in range(2)]
        for handle in a_jobs + b_jobs:
            handle.wait(timeout=60)
        # Then b's jobs ran last
        assert finish_order(fifo, a_jobs + b_jobs)[-2:] == ["b0", "b1"]
        # And the job left in c's queue still ran
        assert stranded.wait(timeout=30)["output"] == "c0"
    finally:
        fifo.close()


def test_priorities_keep_their_meaning_within_and_across_tenants(app, start_worker):
    # Given a worker busy with a blocker, then tenant a's low-priority jobs and its one urgent job
    worker = start_worker("gpu0")
    blocker = submit_job("simulation", job(2.0, "blocker"), tenant="a", app=app)
    wait_for(lambda: blocker.status() == JobStatus.PROCESSING, 30, what="the blocker to run")
    low = [submit_job("simulation", job(0.05, f"low{i}"), tenant="a", priority=2, app=app) for i in range(3)]
    urgent = submit_job("simulation", job(0.05, "urgent"), tenant="a", priority=9, app=app)
    wait_for(lambda: consumes(app, worker, "a/simulation"), 20, what="the worker to consume a's queue")
    # When they all run
    for handle in [blocker, *low, urgent]:
        handle.wait(timeout=60)
    # Then the urgent one ran first of the queued ones
    assert finish_order(app, [blocker, *low, urgent])[:2] == ["blocker", "urgent"]


def test_a_tenants_running_quota_holds_across_two_workers_and_every_job_still_runs(settings, start_worker, redis_client):
    # Given a running quota of 1 for tenant a, on the clients and on two workers
    quotas = "a=running:1"
    client = create_app(settings.model_copy(update={"tenant_quotas": quotas}))
    try:
        start_worker("gpu0", TENANT_QUOTAS=quotas)
        start_worker("gpu1", TENANT_QUOTAS=quotas)
        # When tenant a submits 4 jobs of 0.8 s and tenant b 2
        a_jobs = [submit_job("simulation", job(0.8, f"a{i}"), tenant="a", app=client) for i in range(4)]
        b_jobs = [submit_job("simulation", job(0.8, f"b{i}"), tenant="b", app=client) for i in range(2)]
        most = 0
        deadline = time.monotonic() + 90
        while not all(h.status() == JobStatus.COMPLETED for h in a_jobs + b_jobs):
            assert time.monotonic() < deadline, [h.status() for h in a_jobs + b_jobs]
            most = max(most, sum(h.status() == JobStatus.PROCESSING for h in a_jobs))
            time.sleep(0.05)  # a sampling interval, not a synchronisation
        # Then a never ran two at once, and every job completed on its first attempt
        assert most == 1
        ends = [(client.AsyncResult(h.id).date_done.timestamp(), client.AsyncResult(h.id).result["duration"])
                for h in a_jobs]
        intervals = sorted((end - duration, end) for end, duration in ends)
        assert all(prev[1] <= nxt[0] + 0.05 for prev, nxt in zip(intervals, intervals[1:], strict=False)), intervals
        assert {client.AsyncResult(h.id).result["attempt"] for h in a_jobs + b_jobs} == {0}
        # And no place is left held
        wait_for(lambda: redis_client.zcard(tenant_running_key("a")) == 0, 10, what="a's places to be released")
    finally:
        client.close()


def test_a_tenants_job_whose_worker_is_killed_comes_back_to_its_queue_and_completes(settings, start_worker,
                                                                                      redis_client):
    # Given a tenant with a running quota of 1, and its job running on worker A
    quotas = "acme=running:1"
    client = create_app(settings.model_copy(update={"tenant_quotas": quotas}))
    try:
        first = start_worker("gpu0", TENANT_QUOTAS=quotas)
        handle = submit_job("simulation", {"steps": 8, "step_seconds": 0.5, "output": "survived"}, tenant="acme",
                            app=client)
        wait_for(lambda: handle.progress()["step"] >= 1, 30, what="the job to start on the first worker")
        assert redis_client.zcard(tenant_running_key("acme")) == 1
        # When A is SIGKILLed (no goodbye: its running place is never released) and B starts
        first.kill(signal.SIGKILL)
        second = start_worker("gpu1", TENANT_QUOTAS=quotas)
        # Then the job comes back from acme's queue to B (it still holds its place: counted once)
        result = handle.wait(timeout=90)
        assert result["worker"] == second.node_name and result["output"] == "survived"
        wait_for(lambda: redis_client.zcard(tenant_running_key("acme")) == 0, 10, what="the place to be released")
    finally:
        client.close()


def test_a_tenants_jobs_with_requirements_or_a_pin_still_run_where_they_must(app, start_worker):
    # Given a worker declaring tag "fast" and one without it
    tagged = start_worker("gpu0", WORKER_TAGS="fast")
    plain = start_worker("gpu1")
    # When tenant acme submits a job needing the tag, and one pinned to the plain worker's GPU
    needs = submit_job("simulation", job(0.05, "tagged"), tenant="acme", requires={"tags": ["fast"]}, app=app)
    pinned = submit_job("simulation", job(0.05, "pinned"), tenant="acme", queue="gpu1", app=app)
    # Then the first went to acme's queue beside the tag queue and runs on the tagged worker
    assert needs.wait(timeout=60)["worker"] == tagged.node_name
    assert app.AsyncResult(needs.id).kwargs["options"]["queue"] == "acme/simulation.tag.fast"
    # And the pinned one stayed pinned
    assert pinned.wait(timeout=60)["worker"] == plain.node_name
    assert app.AsyncResult(pinned.id).kwargs["options"]["queue"] == "gpu1"
