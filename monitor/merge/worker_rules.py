"""The merge rules for workers and connectors: (stored state, report) → new state, no I/O.

A worker's identity (machine, GPU) is never replaced by a worse one, its heartbeat only moves
forward, and a connector status replaces the stored one only when it is newer (by the worker's
report ``seq``, else by time). The I/O around these -- rows, machines, the jobs of a worker
that went offline -- is :mod:`monitor.merge.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from jobqueue.shared.names import WORKER_OFFLINE, WORKER_ONLINE
from monitor.merge.fields import MAX_ID, shallow_copy
from monitor.store.statuses import WorkerStatus

#: The warning of a worker whose machine nobody reported.
MISSING_MACHINE = "missing machine_id"


@dataclass(frozen=True)
class Identity:
    """Which machine and GPU a worker runs on, who said so (``name``: its node name,
    ``worker``: the worker itself), and what disagrees."""

    machine_id: str | None = None
    gpu: int | None = None
    source: str | None = None
    warning: str | None = None


def identity_rule(known: Identity, machine_id: Any, gpu: Any, source: str) -> Identity:
    """``known`` updated by a report of ``machine_id`` and ``gpu`` from ``source``. A known
    machine id is never replaced (the earlier system replaced it with "unknown" and lost the
    worker) except a guess from the node name by the worker's own report; a disagreement
    becomes a warning. Unchanged when the result equals ``known``."""
    new = known
    if isinstance(machine_id, str) and machine_id and machine_id != "unknown" and len(machine_id) <= MAX_ID:
        if new.machine_id is None or (new.source == "name" and source == "worker"):
            new = replace(new, machine_id=machine_id, source=source)
        elif new.machine_id != machine_id:
            new = replace(new, warning=f"reported machine_id {machine_id!r} differs from {new.machine_id!r}")
    if isinstance(gpu, int) and not isinstance(gpu, bool) and 0 <= gpu < 1024 and new.gpu != gpu:
        if new.gpu is None or source == "worker":
            new = replace(new, gpu=gpu)
    if new.machine_id is None and new.warning is None:
        new = replace(new, warning=MISSING_MACHINE)
    elif new.machine_id is not None and new.warning == MISSING_MACHINE:
        new = replace(new, warning=None)
    return new


@dataclass
class Liveness:
    """A worker's stored liveness and what its heartbeats report."""

    status: str = WorkerStatus.ONLINE.value
    draining: bool = False
    heartbeat_at: float | None = None
    heartbeat_received: float | None = None
    online_at: float | None = None
    freq: float | None = None
    active: int | None = None
    processed: int | None = None
    pid: int | None = None
    sw_ver: str | None = None
    loadavg: list[Any] | None = None
    clock_skew: float | None = None


#: The names of :class:`Liveness`'s fields (the worker columns the rule owns).
LIVENESS_FIELDS = tuple(f.name for f in fields(Liveness))
#: Fields a heartbeat reports as is (kept when absent).
REPORTED = ("freq", "active", "processed", "pid", "sw_ver", "loadavg", "clock_skew")


@dataclass
class LivenessOutcome:
    """What one worker event changes."""

    state: Liveness
    changed: bool = False
    #: The event is older than the worker's going offline: nothing changes.
    late: bool = False
    #: The worker went offline; its running jobs are lost since this time.
    lost_since: float | None = None


def is_late(stored: Liveness, kind: str, ts: float) -> bool:
    """True for a report from before the (offline) worker went offline."""
    return stored.status == WorkerStatus.OFFLINE.value and kind != WORKER_OFFLINE \
        and stored.heartbeat_at is not None and ts <= stored.heartbeat_at


def liveness_rule(stored: Liveness, kind: str, ts: float, received: float, report: dict[str, Any], *,
                  created: bool = False) -> LivenessOutcome:
    """Merge worker event ``kind`` (online, heartbeat, offline) at ``ts``, received at
    ``received``, with the checked ``report`` values (:data:`REPORTED`), into ``stored``.
    A ``created`` worker (its row was made for this event) always counts as a change."""
    if not created and is_late(stored, kind, ts):
        return LivenessOutcome(state=stored, late=True)
    s = replace(stored)
    out = LivenessOutcome(state=s, changed=created)
    if kind == WORKER_OFFLINE:
        if s.status != WorkerStatus.OFFLINE.value:
            s.status = WorkerStatus.OFFLINE.value
            out.changed = True
            out.lost_since = s.heartbeat_at or ts
        s.heartbeat_at = max(s.heartbeat_at or ts, ts)
    else:
        if s.status != WorkerStatus.ONLINE.value:
            s.status = WorkerStatus.ONLINE.value
            s.draining = False
        if kind == WORKER_ONLINE and s.online_at != ts:
            s.online_at = ts
        s.heartbeat_at = max(s.heartbeat_at or ts, ts)
        s.heartbeat_received = max(s.heartbeat_received or received, received)
        out.changed = True
    for attr in REPORTED:
        value = report.get(attr)
        if value is not None and getattr(s, attr) != value:
            setattr(s, attr, value)
            out.changed = True
    return out


@dataclass
class ConnectorState:
    """One connector's stored status on one worker."""

    status: str
    message: str = ""
    details: dict[str, Any] | None = None
    updated_at: float | None = None
    received_at: float | None = None
    event_seq: int | None = None
    pid: int | None = None
    interval: float | None = None
    stale: bool = False


#: The names of :class:`ConnectorState`'s fields (the connector columns the rule owns).
CONNECTOR_FIELDS = tuple(f.name for f in fields(ConnectorState))


@dataclass(frozen=True)
class ConnectorReport:
    """A connector status as an event or a repair answer reports it (fields checked)."""

    status: str
    message: str
    details: dict[str, Any]
    ts: float
    received: float
    seq: int | None = None
    pid: int | None = None
    interval: float | None = None
    repair: bool = False


def connector_is_newer(conn: ConnectorState | None, seq: int | None, ts: float, received: float, *,
                       repair: bool) -> tuple[bool, bool]:
    """Whether a connector status (from an event or from a repair's ``connector_status``
    answer) replaces the stored one, and whether it confirms it (same report again).

    The worker numbers every report with ``seq``, increasing across its restarts (it starts at
    the process's start time in ms), and the control command answers with the seq of the last
    report it sent, so seq alone orders events and repair answers: an older repair answer never
    overwrites a newer event, and a late event never overwrites a newer repair answer. Without a
    seq on either side (an older worker) the event time decides, and a repair answer wins
    unless an event arrived after it was asked for.
    """
    if conn is None:
        return True, False
    if seq is not None and conn.event_seq is not None:
        return seq > conn.event_seq, seq == conn.event_seq
    if repair:
        return conn.received_at is None or received >= conn.received_at, False
    return conn.updated_at is None or ts >= conn.updated_at, False


def connector_rule(stored: ConnectorState | None, report: ConnectorReport) -> tuple[ConnectorState | None, bool]:
    """The connector's state after ``report`` (None: none stored and none to store) and
    whether that is a change of its worker. A confirmation (same seq) only freshens it."""
    newer, confirms = connector_is_newer(stored, report.seq, report.ts, report.received, repair=report.repair)
    changed = False
    state = None if stored is None else shallow_copy(stored)
    if confirms and state is not None:
        # The worker still reports the status we hold (same seq): it is fresh again.
        state.received_at = max(state.received_at or report.received, report.received)
        if state.stale:
            state.stale = False
            changed = True
    if newer:
        if state is None:
            state = ConnectorState(status=report.status)
        state.status = report.status
        state.message = report.message
        state.details = report.details
        state.stale = False
        state.updated_at = report.ts
        state.received_at = report.received
        state.event_seq = report.seq if report.seq is not None else state.event_seq
        state.pid = report.pid if report.pid is not None else state.pid
        if report.interval is not None and report.interval > 0:
            state.interval = report.interval
        changed = True
    return state, changed
