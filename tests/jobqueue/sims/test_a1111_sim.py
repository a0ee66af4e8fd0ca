"""The Stable Diffusion WebUI simulator speaks the WebUI's API over real HTTP: FastAPI's 422
bodies (pydantic 1 for A1111 v1.10.1, pydantic 2 for Forge), the progress fields, task ids,
interrupt and skip, deterministic PNGs, and its fault switches."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from jobqueue.connectors.a1111.fields import request_fields
from jobqueue.sims.a1111.server import A1111SimulatorThread
from jobqueue.sims.a1111.validation import validate_request
from jobqueue.up.embedded import free_port
from tests.helpers import ROOT, child_env, stop_process_group, wait_for


@pytest.fixture
def sim() -> Iterator[A1111SimulatorThread]:
    server = A1111SimulatorThread(step_seconds=0.02, load_seconds=0.5).start()
    yield server
    server.stop()


@pytest.fixture
def forge() -> Iterator[A1111SimulatorThread]:
    server = A1111SimulatorThread(flavour="forge", step_seconds=0.02).start()
    yield server
    server.stop()


def in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """POST txt2img in a thread (it blocks until the images are done)."""
    out: dict[str, Any] = {}

    def post() -> None:
        out["response"] = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, out


def progress(url: str, skip: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = requests.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": str(skip).lower()},
                                          timeout=5).json()
    return answer


# -- validation ----------------------------------------------------------------------------------
def test_a1111_answers_bad_fields_with_pydantic_ones_422_body(sim):
    response = requests.post(f"{sim.url}/sdapi/v1/txt2img",
                             json={"steps": "many", "cfg_scale": "high", "restore_faces": "maybe", "styles": [{}],
                                   "override_settings": 3, "script_args": "x", "width": 1.7, "prompt": 5}, timeout=5)
    assert response.status_code == 422
    assert response.json() == {"detail": [
        {"loc": ["body", "styles", 0], "msg": "str type expected", "type": "type_error.str"},
        {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"},
        {"loc": ["body", "cfg_scale"], "msg": "value is not a valid float", "type": "type_error.float"},
        {"loc": ["body", "restore_faces"], "msg": "value could not be parsed to a boolean", "type": "type_error.bool"},
        {"loc": ["body", "override_settings"], "msg": "value is not a valid dict", "type": "type_error.dict"},
        {"loc": ["body", "script_args"], "msg": "value is not a valid list", "type": "type_error.list"},
    ]}


def test_forge_answers_bad_fields_with_pydantic_twos_422_body(forge):
    response = requests.post(f"{forge.url}/sdapi/v1/txt2img",
                             json={"steps": "many", "width": 1.5, "prompt": 5, "distilled_cfg_scale": [],
                                   "enable_hr": "maybe"}, timeout=5)
    assert response.status_code == 422
    assert response.json() == {"detail": [
        {"type": "string_type", "loc": ["body", "prompt"], "msg": "Input should be a valid string", "input": 5},
        {"type": "int_parsing", "loc": ["body", "steps"],
         "msg": "Input should be a valid integer, unable to parse string as an integer", "input": "many"},
        {"type": "float_type", "loc": ["body", "distilled_cfg_scale"], "msg": "Input should be a valid number",
         "input": []},
        {"type": "int_from_float", "loc": ["body", "width"],
         "msg": "Input should be a valid integer, got a number with a fractional part", "input": 1.5},
        {"type": "bool_parsing", "loc": ["body", "enable_hr"],
         "msg": "Input should be a valid boolean, unable to interpret input", "input": "maybe"},
    ]}


def test_bodies_that_are_not_objects_get_fastapis_body_errors_in_both_flavours():
    ok, errors = validate_request(b"{bad", "txt2img", "a1111")
    assert ok is None and errors[0]["type"] == "value_error.jsondecode" and errors[0]["loc"] == ["body", 1]
    assert validate_request(b"", "txt2img", "a1111")[1] == [
        {"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]
    assert validate_request(b"[]", "txt2img", "a1111")[1] == [
        {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    assert validate_request(b"{bad", "txt2img", "forge")[1] == [
        {"type": "json_invalid", "loc": ["body", 1], "msg": "JSON decode error", "input": {},
         "ctx": {"error": "Expecting property name enclosed in double quotes"}}]
    assert validate_request(b"[1]", "txt2img", "forge")[1][0]["type"] == "model_attributes_type"


def test_a_valid_body_is_filled_with_the_models_defaults_and_pydantic_one_coerces_like_pydantic():
    request, errors = validate_request(json.dumps({"steps": "12", "width": 64.9, "prompt": 3}).encode(), "txt2img")
    assert errors == [] and request is not None
    assert (request["steps"], request["width"], request["prompt"]) == (12, 64, "3")
    assert request["sampler_index"] == "Euler" and request["cfg_scale"] == 7.0 and request["n_iter"] == 1
    assert set(request) == set(request_fields("txt2img", "a1111"))
    assert "distilled_cfg_scale" in request_fields("txt2img", "forge") and "distilled_cfg_scale" not in request


def test_an_unknown_sampler_falls_back_to_the_default_from_1_9_and_on_forge_and_is_a_404_up_to_1_8(sim, forge):
    # Given A1111 1.10 and Forge (get_sampler_and_scheduler: samplers[0] for an unknown name)
    for server in (sim, forge):
        response = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"sampler_name": "Nope", "steps": 1}, timeout=5)
        # Then the request runs, silently, with DPM++ 2M
        assert response.status_code == 200
        assert json.loads(response.json()["info"])["sampler_name"] == "DPM++ 2M"
    # Given A1111 1.8 (validate_sampler_name on the name as given)
    sim.configure(version="1.8")
    response = requests.post(f"{sim.url}/sdapi/v1/txt2img", json={"sampler_name": "Nope", "steps": 1}, timeout=5)
    assert response.status_code == 404
    assert response.json() == {"error": "HTTPException", "detail": "Sampler not found", "body": "",
                               "errors": "404: Sampler not found"}


# -- generation and progress ---------------------------------------------------------------------
def test_txt2img_reports_the_webuis_progress_fields_and_returns_the_same_png_for_the_same_seed(sim):
    # Given an idle WebUI
    idle = progress(sim.url)
    assert idle == {"progress": 0, "eta_relative": 0, "current_image": None, "textinfo": None, "state": {
        "skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
        "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
    # When a 30-step job runs
    body = {"prompt": "a cat", "seed": 7, "steps": 30, "width": 64, "height": 48}
    thread, out = in_background(sim.url, body)
    running = wait_for(lambda: (p := progress(sim.url))["state"]["sampling_step"] >= 12 and p, what="12 steps")
    # Then progress has the WebUI's fields, values, and a base64 PNG preview
    assert set(running) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert running["state"]["job"] == "Batch 1 out of 1" and running["state"]["sampling_steps"] == 30
    assert 0.4 < running["progress"] < 1 and running["eta_relative"] > 0
    assert base64.b64decode(running["current_image"]).startswith(b"\x89PNG")
    assert progress(sim.url, skip=True)["current_image"] is None
    thread.join(30)
    first = out["response"].json()
    # And the answer is TextToImageResponse: images, parameters, info (a JSON string)
    assert set(first) == {"images", "parameters", "info"}
    png = base64.b64decode(first["images"][0])
    assert png.startswith(b"\x89PNG") and b"parameters" in png and b"Seed: 7" in png
    info = json.loads(first["info"])
    assert info["seed"] == 7 and info["all_seeds"] == [7] and info["version"] == "v1.10.1"
    assert info["sd_model_name"] == "v1-5-pruned-emaonly" and first["parameters"]["steps"] == 30
    again = requests.post(f"{sim.url}/sdapi/v1/txt2img", json=body, timeout=30).json()
    assert again["images"] == first["images"]


def test_internal_progress_tells_a_queued_task_from_the_active_one(sim):
    sim.configure(step_seconds=0.05)
    one, _ = in_background(sim.url, {"steps": 40, "force_task_id": "one"})
    wait_for(lambda: progress(sim.url)["state"]["sampling_step"] >= 1, what="the first task to run")
    two, _ = in_background(sim.url, {"steps": 1, "force_task_id": "two"})

    def ask(task: str) -> dict[str, Any]:
        answer: dict[str, Any] = requests.post(f"{sim.url}/internal/progress",
                                               json={"id_task": task, "live_preview": False}, timeout=5).json()
        return answer

    queued = wait_for(lambda: (a := ask("two"))["queued"] and a, what="the second task queued")
    assert queued["active"] is False and queued["textinfo"] == "In queue: 1/1"
    assert ask("one")["active"] is True
    requests.post(f"{sim.url}/sdapi/v1/interrupt", timeout=5)
    one.join(10)
    two.join(10)
    assert ask("one")["completed"] is True and ask("two")["completed"] is True


def test_interrupt_stops_at_the_next_step_and_still_returns_the_partial_image(sim):
    sim.configure(step_seconds=0.05)
    thread, out = in_background(sim.url, {"steps": 200, "n_iter": 3, "seed": 1})
    wait_for(lambda: progress(sim.url)["state"]["sampling_step"] >= 2, what="the job under way")
    assert requests.post(f"{sim.url}/sdapi/v1/interrupt", timeout=5).json() == {}
    thread.join(5)
    assert not thread.is_alive()
    answer = out["response"].json()
    assert len(answer["images"]) == 1 and json.loads(answer["info"])["all_seeds"] == [1]
    assert progress(sim.url)["state"]["job_count"] == 0


def test_skip_ends_the_current_batch_and_goes_on_with_the_next(sim):
    sim.configure(step_seconds=0.05)
    thread, out = in_background(sim.url, {"steps": 200, "n_iter": 2, "seed": 1, "width": 64, "height": 64})
    wait_for(lambda: progress(sim.url)["state"]["sampling_step"] >= 2, what="batch 1 under way")
    assert requests.post(f"{sim.url}/sdapi/v1/skip", timeout=5).json() is None
    wait_for(lambda: progress(sim.url)["state"]["job_no"] == 1, what="batch 2")
    requests.post(f"{sim.url}/sdapi/v1/interrupt", timeout=5)
    thread.join(5)
    assert len(out["response"].json()["images"]) == 2


def test_a_checkpoint_override_loads_silently_then_the_option_is_restored(sim):
    sim.configure(load_seconds=0.8)
    thread, out = in_background(sim.url, {"steps": 2, "override_settings": {
        "sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"}})
    loading = wait_for(lambda: (p := progress(sim.url))["state"]["job_count"] == -1 and p, what="the load")
    assert loading["state"]["sampling_step"] == 0
    thread.join(10)
    assert json.loads(out["response"].json()["info"])["sd_model_name"] == "sd_xl_base_1.0"
    options = requests.get(f"{sim.url}/sdapi/v1/options", timeout=5).json()
    assert options["sd_model_checkpoint"].startswith("v1-5")  # override_settings_restore_afterwards


# -- faults and the command ----------------------------------------------------------------------
def test_fault_switches_refuse_freeze_and_slow_behave_like_a_sick_server(sim):
    sim.fault("refuse")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim.url}/internal/ping", timeout=2)
    sim.fault("freeze")
    with pytest.raises(requests.Timeout):
        requests.get(f"{sim.url}/internal/ping", timeout=1)
    sim.configure(slow_seconds=0.6)
    sim.fault("slow")
    with pytest.raises(requests.Timeout):
        requests.get(f"{sim.url}/internal/ping", timeout=0.3)
    sim.fault("none")
    assert requests.get(f"{sim.url}/internal/ping", timeout=2).json() == {}


def test_the_a1111_sim_command_serves_the_api_on_the_given_port(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jobqueue.cli", "a1111-sim", "--port", str(port)],
                            env=child_env({}), cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/internal/ping", timeout=1).json() == {}
            except requests.ConnectionError:
                return False

        wait_for(up, 20, interval=0.1, what="the simulator")
        sysinfo = requests.get(f"http://127.0.0.1:{port}/internal/sysinfo", timeout=5).json()
        assert sysinfo["Version"] == "v1.10.1"
    finally:
        stop_process_group(proc)


# -- as the real WebUI behaves (issue 26) ----------------------------------------------------------
def test_a_request_whose_client_went_away_still_runs_to_its_end_under_the_lock(sim):
    # Given a request whose client gives up while it waits behind another one
    sim.configure(step_seconds=0.02)
    first, _ = in_background(sim.url, {"steps": 40, "force_task_id": "first"})
    wait_for(lambda: progress(sim.url)["state"]["sampling_step"] >= 1, what="the first request to run")
    with pytest.raises(requests.Timeout):
        requests.post(f"{sim.url}/sdapi/v1/txt2img", json={"steps": 30, "force_task_id": "gone"}, timeout=0.3)
    first.join(10)
    # Then the WebUI still runs it, every step of it (no handler cancellation)
    state = wait_for(lambda: (s := sim.server.engine.runs.get("gone")) and s["ended"] and s, 15,
                     what="the abandoned request to end")
    assert state["steps"] == 30 and not state["interrupted"]


def test_version_1_7_keeps_no_task_ids_for_api_requests_and_1_8_does(sim):
    # Given 1.7: force_task_id is not a field, start_task is never called for the API
    sim.configure(version="1.7", step_seconds=0.05)
    assert requests.get(f"{sim.url}/internal/sysinfo", timeout=5).json()["Version"] == "v1.7.0"
    thread, _ = in_background(sim.url, {"steps": 30, "force_task_id": "mine"})
    wait_for(lambda: progress(sim.url)["state"]["sampling_step"] >= 1, what="the request to run")
    asked = requests.post(f"{sim.url}/internal/progress", json={"id_task": "mine"}, timeout=5).json()
    # Then /internal/progress exists but never knows the request
    assert (asked["active"], asked["queued"], asked["completed"]) == (False, False, False)
    thread.join(10)
    assert requests.post(f"{sim.url}/internal/progress", json={"id_task": "mine"}, timeout=5).json()["completed"] is False
    # And from 1.8 on it does
    sim.configure(version="1.8")
    requests.post(f"{sim.url}/sdapi/v1/txt2img", json={"steps": 1, "force_task_id": "mine2"}, timeout=10)
    assert requests.post(f"{sim.url}/internal/progress", json={"id_task": "mine2"}, timeout=5).json()["completed"]


def test_the_lock_is_released_before_the_images_are_encoded_so_the_next_job_already_runs(sim):
    # Given slow image encoding, and a second request queued behind the first
    sim.configure(step_seconds=0.02, encode_seconds=1.0)
    first, out = in_background(sim.url, {"steps": 5, "force_task_id": "first"})
    wait_for(lambda: progress(sim.url)["state"]["sampling_step"] >= 1, what="the first request to run")
    second, _ = in_background(sim.url, {"steps": 200, "force_task_id": "second"})
    # Then while the first answer is still being written, the second job already runs
    wait_for(lambda: sim.server.engine.tasks.current == "second", 5, what="the second job to start")
    assert first.is_alive() and "response" not in out
    first.join(10)
    assert out["response"].status_code == 200
    requests.post(f"{sim.url}/sdapi/v1/interrupt", timeout=5)
    second.join(10)


def test_override_settings_reject_unknown_options_accept_checkpoint_aliases_and_reload_silently_after(sim):
    sim.configure(load_seconds=0.6)
    # An option the WebUI does not have: opts.set raises KeyError, a 500 through the middleware
    bad = requests.post(f"{sim.url}/sdapi/v1/txt2img", json={"steps": 1, "override_settings": {"no_such": 1}}, timeout=10)
    assert bad.status_code == 500
    assert bad.json() == {"error": "KeyError", "detail": "", "body": "", "errors": "'no_such'"}
    # A checkpoint by short hash, and by name without extension, is the checkpoint
    for alias in ("31e35c80fc", "sd_xl_base_1.0"):
        answer = requests.post(f"{sim.url}/sdapi/v1/txt2img", timeout=10,
                               json={"steps": 1, "override_settings": {"sd_model_checkpoint": alias}})
        assert json.loads(answer.json()["info"])["sd_model_name"] == "sd_xl_base_1.0", alias
    # After the override is restored, the next plain job reloads the options' model first,
    # silently: job_count -1 and no step while it loads
    loads = sim.server.engine.loads
    thread, out = in_background(sim.url, {"steps": 1})
    loading = wait_for(lambda: (p := progress(sim.url))["state"]["job_count"] == -1 and p, what="the silent reload")
    assert loading["state"]["sampling_step"] == 0
    thread.join(10)
    assert json.loads(out["response"].json()["info"])["sd_model_name"] == "v1-5-pruned-emaonly"
    assert sim.server.engine.loads == loads + 1


def test_out_of_memory_is_a_500_cuda_out_of_memory_on_demand_and_beyond_the_simulated_vram(sim):
    # On demand: the next request fails whatever its size
    sim.configure(oom_next=1)
    answer = requests.post(f"{sim.url}/sdapi/v1/txt2img", json={"steps": 1, "width": 64, "height": 64}, timeout=10)
    assert answer.status_code == 500 and answer.json()["error"] == "OutOfMemoryError"
    assert answer.json()["errors"].startswith("CUDA out of memory")
    assert requests.post(f"{sim.url}/sdapi/v1/txt2img", json={"steps": 1}, timeout=10).status_code == 200
    # By size: 2 GB + 1.5 GB per megapixel of width x height x batch_size, against vram_gb (8 here)
    sim.configure(vram_gb=8)
    fits = {"steps": 1, "width": 1024, "height": 1024, "batch_size": 2}    # 2 + 1.5 x 2.1 = 5.1 GB
    too_big = {"steps": 1, "width": 1024, "height": 1024, "batch_size": 4}  # 2 + 1.5 x 4.2 = 8.3 GB
    assert requests.post(f"{sim.url}/sdapi/v1/txt2img", json=fits, timeout=10).status_code == 200
    failed = requests.post(f"{sim.url}/sdapi/v1/txt2img", json=too_big, timeout=10)
    assert failed.status_code == 500 and "CUDA out of memory" in failed.json()["errors"]
    assert progress(sim.url)["state"]["job_count"] == 0  # the lock and state are released


def test_progress_answers_500_while_a_preview_exists_in_a_format_it_cannot_encode(sim):
    # Given a job that renders previews with samples_format avif (an override for this job only)
    sim.configure(step_seconds=0.05)
    thread, out = in_background(sim.url, {"steps": 40, "override_settings": {"samples_format": "avif"}})
    wait_for(lambda: sim.server.engine.state.current_image is not None, what="a preview")
    # Then /progress with the image is a 500, without it the state is there
    failed = requests.get(f"{sim.url}/sdapi/v1/progress", params={"skip_current_image": "false"}, timeout=5)
    assert failed.status_code == 500 and failed.json()["detail"] == "Invalid image format"
    assert progress(sim.url, skip=True)["state"]["sampling_step"] >= 10
    thread.join(10)
    assert out["response"].status_code == 200  # the answer is encoded with the restored png


def test_a_simulator_process_takes_its_version_and_vram_from_the_command_line(tmp_path):
    from jobqueue.sims.a1111.process import A1111SimulatorProcess

    proc = A1111SimulatorProcess(version="1.7", vram_gb=4, log_path=tmp_path / "sim.log").start()
    try:
        assert requests.get(f"{proc.url}/internal/sysinfo", timeout=5).json()["Version"] == "v1.7.0"
        # 2 + 1.5 x (1024 x 1024 x 2 / 10^6) = 5.1 GB > 4 GB
        failed = requests.post(f"{proc.url}/sdapi/v1/txt2img", timeout=10,
                               json={"steps": 1, "width": 1024, "height": 1024, "batch_size": 2})
        assert failed.status_code == 500 and failed.json()["errors"].startswith("CUDA out of memory")
        assert requests.post(f"{proc.url}/sdapi/v1/txt2img", json={"steps": 1}, timeout=10).status_code == 200
    finally:
        proc.stop()
