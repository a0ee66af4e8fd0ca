"""Fixtures for capability routing tests: ComfyUI simulators as "machines" with their own model
files and VRAM, and comfyui workers on them. Import them into a test module to use them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.sims.comfyui.process import SimulatorProcess


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., SimulatorProcess]]:
    """Factory: ``start_sim("a.safetensors", vram_gb=24)`` runs a simulator process with those
    checkpoints; all are stopped at the end."""
    sims: list[SimulatorProcess] = []

    def start(*models: str, vram_gb: float | None = None) -> SimulatorProcess:
        args: list[str] = ["--models", ",".join(models)]
        if vram_gb is not None:
            args += ["--vram-gb", str(vram_gb)]
        sim = SimulatorProcess(output_dir=tmp_path / f"sim-{len(sims)}", extra_args=tuple(args))
        sims.append(sim)
        return sim.start()

    yield start
    for sim in sims:
        sim.stop()


def comfy_worker(start_worker: Any, machine_id: str, name: str, sim: SimulatorProcess, **env: str) -> Any:
    """A comfyui worker on its own "machine" (``<machine_id>-<name>``) talking to ``sim``."""
    return start_worker("gpu0", connectors="comfyui", comfyui_url=sim.url, machine_id=f"{machine_id}-{name}", **env)


def consumes(app: Any, worker: Any, queue: str) -> bool:
    """True when ``worker`` says (``active_queues``) it consumes ``queue``."""
    replies = app.control.inspect(destination=[worker.node_name], timeout=1.0).active_queues() or {}
    return any(q["name"] == queue for q in replies.get(worker.node_name, []))
