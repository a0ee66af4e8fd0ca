"""What checking one wire event costs the monitor (:func:`monitor.ingest.validate.check`), by event type.

The events are :mod:`bench.events_mix`'s stream as the monitor's raw decoder delivers them
(:class:`monitor.ingest.raw_reader.EventDecoder`), received now; each is checked against its receipt
time with the default ±5 min window. timeit, best of ``--repeat`` runs over the whole stream.
``--check module:function`` times another function with the same signature instead, e.g. an
earlier version of the checks saved as a module (``git show <commit>:monitor/ingest/validate.py >
/tmp/old_validate.py``, then ``PYTHONPATH=/tmp ... --check old_validate:refusal``).

    python -m bench.event_check
"""

from __future__ import annotations

import argparse
import importlib
import time
import timeit
from collections.abc import Callable
from typing import Any

from celery import Celery

from bench.common import fmt_table
from bench.events_mix import build_stream
from monitor.ingest.raw_reader import EventDecoder

#: The window the monitor uses by default (s).
WINDOW = 300.0


def decoded_events(total: int, rate: float) -> list[dict[str, Any]]:
    """``total`` events of the realistic mix, decoded the way the monitor decodes them."""
    now = time.time()
    stream = build_stream(total, rate, now - total / rate, db=0)
    decoder = EventDecoder(Celery("bench-event-check", set_as_current=False), on_malformed=_fail)
    events = [event for _channel, body in stream.messages for event in decoder.decode(body)]
    for event in events:
        event["local_received"] = now  # every event is within the window of "now"
    return events


def _fail(exc: Exception) -> None:
    raise RuntimeError(f"the mix did not decode: {exc!r}")


def per_event_us(check: Callable[[Any, float, float], Any], events: list[dict[str, Any]], repeat: int) -> float:
    """Best time of ``repeat`` runs of ``check`` over ``events``, per event, in µs."""
    received = [event["local_received"] for event in events]

    def run() -> None:
        for event, at in zip(events, received, strict=True):
            check(event, at, WINDOW)

    number = max(1, 20000 // len(events))
    return min(timeit.repeat(run, number=number, repeat=repeat)) / (number * len(events)) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000,
                        help="events of the mix (the default fits in the CPU caches, as a just-decoded event does)")
    parser.add_argument("--rate", type=float, default=10000.0, help="the mix's planned rate (sets heartbeat share)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--check", default="monitor.ingest.validate:check", help="module:function to time")
    args = parser.parse_args(argv)
    module, _, name = args.check.partition(":")
    check = getattr(importlib.import_module(module), name)
    events = decoded_events(args.events, args.rate)
    refused = [event["type"] for event in events if check(event, event["local_received"], WINDOW) is not None]
    if refused:
        raise SystemExit(f"{len(refused)} events of the mix refused, e.g. {refused[:3]}")
    rows = []
    for kind in sorted({event["type"] for event in events}):
        of_kind = [event for event in events if event["type"] == kind]
        rows.append({"type": kind, "events": len(of_kind), "µs/event": per_event_us(check, of_kind, args.repeat)})
    rows.append({"type": "all (the mix)", "events": len(events), "µs/event": per_event_us(check, events, args.repeat)})
    print(f"{args.check}, {time.strftime('%Y-%m-%d')}")
    print(fmt_table(rows, ["type", "events", "µs/event"]))


if __name__ == "__main__":
    main()
