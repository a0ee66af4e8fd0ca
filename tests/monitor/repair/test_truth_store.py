"""Store-level truth: event checks, backend corrections, exact totals, retention by age,
machines seen by their heartbeats, results never shown from a shortened repr."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert

from jobqueue.config import Settings
from monitor.ingest.validate import EventGate, refusal
from monitor.merge.apply import apply, result_from_repr
from monitor.repair.rebuild import job_events
from monitor.store import Job, Store

T0 = 1_700_000_000.0
META = '{"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": 1700000000.0}'


def run(store: Store, *events: dict[str, Any], now: float | None = None) -> None:
    with store.write(now=now) as tx:
        for event in events:
            apply(event, tx)


def test_events_far_from_their_receipt_or_with_numbers_out_of_range_are_refused_and_counted():
    counts: dict[str, int] = {}
    gate = EventGate(300.0, lambda name: counts.__setitem__(name, counts.get(name, 0) + 1))
    now = time.time()
    ok = {"type": "task-progress", "uuid": "a", "percent": 50.0, "timestamp": now}
    # Then a normal event passes, and each kind of lie is refused with its reason
    assert gate.allows(ok, now)
    assert refusal({**ok, "timestamp": now + 365 * 86400}, now, 300.0) == "timestamp"
    assert refusal({**ok, "timestamp": now - 301}, now, 300.0) == "timestamp"
    assert refusal({**ok, "percent": 1e308}, now, 300.0) == "number"
    assert refusal({**ok, "percent": float("nan")}, now, 300.0) == "number"
    assert refusal({"type": "task-succeeded", "uuid": "a", "runtime": -1.0, "timestamp": now}, now, 300.0) == "number"
    assert refusal({**ok, "source": "repair"}, now, 300.0) == "source"
    assert refusal({"type": "job-truth", "uuid": "a", "timestamp": now}, now, 300.0) == "type"
    assert not gate.allows({"type": "worker-offline", "hostname": "w", "timestamp": now + 3600}, now)
    assert counts == {"malformed": 1, "refused_timestamp": 1}


def test_a_final_state_an_event_claimed_is_corrected_from_the_backend(sqlite_store):
    # Given a job that really failed, which a forged event called completed
    run(sqlite_store,
        {"type": "worker-online", "hostname": "gpu0@vm1", "timestamp": T0},
        {"type": "task-sent", "uuid": "j", "kwargs": META, "timestamp": T0},
        {"type": "task-received", "uuid": "j", "hostname": "gpu0@vm1", "timestamp": T0 + 1},
        {"type": "task-started", "uuid": "j", "hostname": "gpu0@vm1", "timestamp": T0 + 1},
        {"type": "task-succeeded", "uuid": "j", "hostname": "gpu0@vm1", "timestamp": T0 + 2, "result": "{}"},
        now=T0 + 2)
    assert sqlite_store.job("j")["status"] == "completed"
    meta = {"task_id": "j", "status": "FAILURE", "date_done": "2023-11-14T22:13:22",
            "result": {"exc_type": "ExecutionFailed", "exc_message": ["boom", {"step": 1}]}}
    facts = {"submitted_at": T0, "received_at": T0 + 0.9, "started_at": T0 + 1.0, "finished_at": T0 + 1.5,
             "runtime": 0.5, "attempt": 0, "worker": "gpu0@vm1", "machine_id": "vm1"}
    # When repair applies what the backend holds
    run(sqlite_store, *job_events("j", meta, facts, T0 + 10, lifecycle=False), now=T0 + 10)
    # Then the job is failed, with the backend's times and error, and its worker's counts moved
    job = sqlite_store.job("j")
    assert job["status"] == "failed" and job["error"]["message"] == "boom"
    assert (job["received_at"], job["started_at"], job["finished_at"], job["runtime"]) == \
        (T0 + 0.9, T0 + 1.0, T0 + 1.5, 0.5)
    assert job["result"] is None and job["events"][-1]["type"] == "corrected"
    worker = sqlite_store.worker("gpu0@vm1")
    assert (worker["processed"], worker["failed"]) == (1, 1)


def test_a_shortened_result_repr_is_never_shown_as_the_result():
    # Then a whole repr is read back, and one Celery shortened is an explicit marker
    assert result_from_repr("{'images': ['a.png', 'b.png'], 'n': 2}") == {"images": ["a.png", "b.png"], "n": 2}
    assert result_from_repr("{'a': {'b': {'c': {...}}}}")["truncated"] is True
    assert result_from_repr("{'images': ['" + "x" * 20000 + "...', ...]}")["truncated"] is True


def test_a_machine_is_seen_whenever_one_of_its_workers_beats(sqlite_store):
    # Given a worker known online
    run(sqlite_store, {"type": "worker-online", "hostname": "gpu0@vm1", "timestamp": T0, "freq": 2.0})
    # When it beats for 5 minutes
    for i in range(1, 151):
        run(sqlite_store, {"type": "worker-heartbeat", "hostname": "gpu0@vm1", "timestamp": T0 + 2 * i, "freq": 2.0})
    # Then its machine was last seen at its last beat
    (machine,) = sqlite_store.machines()
    assert machine["last_seen"] == T0 + 300


def _rows(n: int, now: float, *, age: float = 0.0, status: str = "completed") -> list[dict[str, Any]]:
    return [{"id": f"{status}-{age}-{i:06d}", "status": status, "service": "simulation", "attempt": 0,
             "n_events": 0, "seq": 0, "submitted_at": now - age - i * 0.001, "finished_at": now - age - i * 0.001,
             "updated_at": now, "progress": {}} for i in range(n)]


def test_the_jobs_list_total_is_exact_at_20000_jobs(tmp_path):
    # Given 20,000 jobs stored (15,000 completed, 5,000 failed)
    from monitor.app import create_app

    settings = Settings(monitor_db=f"sqlite:///{tmp_path / 'big.db'}", broker_url="redis://127.0.0.1:6379/14").resolved()
    store = Store.from_settings(settings)
    now = time.time()
    with store.write() as tx:
        tx.session.execute(insert(Job), _rows(15_000, now) + _rows(5_000, now, status="failed"))
    app = create_app(settings, store=store)
    client = app.test_client()
    try:
        # When the API is asked for one page, with and without a filter
        every = client.get("/api/jobs?limit=10").get_json()
        failed = client.get("/api/jobs?state=failed&limit=10&offset=4995").get_json()
        longest = client.get("/api/jobs?limit=1&sort=finished&order=asc").get_json()
        # Then every total is exact, and the page is the asked slice
        assert (every["total"], len(every["jobs"])) == (20_000, 10)
        assert (failed["total"], len(failed["jobs"])) == (5_000, 5)
        assert "total_capped" not in every
        assert longest["jobs"][0]["finished_at"] == min(r["finished_at"] for r in _rows(15_000, now))
        assert client.get("/api/jobs?sort=bogus").status_code == 400
    finally:
        app.extensions["jobqueue_monitor"].close()
        store.close()


def test_finished_jobs_are_kept_for_7_days_by_default_and_capped_at_a_million(tmp_path):
    # Given the default settings, and jobs finished 8 days, 6 days and just now
    settings = Settings().resolved()
    assert (settings.monitor_keep_seconds, settings.monitor_keep_jobs) == (7 * 86400.0, 1_000_000)
    store = Store(f"sqlite:///{tmp_path / 'r.db'}", keep_jobs=settings.monitor_keep_jobs,
                  keep_seconds=settings.monitor_keep_seconds)
    now = time.time()
    with store.write() as tx:
        tx.session.execute(insert(Job), _rows(30, now, age=8 * 86400) + _rows(20, now, age=6 * 86400)
                           + _rows(25_000, now))
    try:
        # When it prunes
        pruned = store.prune(now)
        # Then only the jobs older than 7 days are gone, however many are kept
        assert pruned == 30
        assert store.jobs(limit=1)[1] == 25_020
    finally:
        store.close()
