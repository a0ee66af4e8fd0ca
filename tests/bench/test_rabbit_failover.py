"""The RabbitMQ cluster drill (bench/chaos/rabbit_failover.py), in full: three clustered RabbitMQ
nodes of the test's own (free ports, one Erlang cookie), quorum queues, two real workers, 300
jobs, the node every client connected to SIGKILLed a quarter of the way through while a client
keeps submitting. The machine's own RabbitMQ is not touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import rabbit_failover
from bench.rabbit_cluster import RabbitCluster

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(300)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RabbitCluster]:
    nodes = RabbitCluster(3, workdir=tmp_path / "rabbit").start()
    yield nodes
    nodes.stop()


def test_a_killed_rabbitmq_node_loses_no_job_runs_none_twice_and_workers_move_to_the_survivors(
        cluster: RabbitCluster, redis_url: str, tmp_path: Path) -> None:
    # Given 2 workers and a client on a 3-node cluster with quorum queues, 300 jobs in flight
    # When node A (every queue's leader, every connection's home) is SIGKILLed a quarter of the way
    result = rabbit_failover.run(cluster, tmp_path, redis_url, jobs=300, workers=2, kill=0, timeout=150.0)
    print(result.line())
    # Then every job whose submit_job() returned succeeded, none succeeded twice,
    assert result.jobs >= 300 and result.finished == result.jobs, result.line()
    assert result.duplicates == 0, result.line()
    # the workers answer again (connected to B or C) and clients submit again within 30 s,
    assert result.recover is not None and result.recover <= 30.0, result.line()
    # and the two survivors hold the queues as quorum queues, nothing dead-lettered
    survivors = cluster.running_nodes(via=1)
    assert survivors == set(cluster.names[1:]), survivors
    listing = cluster.ctl(1, "list_queues", "name", "type", "messages", "--no-table-headers", "--quiet")
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in listing.splitlines() if line.strip()}
    assert rows["simulation"][0] == "quorum" and rows["simulation.dead"] == ["quorum", "0"], listing
