"""The same event stream leaves the same store: a dump to compare two trees' apply paths.

A deterministic stream (:func:`bench.events_mix.build_stream` with seeded job ids, a fixed pid and
a given start time) goes through the writer's apply path as :mod:`bench.writer_cost` runs it, then
every table the writer fills is dumped, row for row, as JSON: jobs, timeline rows, workers,
connectors, machines, the change log's ``(seq, kind, key)`` and which JSON columns hold SQL
NULL (not JSON ``null``). The clock is stopped at the stream's start (``time.time`` patched
for the run), so the monitor's own times are the same too. Run it in both trees and compare the files:

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
          "machines": "id", "changes": "seq"}


def dump(events: int, start: float, batch: int) -> dict[str, Any]:
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


def _row(table: str, row: dict[str, Any]) -> Any:
    if table == "changes":
        return [row["seq"], row["kind"], row["key"], row["data"] is None]
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
    args = parser.parse_args(argv)
    result = dump(args.events, args.start, args.batch)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=0, sort_keys=True, default=str)
    print(", ".join(f"{table} {len(rows)}" for table, rows in result.items() if isinstance(rows, list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
