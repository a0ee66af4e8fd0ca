"""Checks on events from the wire, before they reach the writer.

Anyone who can publish on the broker can send a well-formed event, and a far-future timestamp
or a ``percent`` of ``1e308`` would otherwise stick: merges move only forward, so a
``worker-offline`` stamped next year would keep a live worker offline for a year. So every
event the collector receives is checked here first, against its typed model
(:mod:`monitor.ingest.event_models`, one pydantic adapter for every type) and its time of receipt.
A refused event is counted as malformed and by reason (``refused_<reason>`` in the writer's
counts, the detail in the collector's ``last_error``) and dropped. The reasons:

``type``
    one of the event types only the monitor's own repair makes
    (:data:`~monitor.ingest.event_models.REPAIR_ONLY`);
``source``
    it claims to come from that repair (carries ``source``);
``timestamp``
    its ``timestamp`` is not a finite number, or is further than ``window`` seconds from the
    time it was received (default ±5 min, ``JOBQUEUE_MONITOR_EVENT_WINDOW``) once its
    worker's clock offset is taken off (:mod:`monitor.ingest.clocks`: a live worker is never
    refused for its clock alone);
``number``
    a numeric field is not a finite number, is out of its range (``percent`` 0-100,
    ``runtime``, ``eta_seconds``, ``step``, ``total_steps`` ≥ 0, ``attempt`` 0-10,000, a
    heartbeat ``freq`` > 0 and at most an hour...), or is not an int where the merge reads one;
``field``
    another field the merge reads is missing or of the wrong type (a job event without its
    ``uuid``, a worker name that is not text, a connector ``status`` that is not one);
``event``
    it is not a JSON object at all.

When an event breaks several rules the first reason of that list is counted.
A final state that a well-formed event claims is verified against the result backend at the
next repair (:mod:`monitor.merge.truth`), which corrects it when the backend disagrees. Events are
not authenticated: deployments that need that should turn on Celery's message signing (see
docs/dashboard.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from monitor.ingest.clocks import ClockSkew
from monitor.ingest.event_models import ANY_EVENT, NUMBER_FIELDS, REPAIR_ONLY, WIRE_EVENT

#: Refusal reasons, the one counted first when an event breaks several rules.
REASONS = ("type", "source", "timestamp", "number", "field", "event")
_RANK = {reason: i for i, reason in enumerate(REASONS)}
#: pydantic-core's errors for a ``type`` tag no model has (or no tag at all).
_UNKNOWN_TYPE = frozenset({"union_tag_invalid", "union_tag_not_found"})
#: The adapter's core validator, called directly: ``TypeAdapter.validate_python`` is a Python
#: wrapper that costs 0.3 µs of the 1.2 µs an event's check takes.
_validate_wire = WIRE_EVENT.validator.validate_python


@dataclass(frozen=True)
class Refusal:
    """Why an event may not touch the store: a reason of :data:`REASONS` and what was wrong."""

    reason: str
    detail: str


def check(event: Any, received: float, window: float) -> Refusal | None:
    """Why ``event`` (received at ``received``) must not touch the store, or None."""
    if not isinstance(event, dict):
        return Refusal("event", f"not a JSON object but a {type(event).__name__}")
    try:
        _validate_wire(event)
    except ValidationError as exc:
        return _refused(event, exc, received, window)
    ts = event.get("timestamp")  # None or a finite number now
    if ts is None or abs(ts - received) <= window:
        return None
    return _too_far(event, ts, received, window)


def refusal(event: Any, received: float, window: float) -> str | None:
    """The reason :func:`check` refuses ``event`` for, or None."""
    refused = check(event, received, window)
    return None if refused is None else refused.reason


def _too_far(event: dict[str, Any], ts: Any, received: float, window: float) -> Refusal | None:
    """``event``'s ``timestamp`` ``ts`` (None or a finite number) when too far from its receipt."""
    if ts is not None and abs(ts - received) > window:
        return Refusal("timestamp", f"{str(event.get('type'))[:80]}: timestamp {ts!r} is {ts - received:+.0f} s "
                                    f"from its receipt (more than {window:g} s)")
    return None


def _refused(event: dict[str, Any], exc: ValidationError, received: float, window: float) -> Refusal | None:
    """The refusal a failed check of ``event`` comes to: the first reason of all its errors."""
    kind = event.get("type")
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    tagged = True  # the errors' locations start with the event type (the union's tag)
    if errors[0]["type"] in _UNKNOWN_TYPE:
        if isinstance(kind, str) and kind in REPAIR_ONLY:
            return Refusal("type", f"{kind} events come from the monitor's own repair only")
        # A type no model knows: the checks every event gets; the writer counts it as malformed.
        try:
            ANY_EVENT.validate_python(event)
        except ValidationError as other:
            errors, tagged = other.errors(include_url=False, include_context=False, include_input=False), False
        else:
            return _too_far(event, event.get("timestamp"), received, window)
    found = [_of(error, kind, tagged) for error in errors]
    if not any(r.reason == "timestamp" for r in found):  # then it is None or a finite number
        far = _too_far(event, event.get("timestamp"), received, window)
        if far is not None:
            found.append(far)
    return min(found, key=lambda r: _RANK[r.reason])


def _of(error: ErrorDetails, kind: Any, tagged: bool) -> Refusal:
    """One validation error as a refusal."""
    path = error["loc"][1:] if tagged else error["loc"]
    name = str(path[0]) if path else ""
    if name in ("source", "timestamp"):
        reason = name
    elif name in NUMBER_FIELDS:
        reason = "number"
    else:
        reason = "field"
    where = ".".join(str(p) for p in path)
    return Refusal(reason, f"{str(kind)[:80]}: {where}: {error['msg']}")


class EventGate:
    """Applies :func:`check` to every event from the wire and counts what it refuses."""

    def __init__(self, window: float, count: Callable[[str], Any],
                 note: Callable[[str], Any] | None = None) -> None:
        """``count(name)`` records one refusal (the writer's :meth:`~monitor.ingest.writer.Writer.count`);
        ``note(detail)``, when given, hears what was wrong with it."""
        self.window = window
        self.count = count
        self.note = note
        #: Workers' clock offsets: their events' times are corrected before the window check.
        self.clocks = ClockSkew()

    def allows(self, event: Any, received: float) -> bool:
        """True when ``event`` may go to the writer."""
        self.clocks.correct(event, received)
        refused = check(event, received, self.window)
        if refused is None:
            return True
        # A refused event is a malformed one to every counter that reports those (/healthz,
        # /metrics), and its reason is counted on its own.
        self.count("malformed")
        self.count(f"refused_{refused.reason}")
        if self.note is not None:
            self.note(refused.detail)
        return False
