"""``/api/state`` and ``/api/workers`` through a real monitor app on a real SQLite file answer
byte for byte what an app without the worker cache answers (one that builds every worker per
read), after every kind of change, as time passes, and for a tenant's key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue.config import Settings
from monitor.app import create_app
from monitor.merge.apply import apply, expire
from monitor.store.worker_cache import WorkerCache

TOKEN = "state-cache-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NAMES = [f"gpu{n % 4}@box{n // 4}" for n in range(8)]


class Clock:
    """``time.time`` of the test: set by hand, so the two apps read at the same instant."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def apps(tmp_path, redis_url) -> Iterator[tuple[Any, Any]]:
    """The app under test (its store caches workers) and the reference (caches nothing), on one file."""
    settings = Settings(monitor_db=f"sqlite:///{tmp_path / 'state.db'}", broker_url=redis_url,
                        monitor_token=TOKEN).resolved()
    cached, plain = create_app(settings), create_app(settings)
    plain.extensions["jobqueue_monitor"].store.worker_cache = WorkerCache(limit=0)
    yield cached, plain
    for app in (cached, plain):
        app.extensions["jobqueue_monitor"].close()


def connector(name: str, status: str, seq: int, ts: float) -> dict[str, Any]:
    return {"type": "connector-status", "worker": name, "machine_id": name.split("@")[1], "gpu": int(name[3]),
            "service": "simulation", "status": status, "seq": seq, "interval": 15.0, "timestamp": ts,
            "message": "service down" if status == "error" else "", "queues": [f"gpu{name[3]}", "simulation"],
            "details": {"capabilities": {"tags": ["region:eu"], "vram_free_gb": 20.0}}}


def job(job_id: str, tenant: str, worker: str, ts: float) -> list[dict[str, Any]]:
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "tenant": tenant,
                       "submitted_at": ts})
    return [{"type": "task-sent", "uuid": job_id, "name": "jobqueue.run_job", "args": "()", "kwargs": meta,
             "retries": 0, "queue": "simulation", "hostname": "client@test", "timestamp": ts},
            {"type": "task-started", "uuid": job_id, "hostname": worker, "timestamp": ts + 0.1}]


def test_the_cached_answers_equal_the_uncached_ones_byte_for_byte(apps, monkeypatch):
    cached, plain = apps
    store = cached.extensions["jobqueue_monitor"].store
    clock = Clock(time.time())
    monkeypatch.setattr(time, "time", clock)

    def write(*evs: dict[str, Any]) -> None:
        with store.write(clock.now) as tx:
            for ev in evs:
                apply({"local_received": clock.now, **ev}, tx)

    made = cached.test_client().post("/api/keys", json={"role": "viewer", "tenant": "acme"}, headers=ADMIN)
    assert made.status_code == 201, made.get_data(as_text=True)
    tenant = {"Authorization": f"Bearer {made.get_json()['key']}"}
    clients = cached.test_client(), plain.test_client()

    def compare(what: str) -> dict[str, Any]:
        for path in ("/api/state", "/api/workers?status=all"):
            for headers in (ADMIN, tenant):
                got, want = (c.get(path, headers=headers) for c in clients)
                assert got.status_code == want.status_code == 200, what
                assert got.get_data() == want.get_data(), f"{what}: {path} differs"
        state: dict[str, Any] = clients[0].get("/api/state", headers=ADMIN).get_json()
        return state

    t0 = clock.now
    write(*({"type": "worker-online", "hostname": n, "timestamp": t0, "freq": 2.0} for n in NAMES),
          *(connector(n, "idle", 1, t0) for n in NAMES))
    compare("the fleet came online")
    clock.now += 1.0
    compare("a second later, nothing written")
    write(*job("job-acme", "acme", NAMES[0], clock.now), *job("job-other", "globex", NAMES[1], clock.now))
    state = compare("jobs of two tenants running")
    assert {w["name"]: w["current_job"] for w in state["workers"]}[NAMES[0]] == "job-acme"
    clock.now += 1.0
    write(connector(NAMES[2], "error", 2, clock.now), {"type": "worker-heartbeat", "hostname": NAMES[3],
                                                        "timestamp": clock.now, "freq": 2.0, "active": 1})
    state = compare("a connector's status changed, a heartbeat")
    assert {w["name"]: w["connectors"]["simulation"]["status"] for w in state["workers"]}[NAMES[2]] == "error"
    write({"type": "task-succeeded", "uuid": "job-acme", "hostname": NAMES[0], "runtime": 1.0,
           "result": "None", "timestamp": clock.now})
    compare("a job ended")
    # Then only NAMES[3] keeps beating; the others go offline by time (as the writer's expiry finds)
    clock.now += 5.0
    write({"type": "worker-heartbeat", "hostname": NAMES[3], "timestamp": clock.now, "freq": 2.0})
    with store.write(clock.now) as tx:
        expire(tx, default_freq=2.0, default_beat=15.0)
    state = compare("silent workers offline")
    status = {w["name"]: w["status"] for w in state["workers"]}
    assert status[NAMES[3]] == "online" and status[NAMES[0]] == "offline"
    clock.now += 100.0
    state = compare("100 s later, nothing written")
    assert {w["name"]: w["heartbeat_age"] for w in state["workers"]}[NAMES[3]] == 100.0
    assert store.worker_cache.hits > 0
