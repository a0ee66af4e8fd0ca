"""The result backend's riders: writes stored in the same transaction as a job's next state."""

from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import exceptions as celery_exceptions
from celery import states as celery_states

from jobqueue.shared import job_record as facts
from jobqueue.transport.app import create_app
from jobqueue.transport.results import RedisBackend, backend_url
from jobqueue.up.embedded import free_port, redis_server_executable
from tests.helpers import wait_for


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of the caller's own, stopped on leaving: its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen([redis_server_executable(), "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", folder],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            wait_for(lambda: _answers(client), 20, what="the private redis-server")
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A redis-server of this module's own: the tests below count commands in INFO
    commandstats, which are server-wide, so no other test (or parallel test worker) may share it."""
    with redis_server() as url:
        yield url


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_url(private_redis: str) -> Iterator[str]:
    """This module's tests run on :func:`private_redis`, flushed before and after each."""
    client = redis.Redis.from_url(private_redis)
    client.flushdb()
    yield private_redis
    client.flushdb()
    client.close()


def _calls(client: Any, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_app_stores_results_through_the_riding_backend_on_the_same_redis(app, settings):
    assert isinstance(app.backend, RedisBackend)
    assert app.conf.result_backend == backend_url(settings.result_backend)
    assert app.backend.client.connection_pool.connection_kwargs["db"] == int(settings.result_backend.rsplit("/", 1)[1])


def test_redis_over_a_unix_socket_keeps_celerys_own_spelling():
    assert backend_url("redis+socket:///run/redis.sock") == "jobqueue.transport.results:RedisBackend+socket:///run/redis.sock"


def test_a_rider_lands_with_the_state_in_one_transaction(app, redis_client):
    # Given the end of an attempt queued to ride with the job's next state
    app.backend.ride_with_next_state(
        "j1", lambda pipe: facts.queue_write(pipe, "j1", {"finished_at": 12.5, "runtime": 0.5}, expires=60))
    execs = _calls(redis_client, "exec")
    # When Celery stores the result
    app.backend.store_result("j1", {"ok": True}, celery_states.SUCCESS)
    # Then the facts and the result were written by one MULTI/EXEC
    assert _calls(redis_client, "exec") == execs + 1
    assert facts.decode(redis_client.hgetall(facts.facts_key("j1"))) == {"finished_at": 12.5, "runtime": 0.5}
    assert app.AsyncResult("j1").result == {"ok": True}
    # And a later state carries nothing of it again
    app.backend.store_result("j2", {"ok": True}, celery_states.SUCCESS)
    assert redis_client.hget(facts.facts_key("j2"), "finished_at") is None


def test_a_rider_whose_state_is_never_stored_is_flushed_on_its_own(app, redis_client):
    app.backend.ride_with_next_state(
        "ignored", lambda pipe: facts.queue_write(pipe, "ignored", {"finished_at": 3.0}, expires=60))
    app.backend.flush_riders("ignored")
    assert facts.decode(redis_client.hgetall(facts.facts_key("ignored"))) == {"finished_at": 3.0}
    app.backend.flush_riders("ignored")  # nothing left: a second flush writes nothing
    assert app.backend._riders == {}


def test_a_failing_rider_never_costs_the_state(app, redis_client):
    # Given a rider whose command Redis refuses (a hash command on a string key)
    redis_client.set("not-a-hash", "x")
    app.backend.ride_with_next_state("j3", lambda pipe: pipe.hset("not-a-hash", "f", "v"))
    # When the state is stored, then it is, and the rider's error is only logged
    app.backend.store_result("j3", {"ok": 3}, celery_states.SUCCESS)
    assert app.AsyncResult("j3").result == {"ok": 3}


def test_a_state_is_stored_in_one_round_trip_and_never_over_a_success(app, redis_client):
    # Given a subscriber on the job's channel, as wait() is
    pubsub = redis_client.pubsub()
    pubsub.subscribe(app.backend.get_key_for_task("j4"))
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
    evals, multis = _calls(redis_client, "eval"), _calls(redis_client, "multi")
    # When a state is stored without riders: one EVAL, no transaction around it
    app.backend.store_result("j4", {"pid": 1}, celery_states.STARTED)
    assert (_calls(redis_client, "eval"), _calls(redis_client, "multi")) == (evals + 1, multis)
    # Then it is published as Celery publishes it
    message = pubsub.get_message(timeout=1.0)
    assert app.backend.decode(message["data"])["status"] == celery_states.STARTED
    # And once the job succeeded, a late state changes nothing (Celery's guard)
    app.backend.store_result("j4", {"ok": 4}, celery_states.SUCCESS)
    app.backend.store_result("j4", {"pid": 2}, celery_states.STARTED)
    assert app.AsyncResult("j4").state == celery_states.SUCCESS and app.AsyncResult("j4").result == {"ok": 4}
    pubsub.close()


def test_a_rider_gets_the_replies_to_its_own_commands(app, redis_client):
    got: list[list[Any]] = []
    app.backend.ride_with_next_state(
        "j5", lambda pipe: (pipe.incr("jq-count-j5"), pipe.get("jq-count-j5")), on_replies=got.append)
    app.backend.store_result("j5", {"pid": 1}, celery_states.STARTED)
    assert got == [[1, b"1"]]
    assert app.AsyncResult("j5").state == celery_states.STARTED


def test_a_job_whose_started_state_is_not_stored_starts_its_attempt_once_and_keeps_its_end(app, redis_client):
    # Given jobs run eagerly (Celery stores no STARTED state then, so nothing rides with it)
    from jobqueue.client.jobs import prepare_job
    from jobqueue.shared.names import RUN_JOB_TASK
    from jobqueue.worker.concerns import install

    install(app)  # the job task and its handlers, as a worker has them
    app.conf.task_store_eager_result = True
    ids = []
    for _ in range(2):  # the first builds the worker runtime; the second has it from the start
        kwargs, options = prepare_job("simulation", {"steps": 0}, is_redis=True)
        app.tasks[RUN_JOB_TASK].apply(kwargs=kwargs, task_id=options["task_id"])
        ids.append(options["task_id"])
    for job_id in ids:
        # Then each attempt was started once, and its end is kept (not cleared by a late start)
        assert redis_client.get(f"jobqueue-attempts-{job_id}") == b"1"
        known = facts.decode(redis_client.hgetall(facts.facts_key(job_id)))
        assert known["attempt"] == 0 and known["finished_at"] >= known["started_at"] and "runtime" in known
        assert app.AsyncResult(job_id).state == celery_states.SUCCESS
    assert app._jobqueue_started_early == {} and app.backend._riders == {}


def test_a_closed_apps_result_collected_after_its_server_is_gone_touches_no_connection(settings, monkeypatch):
    # Given an app on a redis-server of its own, subscribed to a job's result (a get() that
    # timed out keeps the subscription)
    with redis_server() as url:
        app = create_app(settings.model_copy(update={"broker_url": url, "result_backend": url}).resolved())
        result = app.AsyncResult("never-sent")
        with pytest.raises(celery_exceptions.TimeoutError):
            result.get(timeout=0.2)
        channel = app.backend.get_key_for_task("never-sent")
        server = redis.Redis.from_url(url)
        assert server.pubsub_numsub(channel) == [(channel, 1)]
        # When the app is closed, its server goes, and only then is the result collected
        app.close()
        assert server.pubsub_numsub(channel) == [(channel, 0)]
        server.close()
    raised: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", raised.append)
    del result
    gc.collect()
    # Then nothing tried to reach the server to unsubscribe (Celery's own consumer reconnects
    # from the finalizer, waits out redis-py's backoff and raises there)
    assert app.backend.result_consumer.closed
    assert raised == []
