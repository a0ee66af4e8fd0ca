"""A job row made by a write transaction stores SQL NULL in every column nothing set."""

from __future__ import annotations

import sqlite3

from monitor.store import Store


def test_a_new_jobs_unset_columns_are_stored_as_sql_null_json_ones_included(sqlite_store: Store) -> None:
    # Given a job made by a write transaction and nothing else set on it
    with sqlite_store.write() as tx:
        job = tx.job("job-1")
        assert job is not None
        job.status = "queued"
    # Then every column it did not set is NULL in the file (not JSON's "null"), the set ones kept
    path = sqlite_store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT status, attempt, worker, name, submitted_at, meta, error, result, task "
                         "FROM jobs WHERE id = 'job-1'").fetchone()
    assert row == ("queued", 0, None, None, None, None, None, None, None)
