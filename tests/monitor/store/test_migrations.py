"""The store's schema under Alembic: a store written before migrations (by commit f702de3,
tests/data/monitor-store-f702de3) is upgraded in place on SQLite and PostgreSQL and reads back
as that code read it; a fresh store is built by the revisions and matches the models; two
monitors starting together migrate once; ``jobqueue monitor --upgrade-only``."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, MetaData, Text, create_engine, select, text

from jobqueue.errors import ConfigError
from monitor.metrics import history, totals
from monitor.store import Base, Store
from monitor.store.migrate import current, head
from tests.helpers import ROOT, child_env

OLD = ROOT / "tests" / "data" / "monitor-store-f702de3"
#: The ``now`` make_store.py read the old store at (its NOW).
NOW = 1_796_500_800.0 + 600.0
WORKERS = ("gpu0@vm1", "gpu1@vm1", "gpu0@vm2")
#: Expression indexes (``JOB_WHEN``), which Alembic cannot reflect on SQLite.
EXPRESSION_INDEXES = {"ix_jobs_when", "ix_jobs_status_when", "ix_jobs_worker_when", "ix_jobs_service_when"}

assert totals.MetricTotal.__tablename__ in Base.metadata.tables  # every table is on Base.metadata


def reads(store: Store) -> dict[str, Any]:
    """What make_store.py recorded from the old code's read API, asked of this store."""
    found, total = store.jobs(limit=1000)
    return json.loads(json.dumps({
        "snapshot": store.snapshot(finished_limit=1000, now=NOW),
        "jobs": {job["id"]: store.job(job["id"]) for job in found},
        "jobs_list": {"jobs": found, "total": total},
        "workers": {name: store.worker(name, now=NOW) for name in WORKERS},
        "machines": store.machines(),
        "workflow": store.workflow("wf1"),
        "changes": store.changes_since(0, limit=100_000),
        "stats": store.stats(now=NOW),
        "medians": store.service_medians(),
        "durations": store.durations(),
        "history": history.read(store, now=NOW),
        "seq": store.seq(),
    }, sort_keys=True, default=str))


def expected() -> dict[str, Any]:
    return dict(json.loads((OLD / "expected.json").read_text()))


#: Job fields later revisions added, at the value a job the old monitor stored reads (0003:
#: the task's details, unknown for those jobs -- never guessed; 0004: the tenant, none).
NEW_JOB_FIELDS: dict[str, Any] = {"args": None, "kwargs": None, "parent_id": None, "root_id": None, "group_id": None,
                                  "eta": None, "expires": None, "scheduled": False, "routing_key": None,
                                  "exchange": None, "children": [], "tenant": None}


def without_new_fields(data: Any) -> Any:
    """``data`` with the fields of :data:`NEW_JOB_FIELDS` left out of every job that has them at
    their unknown value (any other value stays, so the comparison shows it)."""
    if isinstance(data, list):
        return [without_new_fields(item) for item in data]
    if not isinstance(data, dict):
        return data
    is_job = "status" in data and "seq" in data and "args" in data
    return {key: without_new_fields(value) for key, value in data.items()
            if not (is_job and key in NEW_JOB_FIELDS and value == NEW_JOB_FIELDS[key])}


def same_order(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the failure patterns in one order: those of equal count are listed in
    the database's order of finish times, where SQLite and PostgreSQL place NULL apart."""
    failures = sorted(data["stats"]["failures"], key=lambda f: json.dumps(f, sort_keys=True))
    return {**data, "stats": {**data["stats"], "failures": failures}}


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but ``alembic_version``, in storage order."""
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
                for name in names if name != "alembic_version"}


def old_sqlite_store(tmp_path: Path) -> str:
    """A copy of the store commit f702de3 wrote."""
    shutil.copy(OLD / "store.db", tmp_path / "old.db")
    return f"sqlite:///{tmp_path / 'old.db'}"


def old_postgresql_store(url: str) -> str:
    """The old store on PostgreSQL: the old models' DDL, then every row of the SQLite file
    (what an old monitor on PostgreSQL holds after the same events)."""
    source = create_engine(f"sqlite:///{OLD / 'store.db'}")
    target = create_engine(url)
    try:
        ddl = "\n".join(line for line in (OLD / "schema-postgresql.sql").read_text().splitlines()
                        if not line.startswith("--"))
        with target.begin() as conn:
            for statement in ddl.split(";\n"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
        old = MetaData()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*expression-based index")
            old.reflect(source)
        with source.connect() as src, target.begin() as dst:
            for table in old.sorted_tables:
                # JSON copied as stored (text, cast back): SQL NULL stays NULL, not JSON null
                json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
                for column in table.columns:
                    column.type = Text() if column.name in json_columns else column.type
                names = ", ".join(f'"{c.name}"' for c in table.columns)
                values = ", ".join(f"CAST(:{c.name} AS json)" if c.name in json_columns else f":{c.name}"
                                   for c in table.columns)
                insert = text(f"INSERT INTO {table.name} ({names}) VALUES ({values})")
                rows = [dict(row) for row in src.execute(select(table)).mappings()]
                if rows:
                    dst.execute(insert, rows)
            dst.execute(text("SELECT setval(pg_get_serial_sequence('job_events', 'id'), max(id)) FROM job_events"))
    finally:
        source.dispose()
        target.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store written by the code before migrations, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return old_sqlite_store(tmp_path)
    return old_postgresql_store(str(request.getfixturevalue("pg_url")))


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return current(conn)
    finally:
        engine.dispose()


def differences(store: Store) -> list[Any]:
    """What Alembic finds between the store's schema and the models (SQLite: bar the
    expression indexes, which it cannot reflect there; they are checked by name)."""
    with store.engine.connect() as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*expression-based index")
        found = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        if conn.dialect.name == "sqlite":
            names = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'").scalars())
            found += [("missing expression index", name) for name in EXPRESSION_INDEXES - names]
    return list(found)


def test_a_store_written_before_migrations_is_upgraded_in_place_and_reads_back_the_same(old_store_url):
    # Given a store written by the monitor before migrations (no alembic_version)
    assert revision_of(old_store_url) is None
    # When a monitor of today opens it
    store = Store(old_store_url)
    try:
        # Then it is at the newest revision, its schema is the models' own
        assert revision_of(old_store_url) == head()
        assert differences(store) == []
        # And every read answers what the old monitor's answered
        got, want = same_order(without_new_fields(reads(store))), same_order(expected())
        assert [key for key in want if got[key] != want[key]] == []
    finally:
        store.close()


def test_upgrading_an_old_sqlite_store_changes_no_row(tmp_path):
    # Given a copy of the old SQLite store, and its rows
    url = old_sqlite_store(tmp_path)
    before = sqlite_rows(tmp_path / "old.db")
    # When it is opened, and so upgraded
    Store(url).close()
    # Then every row is still there, unchanged; the store only gained its revision, the
    # tables of later revisions (API keys and the audit trail, 0002), empty, the writer's
    # lease (0005) with its one expired row, and the columns later revisions gave jobs (0003,
    # 0004) and changes (0004), empty
    after = sqlite_rows(tmp_path / "old.db")
    # (rows of tables a later revision gave new columns end in those columns, empty)
    assert {name: [row[:len(before[name][0])] if before[name] else row for row in rows]
            for name, rows in after.items() if name in before} == before
    assert all(value is None for table in ("jobs", "changes") for row in after[table]
               for value in row[len(before[table][0]):])
    assert {name: rows for name, rows in after.items() if name not in before} == {
        "api_keys": [], "audit": [], "writer_lease": [("writer", "", 0, 0.0)]}
    assert sum(len(rows) for rows in before.values()) > 100


def test_a_store_from_before_the_ended_counter_gets_it_counted_from_its_jobs(old_store_url):
    # Given the old store as a monitor before the workers' job counters left it
    engine = create_engine(old_store_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE workers DROP COLUMN ended")
        conn.exec_driver_sql("UPDATE workers SET failed = 0")
    engine.dispose()
    # When a monitor of today opens it
    store = Store(old_store_url)
    try:
        # Then each worker's counts are those the old monitor kept, counted from its jobs
        want = expected()["workers"]
        for name in WORKERS:
            worker = store.worker(name, now=NOW)
            assert worker is not None
            assert (worker["processed"], worker["failed"]) == (want[name]["processed"], want[name]["failed"])
        assert differences(store) == []
    finally:
        store.close()


def test_a_fresh_store_is_built_by_the_migrations_and_matches_the_models(store_url):
    # Given an empty database
    assert revision_of(store_url) is None
    # When a monitor opens it
    store = Store(store_url)
    try:
        # Then the revisions built it, up to the newest, and the models find nothing to change:
        # a model changed without a migration fails here
        assert revision_of(store_url) == head()
        assert differences(store) == []
    finally:
        store.close()


def test_a_store_before_tenants_gets_each_jobs_tenant_from_its_stored_options(store_url):
    from alembic import command

    from monitor.store.migrate import alembic_config

    # Given a store at revision 0003 (before jobs had a tenant column) holding jobs whose stored
    # options name a tenant, a bad name, and none
    Store(store_url).close()
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003")
        with engine.begin() as conn:
            for job_id, meta in (("a", {"tenant": "acme"}), ("b", {"tenant": "no such name!"}), ("c", {}),
                                 ("d", None)):
                conn.execute(text("INSERT INTO jobs (id, status, attempt, n_events, seq, meta) "
                                  "VALUES (:id, 'completed', 0, 0, 0, :meta)"),
                             {"id": job_id, "meta": None if meta is None else json.dumps(meta)})
    finally:
        engine.dispose()
    # When a monitor of today opens it
    store = Store(store_url)
    try:
        # Then each job's tenant is its options' valid one, and the schema is the models'
        assert store.job_tenants(["a", "b", "c", "d"]) == {"a": "acme", "b": None, "c": None, "d": None}
        assert revision_of(store_url) == head() and differences(store) == []
    finally:
        store.close()


def test_two_monitors_that_start_together_on_one_store_migrate_it_once(store_url):
    # Given four monitors opening one empty store at the same moment
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait(10)
        try:
            Store(store_url).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    # Then every one of them opened it, and it is at the newest revision, recorded once
    assert not any(thread.is_alive() for thread in threads), "a monitor is still opening the store"
    assert errors == []
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            assert list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()) == [head()]
    finally:
        engine.dispose()


def upgrade_only(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobqueue.cli", "monitor", "--upgrade-only"], cwd=ROOT,
                          env=child_env({"JOBQUEUE_MONITOR_DB": url}), capture_output=True, text=True, timeout=120)


def test_upgrade_only_migrates_an_old_store_prints_its_revisions_and_exits(tmp_path):
    # Given the old store
    url = old_sqlite_store(tmp_path)
    # When an operator migrates it first
    run = upgrade_only(url)
    # Then it exits 0, saying where the store was and where it is
    assert run.returncode == 0, run.stderr
    assert "revision before: none (a store of a monitor from before migrations)" in run.stdout
    assert f"revision after:  {head()}" in run.stdout
    assert revision_of(url) == head()
    # And a second run finds it there
    again = upgrade_only(url)
    assert again.returncode == 0, again.stderr
    assert f"revision before: {head()}" in again.stdout


def test_upgrade_only_fails_clearly_when_the_store_is_unreachable(tmp_path):
    # Given a PostgreSQL URL where nothing listens, with a password
    url = "postgresql+psycopg://jobqueue:s3cret@127.0.0.1:1/monitor"
    # When an operator runs the upgrade
    run = upgrade_only(url)
    # Then it exits non-zero with one line that names the store (not its password) and why
    assert run.returncode != 0
    assert "cannot be upgraded" in run.stderr and "127.0.0.1:1" in run.stderr
    assert "s3cret" not in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def test_a_store_migrated_by_a_newer_monitor_is_refused_not_touched(tmp_path):
    # Given a store at a revision this monitor does not know
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00d'")
    engine.dispose()
    # When this monitor opens it, or an operator runs its upgrade
    with pytest.raises(ConfigError, match="revision f00d"):
        Store(url)
    run = upgrade_only(url)
    # Then both refuse, saying why, and the store stays where it was
    assert run.returncode == 1 and "a newer monitor migrated it" in run.stderr, run.stderr
    assert revision_of(url) == "f00d"
