"""A worker's buffered events published with less kombu machinery, the same message on the wire.

Celery's event dispatcher publishes each flushed group of buffered events (``task.multi``: a
JSON list of events) through kombu's ``Producer.publish``: keyword handling, the exchange's
``maybe_declare`` (a bound copy of the exchange per publish), ``prepare_message``, the virtual
channel's ``basic_publish`` (body encoding, delivery tag) and the exchange type's ``deliver``,
before the Redis channel's ``_put_fanout`` sends the one ``PUBLISH``: about 10% of a busy
worker's CPU besides the serialising and the send.

:func:`lean_event_publish` has the dispatcher build that same message itself (kombu's
serializer registry for the body, the channel's body encoding and delivery tag, the envelope's
keys in kombu's order) and hand it to ``_put_fanout``, once kombu has declared the event
exchange on the connection (until then, and for single events, with retries, or on another
transport, Celery's own ``_publish`` runs). Receivers -- Celery's ``EventReceiver``, Flower, the
monitor's raw reader -- get the bytes kombu would send (tests/jobqueue/transport/test_event_publish.py
compares them); a failed publish is buffered for the next flush as Celery does
(``buffer_while_offline``).

PRIVATE TOUCHPOINTS (Celery 5.4-5.7, kombu 5.4-5.7; checked by the test above): the dispatcher's
``_publish`` (replaced on the instance; called under its mutex), ``exchange``, ``headers``,
``serializer``, ``delivery_mode``, ``buffer_while_offline``, ``_outbound_buffer``; kombu's
``Producer._batch_local``, the connection's ``declared_entities`` (``maybe_declare``'s cache), a
virtual channel's ``prepare_message``, ``encode_body``, ``body_encoding``, ``_next_delivery_tag``
and the Redis channel's ``_put_fanout``.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from kombu.serialization import dumps

from jobqueue.transport.kombu_redis import Channel

#: Attribute marking a dispatcher whose ``_publish`` is :func:`lean_event_publish`'s.
LEAN_ATTR = "jobqueue_lean_publish"


def event_message(dispatcher: Any, channel: Any, events: Any, routing_key: str,
                  tag: str | None = None) -> dict[str, Any]:
    """The envelope kombu's ``Producer.publish`` and ``basic_publish`` build for ``events``
    (``tag``: its delivery tag, by default the channel's next, a fresh ``uuid4``)."""
    content_type, content_encoding, body = dumps(events, serializer=dispatcher.serializer)  # type: ignore[no-untyped-call]
    message: dict[str, Any] = channel.prepare_message(body, 0, content_type, content_encoding, dispatcher.headers,
                                                      {"delivery_mode": dispatcher.delivery_mode})
    message["body"], body_encoding = channel.encode_body(message["body"], channel.body_encoding)
    properties = message["properties"]
    properties.update(body_encoding=body_encoding, delivery_tag=tag or channel._next_delivery_tag())
    properties["delivery_info"].update(exchange=dispatcher.exchange.name, routing_key=routing_key)
    return message


def _lean_ready(dispatcher: Any, producer: Any, retry: bool) -> Any:
    """The channel to publish on when the lean path applies, else None."""
    if producer is None or retry or not isinstance(dispatcher.delivery_mode, int) or not dispatcher.delivery_mode \
            or getattr(getattr(producer, "_batch_local", None), "current", None) is not None:
        return None
    channel = producer.channel
    if not isinstance(channel, Channel) or producer.compression:
        return None
    declared = getattr(getattr(channel.connection, "client", None), "declared_entities", None)
    return channel if declared is not None and hash(dispatcher.exchange) in declared else None


def lean_event_publish(dispatcher: Any) -> bool:
    """Have ``dispatcher`` (Celery's ``EventDispatcher``) publish its groups of buffered events
    through :func:`event_message` and ``_put_fanout`` (see the module doc). Idempotent; called
    each time the consumer (re)connects (its dispatcher is new then)."""
    if dispatcher is None or getattr(dispatcher, LEAN_ATTR, False):
        return False
    celery_publish = dispatcher._publish
    # Delivery tags unique per dispatcher without a uuid4 (an os.urandom call) per flush: a
    # random prefix once, then a counter (receivers only need them unique among their messages).
    prefix, numbers = uuid.uuid4().hex, itertools.count()

    def publish(event: Any, producer: Any, routing_key: str, retry: bool = False, retry_policy: Any = None,
                **kwargs: Any) -> Any:
        channel = _lean_ready(dispatcher, producer, retry) if isinstance(event, list) and not kwargs else None
        if channel is None:
            return celery_publish(event, producer, routing_key, retry=retry, retry_policy=retry_policy, **kwargs)
        try:
            message = event_message(dispatcher, channel, event, routing_key, f"{prefix}-{next(numbers)}")
            channel._put_fanout(dispatcher.exchange.name, message, routing_key)
        except Exception:
            if not dispatcher.buffer_while_offline:
                raise
            dispatcher._outbound_buffer.append((event, routing_key))
        return None

    dispatcher._publish = publish
    setattr(dispatcher, LEAN_ATTR, True)
    return True
