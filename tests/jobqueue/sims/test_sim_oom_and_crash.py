"""Both simulators run out of memory by the documented formula and crash on command, then come
back empty on the same port (in-process servers over real sockets)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.sims.a1111.server import A1111SimulatorThread
from jobqueue.sims.comfyui.options import OOM_TIPS
from jobqueue.sims.comfyui.server import SimulatorThread
from jobqueue.sims.server import CRASH_MARK
from tests.helpers import wait_for
from tests.jobqueue.sims.test_comfyui_sim import Client


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[SimulatorThread]:
    server = SimulatorThread(output_dir=str(tmp_path / "out"), temp_dir=str(tmp_path / "temp"), vram_gb=8).start()
    yield server
    server.stop()


@pytest.fixture
def webui() -> Iterator[A1111SimulatorThread]:
    server = A1111SimulatorThread(step_seconds=0.05, load_seconds=0.0, vram_gb=8).start()
    yield server
    server.stop()


def image_prompt(side: int, batch: int, then: str = "SaveImage") -> dict[str, Any]:
    second: dict[str, Any] = {"images": ["1", 0], "filename_prefix": "x"} if then == "SaveImage" else {"image": ["1", 0]}
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": side, "height": side, "batch_size": batch, "color": 1}},
              "2": {"class_type": then, "inputs": second}}
    if then != "SaveImage":
        prompt["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
    return prompt


def history(url: str, prompt_id: str) -> dict[str, Any] | None:
    entry: dict[str, Any] | None = requests.get(f"{url}/history/{prompt_id}", timeout=5).json().get(prompt_id)
    return entry


def test_a_comfyui_prompt_whose_pixels_times_batch_exceed_the_vram_fails_with_torchs_oom_and_comfyuis_tip(comfy):
    client = Client(comfy.url, "c")
    try:
        # Given an 8 GiB card: 1024² × 2 needs 2 + 1.5 × 2.1 = 5.1 GB, × 4 needs 8.3 GB
        fits = requests.post(f"{comfy.url}/prompt", json={"prompt": image_prompt(1024, 2), "client_id": "c"}, timeout=5)
        too_big = requests.post(f"{comfy.url}/prompt", json={"prompt": image_prompt(1024, 4), "client_id": "c"}, timeout=5)
        ok, failed = fits.json()["prompt_id"], too_big.json()["prompt_id"]
        wait_for(lambda: history(comfy.url, ok) and history(comfy.url, failed), what="both prompts to end")
        # Then the first succeeds, the second fails in its first node as a real out-of-memory does
        assert history(comfy.url, ok)["status"]["status_str"] == "success"
        error = next(m["data"] for m in client.messages if isinstance(m, dict) and m["type"] == "execution_error")
        assert error["prompt_id"] == failed and error["node_type"] == "EmptyImage"
        assert error["exception_type"] == "torch.OutOfMemoryError"
        assert error["exception_message"].startswith("Allocation on device 0 would exceed allowed memory")
        assert "Device limit            : 8.00 GiB" in error["exception_message"]
        assert error["exception_message"].endswith(OOM_TIPS)
    finally:
        client.close()


def test_comfyuis_simcrash_node_takes_the_server_down_and_it_comes_back_empty(comfy):
    # Given a ComfyUI that restarts 2 s after a crash, with one prompt in its history
    comfy.server.options.update({"crash_restart": 2.0})
    done = requests.post(f"{comfy.url}/prompt", json={"prompt": image_prompt(16, 1)}, timeout=5).json()["prompt_id"]
    wait_for(lambda: history(comfy.url, done), what="a first prompt to end")
    client = Client(comfy.url, "c")
    try:
        # When a prompt whose custom node crashes it runs (after a second of sampling), and
        # another waits behind it
        crashing = image_prompt(64, 1, "SimCrash")
        crashing["2"]["inputs"]["image"] = ["4", 0]
        crashing["4"] = {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": 5, "delay": 0.2}}
        crash = requests.post(f"{comfy.url}/prompt", json={"prompt": crashing, "client_id": "c"}, timeout=5).json()["prompt_id"]
        behind = requests.post(f"{comfy.url}/prompt", json={"prompt": image_prompt(32, 1)}, timeout=5).json()["prompt_id"]
        assert len(requests.get(f"{comfy.url}/queue", timeout=5).json()["queue_pending"]) == 1
        # Then the websocket closes and connections are refused ...
        wait_for(lambda: not client._thread.is_alive(), 10, what="the websocket to close")
        assert comfy.server.crashes == 1
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{comfy.url}/queue", timeout=2)
    finally:
        client.close()
    # ... until it is back on the same port, with an empty queue and history
    queue = wait_for(lambda: _answer(f"{comfy.url}/queue"), 10, what="the server to come back")
    assert queue == {"queue_running": [], "queue_pending": []}
    assert [history(comfy.url, p) for p in (done, crash, behind)] == [None, None, None]
    # And it runs prompts again
    again = requests.post(f"{comfy.url}/prompt", json={"prompt": image_prompt(16, 1)}, timeout=5).json()["prompt_id"]
    assert wait_for(lambda: history(comfy.url, again), what="a prompt after the restart")["status"]["status_str"] == "success"


def test_post_free_is_answered_like_comfyui_and_counted(comfy):
    assert requests.post(f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}, timeout=5).status_code == 200
    assert comfy.server.frees == 1


def test_the_webui_crashes_mid_request_on_the_crash_mark_cutting_the_request_and_comes_back_empty(webui):
    webui.configure(crash_after=0.3, crash_restart=1.0)
    out: dict[str, Any] = {}

    def post() -> None:
        try:
            requests.post(f"{webui.url}/sdapi/v1/txt2img", json={"prompt": f"x {CRASH_MARK}", "steps": 100}, timeout=30)
        except requests.ConnectionError as exc:
            out["error"] = exc

    thread = threading.Thread(target=post)
    thread.start()
    thread.join(15)
    # Then the request's connection was cut mid-request
    assert isinstance(out.get("error"), requests.ConnectionError) and webui.server.crashes == 1
    # And the WebUI comes back idle, with no task and a fresh state
    state = wait_for(lambda: _answer(f"{webui.url}/sdapi/v1/progress?skip_current_image=true"), 10, what="the restart")
    assert state["state"]["job_count"] == 0
    assert webui.server.engine.generated == 0 and webui.server.engine.tasks.current is None


def test_the_webui_reports_its_card_in_sdapi_memory(webui):
    memory = requests.get(f"{webui.url}/sdapi/v1/memory", timeout=5).json()
    assert memory["cuda"]["system"]["total"] == 8 * 2**30
    assert set(memory["cuda"]) >= {"system", "active", "allocated", "reserved", "inactive", "events"}


def _answer(url: str) -> Any:
    try:
        response = requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None
    return response.json() if response.status_code == 200 else None
