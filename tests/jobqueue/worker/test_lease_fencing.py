"""Lease fencing: a worker that cannot renew its lease gives its jobs up, once per outage.

Unit level (a stub broker client and clock). The real path (a machine cut off from the broker
by a network namespace, its job finished exactly once elsewhere) is the partition drill:
tests/bench/test_partition.py.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from jobqueue.worker.lease import LeaseKeeper


class Broker:
    """A stub of the broker's ZADD that can be cut off."""

    def __init__(self) -> None:
        self.reachable = True
        self.writes = 0

    def zadd(self, key: str, mapping: dict[str, float], **_: Any) -> int:
        if not self.reachable:
            raise RedisConnectionError("Timeout connecting to server")
        self.writes += 1
        return len(mapping)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_that_cannot_be_renewed_for_lost_after_gives_the_jobs_up_once_per_outage() -> None:
    # Given a keeper holding one job, declaring the lease lost after 8 s without a renewal
    broker, clock, calls = Broker(), Clock(), []
    keeper = LeaseKeeper(broker, interval=2.0, tags=lambda: ["tag-1"], lost_after=8.0,
                         on_lost=lambda: calls.append(clock.now), clock=clock)
    keeper.round()
    assert broker.writes == 1 and not keeper.lost
    # When the broker is out of reach for less than lost_after
    broker.reachable = False
    for _ in range(3):
        clock.now += 2.0
        keeper.round()
    # Then nothing is given up yet
    assert calls == [] and not keeper.lost
    # When the outage reaches lost_after
    clock.now += 2.0
    keeper.round()
    clock.now += 2.0
    keeper.round()
    # Then the jobs are given up, once
    assert calls == [1008.0] and keeper.lost
    # When the link returns, renewals succeed and the lease is no longer lost
    broker.reachable = True
    clock.now += 2.0
    keeper.round()
    assert not keeper.lost and broker.writes == 2
    # And a second outage gives up again
    broker.reachable = False
    clock.now += 9.0
    keeper.round()
    assert calls == [1008.0, 1021.0]


def test_a_keeper_without_lost_after_never_gives_up() -> None:
    broker, clock, calls = Broker(), Clock(), []
    keeper = LeaseKeeper(broker, interval=2.0, tags=lambda: ["t"], on_lost=lambda: calls.append(1), clock=clock)
    broker.reachable = False
    clock.now += 3600
    keeper.round()
    assert calls == [] and not keeper.lost


def test_a_renewal_never_moves_a_lease_back(redis_client: Any) -> None:
    # Given a message whose lease a newer owner renewed later than this worker's clock says
    # (what a renewal delayed by a network cut looks like when it finally arrives)
    redis_client.zadd("unacked_index", {"tag-1": 4_000_000_000.0})
    keeper = LeaseKeeper(redis_client, interval=1.0, tags=lambda: ["tag-1", "acked-tag"])
    # When this worker renews
    keeper.renew()
    # Then the newer lease stands, and an acked message is not re-created
    assert redis_client.zscore("unacked_index", "tag-1") == 4_000_000_000.0
    assert redis_client.zscore("unacked_index", "acked-tag") is None


def test_a_job_given_up_and_handed_back_to_the_same_worker_runs_as_a_live_attempt(settings: Any) -> None:
    # Given a worker runtime that gave a job up after losing its lease
    from jobqueue.connectors import Job
    from jobqueue.worker.identity import WorkerIdentity
    from jobqueue.worker.runtime import WorkerRuntime

    runtime = WorkerRuntime(settings, WorkerIdentity.build(settings, ["gpu0"]))
    connector = runtime.connector("simulation")
    first = Job(id="j1", service="simulation", payload={})
    runtime.job_started(first, connector)
    runtime.give_up(["j1"])
    assert runtime.is_given_up("j1") and first.cancelled.is_set()
    runtime.job_finished(first, connector)
    # When the broker hands the same job to this worker again
    runtime.job_started(Job(id="j1", service="simulation", payload={}), connector)
    # Then that attempt is not given up
    assert not runtime.is_given_up("j1")
