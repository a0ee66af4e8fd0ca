"""The writer's lease: which of several monitors on one PostgreSQL store may write.

One row of ``writer_lease`` names the holder, its ``term`` and when the lease ends
(``expires_at``, on the database's clock, so the monitors' clocks do not matter). A monitor
takes the lease when it has expired (:meth:`WriterLease.acquire` bumps the term), keeps it by
renewing it (:meth:`WriterLease.renew`, only while the term is still its own), and fences
every write transaction with it (:meth:`WriterLease.fence`): the transaction locks the row
``FOR SHARE`` and checks that the term is still the one this monitor took. Taking over
bumps the term under ``FOR UPDATE``, so it waits for a write in flight to end, and any later
write of the old leader (a paused process that wakes up) finds another term and fails with
:class:`LeaseLost`: two monitors never both write. ``idle_in_transaction_session_timeout``
on every transaction that touches the lease row (the writes, renew, acquire, release; twice the
lease, at least :data:`IDLE_FLOOR` s) ends one whose process is paused mid-transaction, so its
lock delays a take-over by at most that long.

SQLite stores have no lease (one monitor, as before): see :mod:`monitor.ingest.standby`.
"""

from __future__ import annotations

import threading

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from jobqueue.errors import LeaseLost

#: The lease row's name.
LEASE = "writer"
#: Least seconds a write transaction may sit idle before PostgreSQL ends it (a batch's merge
#: runs in Python between statements; a paused process's transaction must not hold the row).
IDLE_FLOOR = 10.0
#: PostgreSQL's SQLSTATE of a lock wait that ran out (``lock_timeout``).
LOCK_NOT_AVAILABLE = "55P03"
#: The database's clock, Unix seconds.
_NOW = "extract(epoch from clock_timestamp())"


class WriterLease:
    """The lease on one PostgreSQL store, as seen by one monitor (``holder``)."""

    def __init__(self, engine: Engine, holder: str, seconds: float) -> None:
        self.engine = engine
        self.holder = holder
        self.seconds = seconds
        #: The term this monitor holds (None: it holds none).
        self.term: int | None = None
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """Take the lease if it has expired (or is already this monitor's): the new term, or
        None when another monitor holds it. Waits at most a second for a write in flight."""
        with self.engine.connect() as conn:  # a plain read first: no lock queued behind the leader's writes
            free = conn.execute(text(f"SELECT expires_at < {_NOW} OR holder = :holder FROM writer_lease "
                                     "WHERE name = :name"), {"holder": self.holder, "name": LEASE}).scalar()
        if not free:
            self.drop()
            return None
        try:
            with self.engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '1s'"))
                self._bound_idle(conn)
                term = conn.execute(text(
                    f"UPDATE writer_lease SET holder = :holder, term = term + 1, expires_at = {_NOW} + :seconds "
                    f"WHERE name = :name AND (expires_at < {_NOW} OR holder = :holder) RETURNING term"
                ), {"holder": self.holder, "seconds": self.seconds, "name": LEASE}).scalar()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            term = None  # the holder is writing right now: its lease is not over yet
        with self._lock:
            self.term = None if term is None else int(term)
            return self.term

    def renew(self) -> bool:
        """Extend the lease this monitor holds; False (and no term held any more) when another
        monitor took it over meanwhile."""
        term = self.term
        if term is None:
            return False
        with self.engine.begin() as conn:
            self._bound_idle(conn)
            renewed = conn.execute(text(
                f"UPDATE writer_lease SET expires_at = {_NOW} + :seconds "
                "WHERE name = :name AND term = :term AND holder = :holder RETURNING term"
            ), {"seconds": self.seconds, "name": LEASE, "term": term, "holder": self.holder}).scalar()
        if renewed is None:
            self.drop(term)
            return False
        return True

    def drop(self, term: int | None = None) -> None:
        """Forget the lease (``term``: only if that is still the one held)."""
        with self._lock:
            if term is None or self.term == term:
                self.term = None

    def release(self) -> None:
        """Give the lease up at once (a monitor that stops): a standby need not wait for it to
        expire."""
        term = self.term
        self.drop()
        if term is None:
            return
        with self.engine.begin() as conn:
            self._bound_idle(conn)
            conn.execute(text("UPDATE writer_lease SET expires_at = 0 WHERE name = :name AND term = :term"),
                         {"name": LEASE, "term": term})

    def fence(self, session: Session) -> None:
        """Check, inside a write transaction, that this monitor still holds the lease, and
        keep it so until the transaction ends (the row is locked ``FOR SHARE``). Raises
        :class:`LeaseLost` otherwise (the transaction is then rolled back)."""
        term = self.term
        if term is None:
            raise LeaseLost("this monitor is a standby: it does not hold the writer's lease")
        self._bound_idle(session)
        current = session.execute(text("SELECT term FROM writer_lease WHERE name = :name FOR SHARE"),
                                  {"name": LEASE}).scalar()
        if current != term:
            self.drop(term)
            raise LeaseLost(f"the writer's lease moved to term {current} (this monitor held {term})")

    def _bound_idle(self, conn: Connection | Session) -> None:
        """Have PostgreSQL end this transaction if its process stops mid-way (paused) for twice
        the lease, at least :data:`IDLE_FLOOR` s: every transaction that writes or locks the
        lease row (the writes' fence, renew, acquire, release) -- a renew paused between its
        UPDATE and its COMMIT held the row for good and no standby could take over."""
        ms = int(max(IDLE_FLOOR, self.seconds * 2) * 1000)
        conn.execute(text("SELECT set_config('idle_in_transaction_session_timeout', :ms, true)"), {"ms": str(ms)})

    def state(self) -> dict[str, object]:
        """The lease row as the database has it (holder, term, seconds left)."""
        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT holder, term, expires_at - {_NOW} FROM writer_lease WHERE name = :name"),
                               {"name": LEASE}).one()
        return {"holder": row[0], "term": int(row[1]), "left": round(float(row[2]), 3)}
