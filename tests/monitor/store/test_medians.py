"""The services' medians kept in memory equal what the store's SELECT gives, whatever happens."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import delete, select

from monitor.store import Store, Tx
from monitor.store.changelog import record_changes
from monitor.store.medians import ServiceMedians, recent_runtimes
from monitor.store.models import JobEventRow, JobRow, ServiceStatRow
from monitor.store.stats import safe_median

SERVICES = ("flux", "sdxl")
#: A small window, so a few dozen jobs trim, empty and read windows again.
WINDOW, SLACK = 8, 3


def _store(url: str) -> Store:
    store = Store(url, keep_jobs=1000, keep_seconds=3600.0)
    store.medians = ServiceMedians(window=WINDOW, slack=SLACK)
    return store


def _job(tx: Tx, job_id: str, plain: bool) -> Any:
    return tx.merge_job(job_id) if plain else tx.job(job_id)


def _complete(tx: Tx, job: Any, rng: random.Random, service: str) -> None:
    job.service, job.status = service, "completed"
    # coarse times: ties; some without a time or a runtime
    job.finished_at = None if rng.random() < 0.1 else float(rng.randrange(40))
    job.runtime = None if rng.random() < 0.1 else round(rng.uniform(0.1, 9.0), 2)
    tx.touch("job", job.id)
    tx.touch("service", service)


def _step(tx: Tx, rng: random.Random, ids: list[str], n: int) -> None:
    """One random change, as the merge and repair make them."""
    roll = rng.random()
    if roll < 0.45 or not ids:
        job = _job(tx, f"job-{n}", rng.random() < 0.5)
        _complete(tx, job, rng, rng.choice(SERVICES))
        ids.append(job.id)
        return
    job = _job(tx, rng.choice(ids), rng.random() < 0.5)
    if roll < 0.6:  # retried: back to queued (its service is not touched, as repair does it)
        job.status, job.runtime, job.finished_at = "queued", None, None
        tx.touch("job", job.id)
    elif roll < 0.8:  # completed again, maybe under another service, another time and runtime
        _complete(tx, job, rng, rng.choice(SERVICES))
    else:  # forgotten
        tx.write_plain_jobs()
        tx.session.execute(delete(JobEventRow).where(JobEventRow.job_id == job.id))
        tx.session.execute(delete(JobRow).where(JobRow.id == job.id), execution_options={"synchronize_session": False})
        tx.forget_job(job.id)
        tx.drop("job", job.id)
        ids.remove(job.id)


def _touch_services(store: Store) -> None:
    with store.write() as tx:
        for service in SERVICES:
            tx.touch("service", service)


def _assert_medians_are_the_selects(store: Store) -> None:
    with store.read() as session:
        for service in SERVICES:
            values = recent_runtimes(session, service, WINDOW)
            row = session.get(ServiceStatRow, service)
            assert row is not None
            assert (row.median, row.samples) == (safe_median(values), len(values)), service


def test_the_medians_kept_in_memory_equal_the_selects_through_random_changes(store_url: str) -> None:
    # Given a store whose windows move with every transaction (completions, retries, moves
    # between services, ties, jobs without a time or a runtime, deletions)
    store, rng, ids = _store(store_url), random.Random(30), []
    try:
        for n in range(160):
            with store.write() as tx:
                for k in range(rng.randint(1, 3)):
                    _step(tx, rng, ids, 10 * n + k)
            # Then after each one every service's median is the one the SELECT gives
            _touch_services(store)
            _assert_medians_are_the_selects(store)
        # And the windows were moved, not read again each time
        assert store.medians.seeds < 80
    finally:
        store.close()


def test_a_restarted_and_a_pruned_store_give_the_selects_medians(store_url: str) -> None:
    # Given windows built by one store object
    store, rng, ids = _store(store_url), random.Random(7), []
    for n in range(40):
        with store.write() as tx:
            _step(tx, rng, ids, n)
    store.close()
    # When the monitor restarts on the same store, Then its medians are the SELECT's
    store = _store(store_url)
    try:
        _touch_services(store)
        _assert_medians_are_the_selects(store)
        # When it prunes all but a few finished jobs, Then too
        store.keep_jobs = 5
        assert store.prune() > 0
        _touch_services(store)
        _assert_medians_are_the_selects(store)
    finally:
        store.close()


def test_a_write_by_another_process_sends_the_windows_back_to_the_store(store_url: str) -> None:
    # Given two store objects on one database (two processes) with windows held by the first
    first, second, rng, ids = _store(store_url), _store(store_url), random.Random(11), []
    try:
        for n in range(30):
            with first.write() as tx:
                _step(tx, rng, ids, n)
        _touch_services(first)
        seeds = first.medians.seeds
        # When the second one completes jobs, Then the first one's medians still are the SELECT's
        with second.write() as tx:
            for n in range(30, 36):
                _complete(tx, tx.job(f"job-{n}"), rng, "flux")
        _touch_services(first)
        _assert_medians_are_the_selects(first)
        assert first.medians.seeds > seeds  # read again: the first held stale windows
    finally:
        first.close()
        second.close()


def test_a_transaction_that_rolls_back_gives_no_window_back(sqlite_store: Store) -> None:
    # Given windows held after some completions
    store, rng, ids = sqlite_store, random.Random(3), []
    store.medians = ServiceMedians(window=WINDOW, slack=SLACK)
    for n in range(20):
        with store.write() as tx:
            _step(tx, rng, ids, n)
    _touch_services(store)

    def record_then_fail(tx: Tx, **kwargs: Any) -> Any:
        record_changes(tx, **kwargs)
        raise RuntimeError("disk full")

    # When a transaction moves them (long jobs that would move the median) and then fails
    with pytest.raises(RuntimeError), mock.patch("monitor.store.store.record_changes", record_then_fail):
        with store.write() as tx:
            for n in range(6):
                job = tx.job(f"late-{n}")
                _complete(tx, job, rng, "flux")
                job.runtime, job.finished_at = 1000.0, 99.0
    # Then nothing of that transaction stays: the next medians are the SELECT's
    with store.read() as session:
        assert session.scalar(select(JobRow.id).where(JobRow.id == "late-0")) is None
    _touch_services(store)
    _assert_medians_are_the_selects(store)
