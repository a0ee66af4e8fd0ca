"""Two writers on one PostgreSQL store under the writer's lease (monitor.ingest.standby): the
standby buffers what it receives and writes nothing; when the leader stops, the standby
takes over, applies its buffer and calls for repair; the old leader then writes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue.config import Settings
from jobqueue.errors import ConfigError, LeaseLost
from monitor.ingest.hub import ChangeHub
from monitor.ingest.standby import Leadership, standby_enabled
from monitor.ingest.writer import Writer
from monitor.store import Store
from monitor.store.lease import WriterLease

pytestmark = pytest.mark.postgres


def sent(uuid: str) -> dict[str, Any]:
    now = time.time()
    return {"type": "task-sent", "uuid": uuid, "name": "plain.add", "queue": "celery",
            "timestamp": now, "local_received": now}


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class Node:
    """One monitor's store, lease, leadership and writer."""

    def __init__(self, url: str, name: str, seconds: float = 2.0) -> None:
        self.store = Store(url)
        self.lease = WriterLease(self.store.engine, name, seconds)
        self.store.fence = self.lease.fence
        self.leadership = Leadership(self.lease)
        self.promoted = 0
        self.writer = Writer(self.store, ChangeHub(), leadership=self.leadership, standby_buffer=100,
                             prune_interval=3600.0, on_promoted=self._promoted)

    def _promoted(self) -> None:
        self.promoted += 1

    def start(self) -> Node:
        self.leadership.start()
        self.writer.start()
        return self

    def stop(self, release: bool = True) -> None:
        self.writer.stop()
        if release:
            self.leadership.stop()
        else:  # as if killed: no renewal, no release
            self.leadership._stop.set()
        self.store.close()


@pytest.fixture
def nodes(pg_url: str) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop(release=False)


def test_the_standby_buffers_events_and_writes_only_after_it_takes_over(pg_url: str, nodes: list[Node]) -> None:
    # Given a leader and a standby on one store
    leader = Node(pg_url, "leader").start()
    nodes.append(leader)
    standby = Node(pg_url, "standby").start()
    nodes.append(standby)
    assert leader.leadership.leading and not standby.leadership.leading
    # When both receive events, the standby one the leader never got
    leader.writer.put(sent("job-a"))
    assert leader.writer.wait_idle()
    standby.writer.put(sent("job-a"))
    standby.writer.put(sent("job-only-standby"))
    assert standby.writer.wait_idle()
    # Then only the leader wrote; the standby holds its events and refuses writes
    assert leader.store.job("job-a") is not None
    assert leader.store.job("job-only-standby") is None
    assert standby.writer.standing_by and standby.writer.buffered == 2
    with pytest.raises(LeaseLost):
        standby.writer.call(lambda tx: tx.set_draining("w", True))
    # When the leader stops renewing (killed) and its lease runs out
    nodes.remove(leader)
    leader.stop(release=False)
    # Then the standby takes over, applies its buffer and asks for repair
    wait_for(lambda: standby.store.job("job-only-standby") is not None)
    assert not standby.writer.standing_by and standby.promoted == 1
    assert standby.lease.term == 2


def test_an_old_leader_that_lost_the_lease_writes_nothing_and_stands_by(pg_url: str, nodes: list[Node]) -> None:
    # Given a leader whose lease a standby took over while it was paused (its renewals stopped)
    old = Node(pg_url, "old").start()
    nodes.append(old)
    old.leadership._stop.set()  # the renewal thread is "paused"
    new_lease = WriterLease(old.store.engine, "new", 1.0)
    wait_for(new_lease.acquire)
    seq = old.store.seq()
    # When the old leader's writer wakes up with an event (it still believes it leads until
    # its own lease time runs out, or its fenced write tells it otherwise)
    old.writer.put(sent("job-late"))
    # Then nothing of it reaches the store and it keeps the event as a standby
    wait_for(lambda: old.writer.standing_by and old.writer.buffered == 1)
    assert old.store.seq() == seq and old.store.job("job-late") is None


def test_standby_mode_needs_a_postgresql_store() -> None:
    # Given JOBQUEUE_MONITOR_STANDBY=auto
    settings = Settings(monitor_standby="auto")
    # When the store is an SQLite file / PostgreSQL
    # Then SQLite is refused with a clear error, PostgreSQL accepted, and "off" never elects
    with pytest.raises(ConfigError, match="PostgreSQL"):
        standby_enabled(settings, is_sqlite=True)
    assert standby_enabled(settings, is_sqlite=False) is True
    assert standby_enabled(Settings(monitor_standby="off"), is_sqlite=False) is False


class Control:
    """The control calls a drain makes, answered at once (the broker is not under test here)."""

    def cancel_consumer(self, queue: str, **_: Any) -> list[Any]:
        return [{"gpu0@vm1": {"ok": f"no longer consuming from {queue}"}}]


def test_a_standby_serves_reads_and_answers_an_api_write_with_503_standby(
        pg_url: str, nodes: list[Node], monitor_settings: Settings) -> None:
    import types

    from monitor.app import create_app
    from monitor.merge.apply import apply

    # Given a leader that stored one worker, and a standby monitor app on the same store
    leader = Node(pg_url, "leader").start()
    nodes.append(leader)
    now = time.time()
    leader.writer.call(lambda tx: apply({"type": "worker-online", "hostname": "gpu0@vm1", "timestamp": now,
                                         "freq": 60.0}, tx))
    standby = Node(pg_url, "standby").start()
    nodes.append(standby)
    app = create_app(monitor_settings, store=standby.store, hub=ChangeHub(), writer=standby.writer,
                     celery_app=types.SimpleNamespace(control=Control(), close=lambda: None))
    client = app.test_client()
    auth = {"Authorization": "Bearer secret-token"}
    try:
        # When it is read and asked to record a drain
        health = client.get("/healthz", headers=auth).get_json()
        worker = client.get("/api/workers/gpu0@vm1", headers=auth)
        response = client.post("/api/workers/gpu0@vm1/drain", json={}, headers=auth)
        # Then it reads the leader's writes, says it is the standby, and refuses the write with 503
        assert health["role"] == "standby" and health["lease"]["holder"] == "standby"
        assert worker.status_code == 200
        assert response.status_code == 503 and response.get_json()["error"]["code"] == "standby", response.get_json()
        assert response.headers["Retry-After"] == "1"
        assert leader.store.worker("gpu0@vm1")["status"] != "draining"
    finally:
        app.extensions["jobqueue_monitor"].close()


def test_a_leader_stopped_cleanly_gives_the_lease_up_so_the_standby_need_not_wait_for_it_to_expire(
        pg_url: str, nodes: list[Node]) -> None:
    # Given a leader and a standby with a 6 s lease
    leader = Node(pg_url, "leader", seconds=6.0).start()
    standby = Node(pg_url, "standby", seconds=6.0).start()
    nodes.append(standby)
    assert leader.leadership.leading and not standby.leadership.leading
    # When the leader stops (SIGTERM)
    stopped = time.monotonic()
    leader.stop()
    # Then the standby leads well before the lease (renewed at most 2 s before) could have expired
    wait_for(lambda: standby.leadership.leading, timeout=10.0)
    assert time.monotonic() - stopped < 4.0
