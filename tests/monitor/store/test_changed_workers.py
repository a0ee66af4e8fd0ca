"""A changed worker's change carries all its connectors, whether its transaction loaded them or not."""

from __future__ import annotations

from monitor.store import Store


def _connectors_in_change(store: Store, prefetch: bool, new_service: str) -> list[str]:
    with store.write() as tx:
        if prefetch:
            tx.prefetch(set(), {"gpu0@vm1"})
        worker = tx.worker("gpu0@vm1")
        assert worker is not None
        tx.connector("gpu0@vm1", new_service)
        tx.touch("worker", "gpu0@vm1")
    (change,) = [c for c in tx.changes if c[1] == "worker"]
    return sorted(change[3]["connectors"])


def test_a_changed_workers_change_lists_its_stored_and_new_connectors_with_or_without_prefetch(
        sqlite_store: Store) -> None:
    # Given a worker with two stored connectors
    with sqlite_store.write() as tx:
        tx.worker("gpu0@vm1")
        tx.connector("gpu0@vm1", "comfyui")
        tx.connector("gpu0@vm1", "flux")
        tx.touch("worker", "gpu0@vm1")
    # When a transaction that prefetched it adds a third, Then its change lists all three
    assert _connectors_in_change(sqlite_store, True, "sdxl") == ["comfyui", "flux", "sdxl"]
    # And one that did not prefetch it (its connectors read at commit) lists all four
    assert _connectors_in_change(sqlite_store, False, "wan") == ["comfyui", "flux", "sdxl", "wan"]
