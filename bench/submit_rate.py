"""Submit rate: ``submit_job()`` calls per second from one process (target >= 1,000/s).

No worker runs: this measures the client path alone (validate, build the message, publish,
send the ``task-sent`` event). A plain ``app.send_task`` of the same message runs side by side
as the ceiling Celery itself sets.

    python -m bench.submit_rate --jobs 5000
    python -m bench.submit_rate --jobs 5000 --profile   # pyinstrument report of submit_job
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.common import RedisServer, bench_settings, fmt_table
from jobqueue.client.jobs import submit_job
from jobqueue.shared.names import RUN_JOB_TASK
from jobqueue.transport.app import create_app


def _rate(fn: Any, jobs: int) -> float:
    started = time.perf_counter()
    for _ in range(jobs):
        fn()
    return jobs / (time.perf_counter() - started)


def measure(url: str, jobs: int, workdir: Any, profile: bool = False) -> list[dict[str, Any]]:
    """Submit ``jobs`` jobs with ``submit_job`` and with a bare ``send_task``; return both rates."""
    app = create_app(bench_settings(url, workdir))
    payload = {"steps": 0, "step_seconds": 0.0}
    try:
        # Warm up: the first call opens the connection and declares the queue.
        submit_job("simulation", payload, app=app)
        app.send_task(RUN_JOB_TASK, kwargs={"service": "simulation", "payload": payload, "options": {}},
                      queue="simulation")

        def ours() -> None:
            submit_job("simulation", payload, app=app)

        def bare() -> None:
            app.send_task(RUN_JOB_TASK, kwargs={"service": "simulation", "payload": payload, "options": {}},
                          queue="simulation")

        if profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
            _rate(ours, jobs)
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
        rows = []
        for name, fn in (("submit_job", ours), ("app.send_task", bare)):
            rows.append({"call": name, "jobs": jobs, "jobs/s": round(_rate(fn, jobs))})
        return rows
    finally:
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of submit_job")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    try:
        rows = measure(server.url(0), args.jobs, server.dir, profile=args.profile)
    finally:
        server.stop()
    print(fmt_table(rows, ["call", "jobs", "jobs/s"]))
    ratio = rows[0]["jobs/s"] / rows[1]["jobs/s"]
    print(f"submit_job: {rows[0]['jobs/s']:,} jobs/s ({ratio:.2f}x of bare send_task); target >= 1,000/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
