"""Out of memory moves the job up: real subprocess workers on simulated cards of 8 and 24 GiB
(ComfyUI and WebUI simulators over real sockets, each raising the real server's out-of-memory
error when a request's pixels × batch exceed its VRAM: jobqueue.sims.vram)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.errors import JobFailed
from jobqueue.shared.routing import vram_step
from jobqueue.sims.a1111.process import A1111SimulatorProcess
from jobqueue.sims.vram import vram_needed_gb
from jobqueue.states import JobStatus
from tests.capability_fixtures import comfy_worker, consumes, start_sim
from tests.helpers import wait_for
from tests.monitor.conftest import start_monitor  # noqa: F401, F811 (fixture)

__all__ = ["start_sim"]  # a fixture

#: 1024×1024, a batch of 4: 2 + 1.5 × 4.19 ≈ 8.3 GB, more than an 8 GB card, far below 24.
SIDE, BATCH = 1024, 4


def big_workflow(batch: int = BATCH) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": SIDE, "height": SIDE, "batch_size": batch, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big"}}}


def big_request() -> dict[str, Any]:
    return {"prompt": "a large batch", "steps": 2, "width": SIDE, "height": SIDE, "batch_size": BATCH}


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[Any]:
    """Factory of WebUI simulator subprocesses with a given VRAM; all stopped at the end."""
    started: list[A1111SimulatorProcess] = []

    def start(vram_gb: float) -> A1111SimulatorProcess:
        proc = A1111SimulatorProcess(vram_gb=vram_gb, step_seconds=0.02, load_seconds=0.0,
                                     log_path=tmp_path / f"webui{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def webui_worker(start_worker: Any, machine_id: str, name: str, sim: A1111SimulatorProcess, **env: str) -> Any:
    return start_worker("gpu0", connectors="a1111", a1111_url=sim.url, machine_id=f"{machine_id}-{name}", **env)


def test_the_vram_formula_makes_the_test_job_too_big_for_8_gib_and_small_for_24():
    assert 8 < vram_needed_gb(SIDE, SIDE, BATCH) < 24


def test_a_comfyui_job_out_of_memory_on_8_gib_waits_saying_so_and_completes_on_a_24_gib_worker(
        app, start_worker, start_sim, start_monitor, machine_id):  # noqa: F811 (fixture)
    # Given only a worker on an 8 GiB card, and a monitor
    monitor = start_monitor()
    small = comfy_worker(start_worker, machine_id, "small", start_sim("a.safetensors", vram_gb=8))
    wait_for(lambda: consumes(app, small, f"comfyui.vram.{vram_step(8)}"), 30, what="the 8 GiB worker's queues")
    # When a job that needs about 8.3 GiB runs there
    job = submit_job("comfyui", {"workflow": big_workflow()}, app=app)
    # Then it runs out of memory, is moved up to the next tier and waits, saying why
    wait_for(lambda: job.status() == JobStatus.QUEUED and "out of GPU memory" in small.log_text(), 60,
             what="the job to be moved up")
    assert job.waiting_for() == "no online worker has 10 GiB of VRAM"
    shown = wait_for(lambda: (lambda j: j if j["status"] == "queued" and j.get("error") else None)(
        monitor.get(f"/api/jobs/{job.id}").json()), 30, interval=0.2, what="the monitor to show it moved up")
    assert shown["error"]["type"] == "OutOfMemory" and "moved up" in shown["error"]["message"]
    assert shown["requires"] == {"vram_gb": 10.0}
    assert shown["waiting_for"] == "no online worker has 10 GiB of VRAM"
    # When a worker on a 24 GiB card comes online
    big = comfy_worker(start_worker, machine_id, "big", start_sim("a.safetensors", vram_gb=24))
    # Then the job completes there, without a retry used
    result = job.wait(timeout=90)
    assert result["worker"] == big.node_name
    assert app.AsyncResult(job.id).retries == 0
    assert len(result["files"]) == BATCH


def test_a_comfyui_job_out_of_memory_with_no_larger_worker_fails_after_the_bound_naming_the_vram_tried(
        app, start_worker, start_sim, machine_id):
    # Given only an 8 GiB worker, with a moved-up job waiting at most 3 s for a larger one
    small = comfy_worker(start_worker, machine_id, "small", start_sim("a.safetensors", vram_gb=8), oom_wait="3")
    wait_for(lambda: consumes(app, small, f"comfyui.vram.{vram_step(8)}"), 30, what="the 8 GiB worker's queues")
    job = submit_job("comfyui", {"workflow": big_workflow()}, app=app)
    wait_for(lambda: job.status() == JobStatus.QUEUED and "out of GPU memory" in small.log_text(), 60,
             what="the job to be moved up")
    assert job.waiting_for() == "no online worker has 10 GiB of VRAM"
    # Then after the bound it fails, naming the VRAM tried and the one it waited for
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=60)
    error = info.value.error
    assert info.value.status == "failed" and error["type"] == "OutOfMemory"
    assert "with 8 GiB of VRAM" in error["message"] and "10 GiB or more" in error["message"], error
    assert error["details"]["vram_tried"] == [8]


def test_a_job_too_big_for_two_tiers_moves_up_once_per_tier_and_completes_on_the_largest_card(
        app, start_worker, start_sim, machine_id):
    # Given a job needing 2 + 1.5 × 8.4 ≈ 14.6 GB, and only an 8 GiB worker at first
    assert 12 < vram_needed_gb(SIDE, SIDE, 8) < 24
    small = comfy_worker(start_worker, machine_id, "s8", start_sim("a.safetensors", vram_gb=8))
    wait_for(lambda: consumes(app, small, f"comfyui.vram.{vram_step(8)}"), 30, what="the 8 GiB worker's queues")
    job = submit_job("comfyui", {"workflow": big_workflow(8)}, app=app)
    wait_for(lambda: job.waiting_for() == "no online worker has 10 GiB of VRAM", 60, what="the move to 10 GiB")
    # When a 12 GiB worker comes: it takes the job, runs out too, and moves it up once more
    middle = comfy_worker(start_worker, machine_id, "s12", start_sim("a.safetensors", vram_gb=12))
    wait_for(lambda: job.waiting_for() == "no online worker has 16 GiB of VRAM", 60, what="the move to 16 GiB")
    assert "out of GPU memory on " + middle.node_name in middle.log_text()
    # Then a 24 GiB worker completes it, no retry used along the way
    big = comfy_worker(start_worker, machine_id, "s24", start_sim("a.safetensors", vram_gb=24))
    assert job.wait(timeout=90)["worker"] == big.node_name
    assert app.AsyncResult(job.id).retries == 0


@pytest.mark.parametrize("free", [True, False])
def test_with_the_setting_a_comfyui_worker_posts_free_before_its_next_job_after_an_out_of_memory(
        app, start_worker, start_sim, machine_id, free):
    # Given an 8 GiB worker, with or without JOBQUEUE_COMFYUI_FREE_AFTER_OOM
    sim = start_sim("a.safetensors", vram_gb=8)
    small = comfy_worker(start_worker, machine_id, "small", sim, comfyui_free_after_oom=str(free).lower())
    wait_for(lambda: consumes(app, small, f"comfyui.vram.{vram_step(8)}"), 30, what="the 8 GiB worker's queues")
    # When a job runs out of memory there, then a small job runs there
    big = submit_job("comfyui", {"workflow": big_workflow()}, app=app)
    wait_for(lambda: big.status() == JobStatus.QUEUED and "out of GPU memory" in small.log_text(), 60,
             what="the job to be moved up")
    small_job = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "small"}}}
    assert submit_job("comfyui", {"workflow": small_job}, app=app).wait(timeout=60)["worker"] == small.node_name
    # Then, with the setting, ComfyUI got POST /free between the two prompts (once); without, never
    paths = [r["path"] for r in sim.requests() if r["method"] == "POST" and r["path"] in ("/prompt", "/free")]
    assert paths == (["/prompt", "/free", "/prompt"] if free else ["/prompt", "/prompt"])


def test_a_webui_job_out_of_memory_on_8_gib_is_moved_up_and_completes_on_a_24_gib_worker(
        app, start_worker, webui, machine_id):
    # Given WebUI workers on an 8 GiB and a 24 GiB card, the small one alone first
    small_sim = webui(8)
    small = webui_worker(start_worker, machine_id, "small", small_sim)
    wait_for(lambda: consumes(app, small, f"a1111.vram.{vram_step(8)}"), 30, what="the 8 GiB worker's queues")
    job = submit_job("a1111", big_request(), app=app)
    wait_for(lambda: job.status() == JobStatus.QUEUED and "out of GPU memory" in small.log_text(), 60,
             what="the job to be moved up")
    assert job.waiting_for() == "no online worker has 10 GiB of VRAM"
    # When the 24 GiB worker comes online, the job completes there
    big = webui_worker(start_worker, machine_id, "big", webui(24))
    result = job.wait(timeout=90)
    assert result["worker"] == big.node_name and len(result["files"]) == BATCH
    assert app.AsyncResult(job.id).retries == 0
    # (the small WebUI answered it with the real 500 "CUDA out of memory")
    assert small_sim.state()["generated"] == 0


def test_a_webui_job_out_of_memory_with_no_larger_worker_fails_after_the_bound(app, start_worker, webui, machine_id):
    small = webui_worker(start_worker, machine_id, "small", webui(8), oom_wait="3")
    wait_for(lambda: consumes(app, small, f"a1111.vram.{vram_step(8)}"), 30, what="the 8 GiB worker's queues")
    job = submit_job("a1111", big_request(), app=app)
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=90)
    assert info.value.error["type"] == "OutOfMemory"
    assert "with 8 GiB of VRAM" in info.value.error["message"] and "within 3 s" in info.value.error["message"]
