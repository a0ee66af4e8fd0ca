"""The one way jobqueue opens a Redis client of its own on a broker or result-backend URL:
one server (``redis://``...) or the master of a Sentinel group (``sentinel://h1;sentinel://h2``).

Celery and kombu open their own connections (the broker transport, the result backend); the
clients here are jobqueue's others: the worker's orphan store and dead letters, the monitor's
queue listing, truth repair and dead-letter views. On Sentinel, :func:`redis_client` returns
redis-py's master client (:meth:`redis.sentinel.Sentinel.master_for`): every new connection
asks the sentinels where the master is, so after a failover the next command reaches the
promoted replica (a command in flight when the master died fails once, as on one server).

The master's name comes from :func:`master_name`: ``JOBQUEUE_REDIS_MASTER_NAME``, else the
``master_name`` of the ``JOBQUEUE_CELERY_CONFIG`` module's transport options (the same value
Celery's transport and backend use, so the two never disagree).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import redis
from redis.sentinel import MasterNotFoundError
from redis.sentinel import Sentinel as _Sentinel

from jobqueue.errors import ConfigError, SentinelUnreachable
from jobqueue.transport.redis_urls import is_sentinel_url, parse_sentinel_url

#: redis-py's Sentinel client (its constructor and methods carry no type hints).
Sentinel: Any = _Sentinel
#: The Celery settings that may carry Sentinel transport options.
OPTION_SETTINGS = ("broker_transport_options", "result_backend_transport_options")


def config_options(celery_config: str, setting: str) -> dict[str, Any]:
    """``setting`` (a transport-options dict) of the ``JOBQUEUE_CELERY_CONFIG`` module named
    ``celery_config`` ({} when there is none or it sets none)."""
    if not celery_config:
        return {}
    try:
        module = importlib.import_module(celery_config)
    except ImportError as exc:
        raise ConfigError(f"JOBQUEUE_CELERY_CONFIG={celery_config!r}: cannot import it ({exc})") from exc
    value = getattr(module, setting, None)
    return dict(value) if isinstance(value, Mapping) else {}


def master_name(settings: Any) -> str:
    """The Sentinel master's name: ``settings.redis_master_name``, else the config module's
    ``master_name`` (broker options first). Two different names there are refused: one name
    serves every client of jobqueue's own."""
    if settings.redis_master_name:
        return str(settings.redis_master_name)
    names = {str(name) for setting in OPTION_SETTINGS
             if (name := config_options(settings.celery_config, setting).get("master_name"))}
    if len(names) > 1:
        raise ConfigError(f"the JOBQUEUE_CELERY_CONFIG module names two Sentinel masters {sorted(names)}: "
                          "broker and result backend must follow one (or set JOBQUEUE_REDIS_MASTER_NAME)")
    return names.pop() if names else ""


def require_master_name(settings: Any) -> str:
    """:func:`master_name`, or a :class:`~jobqueue.errors.ConfigError` that says where to set
    it when the broker or result backend is a Sentinel group and no name is given."""
    name = master_name(settings)
    if not name:
        raise ConfigError(
            "a sentinel:// broker or result backend needs the name of the Redis master its sentinels "
            "watch: set JOBQUEUE_REDIS_MASTER_NAME (or master_name in broker_transport_options of the "
            "JOBQUEUE_CELERY_CONFIG module)")
    return name


def sentinel_kwargs(settings: Any) -> dict[str, Any]:
    """Connection options for the sentinels themselves (``sentinel_kwargs`` of the config
    module's broker transport options, e.g. their password)."""
    value = config_options(settings.celery_config, "broker_transport_options").get("sentinel_kwargs")
    return dict(value) if isinstance(value, Mapping) else {}


def redis_client(url: str, settings: Any, **kwargs: Any) -> redis.Redis:
    """A ``redis.Redis`` on the server ``url`` names, or on the current master of the Sentinel
    group it names (``kwargs``: redis-py connection options, e.g. ``socket_timeout``)."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    group = parse_sentinel_url(url)
    name = require_master_name(settings)
    timeouts: dict[str, Any] = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinel = Sentinel(list(group.sentinels), sentinel_kwargs={**timeouts, **sentinel_kwargs(settings)},
                        db=group.db, username=group.username, password=group.password, **kwargs)
    client: redis.Redis = sentinel.master_for(name)
    return client


def unreachable(url: str, settings: Any, exc: BaseException) -> SentinelUnreachable:
    """The :class:`~jobqueue.errors.SentinelUnreachable` to raise for redis-py's
    ``MasterNotFoundError`` on ``url``: which sentinels were asked, for which master."""
    tried = ", ".join(f"{h}:{p}" for h, p in parse_sentinel_url(url).sentinels)
    return SentinelUnreachable(f"no sentinel of {tried} answered with a master named {master_name(settings)!r} "
                               f"({exc}); check the addresses and JOBQUEUE_REDIS_MASTER_NAME (during a failover "
                               "this lasts until the sentinels promote a replica: try again)")


def check_sentinels(url: str, settings: Any, timeout: float = 3.0) -> tuple[str, int]:
    """The address of the master the sentinels of ``url`` name; raises
    :class:`~jobqueue.errors.SentinelUnreachable` saying which sentinels were tried when none
    answers or none knows the master (so a worker or monitor fails at start with that, not
    later with redis-py's ``No master found for ...``)."""
    group = parse_sentinel_url(url)
    name = require_master_name(settings)
    sentinel = Sentinel(list(group.sentinels), sentinel_kwargs={
        "socket_timeout": timeout, "socket_connect_timeout": timeout, **sentinel_kwargs(settings)})
    try:
        host, port = sentinel.discover_master(name)
    except MasterNotFoundError as exc:
        raise unreachable(url, settings, exc) from None
    finally:
        for conn in sentinel.sentinels:
            conn.close()
    return str(host), int(port)


def master_url(url: str, settings: Any, timeout: float = 3.0) -> str:
    """A ``redis://`` URL of the master the sentinels of ``url`` name now (with the group's
    database and password), for a reader that speaks to one server; ``url`` itself when it
    names one server. Ask again after every reconnect: the master moves on a failover."""
    if not is_sentinel_url(url):
        return url
    group = parse_sentinel_url(url)
    host, port = check_sentinels(url, settings, timeout)
    auth = ""
    if group.password is not None:
        auth = f"{quote(group.username or '', safe='')}:{quote(group.password, safe='')}@"
    return f"redis://{auth}{host}:{port}/{group.db}"
