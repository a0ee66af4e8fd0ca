"""One rule says which broker/backend URLs are Redis."""

from __future__ import annotations

from jobqueue.config import default_result_backend
from jobqueue.transport.redis_urls import is_redis_url


def test_tcp_tls_and_unix_socket_redis_urls_are_redis():
    assert all(is_redis_url(url) for url in (
        "redis://127.0.0.1:6379/0", "rediss://cache:6380/1", "redis+socket:///tmp/redis.sock"))


def test_a_sentinel_group_is_redis_too():
    assert is_redis_url("sentinel://h1:26379/0;sentinel://h2:26379/0") and is_redis_url("sentinel://h:26379")


def test_rabbitmq_and_non_strings_are_not_redis():
    assert not any(is_redis_url(url) for url in ("amqp://guest@localhost//", "", None))


def test_a_sentinel_broker_keeps_its_results_in_the_same_sentinel_group():
    assert default_result_backend("sentinel://h1:26379/0;sentinel://h2:26379/0") == \
        "sentinel://h1:26379/0;sentinel://h2:26379/0"


def test_a_redis_broker_keeps_its_results_in_the_same_redis_and_rabbitmq_does_not():
    assert default_result_backend("redis+socket:///tmp/r.sock") == "redis+socket:///tmp/r.sock"
    assert not default_result_backend("amqp://guest@localhost//").startswith("amqp")
