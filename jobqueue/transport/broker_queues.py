"""The broker's queues as the broker itself holds them: names, depths per priority level, and a
purge that empties every level.

Redis: kombu keeps each queue's messages in one list per priority level (the queue's name, then
``<queue>\\x06\\x16<level>``; jobqueue's transport uses every level 0..19) and records which queues
are bound to which exchange in sets named ``_kombu.binding.<exchange>`` (members
``<routing key>\\x06\\x16<pattern>\\x06\\x16<queue>``). Queues are found there, so a queue nobody
consumes and no job named is listed too. Stock ``celery purge`` (kombu's ``Channel._purge``)
deletes only the level-0 list: a priority queue keeps every message sent with a priority;
:func:`purge_queue` takes every level in one transaction.

RabbitMQ: queue names, depths and consumer counts from the management API when
``JOBQUEUE_RABBITMQ_MANAGEMENT_URL`` is set (``GET /api/queues/<vhost>``), else a passive declare
of the queues the caller names; a purge takes the messages one by one (``basic_get``), so it can
say which tasks it removed.

Both return the removed messages' task ids and names, so the caller can tell the result backend
and every monitor that those jobs will never run.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from kombu.entity import Queue
from kombu.transport.redis import Channel as RedisChannel

from jobqueue.errors import JobqueueError
from jobqueue.shared.routing import BROKER_MAX_PRIORITY
from jobqueue.transport.internals import global_keyprefix, redis_queue_keys

#: Exchanges whose bindings are not task queues (remote control, replies, events).
_NOT_TASK_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")
#: Most binding sets looked at, and SCAN rounds (each asks Redis for ~1000 keys).
MAX_BINDINGS = 500
MAX_SCAN_ROUNDS = 100
#: Seconds to wait for the broker or its management API.
TIMEOUT = 5.0


class BrokerError(JobqueueError):
    """The broker (or its management API) could not be read or changed."""


@dataclass
class QueueInfo:
    """One queue on the broker: its messages waiting (``levels``: by broker priority level, on
    Redis), and its consumers when the broker knows them (RabbitMQ's management API)."""

    name: str
    depth: int
    levels: dict[int, int] = field(default_factory=dict)
    consumers: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "depth": self.depth, "levels": {str(k): v for k, v in sorted(self.levels.items())},
                "consumers": self.consumers}


@dataclass(frozen=True)
class Removed:
    """A message a purge removed: its task id and name (None when it was not a Celery task)."""

    task_id: str | None
    task: str | None


# -- Redis ------------------------------------------------------------------------------------


def _redis(app: Any) -> Any:
    from jobqueue.transport.redis_clients import redis_client

    return redis_client(app.settings.broker_url, app.settings, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


def _bound_queues(client: Any, prefix: str) -> set[str]:
    """Queue names in kombu's binding sets (task exchanges only)."""
    binding = prefix + RedisChannel.keyprefix_queue % ""
    names: set[str] = set()
    cursor, rounds, sets = 0, 0, list[str]()
    while True:
        cursor, keys = client.scan(cursor, match=binding + "*", count=1000)
        sets.extend(k.decode("utf-8", "replace") for k in keys)
        rounds += 1
        if cursor == 0 or rounds >= MAX_SCAN_ROUNDS or len(sets) >= MAX_BINDINGS:
            break
    for key in sets[:MAX_BINDINGS]:
        if key[len(binding):] in _NOT_TASK_EXCHANGES:
            continue
        for member in client.smembers(key):
            queue = member.decode("utf-8", "replace").split(RedisChannel.sep)[-1]
            if queue:
                names.add(queue)
    return names


def _redis_queues(app: Any, known: list[str]) -> list[QueueInfo]:
    prefix = global_keyprefix(app.conf.broker_transport_options)
    client = _redis(app)
    try:
        names = sorted(_bound_queues(client, prefix) | set(known))
        pipe = client.pipeline(transaction=False)
        for name in names:
            for key in redis_queue_keys(name, prefix=prefix):
                pipe.llen(key)
        counts = pipe.execute()
    finally:
        client.close()
    steps = BROKER_MAX_PRIORITY + 1
    out = []
    for i, name in enumerate(names):
        levels = {level: int(n) for level, n in enumerate(counts[i * steps:(i + 1) * steps]) if n}
        out.append(QueueInfo(name, sum(levels.values()), levels))
    return out


def _task_of(raw: bytes) -> Removed:
    """The task id and name of one kombu Redis message (protocol 2 headers, else protocol 1 body)."""
    try:
        message = json.loads(raw)
        headers = message.get("headers") or {}
        if headers.get("id"):
            return Removed(str(headers["id"]), headers.get("task"))
        body = json.loads(base64.b64decode(message.get("body", "")))
        return Removed(body.get("id"), body.get("task"))
    except (ValueError, TypeError, AttributeError):
        return Removed(None, None)


def _redis_purge(app: Any, queue: str) -> list[Removed]:
    keys = redis_queue_keys(queue, prefix=global_keyprefix(app.conf.broker_transport_options))
    client = _redis(app)
    try:
        pipe = client.pipeline(transaction=True)  # read and delete every level at one instant
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.delete(*keys)
        answers = pipe.execute()
    finally:
        client.close()
    return [_task_of(raw) for items in answers[:-1] for raw in items]


# -- RabbitMQ ---------------------------------------------------------------------------------


def _vhost(broker_url: str) -> str:
    path = urlsplit(broker_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _management_queues(url: str, broker_url: str) -> list[QueueInfo]:
    import requests

    parts = urlsplit(url)
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    base = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else "")).geturl().rstrip("/")
    try:
        answer = requests.get(f"{base}/api/queues/{quote(_vhost(broker_url), safe='')}", auth=auth, timeout=TIMEOUT)
        answer.raise_for_status()
        rows = answer.json()
    except (requests.RequestException, ValueError) as exc:
        raise BrokerError(f"RabbitMQ's management API at {base} did not answer: {exc}") from None
    return [QueueInfo(row["name"], int(row.get("messages_ready") or 0), {}, int(row.get("consumers") or 0))
            for row in rows if isinstance(row, dict) and isinstance(row.get("name"), str)
            and not row["name"].endswith(".pidbox") and not row["name"].startswith("celeryev.")]


def _amqp_queues(app: Any, known: list[str]) -> list[QueueInfo]:
    out = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in sorted(set(known)):
            try:
                declared = channel.queue_declare(queue=name, passive=True)
                out.append(QueueInfo(name, int(declared.message_count), {}, int(declared.consumer_count)))
            except Exception:  # not declared: nothing waits there
                out.append(QueueInfo(name, 0))
                channel = conn.channel()
    return out


def _amqp_purge(app: Any, queue: str) -> list[Removed]:
    removed = []
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        try:
            channel.queue_declare(queue=queue, passive=True)
        except Exception:
            return []
        bound = Queue(queue, channel=channel)  # type: ignore[no-untyped-call]  # kombu is untyped
        while (message := bound.get(no_ack=True)) is not None:  # type: ignore[no-untyped-call]
            headers = message.headers or {}
            removed.append(Removed(headers.get("id"), headers.get("task")))
    return removed


# -- the two together -------------------------------------------------------------------------


def list_queues(app: Any, known: list[str], management_url: str | None = None) -> list[QueueInfo]:
    """Every task queue on the broker (plus ``known`` names) with its depth; raises
    :class:`BrokerError` when the broker cannot be read."""
    try:
        if app.settings.is_redis:
            return _redis_queues(app, known)
        if management_url:
            found = {q.name: q for q in _management_queues(management_url, app.settings.broker_url)}
            return [found.get(name, QueueInfo(name, 0)) for name in sorted(set(found) | set(known))]
        return _amqp_queues(app, known)
    except BrokerError:
        raise
    except Exception as exc:
        raise BrokerError(f"cannot read the broker's queues: {exc}") from None


def purge_queue(app: Any, queue: str) -> list[Removed]:
    """Remove every message waiting in ``queue`` (every priority level); return what was removed."""
    if not isinstance(queue, str) or not queue or len(queue) > 255:
        raise BrokerError(f"not a queue name: {queue!r}")
    try:
        return _redis_purge(app, queue) if app.settings.is_redis else _amqp_purge(app, queue)
    except Exception as exc:
        raise BrokerError(f"cannot purge queue {queue!r}: {exc}") from None
