"""The fleet's workers as the API shows them, without rebuilding the unchanged ones per read.

Building 200 workers per ``/api/state`` (ORM rows, their JSON columns decoded, their
connectors, :func:`monitor.store.serialise.worker_dict`) was most of its time. Every change to
a worker's stored form -- its own columns or any of its connectors -- goes through
:meth:`monitor.store.Tx.touch`, which gives the worker a new ``seq`` at commit
(:mod:`monitor.store.changelog`). So a worker built at ``seq`` N is that worker for as long as
its ``seq`` is N, and a read needs only ``(name, seq, heartbeat_received)`` of every worker
(one narrow query, no JSON decoded) and the whole rows of those that changed.

The one field that depends on the reader's clock, ``heartbeat_age``, is never cached: it is
computed per read from ``heartbeat_received`` (:func:`monitor.store.serialise.heartbeat_age`),
as :func:`worker_dict` does. ``heartbeat_received`` is part of the key as well, so a row whose
heartbeat moved without a new ``seq`` would be rebuilt, not shown stale.

One cache per :class:`monitor.store.Store` (so per app), bounded by ``limit`` workers; it is
shared by the app's request threads, hence the lock.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.store.models import ConnectorRow, WorkerRow
from monitor.store.serialise import heartbeat_age, worker_dict

#: What one cached worker was built from: its ``seq`` and ``heartbeat_received``.
Key = tuple[int, float | None]
#: Rows per ``IN (...)`` of the reload of changed workers.
CHUNK = 500


class WorkerCache:
    """Serialised workers by name, each with the :data:`Key` it was built from."""

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._built: dict[str, tuple[Key, dict[str, Any]]] = {}
        #: Workers built (missed) and reused (hit) since the start: for tests and benchmarks.
        self.builds = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._built)

    def workers(self, session: Session, now: float) -> list[dict[str, Any]]:
        """Every worker, by name, as :func:`worker_dict` shows it at ``now``, read in
        ``session`` (one read transaction); each one a new dict, its nested values shared with
        the cache (read them, do not change them)."""
        listing = session.execute(
            select(WorkerRow.name, WorkerRow.seq, WorkerRow.heartbeat_received).order_by(WorkerRow.name)).all()
        with self._lock:
            built = {name: self._built.get(name) for name, _, _ in listing}
        stale = [name for name, seq, received in listing
                 if (entry := built[name]) is None or entry[0] != (seq, received)]
        fresh = self._build(session, stale, now) if stale else {}
        built.update(fresh)
        self._keep(fresh, len(listing))
        out = []
        for name, _, received in listing:
            entry = built[name]
            assert entry is not None
            out.append({**entry[1], "heartbeat_age": heartbeat_age(received, now)})
        return out

    def _build(self, session: Session, names: list[str], now: float) -> dict[str, tuple[Key, dict[str, Any]]]:
        """The workers ``names`` built from their whole rows and connectors."""
        out: dict[str, tuple[Key, dict[str, Any]]] = {}
        for start in range(0, len(names), CHUNK):
            chunk = names[start:start + CHUNK]
            conns: dict[str, list[ConnectorRow]] = {}
            for c in session.scalars(select(ConnectorRow).where(ConnectorRow.worker.in_(chunk))):
                conns.setdefault(c.worker, []).append(c)
            for w in session.scalars(select(WorkerRow).where(WorkerRow.name.in_(chunk))):
                out[w.name] = ((w.seq, w.heartbeat_received), worker_dict(w, conns.get(w.name, []), now))
        self.builds += len(out)
        return out

    def _keep(self, fresh: dict[str, tuple[Key, dict[str, Any]]], listed: int) -> None:
        """Remember ``fresh``; over ``limit`` workers, forget everything first (a fleet that
        large is rebuilt per read, as it was before this cache)."""
        with self._lock:
            self.hits += listed - len(fresh)
            if len(self._built) + len(fresh) > self.limit:
                self._built.clear()
            if len(fresh) <= self.limit:
                self._built.update(fresh)
