"""kombu's Redis transport with 20 priority levels instead of 10.

kombu clamps every Redis message priority to 0..9 (``Channel.max_priority``, not a transport
option). jobqueue gives each caller priority two broker levels (see
:func:`jobqueue.routing.broker_priority`), so it needs 0..19. ``create_app`` selects this
transport (``broker_transport``) whenever the broker is Redis; everything else is kombu's.
Its BRPOP reader moves poison items aside instead of dying on them.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

from jobqueue.routing import BROKER_MAX_PRIORITY
from jobqueue.worker.poison import PoisonSafeChannel


class Channel(PoisonSafeChannel, kombu_redis.Channel):
    """Redis channel that keeps priorities up to :data:`BROKER_MAX_PRIORITY` and never
    delivers (nor dies on) a message it cannot decode (see :mod:`jobqueue.worker.poison`)."""

    max_priority = BROKER_MAX_PRIORITY


class Transport(kombu_redis.Transport):
    """Redis transport using :class:`Channel`."""

    Channel = Channel


#: Value for Celery's ``broker_transport`` setting.
TRANSPORT_PATH = f"{__name__}:Transport"
