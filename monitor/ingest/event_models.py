"""Typed models of the events the monitor takes from the wire, and the one adapter that checks them.

Every event of the stream is checked against these before it reaches the writer
(:mod:`monitor.ingest.validate` turns a failure into a counted refusal). One model per kind of event,
each a pydantic ``TypedDict``: the fields the merge reads (:mod:`monitor.merge.apply`,
:mod:`monitor.merge.job_rules`, :mod:`monitor.merge.worker_rules`) with their JSON types (strict:
``"50"`` is not a number, ``true`` is not a step), and on every kind the numeric ranges a
well-formed event keeps (``percent`` 0-100, ``runtime``/``eta_seconds``/counts ≥ 0, ``attempt``
and ``retries`` ≤ 10,000, a heartbeat ``freq`` in (0, 1 h], a beat ``interval`` in (0, 1 day])
and the rule that ``source`` is the monitor's own repair's word, never the wire's. Fields the
models do not name are ignored (the writer applies the event dict itself, every field kept).

What the models refuse beyond the merge's own checks is what the monitor refused before them
(a timestamp far from its receipt or not finite, a number out of range, ``source``, a
repair-only type) and a non-finite load average; anything else they refuse, the merge would
count as malformed too (``tests/monitor/ingest/test_event_models.py`` checks this on generated
events). The merge still reads every field through :mod:`monitor.merge.fields`: for the
repair's own events, which do not come from the wire, and for what the models leave to it
(printable ids, a progress report with neither ``percent`` nor ``step``).

A type the models do not know is checked by :data:`ANY_EVENT` alone -- timestamp, ranges, no
``source`` -- and passes on to the writer, which counts it as malformed (and as ``other`` in
``jobqueue_events_total``), as before the models.

Cost per event, ``python -m bench.event_check --repeat 9`` (2,000 events of
:mod:`bench.events_mix` as the decoder delivers them; 2026-12-02, shared 2-CPU machine,
pydantic 2.13.4 / pydantic-core 2.46.4, three runs alternating with the hand-written checks
these replace, ``monitor/ingest/validate.py`` of 2e961a4):

================================ ============== =====================
event                            typed models   hand-written (before)
================================ ============== =====================
task-sent/received/started/...   0.73-0.84 µs   0.69-1.03 µs
task-progress (60% of the mix)   1.12-1.16 µs   1.45-1.47 µs
connector-status                 1.52-1.67 µs   0.83-0.86 µs
worker-heartbeat                 1.27-1.40 µs   1.19-1.24 µs
the whole mix                    1.12-1.73 µs   1.23-1.32 µs
================================ ============== =====================

The hand-written checks looked at the timestamp, the ranges and ``source`` only; the models
also check every field the merge reads, for the same cost. What made it that cheap (measured
on the same events while building this): ``TypedDict`` models, not ``BaseModel`` classes
(1.1 against 2.2 µs: a model instance gets every absent optional field set to its default, a
``TypedDict`` only the fields present); the adapter's core validator called directly
(``TypeAdapter.validate_python`` is a Python wrapper costing 0.3 µs); ``details`` checked as an
instance of dict rather than copied key by key. One discriminated union (the ``type`` tag looked
up in pydantic-core) costs the same as per-type adapters looked up in Python, and is one object.
The id lists of a ``connector-status`` stay typed (0.35 µs of its 1.6, on 12% of the stream).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import AfterValidator, ConfigDict, Field, InstanceOf, Strict, TypeAdapter, with_config
from typing_extensions import Required, TypedDict

from monitor.merge.fields import MAX_ID

#: Event types that only the monitor's own repair makes; refused from the wire.
REPAIR_ONLY = frozenset({"job-truth", "job-lost", "job-expired"})

#: Largest integer an int field may carry (what the merge's :func:`~monitor.merge.fields.event_int` takes).
MAX_INT = 2**53

# -- field types -------------------------------------------------------------------------------
#: A finite JSON number (an int or a float, never a bool or a string).
_Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Percent = Annotated[_Finite, Ge(0.0), Le(100.0)]
#: ``runtime``, ``eta_seconds``.
Seconds = Annotated[_Finite, Ge(0.0)]
#: ``step``, ``total_steps``, ``active``, ``processed`` on events that do not use them as ints.
Count = Annotated[_Finite, Ge(0)]
#: ``attempt``, ``retries`` on events that do not use them as ints.
Tries = Annotated[_Finite, Ge(0), Le(10_000)]
#: A heartbeat's ``freq``: at most an hour.
Freq = Annotated[_Finite, Ge(0.001), Le(3600.0)]
#: A connector beat's ``interval``: at most a day.
Interval = Annotated[_Finite, Ge(0.001), Le(86400.0)]
#: An int the merge reads as one (never a bool, a float, or beyond :data:`MAX_INT`).
Int = Annotated[int, Strict(), Ge(-MAX_INT), Le(MAX_INT)]
CountInt = Annotated[int, Strict(), Ge(0), Le(MAX_INT)]
TriesInt = Annotated[int, Strict(), Ge(0), Le(10_000)]
#: A required id (job uuid, worker name, service): text, 1 to ``MAX_ID`` characters.
Id = Annotated[str, Strict(), MinLen(1), MaxLen(MAX_ID)]
#: An optional id: empty text counts as absent.
MaybeId = Annotated[str, Strict(), MaxLen(MAX_ID)]
IdList = Annotated[list[MaybeId], Strict(), MaxLen(1000)]
Text = Annotated[str, Strict()]


def _repair_only(value: Any) -> Any:
    raise ValueError("only the monitor's own repair may set source")


#: ``source`` from the wire: present at all is refused (its value is not even looked at).
Forbidden = Annotated[Any, AfterValidator(_repair_only)]

#: Strict JSON types on every model: checked, never coerced (``"2"`` is not 2, a tuple not a list).
_STRICT = ConfigDict(strict=True)


# -- field groups ------------------------------------------------------------------------------
class _Every(TypedDict, total=False):
    """What every event is checked for."""

    timestamp: _Finite | None
    source: Forbidden
    percent: Percent | None
    runtime: Seconds | None
    eta_seconds: Seconds | None
    freq: Freq | None
    interval: Interval | None


class _Steps(TypedDict, total=False):
    step: Count | None
    total_steps: Count | None


class _Attempt(TypedDict, total=False):
    attempt: Tries | None


class _Retries(TypedDict, total=False):
    retries: Tries | None


class _Load(TypedDict, total=False):
    active: Count | None
    processed: Count | None


class _Task(_Every, total=False):
    """Every ``task-*`` event: the job's id, and the worker it comes from."""

    uuid: Required[Id]
    hostname: MaybeId | None


# -- the models --------------------------------------------------------------------------------
@with_config(_STRICT)
class TaskEvent(_Task, _Steps, _Attempt, _Retries, _Load, total=False):
    """A ``task-*`` event whose other fields the merge takes as they come (``kwargs``, ``name``,
    ``result``, ``requeue``, ``expired``...)."""

    type: Required[Literal["task-sent", "task-started", "task-succeeded", "task-revoked", "task-rejected"]]


@with_config(_STRICT)
class TaskReceived(_Task, _Steps, _Attempt, _Load, total=False):
    """``task-received``: ``retries`` says which attempt the worker starts."""

    type: Required[Literal["task-received"]]
    retries: TriesInt | None


@with_config(_STRICT)
class TaskProgress(_Task, _Retries, _Load, total=False):
    """``task-progress``: real progress of a running job (:mod:`jobqueue.shared.names`)."""

    type: Required[Literal["task-progress"]]
    step: CountInt | None
    total_steps: CountInt | None
    attempt: TriesInt | None
    preview: Int | None
    node: Text | int | bool | None  # shown as text, whatever it is of these


@with_config(_STRICT)
class TaskFailed(_Task, _Steps, _Attempt, _Retries, _Load, total=False):
    """``task-failed`` / ``task-retried``: ``exception`` is the error's repr."""

    type: Required[Literal["task-failed", "task-retried"]]
    exception: Text | None


@with_config(_STRICT)
class WorkerEvent(_Every, _Steps, _Attempt, _Retries, total=False):
    """``worker-online`` / ``worker-heartbeat`` / ``worker-offline``."""

    type: Required[Literal["worker-online", "worker-heartbeat", "worker-offline"]]
    hostname: Required[Id]
    active: CountInt | None
    processed: CountInt | None
    pid: Int | None
    sw_ver: Text | None
    loadavg: Annotated[list[_Finite], MaxLen(3)] | Annotated[tuple[_Finite, ...], MaxLen(3)] | None


@with_config(_STRICT)
class ConnectorEvent(_Every, _Steps, _Attempt, _Retries, _Load, total=False):
    """``connector-status``: one connector's status on one worker (:mod:`jobqueue.shared.names`).
    Not checked here: ``hostname`` (the merge reads it only when ``worker`` is absent),
    ``machine_id`` and ``gpu`` (taken only when they make sense)."""

    type: Required[Literal["connector-status"]]
    worker: MaybeId | None
    service: Required[Id]
    status: Required[Literal["starting", "waiting_for_service", "idle", "active", "error", "offline"]]
    seq: Int | None
    pid: Int | None
    details: InstanceOf[dict[str, Any]] | None  # a JSON object, not copied: the merge stores it as given
    connectors: IdList | None
    queues: IdList | None


@with_config(_STRICT)
class JobWebhook(_Every, _Steps, _Attempt, _Retries, _Load, total=False):
    """``job-webhook``: one try of a job's webhook, only counted (:mod:`monitor.metrics.totals`)."""

    type: Required[Literal["job-webhook"]]


@with_config(_STRICT)
class AnyEvent(_Every, _Steps, _Attempt, _Retries, _Load, total=False):
    """An event of a type the models do not know: the checks every event gets."""


#: Every wire event the monitor applies, by its ``type``.
WireEvent = Annotated[TaskEvent | TaskReceived | TaskProgress | TaskFailed | WorkerEvent | ConnectorEvent
                      | JobWebhook, Field(discriminator="type")]

#: The adapter that checks an event of a known type (one call per event).
WIRE_EVENT: TypeAdapter[Any] = TypeAdapter(WireEvent)
#: The adapter for an event of any other type.
ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

#: Fields whose failure is a bad number (``refused_number``); any other field's is ``refused_field``.
NUMBER_FIELDS = frozenset({"percent", "runtime", "eta_seconds", "step", "total_steps", "attempt", "retries",
                           "freq", "interval", "active", "processed", "preview", "seq", "pid", "loadavg"})
