"""The monitor's apply path alone: CPU time per event, in one process, no broker.

The event mix of :mod:`bench.ingest` (50 workers, 15 events a job) is decoded, checked and
applied exactly as the monitor's writer thread does it (the collector's raw decoder and event
gate, :meth:`monitor.ingest.writer.Writer._apply_batch`, the metric totals, a SQLite store),
in batches of the writer's size, and the process CPU time it took is divided by the events.
CPU time, not wall time: on a shared machine it is what another process's load changes least.
To compare two trees, run it in each, taking turns:

    PYTHONPATH=. python -m bench.writer_cost --events 60000 --rounds 3

``--workers 2 --progress-steps 0 --batch 35`` gives the shape of ``bench.throughput``'s stream
instead (two workers, no-op jobs, about 5 jobs per transaction as its writer takes them at
~500 jobs/s with a 10 ms interval): there the work paid once per transaction dominates.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from typing import Any


def offline_writer(prefix: str, batch: int) -> tuple[Any, Any, Any]:
    """A store on a new SQLite file (a temporary directory named ``prefix``...), its writer (not
    started: the caller applies batches itself) and a collector that only lends its decoder."""
    from jobqueue.config import Settings
    from monitor.ingest.collector import EventCollector
    from monitor.ingest.hub import ChangeHub
    from monitor.ingest.writer import Writer
    from monitor.metrics.totals import Totals
    from monitor.store import Store
    from monitor.web.broker import monitor_celery_app

    url = "redis://127.0.0.1:1/0"  # never connected
    db = f"sqlite:///{tempfile.mkdtemp(prefix=prefix)}/monitor.db"
    settings = Settings(broker_url=url, result_backend=url, monitor_db=db, monitor_keep_jobs=10_000_000).resolved()
    store = Store.from_settings(settings)
    writer = Writer(store, ChangeHub(), totals=Totals(store), max_batch=batch)
    return store, writer, EventCollector(monitor_celery_app(settings), writer)


def run(events: int, batch: int, workers: int = 50, progress_steps: int = 10) -> dict[str, Any]:
    """One store, ``events`` events applied in batches of ``batch``: CPU µs per event and ms per job."""
    from sqlalchemy import text

    from bench.events_mix import build_stream

    store, writer, collector = offline_writer("bench-writer-", batch)
    stream = build_stream(events, 12000, time.time(), db=0, workers=workers, progress_steps=progress_steps)
    raws = [body for _, body in stream.messages]
    started = time.process_time()
    for first in range(0, len(raws), batch):
        writer._apply_batch([ev for raw in raws[first:first + batch] for ev in collector._decode(raw)])
    cpu = time.process_time() - started
    with store.read() as session:
        final = session.execute(text("SELECT count(*) FROM jobs WHERE status = 'completed'")).scalar_one()
    store.close()
    return {"events": events, "cpu s": round(cpu, 2), "cpu µs/event": round(cpu * 1e6 / events, 1),
            "cpu ms/job": round(cpu * 1e3 / max(1, stream.jobs), 3), "transactions": -(-len(raws) // batch),
            "completed jobs": final, "coalesced": writer.counts["coalesced"],
            "max rss MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=20_000, help="the writer's max_batch (its MAX_BATCH)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=50, help="simulated workers in the stream")
    parser.add_argument("--progress-steps", type=int, default=10, help="progress events per job")
    args = parser.parse_args(argv)
    for i in range(args.rounds):
        row = run(args.events, args.batch, args.workers, args.progress_steps)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
