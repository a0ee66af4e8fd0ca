"""Webhooks: tell an application that its job ended, signed per Standard Webhooks.

A job submitted with ``webhook_url`` gets one POST when it reaches a final state (completed,
failed, cancelled, timed out). The worker that ends the job enqueues a delivery on the webhook
queue (``JOBQUEUE_WEBHOOK_QUEUE``); any worker delivers it. A failed try (no answer, or not
2xx) is tried again with exponential backoff (``JOBQUEUE_WEBHOOK_BACKOFF``, doubled per try, at
most ``JOBQUEUE_WEBHOOK_MAX_TRIES`` tries); every try carries the same ``webhook-id``, so a
receiver that saw a try twice (its answer was lost) can tell. The delivery message is acked
only after its try is done, so a delivering worker that crashes loses nothing: the message
comes back like any job's. Each try is recorded in the result backend for the monitor's job page
(:mod:`jobqueue.shared.webhooks`).

Targets are public addresses only (:mod:`jobqueue.shared.safe_http`): a URL whose host is an IP
literal that is loopback, private, link-local (the cloud metadata address), CGNAT, multicast
or reserved is refused at submit (:class:`~jobqueue.errors.WebhookTargetRefused`); a name that
resolves to such an address is refused by the delivering worker, on the address it would
connect to, and that try is recorded with the reason and not retried.
``JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS`` opens chosen networks on purpose.

Headers (https://www.standardwebhooks.com): ``webhook-id``, ``webhook-timestamp`` (Unix
seconds), ``webhook-signature: v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`` with
the key ``base64decode`` of the secret after its ``whsec_`` prefix.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import requests
from celery import states as celery_states

from jobqueue.errors import ConfigError, TargetRefused
from jobqueue.shared.names import JOB_WEBHOOK, RUN_JOB_TASK, WEBHOOK_TASK
from jobqueue.shared.records import result_client
from jobqueue.shared.safe_http import AddressGuard, guarded_session
from jobqueue.shared.webhooks import queue_attempt, was_delivered
from jobqueue.states import JobStatus, job_status_from_celery

log = logging.getLogger(__name__)

#: Seconds one POST may take before the try counts as failed.
POST_TIMEOUT = 10.0
#: The ``type`` of the webhook body, by final job status.
EVENT_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
    JobStatus.TIMED_OUT: "job.timed_out",
}
#: Secrets start with this prefix (Standard Webhooks).
SECRET_PREFIX = "whsec_"


# -- validation and signing ----------------------------------------------------------------
def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; raise :class:`ConfigError` if malformed."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ConfigError(f"JOBQUEUE_WEBHOOK_SECRET is not whsec_<base64>: {exc}") from exc
    if not key:
        raise ConfigError("JOBQUEUE_WEBHOOK_SECRET is empty after its whsec_ prefix")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: str, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """True when ``headers`` carry a valid signature of ``body`` made within ``tolerance`` s
    (what a receiver does; here for tests and for applications written in Python)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, given = lowered.get("webhook-id"), lowered.get("webhook-timestamp"), lowered.get("webhook-signature")
    if not msg_id or not stamp or not given or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = sign(secret, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, part) for part in given.split())


# -- what is delivered ---------------------------------------------------------------------
def build_delivery(job_id: str, url: str, status: JobStatus, *, service: str | None, result: Any,
                   error: dict[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """The delivery of one job's end: its id (``msg_<job id>``: one per job, the same on every
    try), target URL and the exact JSON body every try sends."""
    files = result.get("files") if isinstance(result, Mapping) else None
    stamp = dt.datetime.fromtimestamp(time.time() if now is None else now, tz=dt.timezone.utc)
    body = {
        "type": EVENT_TYPES[status],
        "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        "data": {"id": job_id, "status": status.value, "service": service, "result": result,
                 "error": error, "files": files or []},
    }
    return {"id": f"msg_{job_id}", "job_id": job_id, "url": url, "try": 1,
            "body": json.dumps(body, separators=(",", ":"), default=str)}


def post(delivery: Mapping[str, Any], secret: str, *, timestamp: int | None = None,
         timeout: float = POST_TIMEOUT, guard: AddressGuard | None = None) -> tuple[int | None, str | None]:
    """One try: POST the body with the Standard Webhooks headers, through ``guard`` (public
    addresses only by default). Returns (status code, error); raises
    :class:`~jobqueue.errors.TargetRefused` when the target's address is refused."""
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = {"content-type": "application/json", "user-agent": "jobqueue-webhooks",
               "webhook-id": delivery["id"], "webhook-timestamp": str(stamp)}
    if secret:
        headers["webhook-signature"] = sign(secret, delivery["id"], stamp, delivery["body"])
    with guarded_session(guard or AddressGuard()) as session:
        try:
            response = session.post(delivery["url"], data=delivery["body"].encode(), headers=headers,
                                    timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        with response:
            return response.status_code, None if 200 <= response.status_code < 300 else response.reason


# -- Celery wiring -------------------------------------------------------------------------
def enqueue(app: Any, delivery: dict[str, Any], countdown: float = 0.0) -> None:
    """Put one try of ``delivery`` on the webhook queue.

    Sent without a ``task-sent`` event (and the task sends no task events): a delivery is not a
    job, and the monitor must not list it as one.
    """
    task_id = f"{delivery['id']}-try{delivery['try']}"
    message = app.amqp.create_task_message(task_id, WEBHOOK_TASK, (), {"delivery": delivery},
                                           countdown=countdown or None, create_sent_event=False)
    with app.producer_or_acquire() as producer:
        app.amqp.send_task_message(producer, WEBHOOK_TASK, message, queue=app.settings.webhook_queue,
                                   retry=True)


def deliver(task: Any, delivery: dict[str, Any]) -> str:
    """Body of the delivery task: one try, recorded; the next try enqueued unless delivered
    or out of tries. Returns ``delivered``, ``retrying``, ``given up`` or ``already delivered``."""
    app = task.app
    settings = app.settings
    client = result_client(app)
    expires = int(app.conf.result_expires or 7 * 24 * 3600)
    if was_delivered(client, delivery["id"]):
        return "already delivered"
    started = time.time()
    refused = False
    try:
        status_code, error = post(delivery, settings.webhook_secret, timestamp=int(started),
                                  guard=AddressGuard.from_cidrs(settings.webhook_allowed_networks))
    except TargetRefused as exc:  # final: trying again later would be refused alike
        status_code, error, refused = None, f"refused: {exc.message}"[:500], True
    delivered = status_code is not None and 200 <= status_code < 300
    tries = int(delivery["try"])
    record = {"webhook_id": delivery["id"], "try": tries, "at": started, "url": delivery["url"],
              "status_code": status_code, "error": error, "delivered": delivered, "refused": refused,
              "worker": task.request.hostname, "duration": round(time.time() - started, 3)}
    pipe = client.pipeline()
    queue_attempt(pipe, delivery["job_id"], delivery["id"], record, expires=expires)
    pipe.execute()
    if delivered:
        _tell(task, delivery, record, "delivered")
        return "delivered"
    if refused or tries >= settings.webhook_max_tries:
        log.warning("webhook %s for job %s given up after %d tries (%s)", delivery["id"], delivery["job_id"],
                    tries, error or status_code)
        _tell(task, delivery, record, "given_up")
        return "given up"
    countdown = settings.webhook_backoff * 2 ** (tries - 1)
    enqueue(app, {**delivery, "try": tries + 1}, countdown)
    _tell(task, delivery, record, "retrying")
    return "retrying"


def _tell(task: Any, delivery: dict[str, Any], record: dict[str, Any], outcome: str) -> None:
    """Publish a :data:`~jobqueue.shared.names.JOB_WEBHOOK` event for this try (monitors count
    deliveries by outcome). Best effort: the try is recorded in the backend whatever happens."""
    try:
        with task.app.events.default_dispatcher(hostname=task.request.hostname) as dispatcher:
            dispatcher.send(JOB_WEBHOOK, uuid=delivery["job_id"], webhook_id=delivery["id"], outcome=outcome,
                            attempt=record["try"], status_code=record["status_code"])
    except Exception as exc:  # an event lost is a metric off by one, never a lost delivery
        log.warning("webhook event for job %s not sent: %s", delivery["job_id"], exc)


def _job_end(app: Any, task_id: str, state: str, retval: Any) -> tuple[JobStatus, Any, dict[str, Any] | None] | None:
    """(final status, result, error) of a finished run of the job task, or None if not final."""
    if state == celery_states.SUCCESS:
        return JobStatus.COMPLETED, retval, None
    if state == celery_states.FAILURE:
        to_dict = getattr(retval, "to_dict", None)
        error = dict(to_dict()) if callable(to_dict) else {"type": type(retval).__name__, "message": str(retval),
                                                            "details": {}}
        return job_status_from_celery(state, type(retval).__name__), None, error
    if state in (celery_states.IGNORED, celery_states.REVOKED):
        # Cancelled jobs end with Ignore after their REVOKED state was stored.
        if app.backend.get_task_meta(task_id).get("status") == celery_states.REVOKED:
            return JobStatus.CANCELLED, None, {"type": "JobCancelled", "message": "cancelled", "details": {}}
    return None


def _webhook_url(kwargs: Any) -> str | None:
    options = kwargs.get("options") if isinstance(kwargs, Mapping) else None
    url = options.get("webhook_url") if isinstance(options, Mapping) else None
    return url if isinstance(url, str) and url else None


def register_delivery_task(app: Any) -> None:
    """Register the delivery task on ``app`` (any worker delivers)."""

    @app.task(bind=True, name=WEBHOOK_TASK, acks_late=True, reject_on_worker_lost=True,  # type: ignore[untyped-decorator]
              ignore_result=True, send_events=False, shared=False)
    def _deliver_webhook(self: Any, delivery: dict[str, Any]) -> str:
        return deliver(self, delivery)


def _job_ended(app: Any, task_id: str, kwargs: Any, state: str, retval: Any) -> None:
    """Enqueue the webhook delivery of a job that ended, if it asked for one."""
    url = _webhook_url(kwargs)
    runtime = getattr(app, "runtime", None)
    if not url or (runtime is not None and runtime.is_given_up(task_id)):
        return  # a given-up job ends elsewhere; that worker sends the webhook
    try:
        end = _job_end(app, task_id, state, retval)
        if end is None:
            return
        status, result, error = end
        service = kwargs.get("service") if isinstance(kwargs, Mapping) else None
        enqueue(app, build_delivery(task_id, url, status, service=service, result=result, error=error))
    except Exception:  # never let a webhook break the job's own ending
        log.exception("could not enqueue the webhook of job %s", task_id)


def on_task_postrun(sender: Any = None, task_id: str = "", kwargs: Any = None, retval: Any = None,
                    state: str = "", **_: Any) -> None:
    """``task_postrun``: a run of the job task ended (in the worker that ran it)."""
    app = getattr(sender, "app", None)
    if getattr(sender, "name", None) == RUN_JOB_TASK and app is not None:
        _job_ended(app, task_id, kwargs, state, retval)


def on_task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """``task_revoked``: the worker discarded a job's message as revoked."""
    app = getattr(sender, "app", None)
    if getattr(sender, "name", None) == RUN_JOB_TASK and app is not None and request:
        _job_ended(app, request.id, request.kwargs, celery_states.REVOKED, None)
