"""The standby-monitor drill (bench/chaos/standby_monitor.py), in full: two monitors on one
PostgreSQL store (a database of its own), two real workers, 500 jobs, the writing monitor
SIGKILLed a quarter of the way through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import standby_monitor
from bench.common import RedisServer
from tests.monitor.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_the_standby_monitor_writes_within_ten_seconds_of_the_leaders_kill_and_ends_with_every_job_right(
        private_redis: RedisServer, tmp_path: Path) -> None:
    # Given two monitors on one PostgreSQL store (one leads), 2 workers, a dashboard on each, 500 jobs
    with standby_monitor.fresh_database(PG_ADMIN_URL) as pg:
        # When the leader is SIGKILLed once a quarter of the jobs finished
        result = standby_monitor.run(private_redis.url(0), pg, tmp_path, jobs=500, workers=2, lease=3.0,
                                     timeout=150.0)
    print(result.line())
    # Then the standby took the lease and wrote within 10 s,
    assert result.takeover is not None and result.first_write is not None, result.line()
    assert result.first_write <= 10.0, result.line()
    # every job succeeded once and the store shows each one as the result backend does,
    assert result.finished == result.jobs == 500 and result.duplicates == 0, result.line()
    assert result.mismatches == [], "\n".join(result.mismatches[:20])
    # and dashboards on either monitor got live changes: the standby's before and after the
    # kill, the killed monitor's once it reconnected to the survivor
    assert result.live["standby_deltas_before"] > 0, result.line()
    assert result.live["standby_deltas_after"] > 0 and result.live["moved_deltas_after"] > 0, result.line()


def test_a_paused_leader_loses_the_lease_and_once_resumed_stands_by_without_writing_anything_wrong(
        private_redis: RedisServer, tmp_path: Path) -> None:
    # Given two monitors on one PostgreSQL store, 2 workers and 200 jobs
    with standby_monitor.fresh_database(PG_ADMIN_URL) as pg:
        # When the leader is SIGSTOPped a quarter of the way through, and SIGCONTed after the take-over
        result = standby_monitor.run(private_redis.url(0), pg, tmp_path, jobs=200, workers=2, lease=3.0,
                                     timeout=150.0, pause=True)
    print(result.line())
    # Then the standby took over (bounded by PostgreSQL ending the paused leader's open
    # transaction, docs/deployment.md), the resumed leader found itself a standby,
    assert result.takeover is not None and result.first_write is not None, result.line()
    assert result.old_role == "standby", result.line()
    # and every job ended right in the store
    assert result.finished == result.jobs == 200 and result.duplicates == 0, result.line()
    assert result.mismatches == [], "\n".join(result.mismatches[:20])
