"""Poison messages never stop a worker.

An item on a queue that is not a kombu envelope (``LPUSH simulation garbage``), has a body its
``body_encoding`` cannot decode (bad base64), or decodes to something Celery refuses (pickle,
broken JSON, no task header) is logged, counted, moved aside to the Redis list
``<queue>.dead`` (:func:`jobqueue.shared.records.dead_letter_key`; on RabbitMQ, the quorum
queue ``<queue>.dead`` through the dead-letter exchange, :mod:`jobqueue.transport.rabbitmq`) with the reason (newest first, at most :data:`DEAD_KEEP` items), and, when it
names a job id whose result is not final yet, that job ends ``failed`` with a
:class:`~jobqueue.errors.MessageDiscarded` error (result backend and a ``task-failed`` event),
so no client and no monitor waits for it forever.

Two layers, because the failures surface in two places:

* **Transport.** kombu's Redis channel decodes the envelope inside its BRPOP reader; an error
  there escapes into Celery's event loop and kills the worker ("Unrecoverable error"), and the
  popped item is lost. jobqueue's channel (:class:`jobqueue.transport.kombu_redis.Channel`)
  asks the worker's :class:`PoisonHandler` (its hook, :meth:`PoisonHandler.check`) first and
  never delivers an item it refuses: the handler dead-letters it (:meth:`PoisonHandler.discard`).
* **Consumer.** Celery decodes the body later and, on failure, logs and acks (or rejects) the
  message: it is gone, and the job stays ``queued``. :class:`PoisonStep` wraps those handlers
  so the message is dead-lettered and its job failed before Celery drops it.

The private Celery and kombu behaviour both layers rely on lives in the two modules that hold
all of jobqueue's: the transport layer is :class:`jobqueue.transport.kombu_redis.Channel` (kombu's
BRPOP reader), the consumer layer uses :func:`jobqueue.transport.internals.wrap_refusal_handlers` and
:func:`jobqueue.transport.internals.raw_envelope`, and a refused job's failure is stored with
:func:`jobqueue.transport.internals.store_failure`; this module holds the rules (what is poison, where it
goes, which job fails).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from celery import bootsteps

from jobqueue.shared.names import TASK_FAILED
from jobqueue.shared.records import dead_letter_key
from jobqueue.transport.internals import raw_envelope, store_failure, wrap_refusal_handlers
from jobqueue.transport.kombu_redis import set_poison_hook
from jobqueue.transport.rabbitmq import declare_queues

log = logging.getLogger(__name__)

#: Most items one dead-letter list keeps (oldest dropped first).
DEAD_KEEP = 10_000
#: Most bytes of a poison item kept in its dead-letter record.
RAW_KEEP = 256 * 1024


@dataclass(frozen=True)
class Poison:
    """One message that cannot be run: where it came from, why, and what it said."""

    queue: str
    reason: str
    raw: bytes
    job_id: str | None = None
    task: str | None = None


def dead_record(poison: Poison, worker: str | None, now: float | None = None) -> dict[str, Any]:
    """The JSON record pushed to the dead-letter list (the raw item as text when it is UTF-8,
    else base64; cut at :data:`RAW_KEEP` bytes)."""
    raw = poison.raw[:RAW_KEEP]
    record: dict[str, Any] = {"queue": poison.queue, "reason": poison.reason, "job_id": poison.job_id,
                              "task": poison.task, "worker": worker, "at": time.time() if now is None else now,
                              "truncated": len(poison.raw) > RAW_KEEP}
    try:
        record["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return record


def push_dead_letter(client: Any, poison: Poison, worker: str | None) -> None:
    """LPUSH the poison's record to its queue's dead-letter list, keeping :data:`DEAD_KEEP`."""
    key = dead_letter_key(poison.queue)
    pipe = client.pipeline(transaction=True)
    pipe.lpush(key, json.dumps(dead_record(poison, worker)))
    pipe.ltrim(key, 0, DEAD_KEEP - 1)
    pipe.execute()


def _ids_from(headers: Any) -> tuple[str | None, str | None]:
    if not isinstance(headers, dict):
        return None, None
    job_id, task = headers.get("id"), headers.get("task")
    return (job_id if isinstance(job_id, str) and job_id else None,
            task if isinstance(task, str) and task else None)


def check_envelope(item: bytes | str, decode_body: Callable[[Any, Any], Any]) -> tuple[Any, str | None]:
    """``(payload, None)`` when ``item`` is a kombu envelope the channel can deliver, else
    ``(payload or None, reason)``. Mirrors what kombu's virtual ``Message`` needs."""
    try:
        text = item.decode("utf-8") if isinstance(item, bytes) else item
        payload = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"not a kombu message ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(payload, dict):
        return None, f"not a kombu message (a JSON {type(payload).__name__}, not an object)"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return payload, "not a kombu message (no properties with a delivery_tag)"
    headers, info = payload.get("headers"), properties.get("delivery_info")
    if headers is not None and not isinstance(headers, dict):
        return payload, "malformed kombu message (headers is not an object)"
    # kombu's Redis QoS files every delivered message under its exchange and routing key.
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return payload, "malformed kombu message (no delivery_info with exchange and routing_key)"
    body = payload.get("body")
    if body:
        encoding = properties.get("body_encoding")
        try:
            decode_body(body, encoding)
        except Exception as exc:
            return payload, f"undecodable body ({encoding}: {type(exc).__name__}: {str(exc)[:200]})"
    return payload, None


def poison_from_item(queue: str, item: bytes | str, payload: Any, reason: str) -> Poison:
    """A :class:`Poison` for a raw broker item (job id and task from its headers, if any)."""
    job_id, task = _ids_from(payload.get("headers") if isinstance(payload, dict) else None)
    raw = item if isinstance(item, bytes) else item.encode("utf-8", "replace")
    return Poison(queue=queue, reason=reason, raw=raw, job_id=job_id, task=task)


def poison_from_message(message: Any, reason: str) -> Poison:
    """A :class:`Poison` for a message Celery refused (raw envelope when kombu kept it).

    Its queue is the routing key it was sent with: on jobqueue's direct routing, the queue
    (kombu does not tell a consumer callback which queue a message came from)."""
    envelope = raw_envelope(message)
    if isinstance(envelope, dict):
        raw = json.dumps(envelope, default=str).encode("utf-8")
    else:
        body = getattr(message, "body", b"")
        raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    info = getattr(message, "delivery_info", None) or {}
    queue = info.get("routing_key") or info.get("exchange") or "unknown"
    job_id, task = _ids_from(getattr(message, "headers", None))
    return Poison(queue=str(queue), reason=reason, raw=raw, job_id=job_id, task=task)


# -- consumer layer -------------------------------------------------------------------------


class PoisonHandler:
    """What a worker does with a poison message besides dropping it: count it, dead-letter it
    (when the transport has not already), fail its job. Also the transport's poison hook
    (:class:`jobqueue.transport.kombu_redis.PoisonHook`): :meth:`check` and :meth:`discard`."""

    def __init__(self, app: Any, consumer: Any, redis_client: Any = None) -> None:
        self.app = app
        self.consumer = consumer
        self.redis = redis_client
        self.hostname = getattr(consumer, "hostname", None)
        self.discarded = 0

    def __call__(self, poison: Poison, dead_letter: bool = False) -> None:
        self.discarded += 1
        if dead_letter:
            log.error("message on queue %s discarded (%s); moved to %s", poison.queue, poison.reason,
                      dead_letter_key(poison.queue))
            if self.redis is not None:
                try:
                    push_dead_letter(self.redis, poison, self.hostname)
                except Exception:
                    log.exception("could not dead-letter a message of queue %s", poison.queue)
        if poison.job_id:
            try:
                self.fail_job(poison)
            except Exception:
                log.exception("could not mark job %s failed", poison.job_id)

    def check(self, item: bytes | str, decode_body: Callable[[Any, Any], Any]) -> tuple[Any, str | None]:
        """The transport's question: can ``item`` be delivered (:func:`check_envelope`)?"""
        return check_envelope(item, decode_body)

    def discard(self, queue: str, item: bytes | str, payload: Any, reason: str,
                redis_client: Callable[[], AbstractContextManager[Any]]) -> None:
        """An item the transport popped and did not deliver: dead-letter it through
        ``redis_client()`` (the channel's pooled client), then fail its job."""
        poison = poison_from_item(queue, item, payload, reason)
        log.error("poison message on queue %s discarded (%s); moved to %s", poison.queue, poison.reason,
                  dead_letter_key(poison.queue))
        try:
            with redis_client() as client:
                push_dead_letter(client, poison, self.hostname)
        except Exception:
            log.exception("could not dead-letter a poison message of queue %s", poison.queue)
        self(poison)

    def fail_job(self, poison: Poison) -> None:
        """End the job ``failed`` with the reason, unless its result is already final."""
        from celery.states import READY_STATES

        from jobqueue.errors import MessageDiscarded

        assert poison.job_id is not None
        backend = self.app.backend
        if backend.get_state(poison.job_id) in READY_STATES:
            return  # a stray copy of a job that already ended: never overwrite its result
        exc = MessageDiscarded(f"message discarded by {self.hostname}: {poison.reason}; "
                               f"moved to {dead_letter_key(poison.queue)}")
        store_failure(self.app, poison.job_id, exc, task=poison.task, hostname=self.hostname, queue=poison.queue)
        dispatcher = getattr(self.consumer, "event_dispatcher", None)
        if dispatcher is not None:
            dispatcher.send(TASK_FAILED, uuid=poison.job_id, exception=repr(exc))


class PoisonStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consumer step: wrap Celery's decode-failure handlers and hand the transport its hook."""

    label = "jobqueue poison"
    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        settings = c.app.settings
        client = None
        if settings.is_redis:
            from jobqueue.transport.redis_clients import redis_client

            client = redis_client(settings.broker_url, settings, socket_timeout=5, socket_connect_timeout=5)
        self.handler = PoisonHandler(c.app, c, client)
        c.jobqueue_poison = self.handler
        self._wrap(c)

    def _wrap(self, c: Any) -> None:
        handler = self.handler
        rabbit = not c.app.settings.is_redis

        def refused(message: Any, reason: str) -> str | None:
            handler(poison_from_message(message, reason), dead_letter=True)
            if rabbit and reason.startswith("cannot decode"):
                # Celery would ack it (gone); a reject sends it through the queue's dead-letter
                # exchange to <queue>.dead. Celery rejects the other refusals itself.
                message.reject(requeue=False)
                return "rejected"
            return None

        wrap_refusal_handlers(c, refused)

    def start(self, c: Any) -> None:
        # The transport finds its hook on the consumer's (new, after a reconnect) connection.
        if c.connection is not None:
            set_poison_hook(c.connection, self.handler)

    def shutdown(self, c: Any) -> None:
        if self.handler.redis is not None:
            self.handler.redis.close()


class QueueCheckStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Worker step, before the consumer starts: on RabbitMQ, declare the queues this worker
    consumes (a quorum queue's ``<queue>.dead`` with it), so a queue of another type than the
    settings' stops the worker with :class:`~jobqueue.errors.QueueTypeMismatch` (which queue,
    how to migrate) rather than Celery's bare ``PRECONDITION_FAILED``."""

    label = "jobqueue queue check"

    def include_if(self, worker: Any) -> bool:
        return not worker.app.settings.is_redis

    def start(self, worker: Any) -> None:
        app = worker.app
        with app.connection_for_write() as conn:
            try:
                conn.ensure_connection(max_retries=1)
            except conn.connection_errors:  # the broker is not up yet: Celery's consumer waits for it
                log.warning("could not check the queues' types at start: the broker does not answer")
                return
            channel = conn.channel()
            try:
                declare_queues(channel, list(app.amqp.queues.consume_from.values()))
            finally:
                if channel.is_open:
                    channel.close()
