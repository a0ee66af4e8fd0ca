"""Stats keep their history: hourly counts of finished jobs outlive the jobs (pruning) and the
monitor (a restart on the same store), through the real writer and a real SQLite file."""

from __future__ import annotations

import json
import time
from typing import Any

from monitor.app import create_app
from monitor.ingest.hub import ChangeHub
from monitor.ingest.writer import Writer
from monitor.metrics import history
from monitor.metrics.totals import Totals
from monitor.store import Store

SETTINGS = {"broker_url": "redis://127.0.0.1:6379/14"}


def job_events(uuid: str, t: float, runtime: float, end: str = "task-succeeded") -> list[dict[str, Any]]:
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": t - 1})
    last: dict[str, Any] = {"type": end, "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": t + runtime}
    if end == "task-succeeded":
        last["runtime"] = runtime
    elif end == "task-failed":
        last["exception"] = "ExecutionFailed('boom', {})"
    return [
        {"type": "task-sent", "uuid": uuid, "kwargs": meta, "timestamp": t - 1},
        {"type": "task-started", "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": t},
        last,
    ]


def monitor(path: Any) -> tuple[Store, Writer, Any]:
    store = Store(f"sqlite:///{path}", keep_seconds=86400.0)
    writer = Writer(store, ChangeHub(), totals=Totals(store), prune_interval=3600.0).start()
    app = create_app({**SETTINGS, "monitor_db": store.url}, store=store, writer=writer)
    return store, writer, app.test_client()


def test_hourly_history_survives_pruning_of_the_jobs_and_a_restart_of_the_monitor(tmp_path):
    # Given a monitor fed through its real writer: this hour 2 completed (1 s and 3 s) and one
    # failed, two hours ago one completed and one cancelled
    now = time.time()
    this_hour, two_ago = history.hour_of(now), history.hour_of(now) - 2 * 3600
    store, writer, client = monitor(tmp_path / "m.db")
    try:
        events = [*job_events("a", this_hour + 1, 1.0), *job_events("b", this_hour + 2, 3.0),
                  *job_events("c", this_hour + 3, 0.5, "task-failed"),
                  *job_events("d", two_ago + 10, 2.0), *job_events("e", two_ago + 20, 0.0, "task-revoked")]
        for event in events:
            writer.put(event)
        assert writer.wait_idle(10)
        live = client.get("/api/stats").get_json()
        assert live["services"]["simulation"]["count"] == 5
        # When every finished job is pruned
        assert store.prune(now=now + 30 * 86400) == 5
        pruned = client.get("/api/stats").get_json()
    finally:
        writer.stop()
        store.close()
    # Then the current stats forget them, the history does not
    assert pruned["services"].get("simulation", {}).get("count", 0) == 0
    assert pruned["history"] == live["history"]
    hours = {entry["t"]: entry for entry in pruned["history"]["hours"]}
    assert sorted(hours) == [two_ago, this_hour]
    assert hours[this_hour] == {"t": this_hour, "completed": 2, "failed": 1, "cancelled": 0, "mean_runtime": 2.0}
    assert hours[two_ago] == {"t": two_ago, "completed": 1, "failed": 0, "cancelled": 1, "mean_runtime": 2.0}
    assert pruned["history"]["services"] == {"simulation": {"completed": 3, "failed": 1, "cancelled": 1}}

    # And a monitor started again on the same store shows the same history, bounded by ?hours=
    store, writer, client = monitor(tmp_path / "m.db")
    try:
        again = client.get("/api/stats").get_json()
        assert again["history"] == pruned["history"]
        recent = client.get("/api/stats?hours=2").get_json()["history"]
        assert [entry["t"] for entry in recent["hours"]] == [this_hour]
        assert recent["services"] == pruned["history"]["services"]
        bad = client.get("/api/stats?hours=lots")
        assert bad.status_code == 400 and "hours" in bad.get_json()["error"]["message"]
    finally:
        writer.stop()
        store.close()


def test_a_forged_finish_time_counts_in_the_current_hour_and_an_infinite_runtime_is_left_out():
    # Given an hourly delta (pure: no store)
    delta: history.HourlyDelta = history.HourlyDelta(list)
    now = 1_800_000_000.0
    # When a job completes, and one with a forged far-away finish time fails
    history.count(delta, service="comfyui", status="completed", finished_at=now - 10, runtime=4.0, now=now)
    history.count(delta, service="comfyui", status="failed", finished_at=1e18, runtime=float("inf"), now=now)
    # Then each lands in its hour (the forged one in the current hour), infinite runtimes left out
    assert dict(delta) == {
        (history.hour_of(now - 10), "comfyui", "completed"): [1.0, 4.0, 1.0],
        (history.hour_of(now), "comfyui", "failed"): [1.0, 0.0, 0.0],
    }
