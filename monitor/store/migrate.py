"""The store's schema under Alembic: a monitor brings its store to the newest revision when it
opens it, and ``jobqueue monitor --upgrade-only`` does only that.

The revisions are :mod:`monitor.store.migrations` (configured here in code; there is no
``alembic.ini``). :func:`upgrade` handles three kinds of database:

* an empty one is built by the revisions, from the first;
* a store of a monitor from before migrations (its tables, no ``alembic_version``) is adopted:
  the one upgrade step that code did by hand (the workers' ``ended`` counter) is done if it
  is missing, then the baseline revision, whose every CREATE is IF NOT EXISTS, adds what such
  a store may lack and stamps it; later revisions follow;
* one at the newest revision is left alone (one SELECT, no lock); one at a revision this
  monitor does not know (a newer monitor migrated it) is refused with a ``ConfigError``.

Two monitors that start together never both migrate: the upgrade is one transaction that
first takes a lock -- a PostgreSQL advisory lock, on SQLite the database's write lock
(``BEGIN IMMEDIATE``) -- so the second waits, then finds the store at the newest revision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, inspect, table, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobqueue.errors import ConfigError
from monitor.store.counts import job_counts
from monitor.store.engine import WRITE_OPTION, make_engine

log = logging.getLogger(__name__)

#: Where the revisions are (inside the package, so an installed monitor has them).
MIGRATIONS = Path(__file__).parent / "migrations"
#: The revision a store of a monitor from before migrations is adopted at.
BASELINE = "0001"
#: The PostgreSQL advisory lock an upgrade holds (any constant; these are the bytes "jobqueu").
LOCK_ID = 0x6A6F6271756575
#: Tables every monitor before migrations created: a database with one of them is such a store.
EARLIER_TABLES = frozenset({"counters", "jobs", "workers"})


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` found and left: revisions (``None``: no ``alembic_version``)."""

    before: str | None
    after: str | None
    #: The store was one of a monitor from before migrations.
    adopted: bool = False


def alembic_config(connection: Connection, target_metadata: Any = None) -> Config:
    """Alembic's configuration for running the revisions on ``connection`` (in its transaction);
    ``target_metadata`` only for drafting a revision from the models."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["target_metadata"] = target_metadata
    return config


def head() -> str:
    """The newest revision."""
    revision = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert revision is not None, "the store's migrations have no revision"
    return revision


def known(revision: str) -> bool:
    """Whether ``revision`` is one of this monitor's (a store a newer monitor migrated is not)."""
    return any(script.revision == revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions())


def current(connection: Connection) -> str | None:
    """The revision the database is at (``None``: no ``alembic_version``: empty, or older)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> Upgrade:
    """Bring the database of ``engine`` to the newest revision (see the module's docstring)."""
    newest = head()
    with engine.connect() as conn:
        found = current(conn)
        conn.rollback()
        if found == newest:
            return Upgrade(found, found)
        with conn.execution_options(**{WRITE_OPTION: True}).begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": LOCK_ID})
            found = current(conn)  # now that no other monitor is migrating it
            if found is not None and not known(found):
                raise ConfigError(f"the monitor's store is at revision {found}, which this monitor does not "
                                  f"know (its newest is {newest}): a newer monitor migrated it")
            adopted = found is None and bool(EARLIER_TABLES & set(inspect(conn).get_table_names()))
            if adopted:
                log.info("adopting a store of a monitor from before migrations at revision %s", BASELINE)
                add_ended_counts(conn)
                command.upgrade(alembic_config(conn), BASELINE)
            if current(conn) != newest:
                command.upgrade(alembic_config(conn), "head")
            return Upgrade(found, current(conn), adopted)


def upgrade_url(url: str) -> Upgrade:
    """:func:`upgrade` the store at ``url`` (``jobqueue monitor --upgrade-only``)."""
    engine = make_engine(url)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()


def add_ended_counts(conn: Connection) -> None:
    """The upgrade step monitors before migrations did by hand, for a store older than the
    workers' ``ended`` column: add it, and count it (and ``failed``) from the jobs it holds."""
    if "ended" in {c["name"] for c in inspect(conn).get_columns("workers")}:
        return
    conn.execute(text("ALTER TABLE workers ADD COLUMN ended INTEGER NOT NULL DEFAULT 0"))
    workers = table("workers", column("name"), column("ended"), column("failed"))
    with Session(conn) as session:
        for name, (ended, failed) in job_counts(session).items():
            conn.execute(update(workers).where(workers.c.name == name).values(ended=ended, failed=failed))
