"""The event merge's plain jobs (monitor/store/plain_jobs.py) store what the ORM would have stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from monitor.merge.apply import apply
from monitor.store import Store

T0 = 1_700_000_000.0
META = '{"service": "simulation", "priority": 5, "queue": "simulation"}'


def _lifecycle(uuid: str) -> list[dict[str, Any]]:
    return [
        {"type": "task-sent", "uuid": uuid, "kwargs": META, "timestamp": T0},
        {"type": "task-received", "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": T0 + 1},
        {"type": "task-started", "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": T0 + 2},
        {"type": "task-retried", "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": T0 + 3,
         "exception": "RuntimeError('flaky')"},
        {"type": "task-received", "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": T0 + 4, "retries": 1},
    ]


def _raw(store: Store, uuid: str) -> tuple[Any, ...]:
    with store.read() as session:
        row = session.execute(text("SELECT status, attempt, error IS NULL, result IS NULL, task IS NULL, n_events "
                                   "FROM jobs WHERE id = :id"), {"id": uuid}).one()
    return tuple(row)


def test_a_json_column_set_then_cleared_in_one_batch_is_json_null_and_one_never_set_sql_null(store: Store) -> None:
    # Given a new job retried (its error set) and received again (its error cleared), all in one batch
    with store.write(now=T0 + 5) as tx:
        tx.prefetch({"j"}, {"gpu0@vm1"}, plain_jobs=True)
        for event in _lifecycle("j"):
            apply(event, tx)
    # Then the error column holds JSON null (the ORM writes an attribute set to None), the
    # result and task columns, never set, SQL NULL; the job is assigned again on its attempt 1
    status, attempt, error_sql_null, result_sql_null, task_sql_null, n_events = _raw(store, "j")
    assert (status, attempt, n_events) == ("assigned", 1, 5)
    assert (error_sql_null, result_sql_null, task_sql_null) == (False, True, True)
    assert store.job("j")["error"] is None


def test_a_plain_job_looked_up_by_the_orm_mid_batch_is_one_row_with_every_event(store: Store) -> None:
    # Given a batch whose job is created plain, then read through the ORM (as repair does), then merged on
    events = _lifecycle("k")
    with store.write(now=T0 + 5) as tx:
        tx.prefetch({"k"}, set(), plain_jobs=True)
        for event in events[:3]:
            apply(event, tx)
        row = tx.job("k", create=False)
        assert row is not None and row.status == "processing"
        for event in events[3:]:
            apply(event, tx)
        # Then the later events went to the ORM's row, not to a second copy
        assert tx.job("k", create=False) is row and row.attempt == 1
    # Then the store holds one job with all five timeline entries and its change in the log
    assert _raw(store, "k")[:2] == ("assigned", 1)
    job = store.job("k")
    assert [e["type"] for e in job["events"]] == [e["type"] for e in events]


def _jobs_reads(store: Store) -> list[str]:
    """Every SELECT of the jobs table run on ``store``'s engine from now on (appended live)."""
    from sqlalchemy import event

    reads: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            reads.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    return reads


def test_a_truth_repair_event_in_a_batch_leaves_the_batchs_other_jobs_to_its_one_prefetch(store: Store) -> None:
    # Given ten stored jobs
    ids = [f"r{n}" for n in range(10)]
    with store.write(now=T0 + 5) as tx:
        tx.prefetch(set(ids), {"gpu0@vm1"}, plain_jobs=True)
        for uuid in ids:
            for event in _lifecycle(uuid)[:3]:
                apply(event, tx)
    # When one batch holds a truth-repair event for the first (the backend says it failed) and
    # live events for all ten
    truth = {"type": "job-truth", "source": "repair", "uuid": ids[0], "timestamp": T0 + 6, "status": "failed",
             "fields": {"error": {"type": "ValueError", "message": "bad"}}, "links": {}}
    reads = _jobs_reads(store)
    with store.write(now=T0 + 7) as tx:
        tx.prefetch(set(ids), {"gpu0@vm1"}, plain_jobs=True)
        assert apply(truth, tx)
        for uuid in ids[1:]:
            apply(_lifecycle(uuid)[3], tx)
    # Then the jobs table was read once, by the prefetch (the repaired job was merged as the
    # plain job the prefetch loaded, so the others were not released and read one by one)
    assert len(reads) == 1
    # And every job holds what its events and the repair said
    assert _raw(store, ids[0])[0] == "failed" and store.job(ids[0])["error"]["message"] == "bad"
    assert all(_raw(store, uuid)[0] == "retrying" for uuid in ids[1:])
    assert [e["type"] for e in store.job(ids[0])["events"]][-1] == "corrected"


def test_a_truth_repair_event_for_a_job_not_stored_changes_nothing(store: Store) -> None:
    # Given an empty store, when a truth-repair event names a job it does not hold
    with store.write(now=T0) as tx:
        tx.prefetch({"nobody"}, set(), plain_jobs=True)
        changed = apply({"type": "job-truth", "source": "repair", "uuid": "nobody", "timestamp": T0,
                         "status": "completed", "fields": {}, "links": {}}, tx)
    # Then nothing changed and no job was created
    assert changed is False and store.job("nobody") is None
