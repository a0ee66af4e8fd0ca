"""Which broker and result-backend URLs are Redis: the one rule every caller asks.

kombu and Celery's Redis backend accept ``redis://``, ``rediss://`` (TLS) and
``redis+socket://`` (a Unix socket); anything else (``amqp://``, ``sentinel://``...) is not a
Redis we talk to directly, so Redis-only features (the lease, the result-backend listing,
the orphan store, the 20-level priority transport) stay off.
"""

from __future__ import annotations

#: URL prefixes of a Redis broker or result backend.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")


def is_redis_url(url: object) -> bool:
    """True when ``url`` names a Redis server (see :data:`REDIS_SCHEMES`)."""
    return isinstance(url, str) and url.startswith(REDIS_SCHEMES)
