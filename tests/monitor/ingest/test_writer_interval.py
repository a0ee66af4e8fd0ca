"""A busy writer starts a transaction at most every ``min_interval``; an idle one never waits."""

from __future__ import annotations

import threading
import time
from typing import Any

from jobqueue.up.procs import wait_until
from monitor.ingest.hub import ChangeHub
from monitor.ingest.writer import Writer
from monitor.store import Store


def heartbeat(host: str) -> dict[str, Any]:
    return {"type": "worker-heartbeat", "hostname": host, "timestamp": time.time(), "freq": 2.0}


def recording_writer(store: Store, min_interval: float) -> tuple[Writer, list[list[str]]]:
    """A writer whose transactions are recorded as the lists of keys they changed."""
    transactions: list[list[str]] = []
    writer = Writer(store, ChangeHub(), min_interval=min_interval, prune_interval=3600.0, expire_interval=3600.0,
                    on_changes=lambda changes: transactions.append([key for _seq, _kind, key, _obj in changes]))
    return writer, transactions


def test_an_idle_writer_applies_a_lone_event_at_once_whatever_its_interval(sqlite_store: Store) -> None:
    # Given a writer that lets a busy queue fill for a minute between transactions
    writer, transactions = recording_writer(sqlite_store, min_interval=60.0)
    writer.start()
    try:
        # When one heartbeat arrives at an idle writer
        writer.put(heartbeat("gpu0@a"))
        # Then it is in the store well before the interval could have passed
        wait_until(lambda: any("gpu0@a" in keys for keys in transactions), 20, what="the lone heartbeat applied")
    finally:
        writer.stop()


def test_events_arriving_within_the_interval_share_one_transaction(sqlite_store: Store) -> None:
    # Given a writer that has just applied one event (so it is busy for the next 3 s)
    writer, transactions = recording_writer(sqlite_store, min_interval=3.0)
    writer.start()
    try:
        writer.put(heartbeat("gpu0@a"))
        wait_until(lambda: len(transactions) == 1, 20, what="the first transaction")
        # When three more heartbeats arrive one by one within the interval
        for host in ("gpu0@b", "gpu0@c", "gpu0@d"):
            writer.put(heartbeat(host))
        wait_until(lambda: len(transactions) >= 2, 20, what="the second transaction")
    finally:
        writer.stop()
    # Then the three were applied together, in one transaction, not one each
    assert [key for key in transactions[1] if key.startswith("gpu0@")] == ["gpu0@b", "gpu0@c", "gpu0@d"]
    assert len(transactions) == 2


def test_a_writer_waiting_out_its_interval_stops_at_once(sqlite_store: Store) -> None:
    # Given a busy writer waiting out an interval of a minute before its next transaction
    writer, transactions = recording_writer(sqlite_store, min_interval=60.0)
    writer.start()
    writer.put(heartbeat("gpu0@a"))
    wait_until(lambda: len(transactions) == 1, 20, what="the first transaction")
    writer.put(heartbeat("gpu0@b"))
    # When it is stopped
    stopping = threading.Thread(target=writer.stop, kwargs={"timeout": 30.0})
    stopping.start()
    stopping.join(20)
    # Then it ended without waiting out the minute
    assert not stopping.is_alive() and not writer.alive


def test_the_monitor_writer_takes_its_interval_from_jobqueue_monitor_write_interval(tmp_path: Any) -> None:
    # Given the variable set for a monitor (no web server, nothing started)
    from jobqueue.config import Settings
    from monitor.server import Monitor

    settings = Settings.from_env({"JOBQUEUE_MONITOR_WRITE_INTERVAL": "0.2",
                                  "JOBQUEUE_BROKER_URL": "redis://127.0.0.1:6379/0",
                                  "JOBQUEUE_MONITOR_DB": f"sqlite:///{tmp_path / 'm.db'}"})
    # When the monitor is built, Then its writer waits that long between busy transactions
    monitor = Monitor(settings, "127.0.0.1", 0, web=False)
    try:
        assert monitor.writer.min_interval == 0.2
        assert Settings().monitor_write_interval == Writer(monitor.store, ChangeHub()).min_interval
    finally:
        monitor.store.close()
