"""The REST API on a fresh app and store: reads, JSON errors, the auth check, metrics."""

from __future__ import annotations

import base64
import json

import pytest

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from monitor.app import create_app
from monitor.merge.apply import apply
from monitor.server import Monitor

T0 = 1_700_000_000.0


def seed(flask_app) -> None:
    store = flask_app.extensions["jobqueue_monitor"].store
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": T0})
    events = [
        {"type": "connector-status", "worker": "gpu0@vm1", "machine_id": "vm1", "gpu": 0, "service": "simulation",
         "status": "idle", "timestamp": T0, "queues": ["gpu0", "simulation"]},
        {"type": "task-sent", "uuid": "a", "kwargs": meta, "timestamp": T0},
        {"type": "task-started", "uuid": "a", "hostname": "gpu0@vm1", "timestamp": T0 + 1},
        {"type": "task-succeeded", "uuid": "a", "hostname": "gpu0@vm1", "timestamp": T0 + 3, "runtime": 2.0},
        {"type": "task-sent", "uuid": "b", "kwargs": meta, "timestamp": T0 + 1},
        {"type": "task-failed", "uuid": "b", "hostname": "gpu0@vm1", "timestamp": T0 + 4,
         "exception": "ExecutionFailed('boom', {})"},
        {"type": "task-sent", "uuid": "c", "kwargs": meta, "timestamp": T0 + 2},
    ]
    with store.write() as tx:
        for event in events:
            apply(event, tx)


def test_the_state_holds_machines_workers_and_jobs_at_one_seq(flask_app, client):
    seed(flask_app)
    state = client.get("/api/state").get_json()
    assert state["seq"] > 0
    assert [m["id"] for m in state["machines"]] == ["vm1"]
    assert state["workers"][0]["connectors"]["simulation"]["status"] == "idle"
    assert {j["id"]: j["status"] for j in state["jobs"]} == {"a": "completed", "b": "failed", "c": "queued"}
    queued = [j for j in state["jobs"] if j["id"] == "c"][0]
    assert queued["queue_position"] == 1 and queued["eta_seconds"] == 2.0  # 1 × median of 2 s


def test_estimates_give_every_queued_job_the_position_and_wait_the_state_shows(flask_app, client):
    seed(flask_app)
    body = client.get("/api/estimates").get_json()
    assert body["jobs"] == {"c": {"position": 1, "wait": 2.0, "load": 0.0}}  # only the queued job: 1 × median of 2 s
    assert isinstance(body["at"], float)
    queued = [j for j in client.get("/api/state").get_json()["jobs"] if j["id"] == "c"][0]
    assert (queued["queue_position"], queued["eta_seconds"]) == (1, 2.0)


def test_jobs_filter_paginate_and_show_their_timeline(flask_app, client):
    seed(flask_app)
    body = client.get("/api/jobs?state=completed,failed&limit=1").get_json()
    assert body["total"] == 2 and len(body["jobs"]) == 1 and body["limit"] == 1
    assert client.get("/api/jobs?worker=gpu0@vm1").get_json()["total"] == 2
    job = client.get("/api/jobs/a").get_json()
    assert [e["type"] for e in job["events"]] == ["task-sent", "task-started", "task-succeeded"]


def test_unknown_things_and_bad_input_get_json_errors(flask_app, client):
    response = client.get("/api/jobs/nope")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert client.get("/api/workers/nobody").status_code == 404
    response = client.get("/api/jobs?state=sleeping")
    assert response.status_code == 400 and "unknown state" in response.get_json()["error"]["message"]
    assert client.get("/api/jobs?limit=abc").status_code == 400
    assert client.get("/api/nothing-here").get_json()["error"]["code"] == "not_found"


def test_stats_give_completion_times_and_failure_patterns(flask_app, client):
    seed(flask_app)
    stats = client.get("/api/stats").get_json()
    sim = stats["services"]["simulation"]
    assert (sim["count"], sim["completed"], sim["failed"], sim["median"], sim["p95"]) == (3, 1, 1, 2.0, 2.0)
    assert stats["failures"][0]["error_type"] == "ExecutionFailed" and stats["failures"][0]["count"] == 1
    assert "simulation" in stats["queues"]


def test_mutating_endpoints_need_the_token(client):
    assert client.post("/api/jobs", json={"service": "simulation", "payload": {}}).status_code == 401
    wrong = client.post("/api/jobs/a/cancel", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    good = client.post("/api/jobs/a/cancel", json={}, headers={"Authorization": "Bearer secret-token"})
    assert good.status_code == 404  # past the auth check: the job is unknown


def test_basic_auth_works_and_read_only_mode_refuses_with_403(tmp_path):
    settings = Settings(monitor_db=f"sqlite:///{tmp_path / 'a.db'}", monitor_basic_auth="ann:pw",
                        monitor_read_only=False).resolved()
    app = create_app(settings)
    basic = "Basic " + base64.b64encode(b"ann:pw").decode()
    assert app.test_client().post("/api/jobs/x/retry", json={}, headers={"Authorization": basic}).status_code == 404
    app.extensions["jobqueue_monitor"].close()
    read_only = create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'b.db'}", monitor_read_only=True,
                                    monitor_token="t").resolved())
    response = read_only.test_client().post("/api/jobs/x/cancel", json={}, headers={"Authorization": "Bearer t"})
    assert response.status_code == 403
    read_only.extensions["jobqueue_monitor"].close()


def test_a_monitor_without_credentials_refuses_to_bind_beyond_localhost(tmp_path):
    settings = Settings(monitor_db=f"sqlite:///{tmp_path / 'a.db'}").resolved()
    with pytest.raises(ConfigError, match="refusing"):
        Monitor(settings, "0.0.0.0", 0)


def test_metrics_and_health_answer(flask_app, client):
    seed(flask_app)
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert 'jobqueue_jobs_stored{service="simulation",status="completed"} 1.0' in text
    assert response.headers["Content-Type"].count("charset") == 1
    assert client.get("/healthz").get_json()["ok"] is True


def test_a_job_submitted_through_the_api_is_enqueued(redis_url, tmp_path, redis_client):
    settings = Settings(broker_url=redis_url, monitor_db=f"sqlite:///{tmp_path / 'a.db'}",
                        monitor_token="t").resolved()
    app = create_app(settings)
    client = app.test_client()
    headers = {"Authorization": "Bearer t"}
    response = client.post("/api/jobs", json={"service": "simulation", "payload": {"steps": 1}, "count": 2},
                           headers=headers)
    assert response.status_code == 201 and len(response.get_json()["jobs"]) == 2
    assert client.get("/api/queues", headers=headers).get_json()["queues"][0]["depth"] >= 0
    assert sum(redis_client.llen(k) for k in redis_client.keys("simulation*")) == 2
    bad = client.post("/api/jobs", json={"service": "nope", "payload": {}}, headers=headers)
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_job"
    app.extensions["jobqueue_monitor"].close()


def test_over_the_cap_post_jobs_answers_429_with_retry_after_and_enqueues_nothing(redis_url, tmp_path, redis_client):
    # Given a monitor whose simulation queue is capped at 3, and a service median of 20 s
    settings = Settings(broker_url=redis_url, monitor_db=f"sqlite:///{tmp_path / 'a.db'}",
                        monitor_token="t", max_queued=3).resolved()
    app = create_app(settings)
    client, headers = app.test_client(), {"Authorization": "Bearer t"}
    store = app.extensions["jobqueue_monitor"].store
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": T0})
    with store.write() as tx:
        for event in [
            {"type": "task-sent", "uuid": "done", "kwargs": meta, "timestamp": T0},
            {"type": "task-started", "uuid": "done", "hostname": "gpu0@vm1", "timestamp": T0 + 1},
            {"type": "task-succeeded", "uuid": "done", "hostname": "gpu0@vm1", "timestamp": T0 + 21, "runtime": 20.0},
        ]:
            apply(event, tx)
    assert store.service_medians()["simulation"] == 20.0
    # When a count of 4 is asked: refused whole, nothing enqueued
    over = client.post("/api/jobs", json={"service": "simulation", "payload": {"steps": 1}, "count": 4},
                       headers=headers)
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "queue_full"
    assert sum(redis_client.llen(k) for k in redis_client.keys("simulation*")) == 0
    # And 3 fit; then one more is refused, told to come back after the median (no ETA known:
    # no worker consumes the queue)
    ok = client.post("/api/jobs", json={"service": "simulation", "payload": {"steps": 1}, "count": 3}, headers=headers)
    assert ok.status_code == 201
    full = client.post("/api/jobs", json={"service": "simulation", "payload": {"steps": 1}}, headers=headers)
    assert full.status_code == 429
    assert full.headers["Retry-After"] == "20"
    assert "queue full (3 queued, cap 3)" in full.get_json()["error"]["message"]
    assert sum(redis_client.llen(k) for k in redis_client.keys("simulation*")) == 3
    app.extensions["jobqueue_monitor"].close()


def test_an_unexpected_error_answers_500_with_an_error_id_and_keeps_the_exception_text_in_the_log(
        flask_app, caplog):
    # Given a store that fails in a way nobody planned for, naming a secret path
    store = flask_app.extensions["jobqueue_monitor"].store

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("cannot read /srv/secret/monitor.db")

    store.stats = broken
    flask_app.config["TESTING"] = False  # answer as in production, do not re-raise
    flask_app.config["PROPAGATE_EXCEPTIONS"] = False
    # When a page of the API asks it
    with caplog.at_level("ERROR"):
        response = flask_app.test_client().get("/api/stats")
    # Then the answer is a strict JSON 500 naming an error id, without the exception's text
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"]["code"] == "internal_error"
    error_id = body["error"]["message"].split("error id ", 1)[1].split(",", 1)[0]
    assert error_id and "secret" not in response.get_data(as_text=True)
    # And the log holds the text under the same id
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert error_id in logged and "/srv/secret/monitor.db" in logged


class FakeControl:
    """The control calls a drain makes, answered at once (no broker)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def cancel_consumer(self, queue, **_):
        self.calls.append(("cancel", queue))
        return [{"gpu0@vm1": {"ok": f"no longer consuming from {queue}"}}]

    def add_consumer(self, queue, **_):
        self.calls.append(("add", queue))
        return [{"gpu0@vm1": {"ok": f"consuming from {queue}"}}]


@pytest.mark.parametrize("with_writer", [True, False], ids=["writer", "no-writer"])
def test_a_drain_is_written_by_the_writer_when_the_app_has_one(monitor_settings, sqlite_store, hub, monkeypatch,
                                                                with_writer):
    import threading
    import time
    import types

    from monitor.ingest.writer import Writer
    from monitor.store.tx import Tx

    # Given a monitor app on a store that knows one worker (with or without a running writer)
    writer = Writer(sqlite_store, hub).start() if with_writer else None
    control = FakeControl()
    app = create_app(monitor_settings, store=sqlite_store, hub=hub, writer=writer,
                     celery_app=types.SimpleNamespace(control=control, close=lambda: None))
    now = time.time()
    with sqlite_store.write() as tx:
        apply({"type": "worker-online", "hostname": "gpu0@vm1", "timestamp": now, "freq": 60.0}, tx)
        apply({"type": "connector-status", "worker": "gpu0@vm1", "machine_id": "vm1", "gpu": 0, "service": "simulation",
               "status": "idle", "timestamp": now, "queues": ["gpu0", "simulation"]}, tx)
    threads: list[str] = []
    original = Tx.set_draining

    def spy(self, name, draining):
        threads.append(threading.current_thread().name)
        return original(self, name, draining)

    monkeypatch.setattr(Tx, "set_draining", spy)
    seq = sqlite_store.seq()
    try:
        # When an operator drains it
        response = app.test_client().post("/api/workers/gpu0@vm1/drain", json={},
                                         headers={"Authorization": "Bearer secret-token"})
        # Then the consumers are cancelled and the flag is stored, by the writer's thread when there is one
        assert response.status_code == 202 and control.calls == [("cancel", "gpu0"), ("cancel", "simulation")]
        assert sqlite_store.worker("gpu0@vm1")["status"] == "draining"
        assert threads == ["monitor-writer" if with_writer else threading.current_thread().name]
        assert sqlite_store.seq() > seq
    finally:
        if writer is not None:
            writer.stop()
        app.extensions["jobqueue_monitor"].close()
