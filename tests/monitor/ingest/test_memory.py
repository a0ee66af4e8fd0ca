"""The writer gives a burst's memory back once its queue ran dry (monitor.ingest.memory)."""

from __future__ import annotations

import sys

import pytest

from monitor.ingest import memory
from monitor.ingest import writer as writer_module
from monitor.ingest.hub import ChangeHub
from monitor.ingest.writer import Writer
from monitor.store import Store


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_can_be_given_back_on_linux() -> None:
    assert memory.release_freed_memory() is True


def test_a_drained_backlog_gives_its_memory_back_once_and_a_small_one_does_not(
        sqlite_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a writer whose release is counted, and a threshold of 50 queued items
    released: list[int] = []
    monkeypatch.setattr(writer_module, "release_freed_memory", lambda: released.append(1) or True)
    monkeypatch.setattr(writer_module, "RELEASE_AFTER_BACKLOG", 50)
    writer = Writer(sqlite_store, ChangeHub(), max_batch=10, prune_interval=3600.0)
    try:
        # When 20 events queue up and are applied: below the threshold, nothing is released
        for i in range(20):
            writer.put({"type": "worker-heartbeat", "hostname": f"gpu0@m{i}", "timestamp": 1.0})
        writer.start()
        assert writer.wait_idle(30)
        assert writer.wait_idle(30)  # a second pass through an empty queue
        assert released == []
        # When a backlog of 200 builds while the writer is busy, then drains
        writer.call(lambda tx: [writer.put({"type": "worker-heartbeat", "hostname": f"gpu1@m{i}",
                                            "timestamp": 1.0}) for i in range(200)])
        assert writer.wait_idle(30)
        assert writer.wait_idle(30)
    finally:
        writer.stop()
    # Then the memory was given back once, after the queue ran dry
    assert released == [1]
    assert writer.counts["received"] == 220
