"""Short forms of the chaos drills (bench/chaos) and of the ingestion harness.

Each drill starts its own ``redis-server`` on a free port, real worker processes and, where it
matters, the real monitor and ComfyUI simulator, exactly as ``python -m bench.chaos.<drill>``
does, only with fewer jobs. Timing *targets* live in docs/benchmarks.md; what these tests
assert is the functional promise: nothing lost, state equal, recovery within the stated bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import freeze_comfyui, kill_monitor, kill_workers, restart_redis
from bench.common import RedisServer
from bench.ingest import BaselineConsumer, run_step

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A private redis-server (appendonly, so it can be restarted without losing data)."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


def test_killing_random_workers_mid_run_loses_no_job(private_redis: RedisServer, tmp_path: Path) -> None:
    # Given 3 real workers and 24 jobs
    # When a random worker is SIGKILLed (and restarted) every 2 s, 3 times
    result = kill_workers.run(private_redis.url(0), tmp_path, jobs=24, workers=3, interval=2.0, max_kills=3,
                              seed=7)
    # Then every job succeeded, after the kills really happened
    print(result.line())
    assert result.kills == 3
    assert result.finished == result.jobs == 24, result.line()
    assert result.starts_seen >= result.jobs


def test_a_redis_restart_mid_run_is_survived_and_everyone_reconnects_within_ten_seconds(
        private_redis: RedisServer, tmp_path: Path) -> None:
    # Given 2 workers and the monitor on a Redis with appendonly, running 16 jobs
    # When Redis is SIGKILLed a quarter of the way through and restarted 2 s later
    result = restart_redis.run(private_redis, tmp_path, jobs=16, workers=2, down=2.0, timeout=90.0)
    print(result.line())
    # Then every job succeeded, the monitor shows them all completed, and workers and monitor
    # were back within 10 s
    assert result.finished == result.jobs == 16, result.line()
    assert result.monitor_completed == 16, result.line()
    assert result.workers_back is not None and result.workers_back <= 10.0, result.line()
    assert result.monitor_back is not None and result.monitor_back <= 10.0, result.line()


def test_a_monitor_killed_and_restarted_mid_run_ends_equal_to_one_that_never_died(
        private_redis: RedisServer, tmp_path: Path) -> None:
    # Given two monitors on the same broker, 2 workers and 16 jobs
    # When one monitor is SIGKILLed a third of the way through and restarted 2 s later
    result = kill_monitor.run(private_redis.url(0), tmp_path, jobs=16, workers=2, down=2.0)
    print(result.line())
    # Then both show the same jobs and workers, every job completed
    assert result.finished == result.jobs == 16, result.line()
    assert result.mismatches == [], "\n".join(result.mismatches[:10])
    assert result.recover is not None


def test_a_frozen_then_killed_comfyui_moves_its_job_to_a_healthy_worker(
        private_redis: RedisServer, tmp_path: Path) -> None:
    # Given 3 workers, each with its own simulated ComfyUI, and 6 jobs
    # When worker 0's ComfyUI is frozen (SIGSTOP) mid-job, then SIGKILLed
    result = freeze_comfyui.run(private_redis.url(0), tmp_path, jobs=6, workers=3, stall=3.0, kill_after=2.0,
                                steps=10, delay=0.1, timeout=90.0)
    print(result.line())
    # Then every job succeeded and the frozen job finished on another worker
    assert result.finished == result.jobs == 6, result.line()
    assert result.moved >= 1 and result.finished_on_frozen == 0, result.line()


def test_the_ingestion_harness_counts_every_event_for_our_collector_and_the_bare_receiver() -> None:
    # Given our collector (SQLite store) and Celery's bare receiver on a fresh Redis
    # When 3,000 pre-encoded events are offered at 1,500/s
    rows = run_step(1500, 3000, ["jobqueue", "bare"], verbose=False)
    by_consumer = {row["consumer"]: row for row in rows}
    # Then both kept every one of them
    assert by_consumer["jobqueue"]["kept"] == 3000, rows
    assert by_consumer["bare"]["kept"] == 3000, rows



def test_the_ingestion_harness_runs_a_monitor_from_another_tree_beside_ours_on_a_plain_apps_tasks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given our collector and one run from a source tree given by path (this one, standing in
    # for a worktree of an older commit), offered a plain Celery app's tasks with their args
    monkeypatch.setattr(BaselineConsumer, "tree", Path(__file__).resolve().parents[2])
    # When 3,000 events are offered at 1,500/s
    # (a writer batch of these heavier events can take longer than the default settle on a
    # loaded machine: the counts move once per batch)
    rows = run_step(1500, 3000, ["jobqueue-base", "jobqueue"], verbose=False, mix="plain", settle=60.0)
    by_consumer = {row["consumer"]: row for row in rows}
    # Then both kept every one of them, and their memory was sampled
    assert by_consumer["jobqueue-base"]["kept"] == by_consumer["jobqueue"]["kept"] == 3000, rows
    assert all(row["rss peak MB"] > 0 for row in rows), rows

def test_a_frozen_then_killed_webui_moves_its_a1111_job_to_a_healthy_worker(
        private_redis: RedisServer, tmp_path: Path) -> None:
    # Given 3 workers, each with its own simulated Stable Diffusion WebUI, and 6 txt2img jobs
    # When worker 0's WebUI is frozen (SIGSTOP) mid-job, then SIGKILLed
    result = freeze_comfyui.run(private_redis.url(0), tmp_path, jobs=6, workers=3, stall=3.0, kill_after=2.0,
                                steps=10, delay=0.1, timeout=90.0, service="a1111")
    print(result.line())
    # Then every job succeeded and the frozen job finished on another worker
    assert result.line().startswith("freeze-a1111: jobs=6 finished=6 lost=0 duplicates=0"), result.line()
    assert result.moved >= 1 and result.finished_on_frozen == 0, result.line()
