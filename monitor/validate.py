"""Checks on events from the wire, before they reach the writer.

Anyone who can publish on the broker can send a well-formed event, and a far-future timestamp
or a ``percent`` of ``1e308`` would otherwise stick: merges move only forward, so a
``worker-offline`` stamped next year would keep a live worker offline for a year. So every
event the collector receives is checked here first:

* its ``timestamp`` must be within ``window`` seconds of the time it was received (default
  ±5 min, ``JOBQUEUE_MONITOR_EVENT_WINDOW``);
* its numbers must be finite and in range (``percent`` 0–100, ``runtime``, ``eta_seconds``,
  ``step``, ``total_steps``, ``attempt`` ≥ 0, a heartbeat ``freq`` > 0 and at most an hour);
* it may not claim to come from the monitor's own truth repair (``source``), nor be one of the
  event types only repair makes (:data:`REPAIR_ONLY`).

A refused event is counted as malformed and by reason (``refused_<reason>`` in the writer's
counts) and dropped.
A final state that a well-formed event claims is verified against the result backend at the
next repair (:mod:`monitor.truth`), which corrects it when the backend disagrees. Events are
not authenticated: deployments that need that should turn on Celery's message signing (see
docs/dashboard.md).

The checks are hand-written on purpose: the same checks as a strict pydantic model
(``create_model`` over :data:`RANGES`, ``extra="ignore"``) cost 2.9-4.6 µs per event against
0.8-1.7 µs here (2026-12-02, four realistic events, shared 2-CPU machine), on the path every
event of the stream takes; the ingestion benchmark could not tell the two apart through its
noise, so the cheaper one stays.
"""

from __future__ import annotations

import math
from typing import Any

#: Event types that only the monitor's own repair makes; refused from the wire.
REPAIR_ONLY = frozenset({"job-truth", "job-lost", "job-expired"})

#: (field, low, high) numeric ranges, inclusive; None means unbounded.
RANGES: tuple[tuple[str, float | None, float | None], ...] = (
    ("percent", 0.0, 100.0),
    ("runtime", 0.0, None),
    ("eta_seconds", 0.0, None),
    ("step", 0, None),
    ("total_steps", 0, None),
    ("attempt", 0, 10_000),
    ("retries", 0, 10_000),
    ("freq", 0.001, 3600.0),
    ("interval", 0.001, 86400.0),
    ("active", 0, None),
    ("processed", 0, None),
)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def refusal(event: dict[str, Any], received: float, window: float) -> str | None:
    """Why ``event`` (received at ``received``) must not touch the store, or None.

    Strips a forged ``source`` in place (only repair's own events may carry it)."""
    kind = event.get("type")
    if kind in REPAIR_ONLY:
        return "type"
    if "source" in event:
        return "source"
    ts = event.get("timestamp")
    if ts is not None:
        if not _number(ts) or not math.isfinite(ts):
            return "timestamp"
        if abs(float(ts) - received) > window:
            return "timestamp"
    for name, low, high in RANGES:
        value = event.get(name)
        if value is None:
            continue
        if not _number(value) or not math.isfinite(value):
            return "number"
        if (low is not None and value < low) or (high is not None and value > high):
            return "number"
    return None


class EventGate:
    """Applies :func:`refusal` to every event from the wire and counts what it refuses."""

    def __init__(self, window: float, count: Any) -> None:
        """``count(name)`` records one refusal (the writer's :meth:`~monitor.writer.Writer.count`)."""
        self.window = window
        self.count = count

    def allows(self, event: Any, received: float) -> bool:
        """True when ``event`` may go to the writer."""
        if not isinstance(event, dict):
            return True  # the writer counts it as malformed
        reason = refusal(event, received, self.window)
        if reason is None:
            return True
        # A refused event is a malformed one to every counter that reports those (/healthz,
        # /metrics), and its reason is counted on its own.
        self.count("malformed")
        self.count(f"refused_{reason}")
        return False
