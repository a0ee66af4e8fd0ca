"""What ``/healthz`` says: the collector, writer, repair and lease of this monitor to viewers;
only up-or-not, and whether collector and repair run, to anyone else."""

from __future__ import annotations

import time
from typing import Any

from monitor.web.routes import Role


def health_of(c: Any) -> dict[str, Any]:
    """The full health body of the monitor context ``c`` (``ok``: collector and writer alive)."""
    collector = c.collector.stats() if c.collector is not None else None
    ok = collector is None or (collector["alive"] and c.writer is not None and c.writer.alive)
    leadership = getattr(c.writer, "leadership", None)
    return {"ok": bool(ok), "seq": c.store.seq(), "collector": collector,
            "repair": c.repair_stats(), "uptime": round(time.time() - c.started_at, 3),
            "role": "single" if leadership is None else ("standby" if c.writer.standing_by else "leader"),
            "lease": None if leadership is None else {**leadership.stats(), "buffered": c.writer.buffered}}


def sees_details() -> bool:
    """Whether this request's caller may read the details (a viewer or above)."""
    from monitor.web.access import current_identity

    return current_identity().role.allows(Role.VIEWER)


def public_health(body: dict[str, Any]) -> dict[str, Any]:
    """What ``/healthz`` tells anyone: up or not, and whether collector and repair run (no
    error texts, counts or addresses)."""
    collector, repair = body.get("collector"), body.get("repair")
    return {"ok": body["ok"], "seq": body["seq"],
            "collector": None if collector is None else {k: collector.get(k) for k in ("alive", "connected")},
            "repair": None if repair is None else {"runs": repair.get("runs")}, "uptime": body["uptime"],
            "role": body["role"]}
