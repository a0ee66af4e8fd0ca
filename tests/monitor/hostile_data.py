"""Hostile numbers put straight into a monitor's store, past any event validation: what the
API, the websocket and the pages must survive (strict JSON, finite stats, bounded loops)."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import create_engine, text

#: One number of each hostile kind a forged event could carry.
HUGE = 1e308
FUTURE = 1e18


def seed_events(t0: float, worker: str = "gpu0@vm1", machine: str = "vm1") -> list[dict[str, Any]]:
    """Events for a machine and jobs in every state: two completed (``h1``, ``h2``), one
    processing (``h3``), one queued (``h4``)."""
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": t0})
    events: list[dict[str, Any]] = [
        {"type": "connector-status", "worker": worker, "machine_id": machine, "gpu": 0, "service": "simulation",
         "status": "idle", "timestamp": t0, "queues": ["gpu0", "simulation"]},
    ]
    for i, job in enumerate(("h1", "h2", "h3", "h4")):
        events.append({"type": "task-sent", "uuid": job, "kwargs": meta, "timestamp": t0 + i})
    for job in ("h1", "h2", "h3"):
        events.append({"type": "task-started", "uuid": job, "hostname": worker, "timestamp": t0 + 5})
    for job in ("h1", "h2"):
        events.append({"type": "task-succeeded", "uuid": job, "hostname": worker, "timestamp": t0 + 6, "runtime": 1.0})
    return events


def plant(db_url: str) -> None:
    """Overwrite the seeded jobs' numbers with extremes: runtimes of 1e308, a finish time of
    1e18, an infinite ETA and a NaN percent, an infinite service median."""
    engine = create_engine(db_url)
    progress = json.dumps({"percent": math.nan, "step": 1, "total_steps": 2, "eta_seconds": math.inf,
                           "message": "x", "node": None})
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET runtime = :r WHERE id IN ('h1', 'h2')"), {"r": HUGE})
            conn.execute(text("UPDATE jobs SET finished_at = :f WHERE id = 'h2'"), {"f": FUTURE})
            conn.execute(text("UPDATE jobs SET progress = :p, started_at = :s WHERE id = 'h3'"),
                         {"p": progress, "s": -HUGE})
            conn.execute(text("UPDATE jobs SET submitted_at = :s WHERE id = 'h4'"), {"s": HUGE})
            conn.execute(text("UPDATE service_stats SET median = :m"), {"m": math.inf})
    finally:
        engine.dispose()


def strict_json(body: str | bytes) -> Any:
    """Parse ``body`` as JSON a browser accepts: NaN and Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(body, parse_constant=refuse)
