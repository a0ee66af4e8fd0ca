"""Run the WebUI simulator as a subprocess that tests can freeze, refuse, or kill for real."""

from __future__ import annotations

import os
from typing import Any

import requests

from jobqueue.sims.comfyui.process import SimulatorProcess


class A1111SimulatorProcess(SimulatorProcess):
    """``python -m jobqueue.sims.a1111`` on free ports, with a control port that keeps answering
    while the main port refuses or is frozen (``fault``, ``requests``, ``kill`` as for ComfyUI)."""

    module = "jobqueue.sims.a1111"

    def __init__(self, *, flavour: str = "a1111", step_seconds: float = 0.05, load_seconds: float = 1.0,
                 version: str = "1.10", vram_gb: float = 24.0, port: int = 0, log_path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(log_path=log_path, env=env)
        self.flavour = flavour
        self.step_seconds = step_seconds
        self.load_seconds = load_seconds
        self.version = version
        self.vram_gb = vram_gb
        #: The main port (0: a free one); a fixed port lets a test restart "the same" WebUI.
        self.port = port

    def extra_args(self) -> list[str]:
        return ["--flavour", self.flavour, "--step-seconds", str(self.step_seconds),
                "--load-seconds", str(self.load_seconds), "--webui-version", self.version,
                "--vram-gb", str(self.vram_gb),
                "--port", str(self.port)]  # the last --port wins

    def configure(self, **options: Any) -> dict[str, Any]:
        """``POST /_sim/config`` to the running simulator (timing, ``version``, ``vram_gb``, ``oom_next``...)."""
        response = requests.post(f"{self.control_url}/_sim/config", json=options, timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def state(self) -> dict[str, Any]:
        """``GET /_sim/state``: fault, ``shared.state``, loaded checkpoint, images generated."""
        response = requests.get(f"{self.control_url}/_sim/state", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result
