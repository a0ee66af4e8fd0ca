"""When and how soon a failed attempt is retried: wait out an outage, never burn retries.

Rules (the task applies them; see docs/configuration.md):

* Only retryable errors (:attr:`ConnectorError.retryable`) are retried.
* An attempt that never reached the service (:class:`~jobqueue.errors.ServiceNotReached`: down
  before the job was handed over) does **not** count against ``JOBQUEUE_MAX_RETRIES``. Its retry
  waits with an exponential, capped backoff (2 s, 4 s ... 60 s), for as long as the job's
  absolute timeout allows, counted from the first attempt that failed. A job pinned to one
  worker therefore waits for that worker's service instead of failing in milliseconds.
* Any other retryable failure (stall, service lost mid-job) counts, and is retried at once:
  the worker that failed stops consuming the service's queue, so another one takes it.

The per-job bookkeeping (uncounted attempts, when the first failure's attempt started) lives in
one Redis hash next to the job's result, so it holds whichever worker runs the next attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from jobqueue.errors import ConnectorError, ServiceNotReached
from jobqueue.shared.records import result_client, retry_key

log = logging.getLogger(__name__)

#: First backoff (s) after an attempt that never reached the service, and the cap.
BACKOFF_FIRST, BACKOFF_CAP = 2.0, 60.0


@dataclass(frozen=True)
class RetryPlan:
    """What to do after a failed attempt."""

    #: Retry at all.
    retry: bool
    #: Seconds before the retry may start.
    countdown: float = 0.0
    #: Whether this attempt counts against ``max_retries``.
    counted: bool = True
    #: Why (for the log).
    reason: str = ""


def backoff(uncounted: int) -> float:
    """Delay before the retry that follows the ``uncounted``-th (0-based) unreached attempt."""
    return float(min(BACKOFF_FIRST * 2.0 ** max(uncounted, 0), BACKOFF_CAP))


def decide(exc: BaseException, *, retries: int, uncounted: int, max_retries: int, waited: float,
           timeout: float) -> RetryPlan:
    """The plan after ``exc`` ended an attempt (pure: no clock, no I/O).

    ``retries``: Celery's retry count so far; ``uncounted``: how many of those followed an
    attempt that never reached the service; ``waited``: seconds since the first failed attempt
    started; ``timeout``: the job's absolute timeout.
    """
    if not isinstance(exc, ConnectorError) or not exc.retryable:
        return RetryPlan(False, reason="not retryable")
    if isinstance(exc, ServiceNotReached):
        delay = backoff(uncounted)
        if waited + delay >= timeout:
            return RetryPlan(False, counted=False, reason=f"the job's timeout of {timeout:g} s is used up")
        return RetryPlan(True, delay, counted=False, reason="the service was not reached")
    if retries - uncounted >= max_retries:
        return RetryPlan(False, reason=f"{max_retries} retries used")
    return RetryPlan(True, 0.0, reason="retryable failure")


def plan_retry(app: Any, job_id: str, exc: BaseException, *, retries: int, started_at: float, timeout: float,
               max_retries: int) -> RetryPlan:
    """Decide with the job's bookkeeping from the result backend's Redis, and update it.

    ``started_at`` is this attempt's wall-clock start. Without a Redis backend every attempt
    counts and the wait is measured from this attempt (still backing off, never burning).
    """
    client = result_client(app)
    key = retry_key(job_id)
    uncounted, first = 0, started_at
    if client is not None:
        try:
            pipe = client.pipeline()
            pipe.hsetnx(key, "first", repr(started_at))
            pipe.hget(key, "first")
            pipe.hget(key, "uncounted")
            _, raw_first, raw_uncounted = pipe.execute()
            first = float(raw_first) if raw_first else started_at
            uncounted = int(raw_uncounted or 0)
        except Exception:  # the backend is down: decide without the history
            log.warning("could not read the retry record of job %s", job_id, exc_info=True)
            client = None
    plan = decide(exc, retries=retries, uncounted=uncounted, max_retries=max_retries,
                  waited=max(time.time() - first, 0.0), timeout=timeout)
    if client is not None and plan.retry:
        try:
            pipe = client.pipeline()
            if not plan.counted:
                pipe.hincrby(key, "uncounted", 1)
            pipe.expire(key, int(max(timeout, 3600) * 2))
            pipe.execute()
        except Exception:
            log.warning("could not update the retry record of job %s", job_id, exc_info=True)
    return plan
