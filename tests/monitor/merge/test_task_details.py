"""Any Celery task is a first-class row: args, kwargs, parent and root ids, ETA, expiry and
routing key as its events carry them, never guessed (issue 28, point 1)."""

from __future__ import annotations

import json

from monitor.merge.fields import MAX_ARGS, iso_time, task_details
from monitor.merge.job_rules import JobState, job_rule

T0 = 1_700_000_000.0


def sent(**fields):
    return {"type": "task-sent", "name": "plain.add", "queue": "celery", **fields}


def test_a_foreign_tasks_sent_event_fills_its_args_kwargs_family_and_schedule():
    out = job_rule(JobState(id="t2"), sent(args="(1, 2)", kwargs="{'x': 3}", parent_id="t1", root_id="t0",
                                           eta="2026-12-06T16:00:00+00:00", expires="2026-12-06T17:00:00+00:00",
                                           routing_key="celery", exchange=""), T0, None)
    s = out.state
    assert (s.parent_id, s.root_id) == ("t1", "t0")
    assert s.task == {"args": "(1, 2)", "kwargs": "{'x': 3}", "eta": iso_time("2026-12-06T16:00:00+00:00"),
                      "expires": iso_time("2026-12-06T17:00:00+00:00"), "routing_key": "celery"}


def test_a_jobqueue_job_keeps_only_what_its_records_also_tell_a_late_monitor():
    kwargs = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation"})
    s = job_rule(JobState(id="j1"), sent(name="jobqueue.run_job", args="()", kwargs=kwargs, parent_id="j0",
                                         root_id="j0", routing_key="simulation"), T0, None).state
    # its options are its meta; Celery's routing and canvas ids are not taken (a late monitor
    # rebuilding it from records could not show them)
    assert s.service == "simulation" and s.task is None and (s.parent_id, s.root_id) == (None, None)


def test_later_events_never_overwrite_what_the_first_said():
    first = job_rule(JobState(id="t2"), sent(args="(1, 2)", parent_id="t1"), T0, None).state
    again = job_rule(first, {"type": "task-received", "name": "plain.add", "args": "(9,)", "parent_id": "tX",
                             "hostname": "celery@w"}, T0 + 1, "celery@w").state
    assert again.task["args"] == "(1, 2)" and again.parent_id == "t1"


def test_a_task_is_never_its_own_parent_and_bad_values_are_left_out():
    s = job_rule(JobState(id="t1"), sent(parent_id="t1", root_id=7, eta="not a time", routing_key="x" * 300),
                 T0, None).state
    assert s.parent_id is None and s.root_id is None and not (s.task or {})


def test_args_longer_than_the_bound_are_cut_with_a_mark():
    details = task_details({"args": "x" * (MAX_ARGS + 50)}, foreign=True)
    assert len(details["args"]) == MAX_ARGS + 1 and details["args"].endswith("…")


def test_an_eta_without_a_zone_is_read_as_utc():
    assert iso_time("2026-12-06T16:00:00") == iso_time("2026-12-06T16:00:00+00:00")
