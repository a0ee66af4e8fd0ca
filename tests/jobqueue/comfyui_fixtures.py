"""Fixtures and helpers for tests against the ComfyUI simulator: one in-process simulator, a
factory of simulator processes, connectors on them, and the workflows the tests run. Import
the fixtures into a test module to use them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.config import Settings
from jobqueue.connectors.comfyui.connector import ComfyUIConnector
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.sims.comfyui.server import SimulatorThread


def slow(steps: int, delay: float = 0.1, color: int = 1) -> dict[str, Any]:
    """A workflow whose middle node makes ``steps`` progress steps ``delay`` s apart."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": steps, "delay": delay}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}},
    }


def noop(**_: Any) -> None:
    """A progress reporter that drops every report."""
    return None


def connector_for(sim: Any, tmp_path: Path, **settings: Any) -> ComfyUIConnector:
    """A started connector on ``sim`` (thread or process) with outputs under ``tmp_path``; the
    caller stops it."""
    conn = ComfyUIConnector(Settings(comfyui_url=sim.url, output_dir=str(tmp_path / "outputs"), **settings))
    conn.start()
    return conn


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorThread]:
    """A ComfyUI simulator in this process (faults except ``die``)."""
    server = SimulatorThread(output_dir=str(tmp_path / "sim-out"), temp_dir=str(tmp_path / "sim-temp")).start()
    yield server
    server.stop()


@pytest.fixture
def connector(sim: SimulatorThread, tmp_path: Path) -> Iterator[ComfyUIConnector]:
    """A started connector on ``sim``, stopped at the end."""
    conn = connector_for(sim, tmp_path)
    yield conn
    conn.stop()


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Callable[[], SimulatorProcess]]:
    """Factory of simulator subprocesses (they can be frozen or killed for real); all are
    stopped at the end."""
    started: list[SimulatorProcess] = []

    def start() -> SimulatorProcess:
        n = len(started)
        proc = SimulatorProcess(output_dir=tmp_path / f"sim{n}", log_path=tmp_path / f"sim{n}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
