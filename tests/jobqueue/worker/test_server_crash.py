"""A server that dies mid-job: real subprocess workers on ComfyUI and WebUI simulators that
crash on command (ComfyUI's ``SimCrash`` node, the WebUI's crash mark in a prompt) and restart
empty, each worker on its own "machine"."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue import submit_job
from jobqueue.errors import JobFailed
from jobqueue.sims.a1111.process import A1111SimulatorProcess
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.sims.server import CRASH_MARK
from tests.capability_fixtures import comfy_worker, consumes
from tests.helpers import wait_for
from tests.monitor.conftest import start_monitor  # noqa: F401, F811 (fixture)

#: Far longer than any hand-back here may take: a crash is told at once, not by a stall.
STALL = 60.0


def crashing_workflow() -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": 3, "delay": 0.1}},
            "3": {"class_type": "SimCrash", "inputs": {"image": ["2", 0]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "crash"}}}


def sim_state(sim: SimulatorProcess) -> dict[str, Any]:
    response = requests.get(f"{sim.control_url}/_sim/state", timeout=5)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


@pytest.fixture
def comfyui(tmp_path: Path) -> Iterator[Any]:
    """Factory of ComfyUI simulator subprocesses that stay down ``restart`` s after a crash."""
    started: list[SimulatorProcess] = []

    def start(restart: float) -> SimulatorProcess:
        proc = SimulatorProcess(output_dir=tmp_path / f"sim{len(started)}", log_path=tmp_path / f"sim{len(started)}.log")
        started.append(proc.start())
        proc.set_options(crash_restart=restart)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[Any]:
    started: list[A1111SimulatorProcess] = []

    def start(restart: float) -> A1111SimulatorProcess:
        proc = A1111SimulatorProcess(step_seconds=0.1, load_seconds=0.0, log_path=tmp_path / f"webui{len(started)}.log")
        started.append(proc.start())
        proc.configure(crash_restart=restart, crash_after=0.5)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_a_comfyui_that_crashes_mid_job_hands_the_job_back_at_once_with_the_reason(
        app, start_worker, comfyui, machine_id):
    # Given one machine whose ComfyUI comes back 1 s after a crash, jobs retried once
    sim = comfyui(1.0)
    worker = comfy_worker(start_worker, machine_id, "a", sim, max_retries="1")
    wait_for(lambda: consumes(app, worker, "comfyui"), 30, what="the worker to take comfyui jobs")
    # When a job's custom node takes ComfyUI down mid-prompt
    job = submit_job("comfyui", {"workflow": crashing_workflow(), "stall_timeout": STALL}, app=app)
    wait_for(lambda: sim_state(sim)["crashes"] >= 1, 60, interval=0.05, what="the first crash")
    crashed_at = time.monotonic()
    # Then the job is handed back at once (not after the stall timeout), saying why
    wait_for(lambda: "exited or restarted" in worker.log_text(), 20, interval=0.1, what="the hand-back")
    assert time.monotonic() - crashed_at < STALL / 4
    # ... and, crashing the same machine's server again, fails once its retry is used (one
    # machine only: not poison)
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=STALL)
    error = info.value.error
    assert error["type"] == "ServerCrashed", error
    assert f"ComfyUI at {sim.url} exited or restarted" in error["message"]
    assert sim_state(sim)["crashes"] == 2
    assert app.AsyncResult(job.id).retries == 1


def test_a_job_that_crashes_comfyui_on_two_machines_fails_as_poison_and_is_not_retried_further(
        app, start_worker, comfyui, machine_id, start_monitor):  # noqa: F811 (fixture)
    monitor = start_monitor()
    # Given two machines whose ComfyUIs stay down a while after a crash, and retries to spare
    sims = [comfyui(20.0), comfyui(20.0)]
    workers = [comfy_worker(start_worker, machine_id, name, sim, max_retries="5") for name, sim in zip("ab", sims, strict=True)]
    for worker in workers:
        wait_for(lambda w=worker: consumes(app, w, "comfyui"), 30, what="both workers to take comfyui jobs")
    # When a job whose node kills ComfyUI runs
    started = time.monotonic()
    job = submit_job("comfyui", {"workflow": crashing_workflow(), "stall_timeout": STALL}, app=app)
    # Then it takes down one server, is handed back, takes down the other, and fails as poison,
    # each hand-back at once while the dead server refuses connections (no stall waited out)
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=STALL)
    assert time.monotonic() - started < STALL / 2
    error = info.value.error
    assert error["type"] == "CrashesServers", error
    assert error["message"].startswith("crashed the server on 2 machines")
    assert sorted(error["details"]["machines"]) == sorted(f"{machine_id}-{n}" for n in "ab")
    assert [sim_state(s)["crashes"] for s in sims] == [1, 1]
    # (not retried further: one retry, the hand-back after the first crash)
    assert app.AsyncResult(job.id).retries == 1
    # And the monitor shows why, and the crash that handed it back the first time
    shown = wait_for(lambda: (lambda j: j if j["status"] == "failed" else None)(
        monitor.get(f"/api/jobs/{job.id}").json()), 30, interval=0.2, what="the monitor to show it failed")
    assert shown["error"]["type"] == "CrashesServers" and shown["attempt"] >= 1
    assert "exited or restarted" in shown["error"]["details"]["last"]["message"]


def test_a_job_that_crashes_the_webui_on_two_machines_is_handed_back_once_then_fails_as_poison(
        app, start_worker, webui, machine_id):
    # Given two machines whose WebUIs stay down a while after a crash
    sims = [webui(20.0), webui(20.0)]
    workers = [start_worker("gpu0", connectors="a1111", a1111_url=sim.url, machine_id=f"{machine_id}-{name}",
                            max_retries="5") for name, sim in zip("ab", sims, strict=True)]
    for worker in workers:
        wait_for(lambda w=worker: consumes(app, w, "a1111"), 30, what="both workers to take a1111 jobs")
    started = time.monotonic()
    job = submit_job("a1111", {"prompt": f"a lighthouse {CRASH_MARK}", "steps": 100, "stall_timeout": STALL},
                     app=app)
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=STALL)
    # Then each WebUI went down once, each hand-back came at once (no stall timeout waited out)
    assert time.monotonic() - started < STALL / 2
    error = info.value.error
    assert error["type"] == "CrashesServers", error
    assert error["message"].startswith("crashed the server on 2 machines")
    assert "the WebUI at" in error["message"] and "exited or restarted" in error["message"]
    assert [s.state()["crashes"] for s in sims] == [1, 1]
    assert app.AsyncResult(job.id).retries == 1
