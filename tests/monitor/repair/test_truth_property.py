"""Property: whenever two monitors start and stop relative to a job's events, once both have
run a truth repair after the job ended they show the job the same way.

Each example is one job's life as a worker and a client write it: the events they send (with
the few milliseconds by which an event's timestamp differs from the recorded fact) and, after
each event, what the result backend holds (Celery's record and the job's facts). Monitor A
sees the events from ``a_start`` to ``a_stop`` and repairs when it starts (from the backend as
it was then) and at the end; monitor B likewise with its own window. Real stores (SQLite), the
real merge (:func:`monitor.merge.apply.apply`) and the real rebuild (:func:`monitor.repair.rebuild.job_events`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.merge.apply import apply
from monitor.repair.rebuild import job_events
from monitor.store import FINAL_STATUSES, Store
from tests.monitor.repair.test_truth import differences

T0 = 1_700_000_000.0
JOB = "job-1"
WORKER = "gpu0@vm1"
OPTIONS = {"service": "simulation", "priority": 5, "queue": "simulation", "workflow_id": None, "step": None,
           "timeout": None, "submitted_at": T0}
SUMMARY = "steps=3"
KINDS = ("completed", "failed", "timed_out", "cancelled_queued", "cancelled_running", "retried", "redelivered")

Step = tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat()


class Life:
    """Builds one job's events and the backend after each of them."""

    def __init__(self, jitter: list[float]) -> None:
        self.jitter = iter(jitter * 4)
        self.meta: dict[str, Any] | None = None
        self.facts: dict[str, Any] = {}
        self.steps: list[Step] = []
        self.attempt = 0

    def j(self) -> float:
        return next(self.jitter)

    def record(self, event: dict[str, Any] | None) -> None:
        self.steps.append((event, None if self.meta is None else dict(self.meta), json.loads(json.dumps(self.facts))))

    def celery(self, status: str, result: Any, ts: float, *, extended: bool = True) -> None:
        self.meta = {"task_id": JOB, "status": status, "result": result, "traceback": None, "children": [],
                     "date_done": _iso(ts) if status in ("SUCCESS", "FAILURE", "REVOKED", "RETRY") else None}
        if extended:
            self.meta.update(name="jobqueue.run_job", args=[], kwargs={"service": "simulation", "payload": {"steps": 3},
                                                                        "options": OPTIONS},
                             worker=WORKER, retries=0, queue="simulation")

    def sent(self) -> None:
        kwargs = json.dumps({**OPTIONS, "payload_summary": SUMMARY})
        self.record({"type": "task-sent", "uuid": JOB, "name": "jobqueue.run_job", "kwargs": kwargs,
                     "queue": "simulation", "timestamp": T0 + self.j()})

    def start(self, at: float) -> float:
        history = list(self.facts.get("history") or [])
        if self.facts.get("started_at") is not None and self.facts.get("finished_at") is None:
            history.append({"attempt": self.facts["attempt"], "worker": WORKER,
                            "received_at": self.facts["received_at"], "started_at": self.facts["started_at"],
                            "ended_at": self.facts.get("retried_at"),
                            "how": "retried" if self.facts.get("retried_at") else "lost"})
        self.facts.update(submitted_at=T0, received_at=at, started_at=at + 0.01, attempt=self.attempt, worker=WORKER,
                          machine_id="vm1", meta={**OPTIONS, "payload_summary": SUMMARY}, name="jobqueue.run_job")
        if history:
            self.facts["history"] = history
        for key in ("finished_at", "runtime", "retried_at"):
            self.facts.pop(key, None)
        self.record({"type": "task-received", "uuid": JOB, "hostname": WORKER, "retries": 0,
                     "kwargs": json.dumps({**OPTIONS, "payload_summary": SUMMARY}),  # the job's kwargsrepr
                     "timestamp": at + self.j()})
        self.celery("STARTED", {"pid": 1, "hostname": WORKER}, at)
        self.record({"type": "task-started", "uuid": JOB, "hostname": WORKER, "timestamp": at + 0.01 + self.j()})
        progress = {"percent": 50.0, "step": 1, "total_steps": 2, "message": "step 1/2", "node": None,
                    "eta_seconds": 0.5, "service": "simulation", "attempt": self.attempt}
        self.celery("PROGRESS", progress, at + 0.5)
        self.record({"type": "task-progress", "uuid": JOB, "hostname": WORKER, "timestamp": at + 0.5 + self.j(),
                     **progress})
        return at + 0.01

    def finish(self, status: str, started: float, at: float) -> None:
        self.facts.update(finished_at=at, runtime=round(at - started, 6))
        if status == "completed":
            result = {"job_id": JOB, "output": "ok", "steps": 2, "attempt": self.attempt}
            self.celery("SUCCESS", result, at + 0.001)
            self.record({"type": "task-succeeded", "uuid": JOB, "hostname": WORKER, "result": repr(result),
                         "runtime": at - started + self.j(), "timestamp": at + 0.002 + self.j()})
            return
        etype = {"failed": "ExecutionFailed", "timed_out": "JobTimedOut"}[status]
        self.celery("FAILURE", {"exc_type": etype, "exc_message": ["it broke", {"step": 2}],
                                "exc_module": "jobqueue.errors"}, at + 0.001)
        self.record({"type": "task-failed", "uuid": JOB, "hostname": WORKER, "exception": f"{etype}('it broke', {{'step': 2}})",
                     "runtime": at - started + self.j(), "timestamp": at + 0.002 + self.j()})

    def cancel_by_client(self, at: float) -> None:
        self.celery("REVOKED", {"exc_type": "JobCancelled", "exc_message": ["cancelled by client"],
                                "exc_module": "jobqueue.errors"}, at, extended=False)
        self.facts.setdefault("finished_at", at)
        self.record({"type": "task-revoked", "uuid": JOB, "hostname": "client", "terminated": False,
                     "timestamp": at})


def life_of(kind: str, jitter: list[float]) -> list[Step]:
    life = Life(jitter)
    life.sent()
    if kind == "cancelled_queued":
        life.cancel_by_client(T0 + 1.0)
        # The worker that reaches the message discards it as revoked (Celery's own record).
        life.celery("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["revoked"],
                                "exc_module": "celery.exceptions"}, T0 + 3.0)
        life.facts.update(submitted_at=T0, meta={**OPTIONS, "payload_summary": SUMMARY}, name="jobqueue.run_job")
        life.record({"type": "task-revoked", "uuid": JOB, "hostname": WORKER, "timestamp": T0 + 3.0 + life.j()})
        return life.steps
    started = life.start(T0 + 1.0)
    if kind == "cancelled_running":
        life.cancel_by_client(T0 + 2.0)
        life.facts.update(finished_at=T0 + 2.3, runtime=round(T0 + 2.3 - started, 6))
        life.celery("REVOKED", {"exc_type": "JobCancelled", "exc_message": ["cancelled"],
                                "exc_module": "jobqueue.errors"}, T0 + 2.3)
        life.record({"type": "task-revoked", "uuid": JOB, "hostname": WORKER, "terminated": True,
                     "timestamp": T0 + 2.3 + life.j()})
        return life.steps
    if kind in ("retried", "redelivered"):
        if kind == "retried":
            life.facts["retried_at"] = T0 + 2.0
            life.celery("RETRY", {"exc_type": "ServiceUnavailable", "exc_message": ["gone"],
                                  "exc_module": "jobqueue.errors"}, T0 + 2.0)
            life.record({"type": "task-retried", "uuid": JOB, "hostname": WORKER, "exception": "ServiceUnavailable('gone')",
                         "timestamp": T0 + 2.0 + life.j()})
        life.attempt = 1
        started = life.start(T0 + 20.0)
        life.finish("completed", started, T0 + 21.0)
        return life.steps
    life.finish(kind, started, T0 + 2.0)
    return life.steps


def repair(store: Store, step: Step | None, now: float) -> None:
    """One truth repair from the backend as it was after ``step`` (None: before any)."""
    if step is None or (step[1] is None and not step[2]):
        return
    stored = store.job(JOB, with_events=False)
    open_ = stored is None or stored["status"] not in FINAL_STATUSES
    with store.write(now=now) as tx:
        for event in job_events(JOB, step[1], step[2], now, lifecycle=open_):
            apply(event, tx)


def monitor_view(store: Store, steps: list[Step], start: int, stop: int) -> dict[str, Any]:
    """What a monitor that listened from ``start`` to ``stop`` shows after a final repair."""
    repair(store, steps[start - 1] if start else None, T0 + start)
    for event, _, _ in steps[start:stop]:
        with store.write(now=(event or {}).get("timestamp", T0)) as tx:
            apply(dict(event or {}), tx)
    repair(store, steps[-1], T0 + 100.0)
    shown = store.job(JOB)
    assert shown is not None
    return shown


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Any]:
    made: list[Store] = []

    def new() -> Store:
        made.append(Store(f"sqlite:///{tmp_path / f'p{len(made)}.db'}"))
        return made[-1]

    yield new
    for store in made:
        store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), data=st.data(),
       jitter=st.lists(st.floats(min_value=0.0, max_value=0.04), min_size=6, max_size=6))
def test_two_monitors_agree_on_a_job_whenever_they_start_and_stop(stores, kind, data, jitter):
    # Given one job's life and two monitors listening to any part of it
    steps = life_of(kind, jitter)
    n = len(steps)
    a_start = data.draw(st.integers(0, n), label="a_start")
    a_stop = data.draw(st.integers(a_start, n), label="a_stop")
    b_start = data.draw(st.integers(0, n), label="b_start")
    b_stop = data.draw(st.integers(b_start, n), label="b_stop")
    # When each repairs after the job ended
    a = monitor_view(stores(), steps, a_start, a_stop)
    b = monitor_view(stores(), steps, b_start, b_stop)
    # Then both show it the same way, and as the backend recorded it
    assert differences(a, b) == {}
    facts = steps[-1][2]
    for key in ("received_at", "started_at", "finished_at", "runtime"):
        assert a[key] == facts.get(key), key
    assert a["attempt"] == facts.get("attempt", 0)
