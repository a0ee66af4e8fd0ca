"""Shared test helpers: poll with a deadline (never sleep to synchronise), real worker processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from jobqueue.up.procs import ChildProcess, stop_group, wait_until, worker_command

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; return it or fail after ``timeout``."""
    return wait_until(predicate, timeout, interval, what, error=AssertionError)


def child_env(settings_env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment for a child process: ours, the settings' JOBQUEUE_* vars, extras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    env.update(settings_env)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def quick(output: Any, **extra: Any) -> dict[str, Any]:
    """A one-step simulation payload that finishes at once."""
    return {"steps": 1, "step_seconds": 0.05, "output": output, **extra}


def finished_order(app: Any, job_ids: list[str]) -> list[Any]:
    """The given jobs' ``output`` sorted by when the worker finished them (their results'
    ``date_done``): with one job at a time, the order in which they ran."""
    done = []
    for job_id in job_ids:
        result = app.AsyncResult(job_id)
        assert result.state == "SUCCESS", (job_id, result.state)
        done.append((result.date_done, result.result["output"]))
    return [output for _, output in sorted(done, key=lambda item: item[0])]


def busy_worker(app: Any, queue: str | None = None, seconds: float = 1.5) -> Any:
    """Occupy the (single) worker of ``queue`` with a job and wait until it runs."""
    from jobqueue import submit_job
    from jobqueue.states import JobStatus

    blocker = submit_job("simulation", {"steps": 1, "step_seconds": seconds, "output": "blocker"},
                         queue=queue, app=app)
    wait_for(lambda: blocker.status() == JobStatus.PROCESSING, 30, what="the blocker to run")
    return blocker


#: SIGTERM a child started with ``start_new_session=True`` and its whole group, SIGKILL after a
#: timeout, so no test leaves processes behind.
stop_process_group = stop_group


class WorkerProcess(ChildProcess):
    """A real ``celery -A jobqueue worker`` subprocess."""

    def __init__(self, env: Mapping[str, str], queues: str = "gpu0", log_path: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(worker_command(queues, extra_args), env, log_path, cwd=ROOT)
        self.queues = queues

    @property
    def node_name(self) -> str:
        gpu = self.queues.split(",")[0].removeprefix("gpu")
        machine = (self.env or {}).get("JOBQUEUE_MACHINE_ID", "")
        return f"gpu{gpu}@{machine}"

    def start(self) -> WorkerProcess:
        super().start()
        return self

    def wait_ready(self, app: Any, timeout: float = 30.0) -> WorkerProcess:
        """Wait until the worker answers a ping (it then consumes its queues)."""
        name = self.node_name

        def answered() -> bool:
            code = self.exited_with()
            if code is not None:
                raise AssertionError(f"worker exited with {code}; log: {self.log_text()[-3000:]}")
            replies = app.control.ping(destination=[name], timeout=0.5) or []
            return any(name in r for r in replies)

        wait_for(answered, timeout, interval=0.1, what=f"worker {name} to answer ping")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (SIGKILL: no goodbye, no restore)."""
        self.signal(sig)


def count_notifies(timers: Any) -> Callable[[], int]:
    """Once ``timers`` (a :class:`~jobqueue.worker.timers.TimerThread`) is asleep with a
    deadline, count the times its thread is woken from now on; returns the count's reader."""
    wait_for(lambda: timers._wake_at != float("inf"), 5)
    count = [0]
    original = timers._cond.notify

    def counting(n: int = 1) -> None:
        count[0] += 1
        original(n)

    timers._cond.notify = counting
    return lambda: count[0]
