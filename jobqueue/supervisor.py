"""Start, watch and stop the child processes of ``jobqueue up``.

Each child runs in its own process group (its own session), so a Ctrl-C in the terminal
reaches only ``jobqueue up``, which then stops the children itself, in reverse start order:
SIGTERM to the whole group, a bounded wait, then SIGKILL. Nothing is left behind, even a
child's own children. A child that dies on its own is reported and brings everything down:
a half-running system that looks healthy is worse than a stopped one.

Every child's output is copied to ours, each line prefixed with the child's name.

``python -m jobqueue.supervisor COMPONENT HOST PORT`` runs an optional component (the ComfyUI
simulator, the monitor) through its published entry point, so ``up`` depends only on that
function, not on a CLI subcommand's options.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from jobqueue.errors import ProcessFailed

#: Seconds a child gets to stop after SIGTERM before its group is SIGKILLed.
STOP_TIMEOUT = 10.0
#: How often the supervisor looks at its children.
POLL_INTERVAL = 0.2

#: Optional components: name -> "module:function". Each is started only if its module imports.
COMPONENTS: dict[str, str] = {
    "comfyui-sim": "jobqueue.comfyui_sim.server:run",
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


def component_command(name: str, host: str, port: int) -> list[str]:
    """The command line that runs component ``name`` on ``host:port`` in a child process."""
    return [sys.executable, "-m", "jobqueue.supervisor", name, host, str(port)]


def run_component(name: str, host: str, port: int) -> None:
    """Run component ``name`` in this process (the child's side of :func:`component_command`)."""
    function = load_component(name)
    if name == "monitor":
        from jobqueue.config import Settings

        function(Settings.from_env(), host, port)
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


@dataclass
class Child:
    """A running child process."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    reader: threading.Thread | None = field(default=None)

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Children of one ``jobqueue up``, started in order and stopped in reverse."""

    def __init__(self, *, stop_timeout: float = STOP_TIMEOUT, output: IO[bytes] | None = None) -> None:
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        #: Set (e.g. by a signal handler) to make every wait give up and :meth:`watch` return.
        self.stopping = threading.Event()
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

    # -- start -----------------------------------------------------------------------------
    def start(self, spec: ChildSpec) -> Child:
        """Start ``spec`` and wait until it is ready; raise :class:`ProcessFailed` otherwise."""
        if self.stopping.is_set():
            raise ProcessFailed(f"not starting {spec.name}: shutting down")
        proc = subprocess.Popen(
            spec.argv,
            env=dict(spec.env) if spec.env is not None else None,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(spec, proc)
        child.reader = threading.Thread(target=self._copy_output, args=(child,),
                                        name=f"output-{spec.name}", daemon=True)
        child.reader.start()
        self.children.append(child)
        self._wait_ready(child)
        return child

    def _copy_output(self, child: Child) -> None:
        assert child.proc.stdout is not None
        prefix = f"{child.name:>11} | ".encode()
        for line in iter(child.proc.stdout.readline, b""):
            with self._output_lock:
                try:
                    self._output.write(prefix + line)
                    self._output.flush()
                except (OSError, ValueError):  # our stdout is gone; keep draining the pipe
                    pass
        child.proc.stdout.close()

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
        """Block until :attr:`stopping` is set (return None) or a child dies (return it)."""
        while not self.stopping.wait(POLL_INTERVAL):
            for child in self.children:
                if not child.alive():
                    return child
        return None

    # -- stop ------------------------------------------------------------------------------
    def stop_all(self) -> None:
        """Stop every child, last started first; leave no process behind."""
        self.stopping.set()
        for child in reversed(self.children):
            self._stop(child)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2.0)
        self.children.clear()

    def _stop(self, child: Child) -> None:
        pgid = child.proc.pid  # start_new_session: the child leads its own group
        if child.alive():
            self.say(f"stopping {child.name} (pid {child.proc.pid})")
            _signal_group(pgid, signal.SIGTERM)
            try:
                child.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {self.stop_timeout:.0f} s: killing it")
        # Whatever the leader did, its group (grandchildren included) goes too.
        _signal_group(pgid, signal.SIGKILL)
        try:
            child.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process immune to SIGKILL
            self.say(f"{child.name} (pid {child.proc.pid}) survived SIGKILL")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> None:
    """``python -m jobqueue.supervisor COMPONENT HOST PORT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in COMPONENTS:
        sys.exit(f"usage: python -m jobqueue.supervisor {{{','.join(COMPONENTS)}}} HOST PORT")
    run_component(args[0], args[1], int(args[2]))


if __name__ == "__main__":
    main()
