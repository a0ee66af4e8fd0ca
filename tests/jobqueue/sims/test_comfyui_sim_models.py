"""The simulator's model files and VRAM, over real HTTP: what ``--models`` and ``--vram-gb``
expose, and validation refusing a checkpoint it does not have, with ComfyUI's error body."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from jobqueue.connectors.comfyui.models import read_models, vram_of
from jobqueue.sims.comfyui import models
from jobqueue.sims.comfyui.models import checkpoint_workflow
from jobqueue.sims.comfyui.server import SimulatorThread
from tests.helpers import wait_for


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorThread]:
    server = SimulatorThread(output_dir=str(tmp_path / "out"), temp_dir=str(tmp_path / "temp"),
                             models_present=["a.safetensors", "b.safetensors"], vram_gb=24).start()
    yield server
    server.stop()
    models.set_models(checkpoints=[])  # the files belong to the process: leave none behind


def test_the_models_are_the_loader_options_and_the_files_of_models_checkpoints(sim: SimulatorThread) -> None:
    info = requests.get(f"{sim.url}/object_info/CheckpointLoaderSimple", timeout=5).json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.safetensors"]
    assert "checkpoints" in requests.get(f"{sim.url}/models", timeout=5).json()
    assert requests.get(f"{sim.url}/api/models/checkpoints", timeout=5).json() == ["a.safetensors", "b.safetensors"]
    assert requests.get(f"{sim.url}/models/no_such_folder", timeout=5).status_code == 404
    found = read_models(sim.url, 5)
    assert found is not None and found["checkpoints"] == ["a.safetensors", "b.safetensors"] and found["loras"] == []


def test_the_vram_is_one_cuda_device_in_system_stats(sim: SimulatorThread) -> None:
    devices = requests.get(f"{sim.url}/system_stats", timeout=5).json()["devices"]
    assert [d["type"] for d in devices] == ["cuda"] and devices[0]["vram_total"] == 24 * 2**30
    assert vram_of(devices) == (24.0, 23.5)


def test_a_checkpoint_it_does_not_have_is_refused_like_comfyui_and_one_it_has_runs(sim: SimulatorThread) -> None:
    # When a workflow loads c, which is not there
    res = requests.post(f"{sim.url}/prompt", json={"prompt": checkpoint_workflow("c.safetensors")}, timeout=5)
    # Then ComfyUI's 400: the loader node, value_not_in_list, the options and the value
    assert res.status_code == 400
    body = res.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    [err] = body["node_errors"]["1"]["errors"]
    assert body["node_errors"]["1"]["class_type"] == "CheckpointLoaderSimple"
    assert err["type"] == "value_not_in_list" and err["message"] == "Value not in list"
    assert err["details"] == "ckpt_name: 'c.safetensors' not in ['a.safetensors', 'b.safetensors']"
    assert err["extra_info"]["received_value"] == "c.safetensors"
    # And a workflow loading b is accepted and saves its image
    ok = requests.post(f"{sim.url}/prompt", json={"prompt": checkpoint_workflow("b.safetensors")}, timeout=5)
    assert ok.status_code == 200 and ok.json()["node_errors"] == {}
    # When b is deleted while the simulator runs, it is refused too
    assert requests.post(f"{sim.url}/_sim/models", json={"checkpoints": ["a.safetensors"]}, timeout=5).ok
    again = requests.post(f"{sim.url}/prompt", json={"prompt": checkpoint_workflow("b.safetensors")}, timeout=5)
    assert again.status_code == 400


def _run_prompt(url: str, ckpt: str, prefix: str) -> float:
    """POST a workflow loading ``ckpt``, wait for its history entry; return the seconds it took."""
    began = time.monotonic()
    res = requests.post(f"{url}/prompt", json={"prompt": checkpoint_workflow(ckpt, prefix)}, timeout=5)
    assert res.status_code == 200, res.text
    pid = res.json()["prompt_id"]
    wait_for(lambda: pid in requests.get(f"{url}/history/{pid}", timeout=5).json(), 30, what="the prompt to end")
    return time.monotonic() - began


def test_a_checkpoint_switch_pays_the_load_time_and_the_same_checkpoint_again_does_not(sim: SimulatorThread) -> None:
    # Given loading takes 0.6 s and a checkpoint takes 10 GiB of the 24 GiB card
    assert requests.post(f"{sim.url}/_sim/options", json={"load_seconds": 0.6, "checkpoint_gb": 10.0}, timeout=5).ok
    # When a, a, b, a run one after the other
    took = [_run_prompt(sim.url, ckpt, f"p{i}") for i, ckpt in enumerate(["a.safetensors", "a.safetensors",
                                                                        "b.safetensors", "a.safetensors"])]
    # Then the first and every switch load (the classic cache keeps only the previous prompt's
    # loader), the repeat is cached
    assert took[0] >= 0.6 and took[2] >= 0.6 and took[3] >= 0.6
    assert took[1] < 0.5
    state = requests.get(f"{sim.url}/_sim/state", timeout=5).json()
    assert state["loads"] == 3
    # And both fit in VRAM (least recently used first), which /system_stats shows as used
    assert state["loaded"] == ["b.safetensors", "a.safetensors"]
    free = requests.get(f"{sim.url}/system_stats", timeout=5).json()["devices"][0]["vram_free"]
    assert free == 24 * 2**30 - 2**29 - 20 * 2**30


def test_a_checkpoint_that_does_not_fit_beside_the_others_unloads_the_least_recently_used(
        sim: SimulatorThread) -> None:
    # Given checkpoints of 10 GiB on a 24 GiB card, and a third file
    models.set_models(checkpoints=["a.safetensors", "b.safetensors", "c.safetensors"])
    assert requests.post(f"{sim.url}/_sim/options", json={"checkpoint_gb": 10.0}, timeout=5).ok
    # When a, b, then c load
    for i, ckpt in enumerate(["a.safetensors", "b.safetensors", "c.safetensors"]):
        _run_prompt(sim.url, ckpt, f"q{i}")
    # Then a (the least recently used) was unloaded to make room for c
    assert requests.get(f"{sim.url}/_sim/state", timeout=5).json()["loaded"] == ["b.safetensors", "c.safetensors"]
