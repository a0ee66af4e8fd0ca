"""Acceptance: a monitor started late tells the same truth as one that ran throughout, and a
cancel shows at once. Real Redis, real worker processes, real monitor processes.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import requests

from jobqueue.client.jobs import submit_job
from jobqueue.client.workflows import submit_workflow
from tests.helpers import wait_for

QUICK = {"steps": 2, "step_seconds": 0.1, "output": "ok"}
#: Fields of GET /api/jobs/<id> that depend on when and how a monitor learnt a job.
PER_MONITOR = {"seq", "eta_seconds", "eta_at", "queue_position", "events"}
#: Fields compared within 1 ms.
TIMES = {"submitted_at", "received_at", "started_at", "finished_at", "runtime"}


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields where two monitors' views of one job differ (times: by more than 1 ms)."""
    out = {}
    for key in (set(a) | set(b)) - PER_MONITOR:
        x, y = a.get(key), b.get(key)
        if key in TIMES and isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if abs(x - y) > 0.001:
                out[key] = (x, y)
        elif key == "meta" and isinstance(x, dict) and isinstance(y, dict):
            if differences(x, y):
                out[key] = (x, y)
        elif x != y:
            out[key] = (x, y)
    return out


def job_of(monitor: Any, job_id: str) -> dict[str, Any] | None:
    response = monitor.get(f"/api/jobs/{job_id}")
    return dict(response.json()) if response.status_code == 200 else None


def test_a_monitor_started_after_everything_ended_shows_every_job_as_the_one_that_ran_throughout(
        app, start_worker, start_monitor):
    # Given monitor A running throughout, and a worker
    early = start_monitor("early.db", monitor_repair_interval="2")
    worker = start_worker("gpu0")
    # When jobs complete, fail and time out, and a workflow runs
    done = [submit_job("simulation", QUICK, app=app) for _ in range(2)]
    images = {"images": [{"name": f"img{i}.png", "size": {"w": 512, "h": 512}} for i in range(60)]}
    big = submit_job("simulation", {"steps": 1, "step_seconds": 0.05, "output": images}, app=app)
    failing = submit_job("simulation", {"steps": 3, "step_seconds": 0.05, "fail_at_step": 2}, app=app)
    timed_out = submit_job("simulation", {"steps": 30, "step_seconds": 0.2}, timeout=1.0, app=app)
    flow = submit_workflow([("simulation", QUICK)] * 2, app=app)
    flow.wait(timeout=60)
    for handle in [*done, big, failing, timed_out]:
        wait_for(lambda h=handle: h.status().is_final, 60, what=f"job {handle.id} to end")
    # And a job is cancelled while it runs, and one while it waits behind it
    running = submit_job("simulation", {"steps": 100, "step_seconds": 0.1}, app=app)
    wait_for(lambda: running.status().value == "processing", 30, what="the long job to run")
    waiting = submit_job("simulation", QUICK, app=app)
    wait_for(lambda: (job_of(early, waiting.id) or {}).get("status") == "queued", 10, what="A to show it queued")
    cancelled_at = time.monotonic()
    assert waiting.cancel()
    wait_for(lambda: (job_of(early, waiting.id) or {}).get("status") == "cancelled", 1.0, interval=0.02,
             what="A to show the queued job cancelled within 1 s")
    assert time.monotonic() - cancelled_at <= 1.0
    # ... and one more queued job cancelled through the monitor's own endpoint
    by_api = submit_job("simulation", QUICK, app=app)
    wait_for(lambda: (job_of(early, by_api.id) or {}).get("status") == "queued", 10, what="A to show it queued")
    cancelled_at = time.monotonic()
    answer = requests.post(f"{early.url}/api/jobs/{by_api.id}/cancel", json={}, timeout=5)
    assert answer.status_code == 202, answer.text
    wait_for(lambda: (job_of(early, by_api.id) or {}).get("status") == "cancelled", 1.0, interval=0.02,
             what="A to show the job cancelled through its API within 1 s")
    assert time.monotonic() - cancelled_at <= 1.0
    # ... and one cancelled in a queue no worker consumes (no worker ever receives it)
    unreceived = submit_job("simulation", QUICK, queue="gpu9", priority=7, app=app)
    wait_for(lambda: (job_of(early, unreceived.id) or {}).get("status") == "queued", 10, what="A to show it queued")
    assert unreceived.cancel()
    assert running.cancel()
    wait_for(lambda: running.status().is_final, 30, what="the running job to stop")
    # And a worker is SIGKILLed mid-job and restarted, so its job is redelivered
    killed = submit_job("simulation", {"steps": 25, "step_seconds": 0.2, "output": "again"}, app=app)
    # (killed once it reported a step: Celery marks a job STARTED before our task body runs)
    wait_for(lambda: killed.progress()["step"] >= 1, 30, what="the job to report a step")
    worker.kill(signal.SIGKILL)
    start_worker("gpu0")
    killed.wait(timeout=90)
    ids = [h.id for h in [*done, big, failing, timed_out, running, waiting, by_api, unreceived, killed]] + [s.id for s in flow.steps]
    # And monitor B starts only after everything ended
    late = start_monitor("late.db", monitor_repair_interval="2")

    # Then B shows every job exactly as A does (times within 1 ms), once A's repair ran
    def agree() -> dict[str, Any]:
        diffs = {}
        for job_id in ids:
            a, b = job_of(early, job_id), job_of(late, job_id)
            if a is None or b is None:
                diffs[job_id] = ("missing", a is None, b is None)
            elif differences(a, b):
                diffs[job_id] = differences(a, b)
        return diffs

    try:
        wait_for(lambda: not agree(), 30, interval=0.5, what="both monitors to agree")
    except AssertionError:
        raise AssertionError(f"the monitors disagree: {agree()}") from None
    jobs = {job_id: job_of(late, job_id) for job_id in ids}
    assert {jobs[h.id]["status"] for h in done} == {"completed"}
    # (a result deeper and longer than Celery's event repr keeps is shown whole)
    assert jobs[big.id]["result"]["output"] == images
    assert jobs[failing.id]["status"] == "failed" and jobs[failing.id]["runtime"] is not None
    assert jobs[timed_out.id]["status"] == "timed_out"
    assert jobs[running.id]["status"] == "cancelled" and jobs[running.id]["started_at"] is not None
    assert jobs[waiting.id]["status"] == "cancelled" and jobs[waiting.id]["started_at"] is None
    assert jobs[by_api.id]["status"] == "cancelled" and jobs[by_api.id]["started_at"] is None
    assert jobs[waiting.id]["submitted_at"] < jobs[waiting.id]["finished_at"]
    never = jobs[unreceived.id]
    assert (never["status"], never["worker"], never["name"], never["priority"]) == ("cancelled", None, "jobqueue.run_job", 7)
    assert never["meta"]["payload_summary"] and never["routing_key"] == "gpu9"
    assert jobs[killed.id]["status"] == "completed" and jobs[killed.id]["attempt"] == 1
    assert jobs[killed.id]["result"]["output"] == "again"
    for job_id in ids:
        job = jobs[job_id]
        assert job["received_at"] is None or job["submitted_at"] < job["received_at"], job
        assert job["started_at"] is None or job["received_at"] <= job["started_at"], job
    # And B's timeline of the redelivered job holds its lifecycle rebuilt from the backend
    steps = [e["type"] for e in late.get(f"/api/jobs/{killed.id}").json()["events"]]
    assert steps.index("lost") < steps.index("task-succeeded")
    assert steps.count("task-started") == 2


def _publish(redis_client: Any, db: int, events: list[dict[str, Any]], monitor: Any) -> None:
    """Put forged (well-formed) events on the broker's event channels, as anyone could: a
    chunk at a time, each once the monitor has received the one before (a pub/sub subscriber
    that falls far behind is dropped by Redis)."""
    from bench.common import encode_event, event_channel

    def received() -> int:
        return int(((monitor.health() or {}).get("collector") or {}).get("received") or 0)

    for start in range(0, len(events), 1000):
        before = received()
        chunk = events[start:start + 1000]
        pipe = redis_client.pipeline(transaction=False)
        for event in chunk:
            pipe.publish(event_channel(db, event["type"]), encode_event(event))
        pipe.execute()
        target = before + len(chunk)
        wait_for(lambda t=target: received() >= t, 30, interval=0.05,
                 what="the monitor to receive the forged events")


def _strict_json(response: Any) -> Any:
    """The body parsed as strict JSON (NaN/Infinity refused); no 5xx."""
    import json

    def refuse(name: str) -> Any:
        raise AssertionError(f"{response.url}: non-standard JSON constant {name}")

    assert response.status_code < 500, (response.url, response.status_code, response.text[:300])
    return json.loads(response.text, parse_constant=refuse)


def test_forged_events_are_refused_or_corrected_within_one_repair_interval(
        app, settings, redis_client, start_worker, start_monitor):
    # Given a monitor (repair every 2 s, jobs nobody knows forgotten after 3 s), a worker, a
    # job that really failed, and a long job running with a real one queued behind it
    db = int(settings.broker_url.rsplit("/", 1)[1])
    monitor = start_monitor("m.db", monitor_repair_interval="2", monitor_unknown_job_expiry="3")
    worker = start_worker("gpu0")
    failing = submit_job("simulation", {"steps": 2, "step_seconds": 0.05, "fail_at_step": 1}, app=app)
    wait_for(lambda: (job_of(monitor, failing.id) or {}).get("status") == "failed", 30, what="the failure shown")
    running = submit_job("simulation", {"steps": 3000, "step_seconds": 0.1}, app=app)
    wait_for(lambda: (job_of(monitor, running.id) or {}).get("status") == "processing", 30, what="it runs")
    queued = submit_job("simulation", QUICK, app=app)
    wait_for(lambda: (job_of(monitor, queued.id) or {}).get("queue_position") == 1, 10, what="queued first")
    now = time.time()
    unknown = [f"forged-{i}" for i in range(20_000)]
    # When someone publishes well-formed lies: success for the failed job and for the running
    # one, its worker offline a year from now, a percent of 1e308, and 20,000 jobs nobody sent
    _publish(redis_client, db, [
        {"type": "task-succeeded", "uuid": failing.id, "result": "{'output': 'lie'}", "runtime": 0.1,
         "hostname": worker.node_name, "timestamp": now},
        {"type": "task-succeeded", "uuid": running.id, "result": "{}", "runtime": 0.1,
         "hostname": worker.node_name, "timestamp": now},
        {"type": "worker-offline", "hostname": worker.node_name, "timestamp": now + 365 * 86400},
        {"type": "task-progress", "uuid": running.id, "percent": 1e308, "step": 1, "total_steps": 2,
         "hostname": worker.node_name, "timestamp": now},
        *({"type": "task-sent", "uuid": job_id, "name": "jobqueue.run_job", "queue": "simulation",
           "kwargs": '{"service": "simulation", "queue": "simulation", "priority": 9}', "timestamp": now}
          for job_id in unknown),
    ], monitor)
    try:
        wait_for(lambda: (job_of(monitor, unknown[-1]) or {}).get("status") == "queued", 30,
                 what="the forged jobs to arrive")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; monitor health: {monitor.health()}") from None
    lied_at = time.monotonic()
    # Then the far-future offline and the infinite percent are refused and counted
    health = _strict_json(monitor.get("/healthz"))
    writer = health["collector"]["writer"]
    assert writer.get("refused_timestamp", 0) >= 1 and writer.get("refused_number", 0) >= 1, writer
    workers = {w["name"]: w for w in _strict_json(monitor.get("/api/workers"))["workers"]}
    assert workers[worker.node_name]["status"] == "online"
    # And the false final states are corrected from the backend within one repair interval
    # (the running job's once its false end is older than the grace period)
    wait_for(lambda: (job_of(monitor, failing.id) or {}).get("status") == "failed", 2 * 2 + 5, interval=0.2,
             what="the failed job back to failed")
    assert time.monotonic() - lied_at <= 2 * 2 + 5
    wait_for(lambda: (job_of(monitor, running.id) or {}).get("status") == "processing", 2 * 2 + 5, interval=0.2,
             what="the running job back to processing")
    shown = job_of(monitor, running.id)
    assert shown is not None and shown["progress"]["percent"] <= 100
    # And the jobs nobody knows are forgotten, so the real queued job is first again
    wait_for(lambda: _strict_json(monitor.get("/api/jobs", params={"state": "queued"}))["total"] == 1, 30,
             interval=0.5, what="the forged jobs forgotten")
    assert job_of(monitor, unknown[0]) is None
    shown_queued = job_of(monitor, queued.id) or {}
    assert (shown_queued.get("status"), shown_queued.get("queue_position")) == ("queued", 1)
    # And no endpoint answered 5xx or non-standard JSON meanwhile
    for path in ("/api/state", "/api/jobs", f"/api/jobs/{running.id}", "/api/workers", "/api/stats", "/healthz"):
        _strict_json(monitor.get(path))
    running.cancel()
