"""Chaos drill: SIGKILL a random worker every few seconds while jobs run; nothing may be lost.

3+ real workers (``celery -A jobqueue worker -Q gpu<N>``) on a private Redis take
``--jobs`` simulation jobs from the shared ``simulation`` queue. Every ``--interval`` seconds
the drill SIGKILLs a random worker's whole process group (no goodbye, no ack, no restore) and
starts it again. At the end every job must have succeeded (read from the result backend).

Counted (see :mod:`bench.chaos.drill`): re-runs (a job started again because its worker
died) and duplicates (a job that ran to the end twice). Time to recover = from a kill to the
moment the last job that was running on the killed worker succeeded elsewhere (max over kills).

    python -m bench.chaos.kill_workers --jobs 300 --workers 3 --interval 3
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.chaos.drill import Fleet, Observer, backend_states, finished, summary_line
from bench.common import RedisServer, bench_settings
from jobqueue.client.jobs import submit_job
from jobqueue.transport.app import create_app


@dataclass
class Result:
    jobs: int
    finished: int
    reruns: int
    duplicates: int
    kills: int
    recover: float | None
    starts_seen: int
    seconds: float

    @property
    def lost(self) -> int:
        return self.jobs - self.finished

    def line(self) -> str:
        return summary_line("kill-workers", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, reruns=self.reruns, kills=self.kills,
                            starts_seen=self.starts_seen, seconds=round(self.seconds, 1))


def run(url: str, workdir: Path, *, jobs: int = 300, workers: int = 3, interval: float = 3.0,
        max_kills: int | None = None, steps: int = 3, step_seconds: float = 0.2,
        timeout: float = 600.0, seed: int | None = None) -> Result:
    """Run the drill against the Redis at ``url`` (a database nobody else uses)."""
    rng = random.Random(seed)
    settings = bench_settings(url, workdir)
    app = create_app(settings)
    observer = Observer(app).start()
    fleet = Fleet(app, settings, workdir, size=workers)
    recoveries: list[float] = []
    pending_recoveries: list[tuple[float, list[str]]] = []
    kills = 0
    started = time.monotonic()
    try:
        fleet.start_all()
        ids = [submit_job("simulation", {"steps": steps, "step_seconds": step_seconds}, app=app).id
               for _ in range(jobs)]
        done = 0
        next_kill = time.monotonic() + interval
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = backend_states(app, ids)
            done = sum(1 for s in states.values() if s == "SUCCESS")
            now = time.monotonic()
            for kill_at, victims in list(pending_recoveries):
                if all(states.get(v) == "SUCCESS" for v in victims):
                    recoveries.append(now - kill_at)
                    pending_recoveries.remove((kill_at, victims))
            if done >= jobs:
                break
            if now >= next_kill and (max_kills is None or kills < max_kills):
                gpu = fleet.random_gpu(rng)
                victims = [v for v in observer.running_on(fleet.node_name(gpu)) if v in states]
                fleet.kill(gpu, signal.SIGKILL)
                kills += 1
                kill_at = time.monotonic()
                if victims:
                    pending_recoveries.append((kill_at, victims))
                fleet.start(gpu, wait=False)
                next_kill = time.monotonic() + interval
            time.sleep(0.1)
        # Let late events (a duplicate would come after the last success) arrive.
        quiet_until = time.monotonic() + 2.0
        while time.monotonic() < quiet_until:
            time.sleep(0.1)
        counts = observer.counts()
        return Result(jobs=jobs, finished=finished(app, ids), reruns=counts["reruns"],
                      duplicates=counts["duplicates"], kills=kills,
                      recover=max(recoveries) if recoveries else None,
                      starts_seen=counts["starts_seen"], seconds=time.monotonic() - started)
    finally:
        observer.stop()
        fleet.stop()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-kill-"))
    server = RedisServer(appendonly=False).start()
    try:
        result = run(server.url(0), workdir, jobs=args.jobs, workers=args.workers,
                     interval=args.interval, seed=args.seed)
    finally:
        server.stop()
    print(result.line())
    print(f"(logs in {workdir})")
    return 0 if result.lost == 0 and result.duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
