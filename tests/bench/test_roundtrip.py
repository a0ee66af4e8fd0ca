"""Short form of bench/roundtrip.py: both sides run side by side and every job comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import roundtrip
from bench.common import RedisServer

pytestmark = pytest.mark.timeout(240)


def test_the_round_trip_bench_times_both_sides_and_counts_their_redis_commands(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        rows, calls = roundtrip.run(server.url(0), tmp_path, jobs=5, count_jobs=3)
    finally:
        server.stop()
    assert [row["jobs"] for row in rows] == [5, 5]
    assert all(0 < row["p50 ms"] <= row["p99 ms"] < 30_000 for row in rows)
    # (each side publishes every result on its pub/sub channel: at least one publish per job)
    assert all(calls[side].get("publish", 0) >= 1 for side in ("jobqueue", "plain")), calls
