"""Run the simulator as a subprocess that tests can freeze, refuse, or kill for real."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


class SimulatorProcess:
    """``python -m jobqueue.sims.comfyui`` on free ports, with a control port that keeps
    answering while the main port refuses or is frozen."""

    #: The simulator module run with ``python -m`` (subclasses serve other protocols).
    module = "jobqueue.sims.comfyui"

    def __init__(self, *, output_dir: str | os.PathLike[str] | None = None, log_path: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.output_dir = str(output_dir) if output_dir else None
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        #: More command-line options, e.g. ``("--models", "a.safetensors", "--vram-gb", "24")``.
        self.options = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.control_url = ""
        self._log: Any = None

    def start(self, timeout: float = 20.0) -> SimulatorProcess:
        cmd = [sys.executable, "-m", self.module, "--port", "0", "--control-port", "0", "--announce",
               *self.extra_args()]
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=self.env,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.module} did not start (exit code {self.proc.returncode})")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        info = json.loads(line.decode().splitlines()[0])
        self.url, self.control_url = info["url"], info["control_url"]
        return self

    def extra_args(self) -> list[str]:
        """Command-line options after the ports (the output directory, then ``extra_args``)."""
        return (["--output-dir", self.output_dir] if self.output_dir else []) + list(self.options)

    def fault(self, mode: str) -> None:
        """Switch a fault (``refuse``, ``freeze``, ``drop_ws``, ``die``, ``none``)."""
        try:
            requests.post(f"{self.control_url}/_sim/fault", json={"mode": mode}, timeout=5).raise_for_status()
        except requests.ConnectionError:
            if mode != "die":
                raise

    def set_models(self, checkpoints: list[str] | None = None, **folders: list[str]) -> None:
        """Make exactly these checkpoint files (and files of the other ``folders``, e.g.
        ``photomaker=[...]``) present from now on (``POST /_sim/models``)."""
        body = {**({"checkpoints": checkpoints} if checkpoints is not None else {}), **folders}
        requests.post(f"{self.control_url}/_sim/models", json=body, timeout=5).raise_for_status()

    def set_options(self, **values: Any) -> None:
        """Change the simulator's switches (``POST /_sim/options``: ``history_gap``, ``oom_next``, ``newer``)."""
        requests.post(f"{self.control_url}/_sim/options", json=values, timeout=5).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """Every request the ComfyUI routes received so far."""
        response = requests.get(f"{self.control_url}/_sim/requests", timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, like a crashed ComfyUI."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None
