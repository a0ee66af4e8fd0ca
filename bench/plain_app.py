"""A plain Celery app with one no-op task: the baseline of :mod:`bench.throughput`.

Stock Celery settings (or, with ``BENCH_PLAIN_RELIABLE=1``, jobqueue's delivery and event
settings) except what the comparison must share with jobqueue's worker (JSON,
the threads pool and its concurrency are given on the command line). Started as
``celery -A bench.plain_app worker -Q plain -P threads -c 1`` with ``BENCH_BROKER_URL`` set.
"""

from __future__ import annotations

import os

from celery import Celery

#: Queue the baseline uses.
PLAIN_QUEUE = "plain"

app = Celery("bench-plain", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"),
             backend=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"), set_as_current=False)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                task_default_queue=PLAIN_QUEUE)
if os.environ.get("BENCH_PLAIN_RELIABLE") == "1":
    # The delivery and event settings jobqueue runs with (jobqueue/transport/defaults.py), nothing else of
    # jobqueue: separates what Celery's own "nothing lost + every event" costs from ours.
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                    worker_send_task_events=True, task_send_sent_event=True, task_track_started=True,
                    result_extended=True)


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing: what is left is Celery's own cost per task."""
    return None
