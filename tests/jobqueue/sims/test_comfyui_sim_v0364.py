"""The simulator behaves as ComfyUI v0.3.64's own source does where the issue-26 review found it
kinder: the history gap, list-only combo checks, the executor killed by a node without inputs,
partial validation, the clientId socket race, interrupt timing and naming, blocked outputs,
/view, the heap-ordered queue, a non-JSON body, OOM with tips, and the newer-server mode."""

from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from jobqueue.sims.comfyui import models
from jobqueue.sims.comfyui.server import SimulatorThread
from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import sim
from tests.jobqueue.sims.test_comfyui_sim import Client

__all__ = ["sim"]  # a fixture


def image(color: int = 5) -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}}


def save(source: str, prefix: str = "t") -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


def post(sim: SimulatorThread, prompt: dict[str, Any], client_id: str | None = "c1", **extra: Any) -> requests.Response:
    body: dict[str, Any] = {"prompt": prompt, "prompt_id": str(uuid.uuid4()), **extra}
    if client_id:
        body["client_id"] = client_id
    return requests.post(f"{sim.url}/prompt", json=body, timeout=5)


def options(sim: SimulatorThread, **values: Any) -> None:
    assert requests.post(f"{sim.url}/_sim/options", json=values, timeout=5).status_code == 200


def history(sim: SimulatorThread, prompt_id: str) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{sim.url}/history/{prompt_id}", timeout=5).json()
    return body


def ended(client: Client, prompt_id: str) -> dict[str, Any]:
    """The prompt's messages by type (the last of each), once ``executing: null`` arrived."""
    wait_for(lambda: client.done(prompt_id), 15, what=f"prompt {prompt_id} to end")
    return {m["type"]: m["data"] for m in client.messages if isinstance(m, dict)
            and m["data"].get("prompt_id") == prompt_id}


def test_history_follows_execution_success_only_after_the_unloading_gap(sim):
    # Given a ComfyUI that unloads its models after each prompt (2 s)
    options(sim, history_gap=2.0)
    client = Client(sim.url, "c1")
    try:
        prompt_id = post(sim, {"1": image(), "2": save("1")}).json()["prompt_id"]
        wait_for(lambda: any(isinstance(m, dict) and m["type"] == "execution_success" for m in client.messages),
                 what="execution_success")
        seen = time.monotonic()
        # Then the prompt is still running with no history, and history comes with executing null
        assert history(sim, prompt_id) == {}
        assert [i[1] for i in requests.get(f"{sim.url}/queue", timeout=5).json()["queue_running"]] == [prompt_id]
        ended(client, prompt_id)
        assert time.monotonic() - seen >= 1.5
        assert history(sim, prompt_id)[prompt_id]["status"]["status_str"] == "success"
    finally:
        client.close()


def test_a_v3_loader_accepts_a_missing_file_and_fails_when_it_runs_while_a_list_loader_refuses_it(sim):
    models.set_models(text_encoders=["a.safetensors"])
    clips = {f"clip_name{i}": "gone.safetensors" for i in (1, 2, 3)}
    use = {"class_type": "SimUseModel", "inputs": {"image": ["1", 0], "model": ["2", 0]}}
    # When a TripleCLIPLoader (classic: its type is the file list) names a missing file
    triple = post(sim, {"1": image(), "2": {"class_type": "TripleCLIPLoader", "inputs": clips}, "3": use, "4": save("3")})
    # Then POST /prompt refuses it
    assert triple.status_code == 400
    assert triple.json()["node_errors"]["2"]["errors"][0]["type"] == "value_not_in_list"
    # When a QuadrupleCLIPLoader (V3: type COMBO) names it
    client = Client(sim.url, "c1")
    try:
        quad = {"class_type": "QuadrupleCLIPLoader", "inputs": {**clips, "clip_name4": "a.safetensors"}}
        answer = post(sim, {"1": image(), "2": quad, "3": use, "4": save("3")})
        # Then it is queued and fails at run time with folder_paths' FileNotFoundError
        assert answer.status_code == 200 and answer.json()["node_errors"] == {}
        error = ended(client, answer.json()["prompt_id"])["execution_error"]
        assert (error["node_id"], error["node_type"], error["exception_type"]) == ("2", "QuadrupleCLIPLoader",
                                                                                   "FileNotFoundError")
        assert error["exception_message"] == \
            "Model in folder 'text_encoders' with filename 'gone.safetensors' not found.\n"
    finally:
        client.close()
        models.set_models(text_encoders=[])


def test_a_node_without_inputs_no_output_needs_kills_the_executor_for_good(sim):
    # Given a valid prompt plus a node without "inputs" that no output depends on
    client = Client(sim.url, "c1")
    try:
        answer = post(sim, {"1": image(), "2": save("1"), "9": {"class_type": "EmptyImage"}})
        # Then ComfyUI accepts it, starts it, and never ends it
        assert answer.status_code == 200
        prompt_id = answer.json()["prompt_id"]
        wait_for(lambda: requests.get(f"{sim.url}/_sim/state", timeout=5).json()["executor"] == "dead",
                 what="the executor to die")
        def told() -> list[str]:
            return [m["type"] for m in list(client.messages) if isinstance(m, dict)
                    and m["data"].get("prompt_id") == prompt_id]

        # (the websocket may deliver execution_start after the executor's death is visible)
        wait_for(lambda: told() != [], what="the prompt's messages")
        assert told() == ["execution_start"]
        # And the next prompt stays pending behind it for good
        nxt = post(sim, {"1": image(7), "2": save("1")}).json()["prompt_id"]
        queue = requests.get(f"{sim.url}/queue", timeout=5).json()
        assert [i[1] for i in queue["queue_running"]] == [prompt_id]
        assert [i[1] for i in queue["queue_pending"]] == [nxt]
        # And an output node without inputs is refused at validation instead
        bad = post(sim, {"1": {"class_type": "SaveImage"}}).json()
        assert bad["error"]["type"] == "prompt_outputs_failed_validation"
        assert bad["node_errors"]["1"]["errors"][0]["type"] == "exception_during_validation"
    finally:
        client.close()


def test_a_partly_invalid_prompt_is_accepted_with_node_errors_and_runs_the_valid_outputs(sim):
    client = Client(sim.url, "c1")
    try:
        prompt = {"1": image(), "2": save("1", "good"), "3": {"class_type": "ImageInvert", "inputs": {}},
                  "4": save("3", "bad")}
        answer = post(sim, prompt)
        assert answer.status_code == 200
        body = answer.json()
        assert body["node_errors"]["3"]["dependent_outputs"] == ["4"]
        ended(client, body["prompt_id"])
        assert list(history(sim, body["prompt_id"])[body["prompt_id"]]["outputs"]) == ["2"]
    finally:
        client.close()


def test_an_old_socket_closing_late_silences_the_new_one_with_the_same_client_id(sim):
    # Given a client reconnecting: the new socket opens before the old one's handler ends
    old = Client(sim.url, "c1")
    new = Client(sim.url, "c1")
    wait_for(lambda: any(isinstance(m, dict) and m["type"] == "status" for m in new.messages), what="new socket")
    old.close()
    wait_for(lambda: requests.get(f"{sim.url}/_sim/state", timeout=5).json()["sockets"] == 0,
             what="the registration to go")
    try:
        # When a prompt of that client runs
        prompt_id = post(sim, {"1": image(), "2": save("1")}).json()["prompt_id"]
        wait_for(lambda: history(sim, prompt_id) != {}, what="the prompt to end")
        # Then the new socket, still open, heard nothing of it
        assert not any(isinstance(m, dict) and m["data"].get("prompt_id") == prompt_id for m in new.messages)
        assert new.ws.connected
    finally:
        new.close()


def interrupt_during(sim: SimulatorThread, client: Client, node: str, body: dict[str, Any] | None = None) -> None:
    wait_for(lambda: any(isinstance(m, dict) and m["type"] == "executing" and m["data"].get("node") == node
                         for m in client.messages), what=f"node {node} running")
    requests.post(f"{sim.url}/interrupt", json=body or {}, timeout=5)


def test_an_interrupt_during_a_last_node_without_progress_is_never_honoured(sim):
    client = Client(sim.url, "c1")
    try:
        prompt = {"1": image(), "2": {"class_type": "SimSilentSleep", "inputs": {"image": ["1", 0], "seconds": 1.0}},
                  "3": {"class_type": "SimSlowSave", "inputs": {"images": ["2", 0], "seconds": 1.0,
                                                                "filename_prefix": "late"}}}
        prompt_id = post(sim, prompt).json()["prompt_id"]
        # When the interrupt arrives while the last node (a silent 1 s save) runs
        interrupt_during(sim, client, "3")
        # Then the prompt succeeds: nothing checks the flag after that node started
        messages = ended(client, prompt_id)
        assert "execution_success" in messages and "execution_interrupted" not in messages
        # When instead it arrives during the silent node before it
        prompt_id = post(sim, {**prompt, "1": image(6)}).json()["prompt_id"]
        interrupt_during(sim, client, "2")
        # Then the next node is the one interrupted, after its own executing message
        messages = ended(client, prompt_id)
        assert "execution_success" not in messages
        assert (messages["execution_interrupted"]["node_id"], messages["execution_interrupted"]["node_type"]) == \
            ("3", "SimSlowSave")
        executing = [m["data"]["node"] for m in client.messages if isinstance(m, dict) and m["type"] == "executing"
                     and m["data"].get("prompt_id") == prompt_id]
        assert executing[-2:] == ["3", None]
    finally:
        client.close()


def test_a_blocked_output_sends_an_execution_error_naming_the_blocked_node_and_the_prompt_succeeds(sim):
    client = Client(sim.url, "c1")
    try:
        prompt = {"1": image(), "2": {"class_type": "SimBlockOutputs", "inputs": {"image": ["1", 0], "block": True,
                                                                  "message": "nsfw"}},
                  "3": save("2", "blocked"), "4": save("1", "free")}
        prompt_id = post(sim, prompt).json()["prompt_id"]
        messages = ended(client, prompt_id)
        error = messages["execution_error"]
        assert (error["node_id"], error["node_type"], error["exception_type"], error["exception_message"]) == \
            ("3", "SaveImage", "ExecutionBlocked", "Execution Blocked: nsfw")
        assert "execution_success" in messages
        entry = history(sim, prompt_id)[prompt_id]
        assert entry["status"]["status_str"] == "success" and list(entry["outputs"]) == ["4"]
        assert "execution_error" not in [m[0] for m in entry["status"]["messages"]]
    finally:
        client.close()


def test_view_answers_with_comfyuis_status_codes_and_content_types(sim):
    client = Client(sim.url, "c1")
    try:
        prompt_id = post(sim, {"1": image(), "2": save("1", "v")}).json()["prompt_id"]
        ended(client, prompt_id)
    finally:
        client.close()
    [saved] = history(sim, prompt_id)[prompt_id]["outputs"]["2"]["images"]
    with open(f"{sim.server.output_dir}/notes.html", "w") as fh:
        fh.write("<p>hi</p>")

    def view(**params: str) -> requests.Response:
        return requests.get(f"{sim.url}/view", params=params, timeout=5)

    assert view().status_code == 404
    assert view(filename="../x.png").status_code == 400
    assert view(filename="/etc/passwd").status_code == 400
    assert view(filename=saved["filename"], type="input").status_code == 400
    assert view(filename=saved["filename"], subfolder="../..").status_code == 403
    assert view(filename="missing.png").status_code == 404
    good = view(filename=f"any/{saved['filename']}")
    assert (good.status_code, good.headers["Content-Type"]) == (200, "image/png")
    assert view(filename="notes.html").headers["Content-Type"] == "application/octet-stream"


def test_pending_prompts_are_listed_in_heap_order_and_a_non_json_body_is_a_500(sim):
    blocker = post(sim, {"1": image(), "2": {"class_type": "SimSilentSleep", "inputs": {"image": ["1", 0], "seconds": 2}},
                         "3": save("2")}).json()["prompt_id"]
    wait_for(lambda: requests.get(f"{sim.url}/queue", timeout=5).json()["queue_running"], what="a running prompt")
    for number in (5, 4, 3, 2, 1):
        post(sim, {"1": image(number), "2": save("1")}, number=number)
    pending = requests.get(f"{sim.url}/queue", timeout=5).json()["queue_pending"]
    assert [item[0] for item in pending] == [1.0, 2.0, 4.0, 5.0, 3.0]  # heapq's list, as ComfyUI shows it
    assert blocker
    broken = requests.post(f"{sim.url}/prompt", data=b"{not json", headers={"Content-Type": "application/json"},
                           timeout=5)
    assert broken.status_code == 500 and broken.headers["Content-Type"].startswith("text/plain")


def test_out_of_memory_is_reported_with_the_module_qualified_type_and_the_tips(sim):
    options(sim, oom_next=1)
    client = Client(sim.url, "c1")
    try:
        error = ended(client, post(sim, {"1": image(), "2": save("1")}).json()["prompt_id"])["execution_error"]
        assert error["exception_type"] == "torch.OutOfMemoryError"
        assert error["exception_message"].startswith("Allocation on device 0 would exceed allowed memory.")
        assert error["exception_message"].endswith(
            "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
            "have accidentally set the batch_size to a large number.")
        assert requests.get(f"{sim.url}/_sim/state", timeout=5).json()["options"]["oom_next"] == 0
    finally:
        client.close()


def test_the_newer_server_mode_reports_missing_node_types_and_bad_prompt_ids_and_cancels_atomically(sim):
    cancel = f"{sim.url}/api/jobs/{uuid.uuid4()}/cancel"
    assert requests.post(cancel, timeout=5).status_code == 404  # 0.3.64 has no such route
    options(sim, newer=True)
    unknown = post(sim, {"1": {"class_type": "NoSuchNode", "inputs": {}, "_meta": {"title": "Mine"}}}).json()
    assert unknown["error"]["type"] == "missing_node_type"
    assert unknown["error"]["message"] == "Node 'Mine' not found. The custom node may not be installed."
    assert unknown["error"]["extra_info"] == {"node_id": "1", "class_type": "NoSuchNode", "node_title": "Mine"}
    bad_id = post(sim, {"1": image(), "2": save("1")}, prompt_id="NOT-A-UUID").json()
    assert bad_id["error"]["type"] == "invalid_prompt_id"
    client = Client(sim.url, "c1")
    try:
        prompt = {"1": image(), "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": 20,
                                                                                      "delay": 0.1}}, "3": save("2")}
        prompt_id = post(sim, prompt).json()["prompt_id"]
        queue = requests.get(f"{sim.url}/queue", timeout=5).json()
        [item] = queue["queue_running"] + queue["queue_pending"]
        assert len(item) == 5 and item[3]["create_time"] > 0  # the 6th (sensitive) element is stripped
        wait_for(lambda: any(isinstance(m, dict) and m["type"] == "progress" for m in client.messages), what="progress")
        answer = requests.post(f"{sim.url}/api/jobs/{prompt_id}/cancel", timeout=5).json()
        assert answer == {"cancelled": True}
        assert "execution_interrupted" in ended(client, prompt_id)
        assert requests.post(f"{sim.url}/api/jobs/{prompt_id}/cancel", timeout=5).json() == {"cancelled": False}
    finally:
        client.close()


def test_a_collection_after_prompts_holds_every_request_at_most_every_ten_seconds(sim):
    # Given a ComfyUI whose collections after prompts (main.py's gc.collect(), at most every
    # 10 s) each hold the whole server 1 s, as the GIL does with torch loaded
    options(sim, gc_pause=1.0)
    client = Client(sim.url, "c1")
    try:
        # When a first prompt ends, a request right after it waits the collection out
        ended(client, post(sim, {"1": image(1), "2": save("1")}).json()["prompt_id"])
        asked = time.monotonic()
        state = requests.get(f"{sim.url}/_sim/state", timeout=10).json()
        assert time.monotonic() - asked >= 0.9
        assert state["collections"] == 1
        # and a second prompt within the 10 s runs with no collection after it
        ended(client, post(sim, {"1": image(2), "2": save("1")}).json()["prompt_id"])
        assert requests.get(f"{sim.url}/_sim/state", timeout=10).json()["collections"] == 1
        # Then the idle queue collects once the 10 s have passed (ComfyUI's q.get timeout)
        wait_for(lambda: requests.get(f"{sim.url}/_sim/state", timeout=10).json()["collections"] == 2, 20,
                 what="the collection at the 10 s mark")
    finally:
        client.close()
