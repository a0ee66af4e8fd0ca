"""The retry plan: attempts that never reached the service wait with backoff and do not count."""

from __future__ import annotations

from jobqueue.errors import ExecutionFailed, JobStalled, ServiceNotReached, ServiceUnavailable
from jobqueue.worker.retrying import BACKOFF_CAP, BACKOFF_FIRST, backoff, decide


def test_unreached_attempts_back_off_exponentially_up_to_the_cap():
    delays = [backoff(n) for n in range(8)]
    assert delays[0] == BACKOFF_FIRST == 2.0
    assert delays[:5] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert max(delays) == BACKOFF_CAP == 60.0 and delays[-1] == 60.0


def test_an_unreached_attempt_is_retried_without_counting_even_after_max_retries():
    # Given a job that already used every counted retry and failed to reach its service 5 times
    plan = decide(ServiceNotReached("down"), retries=8, uncounted=5, max_retries=3, waited=100.0, timeout=3600.0)
    # Then it still waits for the service, with the backoff of the 6th unreached attempt
    assert plan.retry and not plan.counted and plan.countdown == 60.0


def test_an_unreached_attempt_gives_up_when_the_job_timeout_is_used_up():
    plan = decide(ServiceNotReached("down"), retries=4, uncounted=4, max_retries=3, waited=3590.0, timeout=3600.0)
    assert not plan.retry and "timeout" in plan.reason


def test_reached_failures_count_and_are_retried_at_once_until_max_retries():
    # Unreached retries are not subtracted from the budget of reached ones
    assert decide(JobStalled("x"), retries=5, uncounted=3, max_retries=3, waited=0, timeout=60).retry
    assert decide(JobStalled("x"), retries=5, uncounted=3, max_retries=3, waited=0, timeout=60).countdown == 0.0
    assert not decide(ServiceUnavailable("x"), retries=6, uncounted=3, max_retries=3, waited=0, timeout=60).retry
    assert not decide(ExecutionFailed("bad"), retries=0, uncounted=0, max_retries=3, waited=0, timeout=60).retry
