"""The worker cache (:mod:`monitor.store.worker_cache`) and the machines read as plain rows: a
read of the fleet equals the workers and machines built afresh from their rows after every kind
of change, rebuilds only the changed workers, and takes ``heartbeat_age`` from the reader's clock."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from monitor.merge.apply import apply, expire
from monitor.store import Store
from monitor.store.models import ConnectorRow, MachineRow, WorkerRow
from monitor.store.serialise import machine_dict, worker_dict
from monitor.store.worker_cache import WorkerCache

T0 = 1_800_000_000.0
NAMES = ("gpu0@m1", "gpu1@m1", "gpu0@m2")


def built_afresh(store: Store, now: float) -> list[dict[str, Any]]:
    """Every worker built from its rows, as the store did before the cache."""
    with store.read() as session:
        conns: dict[str, list[ConnectorRow]] = {}
        for c in session.scalars(select(ConnectorRow)):
            conns.setdefault(c.worker, []).append(c)
        return [worker_dict(w, conns.get(w.name, []), now)
                for w in session.scalars(select(WorkerRow).order_by(WorkerRow.name))]


def machines_afresh(store: Store) -> list[dict[str, Any]]:
    """Every machine built from its ORM row, as the store did before it read plain rows."""
    with store.read() as session:
        names: dict[str, list[str]] = {}
        for name, machine_id in session.execute(select(WorkerRow.name, WorkerRow.machine_id)):
            if machine_id:
                names.setdefault(machine_id, []).append(name)
        return [machine_dict(m, names.get(m.id, [])) for m in session.scalars(select(MachineRow).order_by(MachineRow.id))]


def connector(name: str, status: str, seq: int, ts: float, **extra: Any) -> dict[str, Any]:
    machine = name.split("@")[1]
    return {"type": "connector-status", "worker": name, "machine_id": machine, "gpu": int(name[3]),
            "service": "simulation", "status": status, "seq": seq, "interval": 15.0, "timestamp": ts,
            "details": {"capabilities": {"tags": ["region:eu"]}}, "queues": [f"gpu{name[3]}"], **extra}


def events(store: Store, now: float, *evs: dict[str, Any]) -> None:
    with store.write(now) as tx:
        for ev in evs:
            apply({"local_received": now, **ev}, tx)


def fleet(store: Store) -> None:
    events(store, T0, *({"type": "worker-online", "hostname": n, "timestamp": T0, "freq": 2.0} for n in NAMES),
           *(connector(n, "idle", 1, T0) for n in NAMES))


def same(store: Store, now: float) -> list[dict[str, Any]]:
    """The cached read at ``now``, after checking it (and the snapshot's workers and machines)
    equals the fresh build byte for byte."""
    got = store.workers(now)
    assert json.dumps(got) == json.dumps(built_afresh(store, now))
    snapshot = store.snapshot(now=now)
    assert json.dumps(snapshot["workers"]) == json.dumps(got)
    assert json.dumps(snapshot["machines"]) == json.dumps(store.machines()) == json.dumps(machines_afresh(store))
    return got


def test_a_cached_read_equals_a_fresh_build_after_every_kind_of_change(store):
    fleet(store)
    same(store, T0 + 1)
    steps = [
        ("a heartbeat", lambda: events(store, T0 + 2, {"type": "worker-heartbeat", "hostname": NAMES[0],
                                                       "timestamp": T0 + 2, "freq": 2.0, "active": 1})),
        ("a connector's new status", lambda: events(store, T0 + 3, connector(NAMES[1], "error", 2, T0 + 3,
                                                                            message="service down"))),
        ("a job claimed", lambda: events(store, T0 + 4, {"type": "task-received", "uuid": "j1", "hostname": NAMES[0],
                                                        "name": "jobqueue.run_job", "timestamp": T0 + 4},
                                         {"type": "task-started", "uuid": "j1", "hostname": NAMES[0],
                                          "timestamp": T0 + 4})),
        ("a job ended", lambda: events(store, T0 + 5, {"type": "task-failed", "uuid": "j1", "hostname": NAMES[0],
                                                      "exception": "boom", "timestamp": T0 + 5})),
        ("draining", lambda: store.set_draining(NAMES[2], True)),
        ("another machine", lambda: events(store, T0 + 6, connector(NAMES[2], "idle", 3, T0 + 6,
                                                                   machine_id="m9"))),
    ]
    for what, step in steps:
        step()
        got = same(store, T0 + 7)
        assert got, what
    # Then time alone: the silent workers go offline, their connectors stale (expire writes that)
    with store.write(T0 + 60) as tx:
        expire(tx, default_freq=2.0, default_beat=15.0)
    got = same(store, T0 + 60)
    assert {w["status"] for w in got} == {"offline"}
    assert all(c["stale"] for w in got for c in w["connectors"].values())


def test_only_the_changed_worker_is_rebuilt(store):
    fleet(store)
    store.workers(T0 + 1)
    assert store.worker_cache.builds == 3
    events(store, T0 + 2, {"type": "worker-heartbeat", "hostname": NAMES[1], "timestamp": T0 + 2, "freq": 2.0})
    same(store, T0 + 3)
    assert store.worker_cache.builds == 4
    assert store.worker_cache.hits >= 2


def test_heartbeat_age_follows_the_readers_clock_without_a_rebuild(store):
    fleet(store)
    first = store.workers(T0 + 1)
    builds = store.worker_cache.builds
    later = same(store, T0 + 100.5)
    assert [w["heartbeat_age"] for w in first] == [1.0] * 3
    assert [w["heartbeat_age"] for w in later] == [100.5] * 3
    assert store.worker_cache.builds == builds


def test_a_fleet_larger_than_the_bound_is_right_and_the_cache_stays_bounded(sqlite_store):
    sqlite_store.worker_cache = WorkerCache(limit=2)
    fleet(sqlite_store)
    for now in (T0 + 1, T0 + 2):
        same(sqlite_store, now)
        assert len(sqlite_store.worker_cache) <= 2
    sqlite_store.worker_cache = WorkerCache(limit=0)
    same(sqlite_store, T0 + 3)
    assert len(sqlite_store.worker_cache) == 0


def test_changing_a_returned_worker_does_not_change_the_next_read(sqlite_store):
    fleet(sqlite_store)
    first = sqlite_store.workers(T0 + 1)
    first[0]["status"] = "scribbled"
    first[0]["current_job"] = "x"
    assert sqlite_store.workers(T0 + 1)[0]["status"] == "online"
    same(sqlite_store, T0 + 1)


def test_each_store_has_a_cache_of_its_own(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    one, two = Store(url), Store(url)
    try:
        fleet(one)
        one.workers(T0 + 1)
        assert len(one.worker_cache) == 3 and len(two.worker_cache) == 0
        assert one.worker_cache is not two.worker_cache
    finally:
        one.close()
        two.close()
