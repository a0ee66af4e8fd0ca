"""The monitor's store: one object for every read and write of its database.

Writes go through :meth:`Store.write` (one :class:`~monitor.store.tx.Tx`, sequence-numbered
changes at commit, :mod:`monitor.store.changelog`); reads are :class:`StoreQueries`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import delete, event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from jobqueue.config import Settings
from jobqueue.states import FINAL_STATUSES
from monitor.store.changelog import record_changes
from monitor.store.counts import job_counts
from monitor.store.engine import WRITE_OPTION, make_engine
from monitor.store.many import execute_many
from monitor.store.medians import ServiceMedians
from monitor.store.migrate import upgrade
from monitor.store.models import AuditRow, ChangeRow, CounterRow, JobEventRow, JobRow
from monitor.store.queries import StoreQueries
from monitor.store.tx import Tx
from monitor.store.worker_cache import WorkerCache

#: A transaction's timeline rows, one executemany (:func:`monitor.store.many.execute_many`).
_INSERT_EVENTS = insert(JobEventRow)
#: The key of a write session's ``info`` that holds its :class:`Tx`.
_TX = "jobqueue_tx"


def _before_orm_execute(state: ORMExecuteState) -> None:
    """A write transaction's plain jobs are written before an ORM statement that may read them."""
    tx = state.session.info.get(_TX)
    if tx is not None:
        tx.before_orm_execute(state)


class Store(StoreQueries):
    """All reads and writes of the monitor's database (the reads: :class:`StoreQueries`)."""

    def __init__(
        self,
        url: str,
        *,
        keep_jobs: int = 1_000_000,
        keep_seconds: float = 7 * 24 * 3600.0,
        changes_keep: int = 20000,
        audit_keep_seconds: float = 400 * 86400.0,
        echo: bool = False,
    ) -> None:
        self.url = url
        self.keep_jobs = keep_jobs
        self.keep_seconds = keep_seconds
        self.changes_keep = changes_keep
        self.audit_keep_seconds = audit_keep_seconds
        self.is_sqlite = url.startswith("sqlite")
        self.engine: Engine = make_engine(url, echo=echo)
        upgrade(self.engine)  # the schema: the newest revision (an older store upgraded in place)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._sessions, "do_orm_execute", _before_orm_execute)
        #: Called first in every write transaction; raises to refuse the write (the writer's
        #: lease of a store shared by several monitors, :meth:`monitor.store.lease.WriterLease.fence`).
        self.fence: Callable[[Session], None] | None = None
        self.worker_cache = WorkerCache()
        #: The services' median windows, moved by this process's write transactions.
        self.medians = ServiceMedians()

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """A store configured by the ``JOBQUEUE_MONITOR_*`` settings."""
        return cls(
            settings.monitor_db,
            keep_jobs=settings.monitor_keep_jobs,
            keep_seconds=settings.monitor_keep_seconds,
            changes_keep=settings.monitor_changes_keep,
            audit_keep_seconds=settings.monitor_audit_keep_days * 86400.0,
        )

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def write(self, now: float | None = None) -> Iterator[Tx]:
        """A write transaction; marked objects get their seq and change rows at commit.

        Yields a :class:`Tx`; ``tx.changes`` (after the block) lists ``(seq, kind, key, data)``.
        """
        with self._write_session() as session:
            tx = session.info[_TX] = Tx(session, time.time() if now is None else now)
            with session.no_autoflush:
                yield tx
            if tx.events:
                # One plain executemany: the ORM's bulk insert costs more than the insert itself.
                # No foreign key: the plain jobs are written last, the ORM's rows flush once in
                # record_changes (their changes and seq together).
                execute_many(session.connection(), _INSERT_EVENTS, tx.events)
            tx.changes = record_changes(tx, lock_counter=not self.is_sqlite, medians=self.medians)
            tx.write_plain_jobs()
            del session.info[_TX]
        for done in tx.after_commit:
            done()

    @contextmanager
    def _write_session(self) -> Iterator[Session]:
        """A session in a write transaction, fenced (see :attr:`fence`)."""
        with self._sessions.begin() as session:
            # BEGIN IMMEDIATE on SQLite: take the write lock up front, so two writers queue
            # on the busy timeout instead of failing on a lock upgrade.
            session.connection(execution_options={WRITE_OPTION: True})
            if self.fence is not None:
                self.fence(session)
            yield session

    def prune(self, now: float | None = None) -> int:
        """Delete finished jobs beyond the age/count limits, old change rows and audit entries
        older than ``audit_keep_seconds``. Returns how many jobs were pruned (each one a
        ``data: null`` change)."""
        now = time.time() if now is None else now
        with self.write(now) as tx:
            session = tx.session
            old = set(session.scalars(
                select(JobRow.id).where(JobRow.status.in_(FINAL_STATUSES), JobRow.finished_at < now - self.keep_seconds)
            ))
            extra = set(session.scalars(
                select(JobRow.id).where(JobRow.status.in_(FINAL_STATUSES))
                .order_by(JobRow.finished_at.desc(), JobRow.id).offset(self.keep_jobs)
            ))
            ids = sorted(old | extra)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                # Their workers' counts and their services' medians change with them.
                for svc in session.scalars(select(JobRow.service).where(JobRow.id.in_(chunk)).distinct()):
                    if svc:
                        tx.touch("service", svc)
                for name, (ended, failed) in job_counts(session, ids=chunk).items():
                    worker = tx.worker(name, create=False)
                    if worker is not None:
                        worker.ended = max(0, (worker.ended or 0) - ended)
                        worker.failed = max(0, (worker.failed or 0) - failed)
                        tx.touch("worker", name)
                owners = {job_id: tenant for job_id, tenant in
                          session.execute(select(JobRow.id, JobRow.tenant).where(JobRow.id.in_(chunk)))}
                session.execute(delete(JobEventRow).where(JobEventRow.job_id.in_(chunk)))
                session.execute(delete(JobRow).where(JobRow.id.in_(chunk)))
                for job_id in chunk:
                    tx.drop("job", job_id, owners.get(job_id))
        with self._write_session() as session:
            top = session.get(CounterRow, "seq")
            assert top is not None
            session.execute(delete(ChangeRow).where(ChangeRow.seq <= top.value - self.changes_keep))
            session.execute(delete(AuditRow).where(AuditRow.at < now - self.audit_keep_seconds))
        return len(ids)

    # -- reading ---------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read transaction that sees one consistent snapshot of the database."""
        session = self._sessions()
        try:
            if self.is_sqlite:
                session.connection()
            else:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session
        finally:
            session.rollback()
            session.close()

    def set_draining(self, name: str, draining: bool) -> bool:
        """Record that a worker was asked to stop/restart consuming (:meth:`Tx.set_draining`)
        in a transaction of its own: only for a process without a writer (see
        :mod:`monitor.ingest.writer`); with one, :meth:`Writer.call` runs it."""
        with self.write() as tx:
            return tx.set_draining(name, draining)
