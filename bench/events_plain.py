"""A plain Celery app's task events for the ingestion benchmark (``--mix plain``).

What a Flower user's cluster sends (issue 28): tasks of an app that imports nothing of
jobqueue, whose ``task-sent``/``task-received`` carry the task's ``args`` and ``kwargs`` as
Celery's ``argsrepr``/``kwargsrepr``. One task is ``task-sent``, ``task-received``,
``task-started`` and ``task-succeeded`` (every 50th ``task-failed`` with a traceback); no
progress or connector events. Sizes of the args text: most a few hundred characters; every 20th
task's args are 1,024 characters (Celery cuts its reprs there by default); every 100th task's
args and kwargs are 30,000 characters each (a sender that raised ``argsrepr_maxsize``), so the
monitor's bound on stored args (10,000 characters) is exercised. Every 10th task is a chain
link (``parent_id``/``root_id`` of the task before it on the same worker); every 25th carries
a secret-looking keyword argument (``api_key``) that the monitor masks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

#: Task names of the simulated app, taken in turn.
TASK_NAMES = ("shop.tasks.send_email", "shop.tasks.resize_image", "shop.tasks.sync_order",
              "reports.tasks.build_report")
#: Characters of the args (and kwargs) text of every 100th task.
HUGE_ARGS = 30_000
#: Celery's default ``argsrepr_maxsize``.
CELERY_REPR_MAX = 1024


def _args_text(seq: int) -> tuple[str, str]:
    """The ``argsrepr`` and ``kwargsrepr`` of the ``seq``-th task of a worker."""
    args = (f"({1_000_000 + seq}, 'customer-{seq % 977}@example.com', {{'template': 'order-confirmation', "
            f"'locale': 'en-GB', 'order': {{'id': {seq}, 'lines': [{{'sku': 'SKU-{seq % 89:04d}', 'qty': 2, "
            f"'price': '19.90'}}, {{'sku': 'SKU-{seq % 53:04d}', 'qty': 1, 'price': '4.50'}}]}}}})")
    kwargs = f"{{'priority': 'normal', 'retry_policy': {{'max_retries': 3, 'interval_start': 0.2}}, 'trace': '{seq:08x}'}}"
    if seq % 25 == 0:
        kwargs = kwargs[:-1] + ", 'api_key': 'sk_live_4f9a0c2b7e5d41a8'}"
    if seq % 100 == 0:
        args = "(" + repr("x" * HUGE_ARGS)[: HUGE_ARGS - 2] + ")"
        kwargs = "{'blob': " + repr("y" * HUGE_ARGS)[: HUGE_ARGS - 10] + "}"
    elif seq % 20 == 0:
        args = ("(" + ", ".join(f"'item-{seq}-{i:04d}'" for i in range(80)))[: CELERY_REPR_MAX - 3] + "..."
    return args, kwargs


def plain_task_events(worker: str, seq: int, task_id: str, parent: str | None,
                      root: str | None) -> Iterator[dict[str, Any]]:
    """The events of the ``seq``-th plain Celery task (of all workers), run by ``worker``."""
    name = TASK_NAMES[seq % len(TASK_NAMES)]
    args, kwargs = _args_text(seq)
    family = {"root_id": root or task_id, "parent_id": parent}
    yield {"type": "task-sent", "uuid": task_id, "name": name, "args": args, "kwargs": kwargs, "retries": 0,
           "eta": None, "expires": None, "queue": "celery", "exchange": "", "routing_key": "celery",
           "hostname": "gen12345@web-1", **family}
    yield {"type": "task-received", "uuid": task_id, "name": name, "args": args, "kwargs": kwargs, "retries": 0,
           "eta": None, "expires": None, "hostname": worker, **family}
    yield {"type": "task-started", "uuid": task_id, "hostname": worker}
    if seq % 50 == 0:
        yield {"type": "task-failed", "uuid": task_id, "exception": "ConnectionError('smtp: timed out')",
               "traceback": 'Traceback (most recent call last):\n  File "shop/tasks.py", line 42, in send_email\n'
                            "    smtp.send(message)\nConnectionError: smtp: timed out\n", "hostname": worker}
    else:
        yield {"type": "task-succeeded", "uuid": task_id, "result": f"{{'sent': True, 'id': {seq}}}",
               "runtime": 0.05, "hostname": worker}


def plain_job_factory() -> Callable[[str, int, int], Iterator[dict[str, Any]]]:
    """A maker of a worker's next task's events (``worker, seq, progress_steps``; only the
    worker is used). Tasks are numbered across all workers, so the big ones come spread out,
    not 50 at once; every 10th is a chain link of the task its worker ran before it."""
    last: dict[str, tuple[str, str]] = {}
    made = 0

    def make(worker: str, _seq: int, _progress_steps: int) -> Iterator[dict[str, Any]]:
        nonlocal made
        made += 1
        parent, root = last.get(worker, (None, None)) if made % 10 == 0 else (None, None)
        task_id = str(uuid.uuid4())
        last[worker] = (task_id, root or task_id)
        return plain_task_events(worker, made, task_id, parent, root)

    return make
