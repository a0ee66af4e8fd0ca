"""Child processes and event listeners, one way for everyone who starts them.

* :func:`signal_group` / :func:`stop_group`: a child started with ``start_new_session=True``
  leads its own process group; signalling the group reaches its grandchildren too (a Celery
  worker's pool, a monitor's gunicorn workers), so stopping one leaves nothing behind. The
  supervisor of ``jobqueue up`` uses them, and so does :class:`ChildProcess`.
* :class:`ChildProcess`: a command in its own session, its output in a log file, with a stop
  path (SIGTERM to the group, SIGKILL after a timeout). The tests' worker and monitor
  processes and every benchmark and chaos drill start their children with it;
  :func:`worker_command` and :func:`monitor_command` are the command lines they run.
* :func:`wait_until`: poll a condition with a deadline (never sleep to synchronise); the tests'
  ``wait_for`` and the benchmarks' ``wait_until`` are it.
* :class:`EventListener`: a thread consuming a Celery app's event stream with Celery's
  receiver, handing each event to a callback; ``start()`` returns once it is subscribed,
  ``stop()`` ends it, and it reconnects when the broker goes away. The tests' event capture and
  the benchmarks' listeners use it. (The monitor's collector is not one: it reads a Redis
  stream raw, counts undecodable messages, backs off and triggers a truth repair on
  reconnect, see :mod:`monitor.ingest.collector`.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: Celery worker options every test and benchmark worker runs with (no mingle/gossip: they
#: only slow the start and the workers learn nothing from each other we use).
WORKER_OPTIONS = ("--loglevel", "INFO", "--without-mingle", "--without-gossip")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "",
               error: type[Exception] = TimeoutError) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; raise ``error``
    naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout} s waiting for {what or predicate}: last={last!r}")
        time.sleep(interval)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """Stop a child started with ``start_new_session=True`` and its whole group: SIGCONT (a
    stopped child could not act on what follows) and SIGTERM, then SIGKILL if it has not
    exited after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    signal_group(proc.pid, signal.SIGCONT)
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def worker_command(queues: str, extra_args: Iterable[str] = ()) -> list[str]:
    """``celery -A jobqueue worker -Q <queues>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "jobqueue", "worker", "-Q", queues, *WORKER_OPTIONS,
            *extra_args]


def monitor_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """``jobqueue monitor`` on ``host:port`` with this interpreter."""
    return [sys.executable, "-m", "jobqueue.cli", "monitor", "--host", host, "--port", str(port)]


class ChildProcess:
    """A command in its own session (so a signal reaches its children too), logging to a file."""

    def __init__(self, cmd: list[str], env: Mapping[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path | str | None = None, *, append: bool = True) -> None:
        self.cmd = list(cmd)
        self.append = append
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ChildProcess:
        """Start the command (output to ``log_path``, appended or from scratch, else discarded)."""
        self._log = open(self.log_path, "ab" if self.append else "wb") if self.log_path else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=None if self.cwd is None else str(self.cwd),
                                     stdin=subprocess.DEVNULL, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        """The child's pid (also its process group's id)."""
        if self.proc is None:
            raise RuntimeError(f"{self.cmd[:4]} was never started")
        return self.proc.pid

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def exited_with(self) -> int | None:
        """The child's exit code, None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group; wait for the exit on SIGKILL/SIGTERM."""
        if self.alive():
            assert self.proc is not None
            signal_group(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, SIGKILL after ``timeout``; close the log."""
        stop_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        """Everything the child wrote so far."""
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""


class EventListener:
    """A thread that hands every event of ``app``'s event stream to ``on_event`` until
    :meth:`stop`, reconnecting (after ``retry`` s) when the broker goes away."""

    def __init__(self, app: Any, on_event: Callable[[dict[str, Any]], None], *, name: str = "event-listener",
                 retry: float = 0.5) -> None:
        self.app = app
        self.on_event = on_event
        self.retry = retry
        #: The last error that ended a connection (the thread reconnects after it).
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float = 10.0) -> EventListener:
        """Start the thread; return once it is subscribed (or after ``timeout``)."""
        self._thread.start()
        self._ready.wait(timeout)
        return self

    @property
    def subscribed(self) -> bool:
        """True once the first subscription was in place."""
        return self._ready.is_set()

    @property
    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (within about a second) and wait for it."""
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _on_ready(self, receiver: Any) -> Callable[..., None]:
        subscribed = receiver.on_consume_ready

        def on_ready(*args: Any, **kwargs: Any) -> None:
            subscribed(*args, **kwargs)
            self._ready.set()

        return on_ready

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    receiver = self.app.events.Receiver(conn, handlers={"*": self.on_event})
                    receiver.on_consume_ready = self._on_ready(receiver)
                    self._receiver = receiver
                    for _ in receiver.consume(limit=None, timeout=None, safety_interval=0.5, wakeup=False):
                        if self._stop.is_set():
                            return
            except Exception as exc:  # broker gone: reconnect after a pause
                self.error = exc
                self._stop.wait(self.retry)
