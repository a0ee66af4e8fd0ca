"""The job merge rules on plain values: (stored job, event) -> changes, no database."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from jobqueue.states import JobStatus, empty_progress
from monitor.merge.job_rules import JobOutcome, JobState, final_progress, job_rule

T0 = 1_700_000_000.0


def ev(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **fields}


def merge(state: JobState, event: dict[str, Any], t: float, hostname: str | None = "gpu0@vm1") -> JobOutcome:
    return job_rule(state, event, T0 + t, hostname)


def processing(**fields: Any) -> JobState:
    """A job running on gpu0@vm1 since T0+2, half done."""
    base = JobState(id="j1", status=JobStatus.PROCESSING.value, worker="gpu0@vm1", started_at=T0 + 2,
                    progress={**empty_progress(), "percent": 50.0, "step": 5, "total_steps": 10,
                              "reported_at": T0 + 3})
    return replace(base, **fields)


def test_a_sent_event_queues_a_new_job_with_the_metadata_of_its_kwargs():
    # Given a job the store has never seen
    new = JobState(id="j1")
    kwargs = json.dumps({"service": "simulation", "priority": 5, "queue": "q", "submitted_at": T0 - 1})
    # When its task-sent arrives
    out = merge(new, ev("task-sent", name="jobqueue.run_job", kwargs=kwargs), 0)
    # Then it is queued with its service, priority, queue and submission time
    assert out.changed
    s = out.state
    assert (s.status, s.service, s.priority, s.queue, s.submitted_at, s.name) == \
        ("queued", "simulation", 5, "q", T0 - 1, "jobqueue.run_job")
    assert s.meta == {"service": "simulation", "priority": 5, "queue": "q", "submitted_at": T0 - 1}


def test_a_jobs_tenant_comes_from_its_options_once_and_a_bad_name_is_not_taken():
    # Given a job the store has never seen, and its task-sent naming tenant acme
    kwargs = json.dumps({"service": "simulation", "tenant": "acme"})
    out = merge(JobState(id="j1"), ev("task-sent", kwargs=kwargs), 0)
    # Then the job belongs to acme
    assert out.state.tenant == "acme"
    # When a later event names another tenant, then the first one stays (never overwritten)
    later = merge(out.state, ev("task-received", kwargs=json.dumps({"service": "simulation", "tenant": "globex"})), 1)
    assert later.state.tenant == "acme"
    # And a job whose options carry no valid tenant name belongs to none
    for bad in ("", "-x", "a b", "x" * 65, 7, {"t": 1}):
        odd = merge(JobState(id="j2"), ev("task-sent", kwargs=json.dumps({"service": "simulation", "tenant": bad})), 0)
        assert odd.state.tenant is None, bad
    # And repair's full kwargs (``{"service", "payload", "options"}``) give it as well
    full = {"service": "simulation", "payload": {}, "options": {"tenant": "acme"}}
    assert merge(JobState(id="j3"), ev("task-sent", kwargs=full), 0).state.tenant == "acme"


def test_the_rule_never_changes_the_state_it_is_given():
    # Given a stored job
    stored = processing()
    before = replace(stored)
    # When it is merged with a success
    merge(stored, ev("task-succeeded", runtime=2.0, result="{'x': 1}"), 4)
    # Then the stored state is what it was
    assert stored == before


def test_a_late_task_started_never_moves_a_completed_job_back():
    # Given a completed job
    done = processing(status=JobStatus.COMPLETED.value, finished_at=T0 + 5)
    # When a task-started from before arrives late
    out = merge(done, ev("task-started"), 2)
    # Then nothing changes and no worker claims it
    assert not out.changed and out.state == done and out.claimed_by is None


def test_a_duplicate_success_changes_nothing():
    # Given a job that succeeded
    first = merge(processing(), ev("task-succeeded", runtime=2.0, result="{'x': 1}"), 4)
    # When the same success arrives again
    again = merge(first.state, ev("task-succeeded", runtime=2.0, result="{'x': 1}"), 4)
    # Then it changes nothing and ends nothing a second time
    assert first.changed and first.left_worker
    assert not again.changed and not again.left_worker and again.state == first.state


def test_a_success_makes_progress_canonical_and_keeps_the_last_report_for_the_timeline():
    # Given a job at 50 %
    stored = processing()
    # When it succeeds
    out = merge(stored, ev("task-succeeded", runtime=2.0, result="{'output': 'x'}"), 4)
    # Then it is completed at 100 % with its result, and the 50 % report is handed back
    assert out.state.status == "completed" and out.state.result == {"output": "x"}
    assert out.state.progress == {**empty_progress(), "percent": 100.0, "eta_seconds": 0.0}
    assert out.progress_at_end is not None and out.progress_at_end["percent"] == 50.0
    assert out.left_worker and not out.failed


def test_progress_never_goes_backwards_within_one_attempt():
    # Given a job at 50 %
    stored = processing()
    # When an older report of 30 % arrives
    out = merge(stored, ev("task-progress", percent=30.0, step=3, total_steps=10, attempt=0), 4)
    # Then its progress stays at 50 %
    assert not out.changed and out.state.progress == stored.progress


def test_progress_moves_forward_and_records_when_it_was_reported():
    # Given a job at 50 %
    stored = processing()
    # When a report of 70 % with an ETA arrives
    out = merge(stored, ev("task-progress", percent=70.0, step=7, total_steps=10, attempt=0, eta_seconds=3.0), 4)
    # Then it is at 70 % as of that report
    assert out.changed
    assert out.state.progress is not None
    assert (out.state.progress["percent"], out.state.progress["eta_seconds"], out.state.progress["reported_at"]) == \
        (70.0, 3.0, T0 + 4)


def test_a_report_from_an_attempt_that_is_over_is_ignored():
    # Given a job on its second attempt
    stored = processing(attempt=1)
    # When a progress report of the first attempt arrives
    out = merge(stored, ev("task-progress", percent=90.0, attempt=0), 4)
    # Then nothing changes
    assert not out.changed and out.state == stored


def test_progress_of_the_next_attempt_brings_a_retrying_job_back_with_fresh_progress():
    # Given a job retrying since T0+5 after an error at 50 %
    stored = processing(status=JobStatus.RETRYING.value, attempt=1, attempt_since=T0 + 5,
                        error={"type": "X", "message": "boom", "details": {}})
    # When its next attempt reports 10 %
    out = merge(stored, ev("task-progress", percent=10.0, attempt=2), 6)
    # Then it runs again on that attempt, from 10 %, without the old error
    s = out.state
    assert (s.status, s.attempt, s.error, s.started_at) == ("processing", 2, None, T0 + 6)
    assert s.progress is not None and s.progress["percent"] == 10.0


def test_a_started_job_is_claimed_by_its_worker():
    # Given a job assigned to no one yet
    stored = JobState(id="j1", status=JobStatus.QUEUED.value)
    # When it starts on gpu1@vm2
    out = merge(stored, ev("task-started"), 2, hostname="gpu1@vm2")
    # Then it runs there: its worker is named and claims it
    assert out.state.status == "processing" and out.state.started_at == T0 + 2
    assert (out.new_worker, out.recount, out.claimed_by) == ("gpu1@vm2", True, "gpu1@vm2")


def test_a_received_event_with_more_retries_starts_the_next_attempt():
    # Given a job retrying after its first attempt
    stored = processing(status=JobStatus.RETRYING.value, attempt=1, attempt_since=T0 + 5)
    # When a worker receives it with retries=2
    out = merge(stored, ev("task-received", retries=2), 7, hostname="gpu1@vm2")
    # Then it is assigned to that worker on attempt 2
    assert (out.state.status, out.state.attempt, out.state.received_at) == ("assigned", 2, T0 + 7)
    assert out.new_worker == "gpu1@vm2"


def test_a_failure_is_timed_out_or_cancelled_by_its_error_type():
    # Given two running jobs
    # When one fails with JobTimedOut and the other with JobCancelled
    timed_out = merge(processing(), ev("task-failed", exception="JobTimedOut('too slow', {})"), 9)
    cancelled = merge(processing(), ev("task-failed", exception="JobCancelled('stop', {})"), 9)
    # Then they end timed_out and cancelled, with the time they ran
    assert (timed_out.state.status, timed_out.state.runtime) == ("timed_out", 7.0)
    assert cancelled.state.status == "cancelled"
    assert timed_out.state.error is not None and timed_out.state.error["type"] == "JobTimedOut"
    assert timed_out.failed and timed_out.left_worker


def test_a_success_for_a_job_without_a_worker_names_its_worker_without_a_recount():
    # Given a job the monitor saw only queued
    stored = JobState(id="j1", status=JobStatus.QUEUED.value)
    # When its success arrives from gpu0@vm1
    out = merge(stored, ev("task-succeeded", runtime=1.0), 3)
    # Then its worker is named; its end is counted by the end itself, not by a recount
    assert (out.new_worker, out.recount, out.left_worker) == ("gpu0@vm1", False, True)


def test_a_requeued_rejection_retries_the_job_without_ending_it():
    # Given a running job
    # When its worker rejects it with requeue
    out = merge(processing(), ev("task-rejected", requeue=True), 4)
    # Then it is retrying and has not ended
    assert out.state.status == "retrying" and out.state.attempt_since == T0 + 4
    assert not out.left_worker and out.state.finished_at is None


def test_an_expired_revocation_cancels_the_job_and_says_why():
    # Given a queued job
    stored = JobState(id="j1", status=JobStatus.QUEUED.value)
    # When it is revoked as expired
    out = merge(stored, ev("task-revoked", expired=True), 4, hostname=None)
    # Then it is cancelled with the reason "expired"
    assert out.state.status == "cancelled" and out.state.finished_at == T0 + 4
    assert out.state.error == {"type": "JobCancelled", "message": "expired", "details": {}}


def test_a_failed_job_keeps_an_empty_progress_and_no_report_when_none_was_made():
    # Given a job that never reported progress
    # When it ends failed
    progress, at_end = final_progress(JobStatus.FAILED.value, empty_progress())
    # Then its progress is empty and there is nothing to keep
    assert progress == empty_progress() and at_end is None
