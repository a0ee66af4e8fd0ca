"""Fair share between tenants: tenant B's 10 jobs behind tenant A's 1,000, with fair share and
with one FIFO queue per service, side by side.

Two fleets of real workers (``--workers`` each, one job at a time) on one private Redis: the
*fair* side (``JOBQUEUE_FAIR_SHARE`` on, the default: per-tenant queues taken in turns) on
database 0, the *FIFO* side (off: one queue per service) on database 1. Both are up for the
whole run and take turns, so a change of load on the machine hits them alike. On each side:

* **B alone**: tenant B submits 10 short jobs to an idle fleet; time from B's first submit
  to B's last result stored.
* **B behind A**: tenant A submits 1,000 short jobs (one ``submit_batch``), then B its 10; the
  same time for B, and A's 1,000 from its submit to its last result.
* **one tenant**: ``--solo`` no-op jobs of tenant A alone, ``--solo-turns`` times per side, the
  sides alternating turn by turn (a short run is at the mercy of the machine's load); jobs/s over
  all turns: what per-tenant queues and the fetch order cost when there is nothing to share.

The table gives the times, B's ratio behind A / alone (target: about 2x or less with fair
share; equal weights give B half the fleet) and the one-tenant throughput ratio.

    python -m bench.fair_share --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import states as celery_states

from bench.chaos.drill import Fleet, backend_states
from bench.common import RedisServer, bench_settings, fmt_table, wait_until
from jobqueue.client.batches import submit_batch
from jobqueue.client.jobs import submit_job
from jobqueue.transport.app import create_app

#: A short job: one step of 50 ms.
SHORT = {"steps": 1, "step_seconds": 0.05}


def _done_at(app: Any, ids: list[str], timeout: float) -> float:
    """Poll the result backend until every id has a final state; return when that happened."""
    remaining = list(ids)

    def all_done() -> bool:
        nonlocal remaining
        states = backend_states(app, remaining)
        remaining = [i for i, s in states.items() if s not in celery_states.READY_STATES]
        return not remaining

    wait_until(all_done, timeout, interval=0.02, what=f"{len(ids)} results")
    return time.perf_counter()


class Side:
    """One fleet and its client app."""

    def __init__(self, name: str, url: str, workdir: Path, workers: int, fair: bool) -> None:
        self.name = name
        self.settings = bench_settings(url, workdir, fair_share=fair)
        self.app = create_app(self.settings)
        self.fleet = Fleet(self.app, self.settings, workdir, size=workers)

    def warm_up(self) -> None:
        """One job of each tenant, not timed: the workers learn both tenant queues (a tenant's
        very first queue is found within the workers' refresh, 1 s; docs/architecture.md)."""
        ids = [submit_job("simulation", SHORT, tenant=t, app=self.app).id for t in ("a", "b")]
        _done_at(self.app, ids, 60)

    def b_alone(self, n: int) -> float:
        start = time.perf_counter()
        ids = [submit_job("simulation", dict(SHORT, output=f"b{i}"), tenant="b", app=self.app).id for i in range(n)]
        return _done_at(self.app, ids, 120) - start

    def b_behind_a(self, backlog: int, n: int) -> tuple[float, float]:
        start_a = time.perf_counter()
        a_ids = [h.id for h in submit_batch("simulation", SHORT, backlog, tenant="a", app=self.app)]
        start_b = time.perf_counter()
        b_ids = [submit_job("simulation", dict(SHORT, output=f"b{i}"), tenant="b", app=self.app).id for i in range(n)]
        b_time = _done_at(self.app, b_ids, 1800) - start_b
        a_time = _done_at(self.app, a_ids, 1800) - start_a
        return b_time, a_time

    def solo(self, n: int) -> float:
        """Seconds for ``n`` no-op jobs of tenant A alone."""
        start = time.perf_counter()
        ids = [h.id for h in submit_batch("simulation", {"steps": 0}, n, tenant="a", app=self.app)]
        return _done_at(self.app, ids, 600) - start

    def stop(self) -> None:
        self.fleet.stop()
        self.app.close()


def run(workers: int, backlog: int, b_jobs: int, rounds: int, solo: int, solo_turns: int) -> list[dict[str, Any]]:
    server = RedisServer().start()
    sides: list[Side] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fair-") as tmp:
            for db, (name, fair) in enumerate((("fair share", True), ("FIFO", False))):
                workdir = Path(tmp) / name.replace(" ", "-")
                workdir.mkdir()
                sides.append(Side(name, server.url(db), workdir, workers, fair))
            for side in sides:
                side.fleet.start_all()
                side.warm_up()
            results: dict[str, dict[str, list[float]]] = {s.name: {} for s in sides}
            for _ in range(rounds):
                for side in sides:
                    got = results[side.name]
                    got.setdefault("alone", []).append(side.b_alone(b_jobs))
                    behind, a_total = side.b_behind_a(backlog, b_jobs)
                    got.setdefault("behind", []).append(behind)
                    got.setdefault("a_total", []).append(a_total)
                    print(f"{side.name}: {({k: round(v[-1], 2) for k, v in got.items()})}", file=sys.stderr)
            for _ in range(solo_turns):
                for side in sides:
                    results[side.name].setdefault("solo", []).append(side.solo(solo))
            for side in sides:
                turns = results[side.name]["solo"]
                print(f"{side.name}: one tenant, jobs/s per turn {[round(solo / t) for t in turns]}", file=sys.stderr)
                results[side.name]["solo"] = [solo * len(turns) / sum(turns)]
    finally:
        for side in sides:
            side.stop()
        server.stop()
    return table(results, backlog, b_jobs)


def table(results: dict[str, dict[str, list[float]]], backlog: int, b_jobs: int) -> list[dict[str, Any]]:
    """The rows for docs/benchmarks.md (medians over the rounds)."""
    rows: list[dict[str, Any]] = []
    for name, got in results.items():
        alone, behind = statistics.median(got["alone"]), statistics.median(got["behind"])
        rows.append({"side": name, f"B's {b_jobs} alone (s)": round(alone, 2),
                     f"B's {b_jobs} behind A's {backlog} (s)": round(behind, 2),
                     "behind / alone": f"{behind / alone:.1f}x", f"A's {backlog} (s)": round(statistics.median(got["a_total"]), 1),
                     "one tenant (jobs/s)": round(got["solo"][0], 1)})
    solo_ratio = rows[0]["one tenant (jobs/s)"] / rows[1]["one tenant (jobs/s)"]
    rows.append({"side": "fair / FIFO", "one tenant (jobs/s)": f"{solo_ratio:.2f}x"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers per side (one job at a time each)")
    parser.add_argument("--backlog", type=int, default=1000, help="tenant A's jobs")
    parser.add_argument("--b-jobs", type=int, default=10, help="tenant B's jobs")
    parser.add_argument("--rounds", type=int, default=1, help="turns per side (medians reported)")
    parser.add_argument("--solo", type=int, default=200, help="no-op jobs of each one-tenant turn")
    parser.add_argument("--solo-turns", type=int, default=8, help="one-tenant turns per side")
    args = parser.parse_args(argv)
    rows = run(args.workers, args.backlog, args.b_jobs, args.rounds, args.solo, args.solo_turns)
    print(fmt_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
