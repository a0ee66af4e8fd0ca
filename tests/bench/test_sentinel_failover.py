"""The Redis Sentinel failover drill (bench/chaos/sentinel_failover.py), in full: one master,
one replica, three sentinels, two real workers and the real monitor, 300 jobs, the master
SIGKILLed a quarter of the way through while a client keeps submitting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import sentinel_failover
from bench.sentinels import SentinelGroup

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(300)]


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(down_after_ms=1000, failover_timeout_ms=3000, workdir=tmp_path / "redis").start()
    yield group
    group.stop()


def test_a_killed_sentinel_master_loses_no_submitted_job_and_everyone_follows_the_promoted_replica(
        sentinel_group: SentinelGroup, tmp_path: Path) -> None:
    # Given 2 workers, the monitor and a client on a Sentinel group, with 300 jobs in flight
    # When the master is SIGKILLed once a quarter of them finished (a client submitting meanwhile)
    result = sentinel_failover.run(sentinel_group, tmp_path, jobs=300, workers=2, timeout=150.0)
    print(result.line())
    # Then the replica was promoted, every job whose submit_job() returned succeeded exactly once,
    assert result.promoted is not None, result.line()
    assert result.jobs >= 300 and result.finished == result.jobs, result.line()
    assert result.duplicates == 0, result.line()
    # workers, monitor and clients were back within down-after-milliseconds + 10 s,
    assert result.recover is not None and result.recover <= result.bound, result.line()
    # and the monitor's final state matches the result backend field for field
    assert result.mismatches == [], "\n".join(result.mismatches[:20])
