"""Every private Celery, kombu and redis-py behaviour jobqueue relies on, in one place.

jobqueue leans on a few things the libraries do not document as API: key names kombu's Redis transport writes
(unacked messages, priority lists, event channels), the key Celery's Redis result backend stores a result
under, the worker's request registry, a request's ``chain``, a kombu message's raw envelope and how its body
is encoded, kombu's JSON decoder, the consumer's refusal handlers and the event receiver's per-message hook.
Each is wrapped here in one small function whose docstring names what it relies on;
tests/jobqueue/transport/test_internals.py checks every one against the installed libraries (real Redis, real
kombu channels, a real Celery worker state), so an upgrade that changes one fails there, naming the function.
The pins in pyproject.toml (``celery``, ``kombu``, ``redis`` below the next minor that was not checked) keep
an unchecked upgrade from being installed.

The result backend class (:class:`RidingRedisBackend`, Celery's Redis backend storing a state
in one round trip, with riders) lives here too, as it overrides Celery's private
``_store_result``. The other module with private touchpoints is :mod:`jobqueue.transport.kombu_redis`
(a kombu Redis channel subclass: its BRPOP reader, priority clamp and client reuse).

Verified with Celery 5.4-5.7, kombu 5.4-5.7, redis-py 5-8.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.events.receiver import EventReceiver
from kombu.serialization import loads, registry
from kombu.utils import json as kombu_json

from jobqueue.shared.routing import BROKER_MAX_PRIORITY
from jobqueue.transport.json_text import b64decode, json_text

log = logging.getLogger(__name__)

# -- kombu's Redis transport: key names -------------------------------------------------------

#: ``kombu.transport.redis.Channel.sep``: priority level ``n`` of a queue is ``<queue><sep><n>``
#: (never overridden here: stock tooling writes binding keys with the default).
REDIS_KEY_SEP = "\x06\x16"
#: ``kombu.transport.redis.Channel.unacked_key``: hash of delivered, unacked messages by tag.
UNACKED_KEY = "unacked"
#: ``kombu.transport.redis.Channel.unacked_index_key``: sorted set tag -> delivery time.
UNACKED_INDEX_KEY = "unacked_index"
#: ``kombu.transport.redis.Channel.keyprefix_fanout``: pub/sub channel prefix of fanout
#: exchanges when ``fanout_prefix`` is on.
FANOUT_PREFIX = "/{db}."


def global_keyprefix(transport_options: Mapping[str, Any] | None) -> str:
    """kombu's ``global_keyprefix`` transport option: its Redis client
    (``PrefixedStrictRedis``) puts it in front of every key and pub/sub channel it uses."""
    return str((transport_options or {}).get("global_keyprefix") or "")


def unacked_index_key(transport_options: Mapping[str, Any] | None) -> str:
    """The Redis key of kombu's unacked index (delivery tag -> delivery time, the scores the restore sweep
    compares with ``visibility_timeout``), as kombu's channel names it: the ``unacked_index_key`` transport
    option (default ``unacked_index``) behind the ``global_keyprefix``."""
    opts = transport_options or {}
    return global_keyprefix(opts) + str(opts.get("unacked_index_key") or UNACKED_INDEX_KEY)


def unacked_key(transport_options: Mapping[str, Any] | None) -> str:
    """The Redis key of kombu's unacked hash (delivery tag -> ``[message, exchange, routing key]``): the
    ``unacked_key`` transport option (default ``unacked``) behind the ``global_keyprefix``."""
    opts = transport_options or {}
    return global_keyprefix(opts) + str(opts.get("unacked_key") or UNACKED_KEY)


def priority_queue_keys(queue: str, max_level: int, *, sep: str = REDIS_KEY_SEP, prefix: str = "") -> list[str]:
    """The Redis lists that hold ``queue``'s messages, level 0 (taken first) first.

    kombu's ``Channel._q_for_pri``: level 0 is the list named after the queue, level ``n``
    is ``<queue><sep><n>`` (with ``priority_steps`` set to every level 0..``max_level``);
    ``prefix`` is the ``global_keyprefix`` the broker client adds.
    """
    return [prefix + (f"{queue}{sep}{level}" if level else queue) for level in range(max_level + 1)]


def redis_queue_keys(queue: str, *, prefix: str = "") -> list[str]:
    """The Redis lists that hold ``queue``'s messages on jobqueue's priority transport (every
    broker level, :data:`jobqueue.shared.routing.BROKER_MAX_PRIORITY`), most urgent first (for
    queue lengths); ``prefix``: the broker's :func:`global_keyprefix`."""
    return priority_queue_keys(queue, BROKER_MAX_PRIORITY, prefix=prefix)


def fanout_pattern(db: int, transport_options: Mapping[str, Any] | None, exchange: str) -> str:
    """The PSUBSCRIBE pattern that receives every message of fanout ``exchange`` on Redis database ``db``, as
    ``kombu.transport.redis.Channel`` names its pub/sub channels: ``global_keyprefix`` + fanout prefix
    (``fanout_prefix``: ``/{db}.`` when true, the string itself when a string, nothing when false) + exchange,
    + ``/*`` with ``fanout_patterns`` (routing key ``#``, which kombu turns into ``*``)."""
    opts = transport_options or {}
    option = opts.get("fanout_prefix", True)
    prefix = option if isinstance(option, str) else (FANOUT_PREFIX if option else "")
    topic = prefix.format(db=db) + exchange
    if opts.get("fanout_patterns", True):
        topic += "/*"
    return global_keyprefix(opts) + topic


# -- Celery's result backend -----------------------------------------------------------------


def result_key_prefix(app: Any) -> str:
    """The prefix of every result record in a key-value result backend
    (``KeyValueStoreBackend.task_keyprefix``: ``celery-task-meta-``, behind the backend's
    ``global_keyprefix`` when one is set)."""
    prefix = app.backend.task_keyprefix
    return prefix.decode() if isinstance(prefix, bytes) else str(prefix)


def result_key(app: Any, job_id: str) -> str:
    """The key of ``job_id``'s result record (``KeyValueStoreBackend.get_key_for_task``)."""
    key = app.backend.get_key_for_task(job_id)
    return key.decode() if isinstance(key, bytes) else str(key)


def result_record(backend: Any, job_id: str, result: Any, state: str, request: Any,
                  traceback: Any = None) -> dict[str, Any]:
    """The record ``Backend.store_result`` would write for ``job_id`` (status, result, and the extended fields
    taken from ``request``), built by Celery's private ``Backend._get_result_meta`` so that a record written
    another way (one Lua round trip) reads back exactly like Celery's own."""
    record: dict[str, Any] = backend._get_result_meta(result=result, state=state, traceback=traceback,
                                                      request=request)
    record["task_id"] = job_id.decode() if isinstance(job_id, bytes) else job_id
    return record


#: The guarded write of a result record (``guarded_set.lua`` beside this module, its keys and arguments): nothing
#: is written over a SUCCESS record -- the guard of Celery's ``_store_result`` (read, write) atomic, one round trip.
GUARDED_SET_AND_PUBLISH = resources.files("jobqueue.transport").joinpath("guarded_set.lua").read_text(encoding="utf-8")

#: ``rider(pipe)``: queues commands on ``pipe`` (a Redis transaction the backend executes).
Rider = Callable[[Any], None]
#: ``on_replies(replies)``: gets the replies to a rider's commands (errors as exceptions).
Replies = Callable[[list[Any]], None]


class RidingRedisBackend(CeleryRedisBackend):  # type: ignore[misc]  # Celery is untyped
    """Celery's Redis result backend, storing a task's state in one round trip, with riders:
    the one home of the guarded write (:data:`GUARDED_SET_AND_PUBLISH`), for a task's states
    and (:meth:`store_guarded`) a running job's progress.

    Celery's ``_store_result`` (PRIVATE, overridden) reads the stored record, skips the write
    over a ``SUCCESS``, then writes and publishes: two round trips per state. Here the same
    guard runs inside one Lua script (:data:`GUARDED_SET_AND_PUBLISH`) in one ``MULTI``
    together with the task's riders (:meth:`ride_with_next_state`): commands stored with the
    state. Records are built by Celery (:func:`result_record`) and read back as its own. A
    backend whose records the script cannot read (not JSON, compressed) stores as Celery does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._riders: dict[Any, list[tuple[Rider, Replies | None]]] = {}
        self._riders_lock = threading.Lock()
        self._guarded = self.serializer == "json" and not self.compression
        #: The guarded write as a script registered with this backend's client, once (EVALSHA).
        self._script: Any = None

    def ride_with_next_state(self, job_id: str, rider: Rider, on_replies: Replies | None = None) -> None:
        """Queue ``rider``'s commands into the transaction that stores ``job_id``'s next state;
        ``on_replies`` gets their replies once it ran."""
        with self._riders_lock:
            self._riders.setdefault(self.get_key_for_task(job_id), []).append((rider, on_replies))

    def _take(self, key: Any) -> list[tuple[Rider, Replies | None]]:
        with self._riders_lock:
            return self._riders.pop(key, [])

    @staticmethod
    def _run(pipe: Any, riders: list[tuple[Rider, Replies | None]], before: int) -> list[Any]:
        """Queue every rider on ``pipe``, execute it, hand each rider its replies; the
        replies to the ``before`` commands queued ahead of the riders are returned."""
        spans = []
        for rider, on_replies in riders:
            start = len(pipe)
            rider(pipe)
            spans.append((start, len(pipe), on_replies))
        replies = pipe.execute(raise_on_error=False)
        riders.clear()  # they ran: a retry of the state's write must not run them again
        for start, end, on_replies in spans:
            failed = [r for r in replies[start:end] if isinstance(r, Exception)]
            if failed:
                log.warning("a write riding with a task state failed: %s", failed)
            if on_replies is not None:
                on_replies(replies[start:end])
        return list(replies[:before])

    def flush_riders(self, job_id: str) -> None:
        """Send the riders of ``job_id`` whose state was not stored, on their own. Never raises."""
        riders = self._take(self.get_key_for_task(job_id))
        if not riders:
            return
        try:
            with self.client.pipeline() as pipe:
                self._run(pipe, riders, 0)
        except Exception:
            log.warning("could not write what rides with the state of job %s", job_id, exc_info=True)

    def _store_result(self, task_id: Any, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        if not self._guarded:
            self.flush_riders(task_id)
            return super()._store_result(task_id, result, state, traceback, request=request, **kwargs)
        value = self.encode(result_record(self, task_id, result, state, request, traceback))
        expires = self.failure_expires if state == "FAILURE" else self.expires
        key = self.get_key_for_task(task_id)
        riders = self._take(key)
        try:
            self.ensure(self._guarded_set, (key, value, int(expires or 0), riders))
        except Exception:
            with self._riders_lock:  # flush_riders sends them once the task is over
                self._riders[key] = riders + self._riders.get(key, [])
            raise
        return result

    def store_guarded(self, task_id: Any, meta: Any, state: str, request: Any = None) -> bool:
        """Store ``meta`` as the task's ``state`` (no riders, no retry) in one round trip,
        never over a ``SUCCESS``; False when a ``SUCCESS`` record was kept. The record is
        Celery's own and is published as Celery publishes it. Used for a running job's
        progress (``update_state`` in one round trip instead of two)."""
        if not self._guarded:
            self.store_result(task_id, meta, state, request=request)
            return True
        if self._script is None:
            self._script = self.client.register_script(GUARDED_SET_AND_PUBLISH)
        value = self.encode(result_record(self, task_id, meta, state, request))
        key = self.get_key_for_task(task_id)
        return bool(self._script(keys=[key], args=[value, int(self.expires or 0)]))

    def _acking(self, key: Any) -> tuple[list[Any], list[Any]]:
        """Extra keys and arguments of the guarded write of ``key`` (none: see results.py)."""
        return [], []

    def _guarded_set(self, key: Any, value: Any, expires: int, riders: list[tuple[Rider, Replies | None]]) -> None:
        keys, args = self._acking(key)
        command = (GUARDED_SET_AND_PUBLISH, 1 + len(keys), key, *keys, value, expires, *args)
        if not riders:
            self.client.eval(*command)
            return
        with self.client.pipeline() as pipe:
            # EVAL, not EVALSHA: a script in a pipeline costs redis-py a SCRIPT EXISTS round
            # trip per execute; Redis compiles the text once and caches it by its digest.
            pipe.eval(*command)
            (stored,) = self._run(pipe, riders, 1)
        if isinstance(stored, Exception):
            raise stored


def store_failure(app: Any, job_id: str, exc: BaseException, *, task: str | None, hostname: str | None,
                  queue: str) -> None:
    """Store ``exc`` as the ``FAILURE`` result of a job no worker ran (its message was
    refused), with the name, worker and queue an extended result keeps, and no errbacks.

    ``Backend.mark_as_failure`` takes a request object; this one is a stand-in holding only
    what it and ``_get_result_meta`` read (``task``, ``hostname``, ``delivery_info``, and
    ``chord``, ``errbacks`` empty so no chord or errback is touched)."""
    from celery.utils.objects import Bunch

    request = Bunch(name=task, task=task, chord=None, root_id=None, correlation_id=job_id, reply_to=None,
                    errbacks=None, hostname=hostname, delivery_info={"routing_key": queue})
    app.backend.mark_as_failure(job_id, exc, request=request, call_errbacks=False)


# -- Celery's worker: requests ----------------------------------------------------------------


def held_requests() -> list[Any]:
    """Every request this worker process holds: reserved (received, running or not) and
    scheduled (waiting for an ETA, e.g. a retry's countdown) -- ``celery.worker.state``'s
    ``reserved_requests`` and ``scheduled_requests``."""
    from celery.worker import state

    return [*state.reserved_requests, *state.scheduled_requests]


def reserved_requests() -> list[Any]:
    """The requests this worker process received and has not completed, running or not
    (``celery.worker.state.reserved_requests``)."""
    from celery.worker import state

    return list(state.reserved_requests)


def active_requests() -> list[Any]:
    """The requests this worker process runs now (``celery.worker.state.active_requests``)."""
    from celery.worker import state

    return list(state.active_requests)


def wake_scheduled(consumer: Any, pick: Callable[[Any], bool]) -> int:
    """Run now the requests this worker holds for their ETA (a retry's countdown) that ``pick``
    chooses; return how many. Cancels each one's timer entry (``Request._eta_timer_entry``)
    and hands it to ``Consumer.apply_eta_task``, what the timer would have called. Call it on
    the consumer's thread."""
    from celery.worker import state

    woken = 0
    for request in list(state.scheduled_requests):
        entry = getattr(request, "_eta_timer_entry", None)
        if entry is None or getattr(entry, "canceled", False) or not pick(request):
            continue
        entry.cancel()
        consumer.apply_eta_task(request)
        woken += 1
    return woken


def accepted_at(request: Any) -> float | None:
    """When the pool accepted ``request`` (``Request.time_start``, wall-clock), or None."""
    return float(value) if (value := getattr(request, "time_start", None)) is not None else None


def delivery_tag(request: Any) -> str | None:
    """The broker delivery tag of ``request``'s message (``Request.message.delivery_tag``;
    on Redis the member of kombu's unacked index), or None."""
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    return tag if tag is None or isinstance(tag, str) else str(tag)


def forget_request(request: Any) -> None:
    """Make this worker neither ack nor restore ``request``'s message: Celery acks nothing
    for a request marked ``acknowledged``, and kombu's virtual QoS restores (on channel close)
    only what its private ``_delivered`` map holds."""
    request.acknowledged = True
    message = getattr(request, "message", None)
    qos = getattr(getattr(message, "channel", None), "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if delivered is not None:
        delivered.pop(getattr(message, "delivery_tag", None), None)


def drop_request(request: Any) -> None:
    """Remove ``request`` from the worker's active and reserved sets, and from ``requests``
    (keyed by id) when it still owns its entry there (``celery.worker.state``)."""
    from celery.worker import state

    state.active_requests.discard(request)
    state.reserved_requests.discard(request)
    if state.requests.get(request.id) is request:
        state.requests.pop(request.id, None)


def remaining_chain(request: Any) -> list[dict[str, Any]]:
    """The running task's later steps as signature dicts, next first (``Context.chain``: last first)."""
    return [dict(sig) for sig in reversed(list(getattr(request, "chain", None) or ()))]


def drop_chain(request: Any) -> None:
    """Keep Celery from publishing the rest of the running task's chain (``Context.chain``
    is what the trace reads after the body returns)."""
    request.chain = None


def default_task_strategy() -> Callable[..., Any]:
    """Celery's default task strategy (``celery.worker.strategy.default``), which a custom
    ``Task.Strategy`` wraps."""
    from celery.worker.strategy import default

    return default  # type: ignore[no-any-return]


# -- kombu messages and Celery's consumer -----------------------------------------------------


def raw_envelope(message: Any) -> Any:
    """The envelope a kombu virtual-transport message was built from (``Message._raw``: a
    dict on Redis), or None."""
    return getattr(message, "_raw", None)


def envelope_payload(envelope: Mapping[str, Any], accept: Any) -> Any:
    """The deserialized body of a kombu virtual-transport envelope (a Redis list's or fanout channel's JSON),
    as kombu's ``Message`` decodes it: base64/UTF-8 bodies, then the serializer registry with ``accept`` (its
    JSON decoder without the object hook when the body cannot spell the hook's ``__type__`` key, not even with
    a ``\\u`` escape: the same values, cheaper). Raises on a bad encoding, body or content type."""
    body = envelope.get("body")
    encoding = (envelope.get("properties") or {}).get("body_encoding")
    if body and encoding == "base64":
        body = b64decode(body)
    elif body and encoding and encoding.lower() != "utf-8":
        raise ValueError(f"unknown body encoding {encoding!r}")
    if isinstance(body, str):
        body = body.encode("utf-8")
    kind = envelope.get("content-type")
    if kind == "application/json" and body and accept and kind in accept and b"__type__" not in body \
            and b"\\u" not in body and registry._decoders.get(kind) is kombu_json.loads:
        return json_text(body.decode("utf-8"))  # what kombu's loads does with the hook off
    return loads(body, kind, envelope.get("content-encoding"), accept=accept)  # type: ignore[no-untyped-call]


def wrap_refusal_handlers(consumer: Any, on_refused: Callable[[Any, str], Any]) -> None:
    """Call ``on_refused(message, reason)`` before Celery's consumer drops a message it
    cannot decode, whose task is invalid, or that is not a task message.

    Replaces ``Consumer.on_decode_error`` (skipping its ack when ``on_refused`` returns
    ``"rejected"``), ``on_invalid_task`` and ``on_unknown_message`` on
    the consumer instance; must run before ``create_task_handler`` and the ``Tasks`` and
    ``Control`` steps read them (a consumer bootstep's ``__init__``).
    """
    on_decode_error = consumer.on_decode_error
    on_invalid_task = consumer.on_invalid_task
    on_unknown_message = consumer.on_unknown_message

    def decode_error(message: Any, exc: Exception) -> Any:
        handled = on_refused(message, f"cannot decode ({type(exc).__name__}: {str(exc)[:200]})")
        return None if handled == "rejected" else on_decode_error(message, exc)  # else Celery acks

    def invalid_task(body: Any, message: Any, exc: Exception) -> Any:
        on_refused(message, f"invalid task message ({type(exc).__name__}: {str(exc)[:200]})")
        return on_invalid_task(body, message, exc)

    def unknown_message(body: Any, message: Any) -> Any:
        on_refused(message, "not a task message (no task header)")
        return on_unknown_message(body, message)

    consumer.on_decode_error = decode_error
    consumer.on_invalid_task = invalid_task
    consumer.on_unknown_message = unknown_message


# -- Celery's event receiver ------------------------------------------------------------------


class TolerantEventReceiver(EventReceiver):  # type: ignore[misc]  # Celery is untyped
    """Celery's ``EventReceiver`` where one bad event never ends the capture: it overrides
    the private per-message hook ``_receive`` (a list of events, or one) so each item that is
    not an event, or that ``event_from_message`` cannot handle, goes to ``on_malformed``; and
    ``on_consume_ready`` (kombu's ``ConsumerMixin``) calls ``on_ready``."""

    #: Fail fast on connect; the caller does its own backoff (and can stop meanwhile).
    connect_max_retries = 1

    def __init__(self, *args: Any, on_malformed: Callable[[Exception], Any], on_ready: Callable[[], Any],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_malformed = on_malformed
        self._on_ready = on_ready

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        super().on_consume_ready(connection, channel, consumers, **kwargs)
        self._on_ready()

    def _receive(self, body: Any, message: Any, list: Any = list, isinstance: Any = isinstance) -> None:
        for item in body if isinstance(body, list) else [body]:
            try:
                if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                    raise ValueError("not an event")
                self.process(*self.event_from_message(item))
            except Exception as exc:
                self._on_malformed(exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._on_malformed(exc)


class _EventClock:
    """The attributes ``EventReceiver.event_from_message`` reads from its receiver."""

    def __init__(self, app: Any) -> None:
        self.clock = app.clock
        self.adjust_clock = self.clock.adjust
        self.forward_clock = self.clock.forward

    event_from_message = EventReceiver.event_from_message


def event_converter(app: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What ``EventReceiver`` does to each decoded event before its handlers see it (clock
    adjustment, ``task-sent`` skew, timestamp localisation, ``local_received``), without a
    receiver: Celery's own ``event_from_message`` bound to an object with ``app``'s clock."""
    convert = _EventClock(app).event_from_message

    def event(body: dict[str, Any]) -> dict[str, Any]:
        return convert(body)[1]  # type: ignore[no-any-return]

    return event


def buffer_event_group(dispatcher: Any, group: str) -> None:
    """Have Celery's ``EventDispatcher`` buffer ``group``'s events as it buffers the task group's
    (sent together in its event loop's flush), safely from any thread.

    The dispatcher makes a group's buffer (``_group_buffer``, a ``defaultdict(list)``) on the
    group's first buffered send, outside its mutex, while ``flush()`` iterates that dict in the
    worker's event loop: a first send from another thread (the connector-status thread, a job's
    progress) could make the flush raise ``dictionary changed size during iteration`` and stop
    the worker at start-up. Every buffered group's list is made here, under the mutex, first.
    """
    with dispatcher.mutex:
        buffered = frozenset(dispatcher.buffer_group) | {group}
        for name in buffered:
            dispatcher._group_buffer.setdefault(name, [])
        dispatcher.buffer_group = buffered
