"""``jobqueue up`` as a subprocess for tests: start it, wait for it, read its console, find
its children, and leave nothing behind whatever the test did."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from jobqueue.up.embedded import free_port
from jobqueue.up.procs import ChildProcess, signal_group
from tests.helpers import ROOT, child_env, wait_for


class UpProcess(ChildProcess):
    """``jobqueue up`` as a subprocess, its console output in a file (started at once)."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str, cwd: Path | None = None) -> None:
        super().__init__([sys.executable, "-m", "jobqueue.cli", "up", *args], env, log_path, cwd=cwd or ROOT,
                         append=False)
        self.start()
        self.proc: subprocess.Popen[bytes]  # started: never None from here on
        self.descendants: list[psutil.Process] = []

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_up(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"jobqueue up exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            return "jobqueue is up" in self.output()

        wait_for(ready, timeout, interval=0.2, what="jobqueue up to be ready")
        self.descendants = psutil.Process(self.proc.pid).children(recursive=True)

    def summary(self, name: str) -> str:
        """What the summary says about ``name`` (broker, comfyui-sim, worker, monitor, logs),
        without a URL's fragment (the monitor's login token is new at every start)."""
        match = re.search(rf"^  {re.escape(name)} +(\S+)", self.output(), re.MULTILINE)
        assert match, f"no {name} in the summary:\n{self.output()[-3000:]}"
        return match.group(1).split("#", 1)[0]

    def child(self, fragment: str) -> psutil.Process:
        """The one current child whose command line contains ``fragment``."""
        found = [p for p in psutil.Process(self.proc.pid).children() if fragment in " ".join(p.cmdline())]
        assert len(found) == 1, found
        return found[0]

    def cleanup(self) -> None:
        """Leave nothing behind whatever the test did."""
        try:
            self.descendants += psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        self.signal(signal.SIGKILL)
        for child in self.descendants:
            signal_group(child.pid, signal.SIGKILL)
        self.stop()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` that still run (zombies count as gone)."""
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def up_env(tmp_path: Path, machine_id: str, broker_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a test's ``jobqueue up``: its own ports, database, outputs and data
    directory (``broker_url`` None: not set at all)."""
    env = child_env({
        "JOBQUEUE_MACHINE_ID": machine_id,
        "JOBQUEUE_MONITOR_PORT": str(free_port()),
        "JOBQUEUE_MONITOR_DB": f"sqlite:///{tmp_path / 'monitor.db'}",
        "JOBQUEUE_OUTPUT_DIR": str(tmp_path / "outputs"),
        "JOBQUEUE_DATA_DIR": str(tmp_path / "data"),
        **extra,
    })
    if broker_url is not None:
        env["JOBQUEUE_BROKER_URL"] = broker_url
    return env
