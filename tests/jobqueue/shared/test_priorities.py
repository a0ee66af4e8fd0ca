"""Priorities are honoured by the broker, on Redis and on RabbitMQ.

Real brokers and real worker processes (threads pool, concurrency 1). The RabbitMQ cases keep
results in the test's Redis database and send their jobs to the worker's own queue
(``gpu0.<machine>``), which no other test shares; they fail, never skip, when RabbitMQ is down.
Execution order is read from the result backend (``date_done``): with one job at a time, the
order in which jobs finished is the order in which they ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from jobqueue import submit_job, submit_workflow
from jobqueue.config import Settings
from jobqueue.errors import SubmitError
from jobqueue.shared.routing import (
    BROKER_MAX_PRIORITY,
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    broker_priority,
    check_priority,
)
from jobqueue.transport.app import broker_transport_options, create_app
from jobqueue.transport.internals import REDIS_KEY_SEP, redis_queue_keys
from tests.conftest import RABBITMQ_URL
from tests.helpers import busy_worker, finished_order, quick


@dataclass
class Farm:
    """One broker, one real worker, and where to send jobs."""

    app: Any
    queue: str


@pytest.fixture(params=["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def farm(request: Any, settings: Settings, app: Any, start_worker: Any, machine_id: str) -> Iterator[Farm]:
    """A worker (concurrency 1) on Redis, or on RabbitMQ with results in the test's Redis."""
    queue = f"gpu0.{machine_id}"
    if request.param == "redis":
        start_worker("gpu0")
        yield Farm(app, queue)
        return
    rabbit_settings = settings.model_copy(update={"broker_url": RABBITMQ_URL})
    rabbit_app = create_app(rabbit_settings)
    try:
        with rabbit_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any connection failure means "RabbitMQ is down"
        pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ_URL}: {exc}")
    worker = start_worker("gpu0", wait=False, BROKER_URL=RABBITMQ_URL, RESULT_BACKEND=settings.result_backend)
    worker.wait_ready(rabbit_app)
    yield Farm(rabbit_app, queue)
    worker.stop()
    with rabbit_app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in (queue, f"machine.{machine_id}"):
            channel.queue_delete(name)
    rabbit_app.close()


# -- unit -----------------------------------------------------------------------------------


def test_caller_priorities_are_0_to_9_with_5_by_default():
    assert check_priority(None) == DEFAULT_PRIORITY == 5
    assert check_priority(0) == 0 and check_priority(9) == 9
    for bad in (-1, 10, 2.5, True, "5"):
        with pytest.raises(SubmitError):
            check_priority(bad)


def test_each_caller_priority_owns_two_broker_levels_in_the_brokers_own_order():
    # RabbitMQ takes the highest level first, Redis the lowest: both see the same ranking
    rabbit = [broker_priority(p, is_redis=False, continuation=c) for p in range(10) for c in (False, True)]
    redis = [broker_priority(p, is_redis=True, continuation=c) for p in range(10) for c in (False, True)]
    assert rabbit == list(range(BROKER_MAX_PRIORITY + 1))
    assert redis == list(range(BROKER_MAX_PRIORITY, -1, -1))
    # A continuation step outranks a first step of its priority, not one of the next priority
    assert broker_priority(4, is_redis=False) < broker_priority(4, is_redis=False, continuation=True) < broker_priority(
        5, is_redis=False
    )


def test_redis_keeps_one_list_per_broker_level(settings):
    options = broker_transport_options(settings)
    assert options["priority_steps"] == list(range(BROKER_MAX_PRIORITY + 1))
    assert options["queue_order_strategy"] == "priority"
    assert "sep" not in options
    assert REDIS_KEY_SEP == kombu_redis.Channel.sep
    assert redis_queue_keys("simulation")[:3] == ["simulation", f"simulation{REDIS_KEY_SEP}1", f"simulation{REDIS_KEY_SEP}2"]
    assert len(redis_queue_keys("simulation")) == 2 * (MAX_PRIORITY + 1)


def test_every_priority_lands_in_its_own_redis_list(app, redis_client):
    # When one job of each priority is submitted (no worker)
    for priority in range(MAX_PRIORITY + 1):
        submit_job("simulation", quick(priority), priority=priority, app=app)
    # Then each sits in the list of its broker level: kombu did not clamp them to 0..9
    for priority in range(MAX_PRIORITY + 1):
        key = redis_queue_keys("simulation")[broker_priority(priority, is_redis=True)]
        assert redis_client.llen(key) == 1, (priority, key)


def test_a_message_without_priority_gets_the_default_one(app):
    assert app.conf.task_default_priority == broker_priority(DEFAULT_PRIORITY, is_redis=True)
    assert app.conf.task_queue_max_priority == BROKER_MAX_PRIORITY


# -- acceptance, real worker, Redis and RabbitMQ --------------------------------------------

#: Seconds the blocker would run: it holds the worker until the test has submitted everything
#: and cancels it (a timed blocker could end first on a loaded machine).
HELD = 60.0


def test_a_high_priority_job_overtakes_twenty_low_priority_ones(farm):
    # Given a busy worker and 20 low-priority jobs waiting
    blocker = busy_worker(farm.app, farm.queue, seconds=HELD)
    low = [submit_job("simulation", quick(f"low{i}"), priority=0, queue=farm.queue, app=farm.app) for i in range(20)]
    # When a high-priority job is submitted behind them (and the worker is freed)
    high = submit_job("simulation", quick("high"), priority=9, queue=farm.queue, app=farm.app)
    assert blocker.cancel()
    for job in [*low, high]:
        job.wait(timeout=90)
    # Then it runs within the next two jobs, and the low ones keep their order
    order = finished_order(farm.app, [job.id for job in [*low, high]])
    assert order.index("high") <= 1, order
    assert [o for o in order if o != "high"] == [f"low{i}" for i in range(20)]


def test_priorities_order_waiting_jobs_most_urgent_first(farm):
    # Given a busy worker
    blocker = busy_worker(farm.app, farm.queue, seconds=HELD)
    # When jobs of priority 2, 8, 5, 0, 9 are waiting (and the worker is freed)
    jobs = [submit_job("simulation", quick(p), priority=p, queue=farm.queue, app=farm.app) for p in (2, 8, 5, 0, 9)]
    assert blocker.cancel()
    for job in jobs:
        job.wait(timeout=60)
    # Then they run from the most urgent to the least
    assert finished_order(farm.app, [job.id for job in jobs]) == [9, 8, 5, 2, 0]


def test_an_earlier_workflow_finishes_before_a_later_one_starts_on_either_broker(farm):
    # Given a busy worker
    blocker = busy_worker(farm.app, farm.queue, seconds=HELD)
    # When workflow A (3 steps) and then workflow B (3 steps) are submitted at the same priority
    a = submit_workflow([("simulation", quick(f"A{n}")) for n in (1, 2, 3)], queue=farm.queue, app=farm.app)
    b = submit_workflow([("simulation", quick(f"B{n}")) for n in (1, 2, 3)], queue=farm.queue, app=farm.app)
    assert blocker.cancel()
    a.wait(timeout=60)
    b.wait(timeout=60)
    # Then A's continuation steps run before B's first step
    assert finished_order(farm.app, [s.id for s in a.steps + b.steps]) == ["A1", "A2", "A3", "B1", "B2", "B3"]


def test_a_more_urgent_workflow_overtakes_a_started_one(farm):
    # Given a busy worker, a normal workflow A waiting, then an urgent workflow U
    blocker = busy_worker(farm.app, farm.queue, seconds=HELD)
    a = submit_workflow([("simulation", quick(f"A{n}")) for n in (1, 2)], priority=3, queue=farm.queue, app=farm.app)
    u = submit_workflow([("simulation", quick(f"U{n}")) for n in (1, 2)], priority=8, queue=farm.queue, app=farm.app)
    assert blocker.cancel()
    a.wait(timeout=60)
    u.wait(timeout=60)
    # Then the urgent workflow runs first and whole, priority beats the continuation bonus
    assert finished_order(farm.app, [s.id for s in u.steps + a.steps]) == ["U1", "U2", "A1", "A2"]
