"""Which broker and result-backend URLs are Redis: the one rule every caller asks.

kombu and Celery's Redis backend accept ``redis://``, ``rediss://`` (TLS) and
``redis+socket://`` (a Unix socket) for one Redis server, and ``sentinel://`` for a group
watched by Redis Sentinel, in Celery's own form (TLS through ``broker_use_ssl`` /
``redis_backend_use_ssl``, as Celery has it): one URL per sentinel,
joined by ``;`` (``sentinel://h1:26379;sentinel://h2:26379/0``), the master's name in the
transport options (``master_name``; ``JOBQUEUE_REDIS_MASTER_NAME``). Both are Redis: the lease,
the result-backend listing, the orphan store and the 20-level priority transport work on
either. Anything else (``amqp://``...) is not a Redis, and Redis-only features stay off.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from jobqueue.errors import ConfigError

#: URL prefixes of one Redis server.
SERVER_SCHEMES = ("redis://", "rediss://", "redis+socket://")
#: URL prefix of a Redis Sentinel group (kombu's and Celery's spelling).
SENTINEL_SCHEMES = ("sentinel://",)
#: URL prefixes of a Redis broker or result backend.
REDIS_SCHEMES = SERVER_SCHEMES + SENTINEL_SCHEMES
#: Port of a sentinel when its URL names none.
SENTINEL_PORT = 26379


def is_redis_url(url: object) -> bool:
    """True when ``url`` names a Redis server or a Sentinel group (see :data:`REDIS_SCHEMES`)."""
    return isinstance(url, str) and url.startswith(REDIS_SCHEMES)


def is_sentinel_url(url: object) -> bool:
    """True when ``url`` names a Redis Sentinel group (``sentinel://h1;sentinel://h2``)."""
    return isinstance(url, str) and url.startswith(SENTINEL_SCHEMES)


@dataclass(frozen=True)
class SentinelGroup:
    """What a ``sentinel://`` URL says: the sentinels' addresses, and the database, user and
    password of the master they name (taken from the first URL that gives them, as Celery
    does)."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelGroup:
    """Split ``sentinel://[:pw@]h1:26379/0;sentinel://h2:26379`` into a :class:`SentinelGroup`;
    :class:`~jobqueue.errors.ConfigError` names a part that is not a sentinel address."""
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        if not part.startswith(SENTINEL_SCHEMES):
            raise ConfigError(f"{part!r} in a Sentinel URL: every part must be sentinel://host:port")
        split = urlsplit(part)
        try:
            port = split.port or SENTINEL_PORT
        except ValueError as exc:
            raise ConfigError(f"{part!r} in a Sentinel URL: {exc}") from None
        if not split.hostname:
            raise ConfigError(f"{part!r} in a Sentinel URL names no host")
        sentinels.append((split.hostname, port))
        path = split.path.strip("/")
        if db is None and path:
            if not path.isdigit():
                raise ConfigError(f"{part!r} in a Sentinel URL: the database must be a number, got {path!r}")
            db = int(path)
        if password is None and split.password is not None:
            username, password = unquote(split.username or "") or None, unquote(split.password)
    if not sentinels:
        raise ConfigError(f"{url!r} names no sentinel")
    return SentinelGroup(tuple(sentinels), db or 0, username, password)
