"""Jobs the writer's merge works on as plain objects, written with one executemany per shape.

The ORM costs more than the merge itself on the writer's hot path: building a new row, every
attribute read and write through its instrumentation, and its flush (about a third of the apply
path's time). A batch's jobs are therefore loaded as :class:`PlainJob` objects -- the same
attribute names as :class:`~monitor.store.models.JobRow`, nothing instrumented -- and written by
:func:`write_jobs`: new ones with one ``INSERT`` executemany, changed ones with one ``UPDATE ...
WHERE id = ?`` executemany, per set of columns written.

What the ORM would have written is written, column for column: a changed row sets the columns
whose value differs from the loaded one; a new row sets every column but the JSON ones never
assigned, which stay SQL NULL (the ORM stores a JSON ``null`` for a JSON attribute set to None,
SQL NULL for one never set). :class:`monitor.store.tx.Tx` keeps a job either as a plain object
or as an ORM row, never both, and writes the plain ones before any ORM statement that could read
jobs (:meth:`monitor.store.tx.Tx.write_plain_jobs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from jobqueue.states import empty_progress
from monitor.store.many import execute_many
from monitor.store.models import JobRow

_TABLE = JobRow.__table__
assert isinstance(_TABLE, Table)
#: Every column of ``jobs`` (their attribute names are the column names).
COLUMNS: tuple[str, ...] = tuple(c.key for c in _TABLE.columns)
#: The JSON columns: None there is JSON ``null`` when written, SQL NULL when never set.
JSON_COLUMNS = frozenset(c.key for c in _TABLE.columns if isinstance(c.type, JSON))
_PLAIN_COLUMNS = tuple(c for c in COLUMNS if c not in JSON_COLUMNS)
_UPDATE = update(_TABLE).where(_TABLE.c.id == bindparam("plain_job_id"))
_INSERT = insert(_TABLE)
#: The jobs of a list of ids (one statement built once: building the ``IN`` per load cost a
#: tenth of the prefetch).
_LOAD = select(_TABLE).where(_TABLE.c.id.in_(bindparam("plain_job_ids", expanding=True)))
_NEW = dict.fromkeys(COLUMNS)


class PlainJob:
    """A job row as plain attributes (see :class:`~monitor.store.models.JobRow` for each)."""

    __slots__ = COLUMNS + ("loaded", "assigned")

    id: str
    name: str | None
    service: str | None
    status: str
    worker: str | None
    machine_id: str | None
    queue: str | None
    priority: int | None
    workflow_id: str | None
    step: int | None
    tenant: str | None
    attempt: int
    attempt_since: float | None
    progress: dict[str, Any] | None
    submitted_at: float | None
    received_at: float | None
    started_at: float | None
    finished_at: float | None
    runtime: float | None
    error: dict[str, Any] | None
    result: Any
    meta: dict[str, Any] | None
    task: dict[str, Any] | None
    parent_id: str | None
    root_id: str | None
    n_events: int
    updated_at: float | None
    seq: int
    #: The values as stored (None: a new job, not stored yet).
    loaded: dict[str, Any] | None
    #: A new job's JSON columns that were set (written even when None); None once stored.
    assigned: set[str] | None

    def __init__(self, values: Mapping[str, Any], loaded: bool) -> None:
        for name in COLUMNS:
            setattr(self, name, values[name])
        self.loaded = dict(values) if loaded else None
        self.assigned = None if loaded else {"progress"}

    @classmethod
    def new(cls, job_id: str) -> PlainJob:
        """A job not stored yet, as :meth:`monitor.store.tx.Tx.job` makes one (status "")."""
        return cls({**_NEW, "id": job_id, "status": "", "attempt": 0, "n_events": 0, "seq": 0,
                    "progress": empty_progress()}, loaded=False)

    def values(self) -> dict[str, Any]:
        """Every column's current value."""
        return {name: getattr(self, name) for name in COLUMNS}


#: A job as the merge sees it: an ORM row or a plain one.
AnyJob = JobRow | PlainJob


def load_jobs(connection: Connection, ids: list[str]) -> list[PlainJob]:
    """The stored jobs among ``ids`` (one ``SELECT``), as plain objects."""
    return [PlainJob(dict(row._mapping), loaded=True) for row in connection.execute(_LOAD, {"plain_job_ids": ids})]


def write_jobs(connection: Connection, jobs: list[PlainJob]) -> None:
    """Write what changed in ``jobs`` (see the module's docstring); afterwards each counts as
    stored as it is now."""
    inserts: dict[frozenset[str], list[dict[str, Any]]] = {}
    updates: dict[frozenset[str], list[dict[str, Any]]] = {}
    for job in jobs:
        now = job.values()
        if job.loaded is None:
            row = {name: now[name] for name in _PLAIN_COLUMNS}
            row.update((name, now[name]) for name in job.assigned or ())
            inserts.setdefault(frozenset(row), []).append(row)
        else:
            loaded = job.loaded
            changed = {name: value for name, value in now.items() if value != loaded[name]}
            if changed:
                changed["plain_job_id"] = job.id
                updates.setdefault(frozenset(changed), []).append(changed)
        job.loaded, job.assigned = now, None
    for rows in inserts.values():
        execute_many(connection, _INSERT, rows)
    for rows in updates.values():
        execute_many(connection, _UPDATE, rows)
