"""A job's records in the result backend, then its message: in one round trip when they can share it.

A submit writes the job's submit record (with its first facts, its requirements, its tenant
queue's note and its place in the queued index) before its message, so a worker can never take
a job whose record is missing (:mod:`jobqueue.shared.submissions`). With a Redis broker served
by this package's transport, the records ride with the message (:mod:`jobqueue.transport.riders`):
one ``MULTI``/``EXEC``, records first (and the job's ``task-sent`` event with them), when the
broker and the result backend are the same Redis server and database; their own round trip just
before the message otherwise. Any other broker (RabbitMQ): the records are written here, then
the message is sent, as before.

A batch's or workflow's records ride with its first message (up to :data:`MAX_RIDING_JOBS`
jobs: one transaction holds Redis while it runs); every later message is sent after them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from jobqueue.client.replicas import replicate_records
from jobqueue.client.waiting import queue_remember
from jobqueue.shared import fairshare, queued
from jobqueue.shared.records import result_client, submitted_key
from jobqueue.shared.requirements import Requirements
from jobqueue.shared.submissions import queue_job_submit, queue_submitted, record_submitted
from jobqueue.transport.kombu_redis import can_ride
from jobqueue.transport.riders import Rider, riding

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most jobs whose records ride in their first message's transaction; a bigger batch's records
#: take a round trip of their own (a transaction holds Redis while it runs).
MAX_RIDING_JOBS = 100


def raise_first(replies: list[Any]) -> None:
    """Raise the first error among a pipeline's ``replies``."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def send_after_records(app: Any, job_id: str, add: Callable[[Any], None], check: Callable[[list[Any]], None],
                       what: str, send: Callable[[], T], *, ride: bool = True,
                       replicate_id: str | None = None) -> T:
    """Write the records ``add`` queues on the result backend's Redis, then ``send()`` the
    message of ``job_id``: the records are in Redis no later than the message, in one round
    trip when they can ride with it. ``check(replies)`` raises when the records failed (before
    the message, when they went alone). ``what`` names them in a replication error."""
    rider = Rider(job_id, result_client(app), add, check,
                  replicate=lambda: replicate_records(app, what, replicate_id), guard=submitted_key(job_id))
    if not ride or not can_ride(app):
        rider.run_alone()
        return send()
    # Celery's task-sent event for the message may join its round trip (see riders).
    rider.hold_for_event = bool(app.conf.task_send_sent_event)
    with riding(rider):
        try:
            sent = send()
        except BaseException:
            rider.abandon()
            raise
    rider.flush()  # a message still held (no event joined it): alone, now
    if rider.replies is None:  # the publish never reached our channel's _put: cannot happen on our transport
        log.error("job %s: its records did not ride with its message; written after it", job_id)
        rider.run_alone()
    rider.run_later()  # the result's subscription, off the path to the worker
    return sent


def send_job(app: Any, send_options: dict[str, Any], service: str, options: dict[str, Any], capped: bool,
             send: Callable[[], T]) -> T:
    """Write a job's submit record (with what a late monitor needs), its requirements (for
    ``waiting_for``), its tenant queue's note and, uncapped, its place in the queued index
    (``capped``: :func:`~jobqueue.shared.queued.admit` gave it one), then ``send()`` its message."""
    job_id = send_options["task_id"]
    if result_client(app) is None:
        record_submitted(app, [job_id])
        return send()
    expires = queued.expires_of(app)

    def add(pipe: Any) -> None:
        queue_job_submit(pipe, app, send_options)
        queue_remember(pipe, app, job_id, service, Requirements.from_dict(options.get("requires")))
        fairshare.note_queue(pipe, options["queue"], expires)
        if not capped:
            queued.queue_add(pipe, service, [job_id], expires, tenant=options.get("tenant"))

    def check(replies: list[Any]) -> None:
        raise_first(replies[:1])  # the submit record: without it the job must not be sent
        if any(isinstance(r, Exception) for r in replies[1:]):  # the job is sent anyway
            log.warning("could not record the requirements or queue place of job %s: %s", job_id, replies[1:])

    return send_after_records(app, job_id, add, check, f"the submit record of job {job_id}", send,
                              replicate_id=job_id)


def send_jobs(app: Any, job_ids: list[str], facts: dict[str, dict[str, Any]], queues: list[str],
              what: str, send: Callable[[], T]) -> T:
    """Write the submit records and first ``facts`` of a batch's or workflow's ``job_ids`` and
    note their tenant ``queues``, then ``send()`` the first message (that of ``job_ids[0]``)."""
    if result_client(app) is None:
        record_submitted(app, job_ids, facts)
        return send()
    expires = queued.expires_of(app)
    notes = sorted(set(queues))

    def add(pipe: Any) -> None:
        queue_submitted(pipe, app, job_ids, facts)
        for queue in notes:
            fairshare.note_queue(pipe, queue, expires)

    return send_after_records(app, job_ids[0], add, raise_first, what, send, ride=len(job_ids) <= MAX_RIDING_JOBS)
