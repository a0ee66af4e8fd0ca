"""The orphan book in Redis: what a predecessor left is found, changes are written through,
and Redis is read once per process, not once per job."""

from __future__ import annotations

import json
from typing import Any

import redis

from jobqueue.connectors.orphans import OrphanBook
from jobqueue.shared.records import orphan_book_key


class CountingRedis:
    """A real Redis client that counts HGETALL calls."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.reads = 0

    def hgetall(self, key: str) -> Any:
        self.reads += 1
        return self.client.hgetall(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_predecessors_prompt_is_found_and_redis_is_read_only_once(redis_client):
    # Given a book in Redis holding a prompt a killed predecessor left behind
    key = orphan_book_key("gpu0@m1", "comfyui")
    redis_client.hset(key, "old", json.dumps({"job_id": "j0"}))
    counting = CountingRedis(redis_client)
    book = OrphanBook(counting, key)
    # When this process asks three times, adding and striking out its own prompts in between
    first = book.entries()
    book.add("mine", job_id="j1")
    second = book.entries()
    book.discard("old")
    book.discard("mine")
    third = book.entries()
    # Then it sees the predecessor's prompt and its own, and Redis was read once
    assert set(first) == {"old"} and first["old"]["job_id"] == "j0"
    assert set(second) == {"old", "mine"}
    assert third == {}
    assert counting.reads == 1


def test_a_strike_out_reaches_redis_with_the_next_write_or_a_flush(redis_client):
    # Given a book holding two prompts in Redis
    key = orphan_book_key("gpu2@m1", "comfyui")
    book = OrphanBook(redis_client, key)
    book.add("a", job_id="ja")
    book.add("b", job_id="jb")
    # When "a" is struck out, it is gone from the book at once and from Redis with the next write
    book.discard("a")
    assert set(book.entries()) == {"b"}
    book.add("c", job_id="jc")
    assert set(redis_client.hkeys(key)) == {b"b", b"c"}
    # And a flush deletes what was struck out since, without another write
    book.discard("b")
    book.discard("c")
    book.flush()
    assert redis_client.hgetall(key) == {}


def test_a_failed_first_read_is_retried_on_the_next_call(redis_client):
    # Given a book whose Redis fails the first read
    key = orphan_book_key("gpu1@m1", "comfyui")
    redis_client.hset(key, "old", json.dumps({}))

    class FlakyOnce(CountingRedis):
        def hgetall(self, key: str) -> Any:
            self.reads += 1
            if self.reads == 1:
                raise redis.ConnectionError("down")
            return self.client.hgetall(key)

    book = OrphanBook(FlakyOnce(redis_client), key)
    # When it is asked twice
    # Then the first answer holds only what this process wrote, the second what Redis holds
    assert book.entries() == {}
    assert set(book.entries()) == {"old"}
