"""Chaos drill: SIGKILL one node of a 3-node RabbitMQ cluster mid-run; quorum queues keep every job.

The drill starts three clustered RabbitMQ nodes on free ports (:class:`bench.rabbit_cluster.RabbitCluster`),
two real workers and a client on all three (kombu's failover URL ``amqp://A;amqp://B;amqp://C``,
``JOBQUEUE_RABBITMQ_QUEUE_TYPE=quorum``, publisher confirms), results in Redis, submits ``--jobs``
simulation jobs, and once a quarter of them finished SIGKILLs node A -- the node every client
connected to first, so the leader of every queue and the home of every connection -- while a
client keeps submitting one job every 0.1 s. Measured, from the kill:

* ``workers_back``: every worker answers a ping again (it reconnected to B or C and consumes);
  ``clients_back``: a client's ``submit_job()`` returns again (the first success after the last
  failure); ``recover``: the later of the two;
* ``lost``: jobs whose ``submit_job()`` returned and that never succeeded (result backend);
  ``duplicates``: jobs that succeeded twice (two ``task-succeeded`` events, seen by an observer
  connected to node C, which survives); ``reruns``: jobs started twice (a job whose worker's
  connection died with node A before its ack is delivered again: the work is repeated, and
  dropped at start when it had already succeeded);
* ``refused``: submits that raised while the client failed over (nothing was sent for them).

    python -m bench.chaos.rabbit_failover --jobs 300
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos.drill import Fleet, Observer, finished, summary_line
from bench.chaos.restart_redis import _workers_back
from bench.chaos.sentinel_failover import PAYLOAD, Prober
from bench.common import bench_settings, wait_until
from bench.rabbit_cluster import RabbitCluster
from jobqueue.client.jobs import submit_job
from jobqueue.transport.app import create_app

log = logging.getLogger(__name__)


@dataclass
class Result:
    jobs: int
    refused: int
    finished: int
    duplicates: int
    reruns: int
    workers_back: float | None
    clients_back: float | None
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.jobs - self.finished

    @property
    def recover(self) -> float | None:
        times = [self.workers_back, self.clients_back]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "never" if v is None else f"{v:.1f}s"

        return summary_line("rabbit-failover", jobs=self.jobs, finished=self.finished, duplicates=self.duplicates,
                            recover=self.recover, refused=self.refused, reruns=self.reruns,
                            workers_back=f(self.workers_back), clients_back=f(self.clients_back),
                            seconds=round(self.seconds, 1))


def _succeeded(app: Any, ids: list[str]) -> int:
    try:
        return finished(app, ids)
    except Exception as exc:  # the backend is Redis and stays up; a read error is "not yet"
        log.warning("could not read the jobs' states: %r", exc)
        return -1


def run(cluster: RabbitCluster, workdir: Path, result_backend: str, *, jobs: int = 300, workers: int = 2,
        kill: int = 0, timeout: float = 180.0, step_seconds: float = PAYLOAD["step_seconds"]) -> Result:
    """Run the drill on a started ``cluster``, killing node ``kill``; each job is 2 steps of
    ``step_seconds``."""
    payload = {**PAYLOAD, "step_seconds": step_seconds}
    settings = bench_settings(cluster.urls(), workdir, result_backend=result_backend, rabbitmq_queue_type="quorum")
    # The observer and the pinger start on a node that survives, so they see the whole switch.
    survivor = (kill + len(cluster.names) - 1) % len(cluster.names)
    watch = create_app(settings.model_copy(update={"broker_url": cluster.url(survivor)}))
    app = create_app(settings)
    fleet = Fleet(app, settings, workdir, size=workers)
    observer = Observer(watch).start()
    prober: Prober | None = None
    started = time.monotonic()
    try:
        fleet.start_all()
        ids = [submit_job("simulation", dict(payload), app=app).id for _ in range(jobs)]
        wait_until(lambda: _succeeded(app, ids) >= jobs // 4, timeout, interval=0.1, what="a quarter of the jobs")
        prober = Prober(create_app(settings)).start()
        killed_at = cluster.kill(kill)
        with ThreadPoolExecutor(1) as pool:
            workers_back = pool.submit(_workers_back, watch, fleet, killed_at, 90.0)
            wait_until(lambda: prober.back_after(killed_at) is not None, 90.0, interval=0.1, what="a client")
            clients_back = prober.back_after(killed_at)
            back = workers_back.result()
        time.sleep(1.0)  # the prober keeps submitting on the survivors for a moment (load, not sync)
        prober.stop()
        accepted = ids + prober.accepted
        try:
            wait_until(lambda: _succeeded(app, accepted) == len(accepted), timeout, interval=0.2,
                       what="every accepted job to succeed")
        except TimeoutError:
            pass
        counts = observer.counts()
        return Result(jobs=len(accepted), refused=len(prober.failures), finished=max(0, _succeeded(app, accepted)),
                      duplicates=counts["duplicates"], reruns=counts["reruns"], workers_back=back,
                      clients_back=clients_back, seconds=time.monotonic() - started)
    finally:
        if prober is not None:
            prober.stop()
            prober.app.close()
        observer.stop()
        fleet.stop()
        app.close()
        watch.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="redis://127.0.0.1:6379/0", help="result backend (Redis)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for every job to finish")
    parser.add_argument("--step-seconds", type=float, default=PAYLOAD["step_seconds"],
                        help="each job's 2 steps (longer: jobs still running at the kill)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-rabbit-"))
    cluster = RabbitCluster(3, workdir=workdir / "rabbit").start()
    try:
        result = run(cluster, workdir, args.backend, jobs=args.jobs, workers=args.workers, timeout=args.timeout,
                     step_seconds=args.step_seconds)
    finally:
        cluster.stop()
    print(result.line())
    print(f"(logs in {workdir})")
    return 0 if result.lost == 0 and result.duplicates == 0 and result.recover is not None else 1


if __name__ == "__main__":
    sys.exit(main())
