"""The shared state rules: error type -> final status, and a workflow's status."""

from __future__ import annotations

from jobqueue.states import JobStatus, job_status_from_celery, status_for_error, workflow_status


def test_a_timed_out_or_cancelled_error_ends_the_job_with_that_status_and_any_other_fails_it():
    assert status_for_error("JobTimedOut") is JobStatus.TIMED_OUT
    assert status_for_error("JobCancelled") is JobStatus.CANCELLED
    assert status_for_error("ExecutionFailed") is JobStatus.FAILED
    assert status_for_error(None) is JobStatus.FAILED


def test_celerys_failure_state_maps_through_the_same_error_rule():
    assert job_status_from_celery("FAILURE", "JobTimedOut") is JobStatus.TIMED_OUT
    assert job_status_from_celery("FAILURE", "ValueError") is JobStatus.FAILED
    assert job_status_from_celery("SUCCESS") is JobStatus.COMPLETED


def test_a_workflow_takes_the_status_of_its_first_bad_step():
    assert workflow_status(["completed", "timed_out", "failed"]) is JobStatus.TIMED_OUT


def test_a_workflow_is_completed_only_when_every_expected_step_is():
    # The monitor may know fewer steps than the workflow has (later ones are published later)
    assert workflow_status(["completed", "completed"], total=3) is JobStatus.PROCESSING
    assert workflow_status(["completed", "completed"], total=2) is JobStatus.COMPLETED
    assert workflow_status([JobStatus.COMPLETED, JobStatus.COMPLETED]) is JobStatus.COMPLETED


def test_a_workflow_is_queued_until_a_step_leaves_the_queue():
    assert workflow_status(["queued"], total=2) is JobStatus.QUEUED
    assert workflow_status(["assigned"], total=2) is JobStatus.PROCESSING
