"""Start, watch, restart and stop the child processes of ``jobqueue up``.

Each child runs in its own process group (its own session), so a Ctrl-C in the terminal
reaches only ``jobqueue up``, which then stops the children itself, in reverse start order:
SIGTERM to the whole group, a bounded wait, then SIGKILL. Nothing is left behind, even a
child's own children. Should ``up`` die without that chance (SIGKILL), the kernel signals
every child (``PR_SET_PDEATHSIG``, see :mod:`jobqueue.shared.lifeline`).

A child that dies on its own is restarted with the same command line (same ports), after a
backoff that doubles with every recent restart; more than :attr:`RestartPolicy.max_restarts`
restarts within :attr:`RestartPolicy.window` seconds is a crash loop: :meth:`Supervisor.watch`
returns that child, whose last output lines are kept for the report.

The console gets one line per child state change (starting, running, exited, restarting,
stopped). Every child's output goes to ``<log dir>/<child>.log``, and to the console too,
each line prefixed with the child's name, when ``echo`` is on (``jobqueue up --debug``).

``python -m jobqueue.up.supervisor COMPONENT HOST PORT [--debug]`` runs an optional component
(the ComfyUI simulator, the monitor) through its published entry point, so ``up`` depends only
on that function, not on a CLI subcommand's options.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jobqueue.errors import ProcessFailed
from jobqueue.shared.lifeline import parent_death_hook
from jobqueue.up.procs import signal_group

#: Seconds a child gets to stop after SIGTERM before its group is SIGKILLed.
STOP_TIMEOUT = 10.0
#: How often the supervisor looks at its children.
POLL_INTERVAL = 0.2
#: Output lines kept per child for the report of a crash loop.
TAIL_LINES = 20

#: Optional components: name -> "module:function". Each is started only if its module imports.
COMPONENTS: dict[str, str] = {
    "comfyui-sim": "jobqueue.sims.comfyui.server:run",
    "monitor": "monitor.server:serve",
}

def load_component(name: str) -> Callable[..., Any]:
    """Import the entry point of component ``name``; ImportError/AttributeError if absent."""
    module_name, _, attr = COMPONENTS[name].partition(":")
    module = importlib.import_module(module_name)
    function: Callable[..., Any] = getattr(module, attr)
    return function


def component_available(name: str) -> tuple[bool, str]:
    """Whether component ``name`` can run here, and if not, why."""
    try:
        load_component(name)
    except Exception as exc:  # missing module, missing function, broken import: all "absent"
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def component_command(name: str, host: str, port: int, *, debug: bool = False) -> list[str]:
    """The command line that runs component ``name`` on ``host:port`` in a child process
    (``debug``: the monitor logs every HTTP request)."""
    return [sys.executable, "-m", "jobqueue.up.supervisor", name, host, str(port), *(["--debug"] if debug else [])]


def run_component(name: str, host: str, port: int, *, debug: bool = False) -> None:
    """Run component ``name`` in this process (the child's side of :func:`component_command`)."""
    function = load_component(name)
    if name == "monitor":
        import logging

        from jobqueue.config import Settings

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Debugging: Werkzeug's server, with its log line per HTTP request (favicon 404s
        # included); otherwise gunicorn, quiet about requests.
        function(Settings.from_env(), host, port, debug=debug)
    else:
        function(host, port)


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class ChildSpec:
    """What to run, and how to tell it is ready."""

    name: str
    argv: list[str]
    #: Human description printed once it is ready, e.g. "redis://127.0.0.1:6379/0".
    where: str = ""
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    #: Returns True once the child serves; None means "ready as soon as it runs".
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60.0
    #: Signal the kernel sends the child when ``up`` dies, even by SIGKILL (Linux); None: none.
    death_signal: int | None = signal.SIGKILL


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that died is started again, and when ``up`` gives up on it."""

    #: Delay (s) before the first restart; it doubles with every recent restart.
    first_delay: float = 1.0
    #: Longest delay (s) between restarts.
    max_delay: float = 30.0
    #: More restarts than this within :attr:`window` seconds is a crash loop.
    max_restarts: int = 5
    window: float = 60.0

    def delay(self, recent_restarts: int) -> float:
        """Seconds to wait before the next restart, after ``recent_restarts`` recent ones."""
        return float(min(self.max_delay, self.first_delay * 2 ** recent_restarts))


@dataclass
class Child:
    """A child process of ``up``: its current process, and its history across restarts."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    readers: list[threading.Thread] = field(default_factory=list)
    #: The last output lines, across restarts (for the crash-loop report).
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    #: Monotonic times of its restarts.
    restarts: list[float] = field(default_factory=list)
    #: Monotonic time of the pending restart (None: running, or not to be restarted).
    restart_at: float | None = None
    log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.proc.poll() is None

    def recent_restarts(self, window: float, now: float) -> int:
        """How many times it was restarted in the last ``window`` seconds."""
        return sum(1 for at in self.restarts if now - at < window)


class Supervisor:
    """Children of one ``jobqueue up``, started in order, restarted when they die, stopped in
    reverse."""

    def __init__(self, *, stop_timeout: float = STOP_TIMEOUT, output: IO[bytes] | None = None,
                 log_dir: str | os.PathLike[str] | None = None, echo: bool = True,
                 policy: RestartPolicy | None = None) -> None:
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        #: Set (e.g. by a signal handler) to make every wait give up and :meth:`watch` return.
        self.stopping = threading.Event()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.echo = echo
        self.policy = policy or RestartPolicy()
        self._output = output if output is not None else sys.stdout.buffer
        self._output_lock = threading.Lock()

    def say(self, text: str) -> None:
        """Print one of our own lines, never in the middle of a child's line."""
        with self._output_lock:
            try:
                self._output.write(text.encode() + b"\n")
                self._output.flush()
            except (OSError, ValueError):
                pass

    def _state(self, child: Child, text: str) -> None:
        self.say(f"{child.name}: {text}")

    # -- start -----------------------------------------------------------------------------
    def start(self, spec: ChildSpec) -> Child:
        """Start ``spec`` and wait until it is ready; raise :class:`ProcessFailed` otherwise."""
        if self.stopping.is_set():
            raise ProcessFailed(f"not starting {spec.name}: shutting down")
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{spec.name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        child = Child(spec, self._spawn(spec), log=log)
        self.children.append(child)
        self._follow(child)
        self._state(child, f"starting (pid {child.proc.pid})")
        self._wait_ready(child)
        self._state(child, "running" + (f" at {spec.where}" if spec.where else ""))
        return child

    def _spawn(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            spec.argv,
            env=dict(spec.env) if spec.env is not None else None,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_hook(spec.death_signal),  # noqa: PLW1509 - async-signal-safe prctl
        )

    def _follow(self, child: Child) -> None:
        reader = threading.Thread(target=self._copy_output, args=(child, child.proc),
                                  name=f"output-{child.name}", daemon=True)
        child.readers.append(reader)
        reader.start()

    def _copy_output(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        prefix = f"{child.name:>11} | ".encode()
        for line in iter(proc.stdout.readline, b""):
            child.lines.append(line.decode(errors="replace").rstrip("\n"))
            if child.log is not None:
                try:
                    child.log.write(line)
                    child.log.flush()
                except (OSError, ValueError):  # closed while stopping
                    pass
            if self.echo:
                with self._output_lock:
                    try:
                        self._output.write(prefix + line)
                        self._output.flush()
                    except (OSError, ValueError):  # our stdout is gone; keep draining the pipe
                        pass
        proc.stdout.close()

    def _wait_ready(self, child: Child) -> None:
        spec = child.spec
        deadline = time.monotonic() + spec.ready_timeout
        while True:
            if not child.alive():
                raise ProcessFailed(f"{spec.name} exited with code {child.proc.returncode} while starting")
            if spec.ready is None:
                return
            try:
                if spec.ready():
                    return
            except Exception:  # not answering yet
                pass
            if self.stopping.is_set():
                raise ProcessFailed(f"interrupted while {spec.name} was starting")
            if time.monotonic() >= deadline:
                raise ProcessFailed(f"{spec.name} was not ready after {spec.ready_timeout:.0f} s")
            self.stopping.wait(POLL_INTERVAL)

    # -- run -------------------------------------------------------------------------------
    def watch(self) -> Child | None:
        """Keep the children running until :attr:`stopping` is set (return None) or one is in
        a crash loop (return it, dead)."""
        while not self.stopping.wait(POLL_INTERVAL):
            for child in self.children:
                if self.stopping.is_set():
                    return None
                if child.restart_at is not None:
                    if time.monotonic() >= child.restart_at:
                        self._restart(child)
                elif not child.alive() and self._schedule_restart(child):
                    return child
        return None

    def _schedule_restart(self, child: Child) -> bool:
        """React to ``child``'s death; return True when it is in a crash loop."""
        now = time.monotonic()
        recent = child.recent_restarts(self.policy.window, now)
        code = child.proc.returncode
        if recent >= self.policy.max_restarts:
            self._state(child, f"exited with code {code}, {recent} restarts within "
                               f"{self.policy.window:.0f} s: giving up")
            return True
        delay = self.policy.delay(recent)
        self._state(child, f"exited with code {code}: restarting in {delay:g} s")
        child.restart_at = now + delay
        return False

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        child.restarts.append(time.monotonic())
        signal_group(child.proc.pid, signal.SIGKILL)  # whatever the dead leader left behind
        child.proc = self._spawn(child.spec)
        self._follow(child)
        self._state(child, f"restarting (pid {child.proc.pid})")
        try:
            self._wait_ready(child)
        except ProcessFailed as exc:
            if self.stopping.is_set():
                return
            # Dead or not serving: make sure it is dead; the next watch round counts it.
            self._state(child, str(exc))
            signal_group(child.proc.pid, signal.SIGKILL)
            child.proc.wait(timeout=self.stop_timeout)
            return
        self._state(child, "running again" + (f" at {child.spec.where}" if child.spec.where else ""))

    # -- stop ------------------------------------------------------------------------------
    def stop_all(self) -> None:
        """Stop every child, last started first; leave no process behind."""
        self.stopping.set()
        for child in reversed(self.children):
            self._stop(child)
        for child in self.children:
            for reader in child.readers:
                reader.join(timeout=2.0)
            if child.log is not None:
                child.log.close()
        self.children.clear()

    def _stop(self, child: Child) -> None:
        pgid = child.proc.pid  # start_new_session: the child leads its own group
        if child.alive():
            signal_group(pgid, signal.SIGTERM)
            try:
                child.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._state(child, f"did not stop within {self.stop_timeout:g} s: killing it")
            else:
                self._state(child, "stopped")
        # Whatever the leader did, its group (grandchildren included) goes too.
        signal_group(pgid, signal.SIGKILL)
        try:
            child.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process immune to SIGKILL
            self._state(child, f"pid {child.proc.pid} survived SIGKILL")


def main(argv: list[str] | None = None) -> None:
    """``python -m jobqueue.up.supervisor COMPONENT HOST PORT [--debug]``."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    if len(args) != 3 or args[0] not in COMPONENTS:
        sys.exit(f"usage: python -m jobqueue.up.supervisor {{{','.join(COMPONENTS)}}} HOST PORT [--debug]")
    run_component(args[0], args[1], int(args[2]), debug=debug)


if __name__ == "__main__":
    main()
