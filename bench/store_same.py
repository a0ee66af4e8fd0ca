"""The same event stream leaves the same store: a dump to compare two trees' apply paths.

A deterministic stream (:func:`bench.events_mix.build_stream` with seeded job ids, a fixed pid and
a given start time) goes through the writer's apply path as :mod:`bench.writer_cost` runs it, then
every table the writer fills is dumped, row for row, as JSON: jobs, timeline rows, workers,
connectors, machines, the change log (every change's data and tenant), the metric totals, the
hourly history, the service medians, and which JSON columns hold SQL NULL (not JSON ``null``).
``--repair`` then applies, in batches, one truth-repair ``job-truth`` event per job (as repair
sends for every job changed since its last pass): most agree with the store, every 7th says the
job failed, every 11th moves its worker and runtime. The clock is stopped at the stream's start
(``time.time`` patched for the run), so the monitor's own times are the same too. Run it in both
trees and compare the files:

    PYTHONPATH=. python -m bench.store_same --events 15000 --out /tmp/a.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from typing import Any
from unittest import mock

#: The tables compared and the columns that order their rows.
TABLES = {"jobs": "id", "job_events": "id", "workers": "name", "connectors": "worker, service",
          "machines": "id", "changes": "seq", "metric_totals": "name, labels",
          "stats_hourly": "hour, service, status", "service_stats": "service", "counters": "name"}


def dump(events: int, start: float, batch: int, repair: bool = False) -> dict[str, Any]:
    """Apply the stream to a new SQLite store; every row of :data:`TABLES` as plain values."""
    from sqlalchemy import text

    from bench.events_mix import build_stream
    from bench.writer_cost import offline_writer

    store, writer, collector = offline_writer("bench-same-", batch)
    seeded = random.Random(30)
    with mock.patch("bench.events_mix.uuid.uuid4", lambda: uuid.UUID(int=seeded.getrandbits(128))), \
            mock.patch("bench.events_mix.os.getpid", lambda: 4242):
        raws = [body for _, body in build_stream(events, 12000, start, db=0).messages]
    received = start + 1.0
    with mock.patch("time.time", lambda: received):
        for first in range(0, len(raws), batch):
            writer._apply_batch([ev for raw in raws[first:first + batch] for ev in _decode(collector, raw, received)])
        if repair:
            truths = _truths(store, received)
            for first in range(0, len(truths), batch):
                writer._apply_batch(truths[first:first + batch])
    out: dict[str, Any] = {}
    with store.read() as session:
        for table, order in TABLES.items():
            rows = [dict(r._mapping) for r in session.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))]
            out[table] = [_row(table, r) for r in rows]
    store.close()
    out["counts"] = dict(writer.counts)
    return out


def _decode(collector: Any, raw: bytes, received: float) -> list[dict[str, Any]]:
    """The collector's raw decoder (:meth:`EventCollector._decode`) with the receipt time
    fixed (Celery stamps ``local_received`` with a clock bound when it was imported)."""
    events = collector._decoder.decode(raw)
    for ev in events:
        ev["local_received"] = received
    return [ev for ev in events if collector.gate.allows(ev, received)]


def _truths(store: Any, now: float) -> list[dict[str, Any]]:
    """One ``job-truth`` event per stored job, in id order: the job's own values, except every
    7th (failed, with an error) and every 11th (another worker and runtime)."""
    from sqlalchemy import text

    with store.read() as session:
        rows = session.execute(text("SELECT id, status, worker, runtime, finished_at FROM jobs ORDER BY id")).all()
    out: list[dict[str, Any]] = []
    for n, (job_id, status, worker, runtime, finished_at) in enumerate(rows):
        fields: dict[str, Any] = {"worker": worker, "runtime": runtime, "finished_at": finished_at}
        if n % 7 == 0:
            status, fields["error"] = "failed", {"type": "ValueError", "message": f"bad {n}"}
        if n % 11 == 0:
            fields["worker"], fields["runtime"] = f"gpu9@repair-{n % 3}", float(n % 5)
        out.append({"type": "job-truth", "source": "repair", "uuid": job_id, "timestamp": now,
                    "local_received": now, "status": status, "fields": fields, "links": {}})
    return out


def _row(table: str, row: dict[str, Any]) -> Any:
    kept = dict(row)
    if table == "job_events":
        fields = json.loads(kept["fields"]) if kept["fields"] is not None else None
        kept["fields"] = fields
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--batch", type=int, default=5000, help="the writer's max_batch")
    parser.add_argument("--start", type=float, default=1_796_000_000.0, help="the stream's first timestamp (Unix s)")
    parser.add_argument("--out", required=True, help="where the JSON dump goes")
    parser.add_argument("--repair", action="store_true", help="then a truth-repair event per job (see above)")
    args = parser.parse_args(argv)
    result = dump(args.events, args.start, args.batch, args.repair)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=0, sort_keys=True, default=str)
    print(", ".join(f"{table} {len(rows)}" for table, rows in result.items() if isinstance(rows, list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
