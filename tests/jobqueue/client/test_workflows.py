"""Workflows: steps in order, earlier workflows first, $prev placeholders, failure and cancel.

Real Redis (the test's database) and real worker processes (threads pool, concurrency 1).
Execution order is read from the result backend: each finished step's ``date_done``; with one
job at a time, the order in which jobs finished is the order in which they ran.
"""

from __future__ import annotations

import json

import pytest

from jobqueue import JobFailed, WorkflowFailed, get_job, get_workflow, submit_job, submit_workflow
from jobqueue.errors import InvalidPayloadError, SubmitError, UnknownServiceError, WorkflowNotFound
from jobqueue.shared import queued
from jobqueue.shared.names import job_meta_from_kwargs
from jobqueue.shared.routing import broker_priority
from jobqueue.shared.steps import placeholder_paths, resolve_placeholders
from jobqueue.states import JobStatus
from jobqueue.transport.internals import redis_queue_keys
from tests.helpers import busy_worker, finished_order, quick, wait_for

# -- unit: placeholders ---------------------------------------------------------------------


def test_placeholders_are_found_anywhere_in_a_payload():
    payload = {"a": {"$prev": "output"}, "b": [1, {"c": {"$prev": "images.0.name"}}], "d": {"$prev": ""}}
    assert sorted(placeholder_paths(payload)) == ["", "images.0.name", "output"]


def test_placeholders_are_replaced_by_values_of_the_previous_result():
    previous = {"output": "cat", "images": [{"name": "a.png"}, {"name": "b.png"}]}
    payload = {"x": {"$prev": "output"}, "y": [{"$prev": "images.-1.name"}], "z": {"$prev": ""}, "k": 3}
    assert resolve_placeholders(payload, previous) == {"x": "cat", "y": ["b.png"], "z": previous, "k": 3}


def test_a_placeholder_path_missing_from_the_previous_result_is_a_clear_error():
    with pytest.raises(InvalidPayloadError, match="'images.3'"):
        resolve_placeholders({"x": {"$prev": "images.3"}}, {"images": []})


def test_a_placeholder_path_must_be_a_string():
    with pytest.raises(SubmitError):
        placeholder_paths({"x": {"$prev": 3}})


# -- submit-time validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, error, text",
    [
        ([], SubmitError, "1..100 steps"),
        ([("simulation", quick("a")), ("nope", {})], UnknownServiceError, "step 2"),
        ([("simulation", quick("a")), ("simulation", {"steps": -1})], InvalidPayloadError, "step 2"),
        ([("simulation", quick({"$prev": "output"}))], SubmitError, "step 1"),
        ([("simulation", quick("a")), "simulation"], SubmitError, "step 2"),
    ],
)
def test_an_invalid_step_refuses_the_whole_workflow_and_enqueues_nothing(app, redis_client, steps, error, text):
    # When a workflow with a bad step is submitted
    with pytest.raises(error, match=text):
        submit_workflow(steps, app=app)
    # Then no message reached any queue
    assert [k for k in redis_client.keys("*") if k.startswith(b"simulation")] == []


def test_workflow_steps_carry_workflow_id_step_priority_and_timestamp(app, redis_client):
    # When a three-step workflow is submitted (no worker: it stays queued)
    flow = submit_workflow([("simulation", quick(n)) for n in "abc"], priority=7, app=app)
    # Then the handle knows every step id up front, and the record finds them again
    assert len({step.id for step in flow.steps}) == 3
    assert [s.id for s in get_workflow(flow.id, app=app).steps] == [s.id for s in flow.steps]
    assert flow.status() == JobStatus.QUEUED
    # And the first step's message is on the broker at priority 7's lower level, with its meta
    key = redis_queue_keys("simulation")[broker_priority(7, is_redis=True)].encode()
    messages = redis_client.lrange(key, 0, -1)
    assert len(messages) == 1
    headers = json.loads(messages[0])["headers"]
    meta = job_meta_from_kwargs(headers["kwargsrepr"])
    assert headers["id"] == flow.steps[0].id
    assert meta["workflow_id"] == flow.id and meta["step"] == 1 and meta["priority"] == 7
    assert meta["workflow_steps"] == 3 and meta["workflow_submitted_at"] > 0


def test_an_unknown_workflow_id_is_not_found(app):
    with pytest.raises(WorkflowNotFound):
        get_workflow("no-such-workflow", app=app)


# -- acceptance, real worker ----------------------------------------------------------------


def test_an_earlier_workflow_runs_all_its_steps_before_a_later_one_starts(app, start_worker):
    # Given one worker, busy with another job
    start_worker("gpu0")
    busy_worker(app)
    # When workflow A (3 steps) and then workflow B (3 steps) are submitted
    a = submit_workflow([("simulation", quick(f"A{n}")) for n in (1, 2, 3)], app=app)
    b = submit_workflow([("simulation", quick(f"B{n}")) for n in (1, 2, 3)], app=app)
    a.wait(timeout=60)
    b.wait(timeout=60)
    # Then the worker ran A's steps, all of them, before B's first step
    order = finished_order(app, [s.id for s in a.steps + b.steps])
    assert order == ["A1", "A2", "A3", "B1", "B2", "B3"]
    assert a.status() == b.status() == JobStatus.COMPLETED


def test_a_step_takes_values_from_the_previous_steps_result(app, start_worker):
    # Given a worker
    start_worker("gpu0")
    # When step 2 asks for step 1's output and seed, and step 3 for step 2's output
    flow = submit_workflow(
        [
            ("simulation", quick("cat", seed=41)),
            ("simulation", quick({"$prev": "output"}, seed={"$prev": "seed"})),
            ("simulation", quick([{"$prev": "output"}, "hat"])),
        ],
        app=app,
    )
    last = flow.wait(timeout=60)
    # Then each step received the previous step's values
    results = flow.results()
    assert results[1]["output"] == "cat" and results[1]["seed"] == 41
    assert last["output"] == ["cat", "hat"]


def test_a_failing_step_fails_the_workflow_and_later_steps_never_run(app, start_worker):
    # Given a worker
    worker = start_worker("gpu0")
    # When step 2 of 3 fails
    flow = submit_workflow(
        [("simulation", quick("one")), ("simulation", quick("two", fail_at_step=1)), ("simulation", quick("three"))],
        app=app,
    )
    # Then waiting raises an error naming step 2 and its own error
    with pytest.raises(WorkflowFailed) as caught:
        flow.wait(timeout=60)
    assert isinstance(caught.value, JobFailed)
    assert caught.value.step == 2 and caught.value.job_id == flow.steps[1].id
    assert "step 2" in str(caught.value) and "simulated failure" in str(caught.value)
    assert caught.value.error["type"] == "ExecutionFailed"
    # And the workflow is failed; step 3 never ran: it ended cancelled, with the reason
    assert flow.status() == JobStatus.FAILED
    assert flow.statuses() == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]
    with pytest.raises(JobFailed, match="failed at step 2"):
        flow.steps[2].result()
    # And the worker is free and still does not run it
    after = submit_job("simulation", quick("after"), app=app)
    after.wait(timeout=30)
    assert flow.steps[2].status() == JobStatus.CANCELLED
    # And no step counts as queued any more (queue caps, jobqueue/shared/queued.py)
    assert queued.counts(app, ["simulation"]) == {"simulation": 0}
    assert f"jobqueue.run_job[{flow.steps[2].id}] received" not in worker.log_text()
    assert f"jobqueue.run_job[{flow.steps[1].id}] received" in worker.log_text()


def test_cancelling_a_running_workflow_runs_no_later_step(app, start_worker):
    # Given a worker running step 1 of a slow three-step workflow
    worker = start_worker("gpu0")
    slow = {"steps": 50, "step_seconds": 0.2}
    flow = submit_workflow([("simulation", {**slow, "output": n}) for n in ("s1", "s2", "s3")], app=app)
    wait_for(lambda: flow.steps[0].progress()["step"] >= 1, 30, what="step 1 to make progress")
    # When the workflow is cancelled
    assert flow.cancel() is True
    # Then it ends cancelled at once, step 1 stopped, and no later step runs
    with pytest.raises(WorkflowFailed) as caught:
        flow.wait(timeout=30)
    assert caught.value.step == 1 and caught.value.status == JobStatus.CANCELLED.value
    wait_for(lambda: flow.steps[0].status() == JobStatus.CANCELLED, 10)
    # (a job submitted afterwards runs next: the worker is idle, not on step 2)
    after = submit_job("simulation", quick("after"), app=app)
    after.wait(timeout=30)
    assert flow.statuses() == [JobStatus.CANCELLED] * 3
    assert f"jobqueue.run_job[{flow.steps[0].id}] received" in worker.log_text()
    for later in flow.steps[1:]:
        assert f"jobqueue.run_job[{later.id}] received" not in worker.log_text()
    assert flow.status() == JobStatus.CANCELLED
    assert flow.cancel() is False


def test_cancelling_a_pending_step_alone_cancels_the_steps_after_it(app, start_worker):
    # Given a worker running step 1 of a slow three-step workflow
    worker = start_worker("gpu0")
    slow = {"steps": 10, "step_seconds": 0.2}
    flow = submit_workflow([("simulation", {**slow, "output": n}) for n in ("s1", "s2", "s3")], app=app)
    wait_for(lambda: flow.steps[0].progress()["step"] >= 1, 30, what="step 1 to make progress")
    # When step 2 alone is cancelled through its own job handle (not the workflow's)
    assert get_job(flow.steps[1].id, app=app).cancel() is True
    # Then step 3 is cancelled at once too, with a reason naming step 2
    assert flow.statuses()[1:] == [JobStatus.CANCELLED, JobStatus.CANCELLED]
    with pytest.raises(JobFailed, match="cancelled at step 2"):
        flow.steps[2].result()
    # And step 1 still completes, the workflow ends cancelled at step 2, and neither later step
    # ever reaches the worker (a job submitted afterwards runs next)
    with pytest.raises(WorkflowFailed) as caught:
        flow.wait(timeout=60)
    assert caught.value.step == 2 and caught.value.status == JobStatus.CANCELLED.value
    after = submit_job("simulation", quick("after"), app=app)
    after.wait(timeout=30)
    assert flow.statuses() == [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.CANCELLED]
    for later in flow.steps[1:]:
        assert f"jobqueue.run_job[{later.id}] received" not in worker.log_text()
    assert flow.status() == JobStatus.CANCELLED


def test_cancelling_the_last_step_lets_the_earlier_steps_run(app, start_worker):
    # Given a three-step workflow whose last step is cancelled before anything runs
    flow = submit_workflow([("simulation", quick(n)) for n in ("s1", "s2", "s3")], app=app)
    assert flow.steps[2].cancel() is True
    # When a worker starts
    worker = start_worker("gpu0")
    # Then steps 1 and 2 complete, step 3 stays cancelled and never reaches the worker
    with pytest.raises(WorkflowFailed) as caught:
        flow.wait(timeout=60)
    assert caught.value.step == 3
    assert flow.statuses() == [JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.CANCELLED]
    assert flow.steps[1].result()["output"] == "s2"
    after = submit_job("simulation", quick("after"), app=app)
    after.wait(timeout=30)
    assert f"jobqueue.run_job[{flow.steps[2].id}] received" not in worker.log_text()


def test_cancelling_a_plain_job_touches_no_workflow(app, redis_client):
    # Given a plain queued job (no worker)
    job = submit_job("simulation", quick("plain"), app=app)
    # When it is cancelled, it ends cancelled and nothing else is written for it
    assert job.cancel() is True
    assert job.status() == JobStatus.CANCELLED
    assert not list(redis_client.scan_iter("jobqueue-workflow-step-*"))
