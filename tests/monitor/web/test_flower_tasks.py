"""Flower's task dicts from the store's events (monitor/web/flower_tasks.py), unit level; the
real path is tests/monitor/web/test_flower_api.py against a real Flower."""

from __future__ import annotations

from monitor.web.flower_tasks import FIELDS, sort_key, task_dict


def job(status: str, events: list[dict], **extra: object) -> dict:
    return {"id": "t1", "status": status, "name": None, "worker": None, "root_id": None, "parent_id": None,
            "children": [], "events": events, **extra}


def test_a_late_received_event_does_not_overwrite_what_started_said_and_clock_is_null():
    events = [{"type": "task-started", "timestamp": 2.0, "fields": {"hostname": "w1", "timestamp": 2.0}},
              {"type": "task-received", "timestamp": 1.0,
               "fields": {"hostname": "w1", "timestamp": 1.0, "name": "plain.add", "args": "(1, 2)", "retries": 0}},
              {"type": "task-succeeded", "timestamp": 3.0,
               "fields": {"hostname": "w1", "timestamp": 3.0, "result": "3", "runtime": 0.5}}]
    out = task_dict(job("completed", events, worker="w1"))
    assert tuple(out) == FIELDS
    assert out["state"] == "SUCCESS" and out["name"] == "plain.add" and out["args"] == "(1, 2)"
    assert (out["received"], out["started"], out["succeeded"], out["timestamp"]) == (1.0, 2.0, 3.0, 3.0)
    assert out["clock"] is None and out["worker"] == "w1" and out["result"] == "3"


def test_a_task_known_only_from_the_result_backend_has_its_state_and_no_invented_times():
    out = task_dict(job("failed", [], name="plain.boom"))
    assert out["state"] == "FAILURE" and out["name"] == "plain.boom"
    assert all(out[k] is None for k in ("received", "sent", "started", "failed", "timestamp", "client", "clock"))


def test_tasks_without_a_value_sort_first_as_in_flower():
    rows = [{"id": "b", "name": "x", "status": "queued", "received_at": None, "started_at": None},
            {"id": "a", "name": "Y", "status": "completed", "received_at": 5.0, "started_at": 6.0}]
    assert [r["id"] for r in sorted(rows, key=lambda r: sort_key(r, "received"))] == ["b", "a"]
    assert [r["id"] for r in sorted(rows, key=lambda r: sort_key(r, "name"))] == ["b", "a"]
