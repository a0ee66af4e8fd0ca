"""Acceptance: real Redis, real worker processes, real monitor processes.

A monitor started before the workers and one started after show the same state; a killed
monitor loses nothing; a killed worker goes offline and its job is not left processing.
"""

from __future__ import annotations

import signal
import time

from jobqueue.client.jobs import submit_job
from jobqueue.client.workflows import submit_workflow
from tests.helpers import wait_for
from tests.monitor.conftest import comparable

QUICK = {"steps": 3, "step_seconds": 0.1, "output": "ok"}


def _jobs(state):
    return {j["id"]: j for j in state["jobs"]}


def _run_some_jobs(app):
    handles = [submit_job("simulation", QUICK, app=app) for _ in range(3)]
    failing = submit_job("simulation", {"steps": 3, "step_seconds": 0.05, "fail_at_step": 2}, app=app)
    for handle in handles:
        handle.wait(timeout=30)
    wait_for(lambda: failing.status().is_final, 30, what="the failing job to end")
    return [h.id for h in handles], failing.id


def test_a_monitor_started_before_the_worker_and_one_started_after_show_the_same_state(
        app, start_worker, start_monitor):
    # Given a monitor that is up before any worker (flow 1)
    early = start_monitor("early.db")
    # When a worker starts and runs jobs, one of which fails, and a 3-step workflow
    worker = start_worker("gpu0")
    done, failed = _run_some_jobs(app)
    flow = submit_workflow([("simulation", QUICK)] * 3, priority=7, app=app)
    flow.wait(timeout=60)
    step_ids = [h.id for h in flow.steps]
    # And a second monitor starts only afterwards (flow 2)
    late = start_monitor("late.db")
    # Then both show the same machines, workers (with connector statuses, processed and
    # failed counts), jobs (with payload summaries, workflow steps and priorities)
    wait_for(lambda: comparable(early.state()) == comparable(late.state()), 20, interval=0.2,
             what="equal states")
    state = late.state()
    jobs = _jobs(state)
    assert {jobs[i]["payload_summary"] for i in done} == {"output='ok' step_seconds=0.1 steps=3"}
    assert [(jobs[i]["step"], jobs[i]["workflow_steps"], jobs[i]["priority"]) for i in step_ids] == \
        [(1, 3, 7), (2, 3, 7), (3, 3, 7)]
    # And the workflow's steps are shown together, in order, by both
    for monitor in (early, late):
        shown_flow = monitor.get(f"/api/workflows/{flow.id}").json()
        assert shown_flow["status"] == "completed" and shown_flow["total_steps"] == 3
        assert [s["id"] for s in shown_flow["steps"]] == step_ids
        listed = monitor.get("/api/jobs", params={"workflow": flow.id}).json()
        assert [j["id"] for j in listed["jobs"]] == step_ids
    assert {jobs[i]["status"] for i in done} == {"completed"}
    assert jobs[failed]["status"] == "failed" and jobs[failed]["error"]["type"] == "ExecutionFailed"
    assert all(jobs[i]["worker"] == worker.node_name for i in [*done, failed])
    (shown,) = [w for w in state["workers"] if w["name"] == worker.node_name]
    assert shown["status"] == "online" and shown["identity_complete"] is True
    assert (shown["processed"], shown["failed"]) == (7, 1)
    assert shown["connectors"]["simulation"]["status"] in ("idle", "active")
    assert shown["connectors"]["simulation"]["stale"] is False
    assert [m["id"] for m in state["machines"]] == [shown["machine_id"]]


def test_a_killed_and_restarted_monitor_loses_nothing_and_catches_up_within_5_seconds(
        app, start_worker, start_monitor):
    # Given a monitor that saw some jobs end, and a long job running
    monitor = start_monitor("m.db")
    start_worker("gpu0")
    done, failed = _run_some_jobs(app)
    long_job = submit_job("simulation", {"steps": 15, "step_seconds": 0.2}, app=app)
    wait_for(lambda: _jobs(monitor.state()).get(long_job.id, {}).get("status") == "processing", 15,
             what="the long job to show processing")
    wait_for(lambda: all(_jobs(monitor.state()).get(i, {}).get("status") in ("completed", "failed")
                         for i in [*done, failed]), 10, what="the first jobs to show ended")
    before = _jobs(monitor.state())
    # When the monitor is SIGKILLed, and jobs end while it is down
    monitor.kill(signal.SIGKILL)
    long_job.wait(timeout=30)
    while_down = submit_job("simulation", QUICK, app=app)
    while_down.wait(timeout=30)
    # And it is restarted on the same database
    started = time.monotonic()
    restarted = start_monitor("m.db", wait=False, port=monitor.port)

    def caught_up() -> bool:
        try:
            jobs = _jobs(restarted.state())
        except Exception:
            return False
        return jobs.get(long_job.id, {}).get("status") == "completed" and \
            jobs.get(while_down.id, {}).get("status") == "completed"

    wait_for(caught_up, 5.0, interval=0.1, what="jobs that ended while the monitor was down")
    assert time.monotonic() - started <= 5.5
    # Then nothing shown before is lost, and no job went back
    after = _jobs(restarted.state())
    for job_id, job in before.items():
        assert job_id in after
        if job["status"] in ("completed", "failed"):
            assert after[job_id]["status"] == job["status"]


def test_a_worker_killed_mid_job_is_offline_within_3_heartbeats_and_its_job_is_not_processing(
        app, settings, start_worker, start_monitor):
    # Given a worker running a long job that the monitor shows processing
    monitor = start_monitor("m.db")
    worker = start_worker("gpu0")
    job = submit_job("simulation", {"steps": 100, "step_seconds": 0.2}, app=app)
    wait_for(lambda: _jobs(monitor.state()).get(job.id, {}).get("status") == "processing", 15,
             what="the job to show processing")
    # When the whole worker is SIGKILLed
    worker.kill(signal.SIGKILL)
    killed = time.monotonic()

    def offline_and_not_processing() -> bool:
        state = monitor.state()
        shown = [w for w in state["workers"] if w["name"] == worker.node_name]
        return bool(shown) and shown[0]["status"] == "offline" and \
            _jobs(state)[job.id]["status"] != "processing"

    # Then within 3 heartbeat intervals (plus one sweep of the store) it is offline
    wait_for(offline_and_not_processing, 3 * settings.heartbeat_interval + 1.0, interval=0.1,
             what="worker offline and job not processing")
    assert time.monotonic() - killed <= 3 * settings.heartbeat_interval + 1.0
    # And its job shows as lost (no other worker can take it back yet)
    assert _jobs(monitor.state())[job.id]["status"] == "lost"
