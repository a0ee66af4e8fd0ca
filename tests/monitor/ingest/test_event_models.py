"""The typed models of wire events (monitor.ingest.event_models) and the gate that applies them
(monitor.ingest.validate): what passes, what is refused and why, and that they refuse no event the
merge would take other than the lies they are there to stop."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as outcome
from hypothesis import strategies as st

from bench.event_check import decoded_events
from jobqueue.errors import MalformedEvent
from monitor.ingest.validate import EventGate, check, refusal
from monitor.merge.apply import apply
from monitor.store import Store

NOW = 1_800_000_000.0
WINDOW = 300.0
#: One well-formed event of every kind the models know.
WELL_FORMED: list[dict[str, Any]] = [
    {"type": "task-sent", "uuid": "j1", "kwargs": '{"service": "simulation"}', "retries": 0, "hostname": "client@x"},
    {"type": "task-received", "uuid": "j1", "retries": 1, "hostname": "gpu0@vm1"},
    {"type": "task-started", "uuid": "j1", "hostname": "gpu0@vm1"},
    {"type": "task-progress", "uuid": "j1", "percent": 50.0, "step": 5, "total_steps": 10, "eta_seconds": 3.5,
     "attempt": 1, "node": "7", "preview": 2, "message": "step 5/10", "hostname": "gpu0@vm1"},
    {"type": "task-succeeded", "uuid": "j1", "runtime": 12.5, "result": "{'ok': True}", "hostname": "gpu0@vm1"},
    {"type": "task-failed", "uuid": "j1", "exception": "ValueError('x')", "traceback": "...", "hostname": "gpu0@vm1"},
    {"type": "task-retried", "uuid": "j1", "exception": "Retry()", "hostname": "gpu0@vm1"},
    {"type": "task-revoked", "uuid": "j1", "terminated": True, "signum": 15, "expired": False},
    {"type": "task-rejected", "uuid": "j1", "requeue": True},
    {"type": "worker-online", "hostname": "gpu0@vm1", "freq": 2.0, "sw_ver": "5.4.0", "loadavg": [0.5, 0.4, 0.3]},
    {"type": "worker-heartbeat", "hostname": "gpu0@vm1", "freq": 2, "active": 1, "processed": 10, "pid": 123},
    {"type": "worker-offline", "hostname": "gpu0@vm1"},
    {"type": "connector-status", "worker": "gpu0@vm1", "hostname": "gpu0@vm1", "machine_id": "vm1", "gpu": 0,
     "service": "simulation", "status": "idle", "message": "", "seq": 17, "details": {"kind": "simulation"},
     "connectors": ["simulation"], "queues": ["gpu0", "simulation"], "beat": False, "interval": 15.0, "pid": 123},
    {"type": "job-webhook", "uuid": "j1", "webhook_id": "w1", "outcome": "delivered", "attempt": 1,
     "status_code": 200},
]


def stamped(event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``event`` as the decoder delivers it: timestamped now, with the dispatcher's fields."""
    return {**event, "timestamp": NOW, "clock": 7, "pid": event.get("pid", 99), "utcoffset": 0,
            "local_received": NOW, **fields}


def test_every_well_formed_event_passes_and_so_does_the_whole_realistic_mix():
    for event in WELL_FORMED:
        assert check(stamped(event), NOW, WINDOW) is None, event
    for event in decoded_events(1000, 10_000.0):
        assert check(event, event["local_received"], WINDOW) is None, event


def test_an_unknown_extra_field_is_tolerated_and_left_in_the_event():
    event = stamped(WELL_FORMED[3], surprise={"deep": [object()]}, percent_next=1e308, sources=["repair"])
    assert check(event, NOW, WINDOW) is None
    assert event["surprise"]["deep"] and event["sources"] == ["repair"]  # the event itself is not touched


@pytest.mark.parametrize(("change", "reason"), [
    ({"timestamp": NOW + 365 * 86400}, "timestamp"),
    ({"timestamp": NOW - WINDOW - 1}, "timestamp"),
    ({"timestamp": float("inf")}, "timestamp"),
    ({"timestamp": "tuesday"}, "timestamp"),
    ({"timestamp": 10**400}, "timestamp"),
    ({"runtime": 10**400}, "number"),
    ({"percent": 1e308}, "number"),
    ({"percent": float("nan")}, "number"),
    ({"percent": -0.1}, "number"),
    ({"eta_seconds": float("inf")}, "number"),
    ({"attempt": 10_001}, "number"),
    ({"step": -1}, "number"),
    ({"source": "repair"}, "source"),
    ({"source": None}, "source"),
    ({"type": "job-truth"}, "type"),
    ({"type": "job-expired", "uuids": ["j1"]}, "type"),
])
def test_a_forged_or_out_of_range_field_is_refused_with_its_reason(change, reason):
    assert refusal(stamped(WELL_FORMED[3], **change), NOW, WINDOW) == reason


@pytest.mark.parametrize(("event", "reason", "says"), [
    (stamped(WELL_FORMED[2], uuid=12), "field", "task-started: uuid: Input should be a valid string"),
    (stamped(WELL_FORMED[2], uuid="x" * 300), "field", "task-started: uuid: String should have at most 255"),
    ({k: v for k, v in stamped(WELL_FORMED[2]).items() if k != "uuid"}, "field", "task-started: uuid: Field required"),
    (stamped(WELL_FORMED[3], percent="half"), "number", "task-progress: percent: Input should be a valid number"),
    (stamped(WELL_FORMED[3], percent=True), "number", "task-progress: percent: Input should be a valid number"),
    (stamped(WELL_FORMED[3], step=1.5), "number", "task-progress: step: Input should be a valid integer"),
    (stamped(WELL_FORMED[5], exception={"not": "text"}), "field", "task-failed: exception: Input should be a valid string"),
    (stamped(WELL_FORMED[10], hostname=["a", "b"]), "field", "worker-heartbeat: hostname: Input should be a valid string"),
    (stamped(WELL_FORMED[10], loadavg="high"), "number", "worker-heartbeat: loadavg"),
    (stamped(WELL_FORMED[12], status="on fire"), "field", "connector-status: status: Input should be 'starting'"),
    (stamped(WELL_FORMED[12], queues=["gpu0", 3]), "field", "connector-status: queues.1: Input should be a valid string"),
    (stamped(WELL_FORMED[12], details=[1]), "field", "connector-status: details: Input should be an instance of dict"),
    (42, "event", "not a JSON object but a int"),
    (["task-started"], "event", "not a JSON object but a list"),
])
def test_a_non_dict_or_a_wrong_typed_field_is_refused_with_a_clear_reason(event, reason, says):
    refused = check(event, NOW, WINDOW)
    assert refused is not None and refused.reason == reason
    assert refused.detail.startswith(says), refused.detail


def test_when_an_event_breaks_several_rules_the_first_reason_of_the_list_is_the_one():
    event = stamped(WELL_FORMED[3], uuid=5, percent=500, timestamp=NOW + 3600)
    assert refusal(event, NOW, WINDOW) == "timestamp"
    assert refusal({**event, "timestamp": 10**400}, NOW, WINDOW) == "timestamp"
    assert refusal({**event, "timestamp": NOW}, NOW, WINDOW) == "number"
    assert refusal({**event, "timestamp": NOW, "source": "repair"}, NOW, WINDOW) == "source"
    assert refusal({**event, "type": "job-lost", "source": "repair"}, NOW, WINDOW) == "type"


def test_an_event_of_a_type_no_model_knows_gets_only_the_checks_every_event_gets():
    # Then it passes on (the writer counts it as malformed, and as "other" in the metrics)...
    assert check(stamped({"type": "task-bogus", "uuid": 5}), NOW, WINDOW) is None
    assert check(stamped({"uuid": "no type"}), NOW, WINDOW) is None
    # ...unless it lies like any event could
    assert refusal(stamped({"type": "task-bogus", "percent": 101}), NOW, WINDOW) == "number"
    assert refusal(stamped({"type": "task-bogus"}, timestamp=NOW + 3600), NOW, WINDOW) == "timestamp"
    assert refusal(stamped({"type": "task-bogus", "source": "repair"}), NOW, WINDOW) == "source"


def test_the_gate_counts_a_refusal_as_malformed_and_by_its_reason_and_says_what_was_wrong():
    counts: dict[str, int] = {}
    notes: list[str] = []
    gate = EventGate(WINDOW, lambda name: counts.__setitem__(name, counts.get(name, 0) + 1), notes.append)
    assert gate.allows(stamped(WELL_FORMED[10]), NOW)
    assert not gate.allows(stamped(WELL_FORMED[10], hostname=7), NOW)
    assert not gate.allows(stamped(WELL_FORMED[10], freq=0), NOW)
    assert counts == {"malformed": 2, "refused_field": 1, "refused_number": 1}
    assert notes[0] == "worker-heartbeat: hostname: Input should be a valid string"
    assert notes[1].startswith("worker-heartbeat: freq: Input should be greater than or equal to 0.001")


# -- never stricter than the merge, except for the lies ---------------------------------------------
#: The checks every event got before the typed models (timestamp, ranges, source, repair-only
#: types): what the models refuse beyond the merge's own checks must be one of these.
RANGES = {"percent": (0, 100), "runtime": (0, None), "eta_seconds": (0, None), "step": (0, None),
          "total_steps": (0, None), "attempt": (0, 10_000), "retries": (0, 10_000), "freq": (0.001, 3600),
          "interval": (0.001, 86400), "active": (0, None), "processed": (0, None)}


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float (the checks before the models raised here)
        return False


def lie(event: dict[str, Any]) -> str | None:
    if event.get("type") in ("job-truth", "job-lost", "job-expired"):
        return "type"
    if "source" in event:
        return "source"
    ts = event.get("timestamp")
    if ts is not None and (not _finite(ts) or abs(ts - NOW) > WINDOW):
        return "timestamp"
    for name, (low, high) in RANGES.items():
        value = event.get(name)
        if value is not None and (not _finite(value) or value < low or (high is not None and value > high)):
            return "number"
    return None


DROP = object()
VALUES = [DROP, None, True, 0, 1, 2, -1, 1.5, 50.0, 150.0, 1e308, float("inf"), float("nan"), 2**60, 10**400, "", "x",
          "idle", "x" * 300, "\x00", [], ["a"], [1], [0.5, 0.1], [0.1] * 4, [float("inf")], {}, {"a": 1}]
FIELDS = ["uuid", "hostname", "worker", "service", "status", "exception", "details", "connectors", "queues",
          "loadavg", "sw_ver", "node", "seq", "pid", "preview", "step", "total_steps", "attempt", "retries",
          "active", "processed", "percent", "runtime", "eta_seconds", "freq", "interval", "message", "result",
          "timestamp"]
TYPES = [e["type"] for e in WELL_FORMED] + ["task-bogus"]


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES))
    base = next((e for e in WELL_FORMED if e["type"] == kind), {"type": kind, "uuid": "j1"})
    event = stamped(base)
    for name, value in draw(st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(VALUES), max_size=4)).items():
        if value is DROP:
            event.pop(name, None)
        else:
            event[name] = value
    return event


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=events())
def test_the_models_refuse_what_the_merge_would_and_the_lies_and_nothing_else(sqlite_store: Store, event):
    reason = refusal(event, NOW, WINDOW)
    lied = lie(event)
    outcome(f"lie: {lied}, refused: {reason}")
    if lied is not None:
        # A lie is refused for what it is (the same reason as before the models)
        assert reason == lied, (event, reason)
        return
    loadavg = event.get("loadavg")
    if event["type"].startswith("worker-") and isinstance(loadavg, list) and not all(map(_finite, loadavg)):
        return  # a non-finite load average: refused by the models, kept by the merge
    assert reason in (None, "field", "number"), (event, reason)
    if reason is not None:
        # Anything else the models refuse, the merge refuses too
        with pytest.raises(MalformedEvent), sqlite_store.write(now=NOW) as tx:
            apply(event, tx)


def test_the_check_of_a_well_formed_event_takes_microseconds():
    mix = decoded_events(1000, 10_000.0)
    start = time.perf_counter()
    for event in mix:
        check(event, event["local_received"], WINDOW)
    # ~1 µs an event; 50 µs would make the 10,000 events/s the monitor keeps cost half a CPU
    assert (time.perf_counter() - start) / len(mix) < 50e-6


def test_every_event_type_the_models_accept_is_one_jobqueue_names():
    # The models spell event types as Literals (a type checker needs literal values); each must
    # be a name of jobqueue.shared.names, the events' one home.
    import typing

    from jobqueue.shared import names
    from monitor.ingest import event_models
    from monitor.merge.truth import JOB_EXPIRED, JOB_LOST, JOB_TRUTH

    known = {*names.TASK_EVENTS, *names.WORKER_EVENTS, names.CONNECTOR_STATUS, names.JOB_WEBHOOK,
             JOB_TRUTH, JOB_LOST, JOB_EXPIRED}
    spelled: set[str] = set()
    for model in vars(event_models).values():
        if isinstance(model, type) and "type" in getattr(model, "__annotations__", {}):
            hint = typing.get_type_hints(model)["type"]
            spelled.update(a for a in typing.get_args(hint) if isinstance(a, str))
    assert spelled and spelled <= known, spelled - known
