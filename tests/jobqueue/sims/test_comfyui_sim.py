"""The ComfyUI simulator speaks the recorded protocol over real HTTP and websockets."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import requests
import websocket

from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import sim
from tests.jobqueue.connectors.test_comfyui_traces import load, posted_prompt_id

__all__ = ["sim"]  # a fixture

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 170648}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "harness"}},
}


def slow(steps: int, delay: float = 0.1, color: int = 1) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color}},
        "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": steps, "delay": delay}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


class Client:
    """A websocket client collecting every message, like the recording harness."""

    def __init__(self, url: str, client_id: str) -> None:
        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=5)
        self.messages: list[Any] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except Exception:
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self.messages.append(json.loads(data))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self.messages.append(bytes(data))
            else:
                return

    def types_for(self, prompt_id: str) -> list[str]:
        """Message types from this prompt's execution_start to its ``executing: null``."""
        out: list[str] = []
        for m in self.messages:
            if isinstance(m, bytes):
                continue
            if out or m["data"].get("prompt_id") == prompt_id:
                out.append(m["type"])
            if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == prompt_id:
                break
        return out

    def done(self, prompt_id: str) -> bool:
        return any(isinstance(m, dict) and m["type"] == "executing" and m["data"] == {"node": None, "prompt_id": prompt_id}
                   for m in self.messages)

    def close(self) -> None:
        self.ws.close()


def trace_types(name: str, index: int = 0) -> list[str]:
    events = load(name)
    prompt_id = posted_prompt_id(events, index)
    out: list[str] = []
    for e in events:
        if e.kind != "ws":
            continue
        if out or e.body["data"].get("prompt_id") == prompt_id:
            out.append(e.body["type"])
    return out


def test_a_fresh_then_cached_run_send_the_recorded_message_sequences(sim):
    # Given a websocket client, as in the recordings
    client = Client(sim.url, "c1")
    wait_for(lambda: client.messages, what="the greeting status")
    assert client.messages[0] == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c1"}}
    # When the same workflow is posted twice
    ids = []
    for _ in range(2):
        answer = requests.post(f"{sim.url}/prompt", json={"prompt": WORKFLOW, "client_id": "c1"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["node_errors"] == {}
        ids.append(answer.json()["prompt_id"])
        wait_for(lambda pid=ids[-1]: client.done(pid), what="the prompt to end")
    # Then each run's message types are exactly those of the real server
    assert client.types_for(ids[0]) == trace_types("1_fresh")
    assert client.types_for(ids[1]) == trace_types("2_cached")
    cached = next(m for m in client.messages if m["type"] == "execution_cached" and m["data"]["prompt_id"] == ids[1])
    assert cached["data"]["nodes"] == ["1", "2", "3"]
    # And history holds the recorded shape, with a real PNG behind /view
    entry = requests.get(f"{sim.url}/history/{ids[1]}", timeout=5).json()[ids[1]]
    assert entry["prompt"][:2] == [1, ids[1]] and entry["prompt"][3] == {"client_id": "c1"} and entry["prompt"][4] == ["3"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    image = entry["outputs"]["3"]["images"][0]
    assert image == {"filename": "harness_00001_.png", "subfolder": "", "type": "output"}
    png = requests.get(f"{sim.url}/api/view", params=image, timeout=5)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    client.close()


def test_a_slow_node_reports_progress_and_progress_state_like_the_recording(sim):
    client = Client(sim.url, "c2")
    answer = requests.post(f"{sim.url}/prompt", json={"prompt": slow(5, 0.01), "client_id": "c2"}, timeout=5).json()
    wait_for(lambda: client.done(answer["prompt_id"]), what="the slow prompt to end")
    assert client.types_for(answer["prompt_id"]) == trace_types("4_progress")
    progress = [m["data"] for m in client.messages if isinstance(m, dict) and m["type"] == "progress"]
    assert progress == [{"value": i, "max": 5, "prompt_id": answer["prompt_id"], "node": "2"} for i in range(1, 6)]
    client.close()


def test_validation_errors_have_the_recorded_bodies(sim):
    # Given the prompts the recording sent, When they are posted, Then the bodies match
    recorded = [e.body for e in load("7_invalid") if e.kind.startswith("POST /prompt -> 400")]
    prompts = [
        {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}},
        {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                    "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}},
        {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 999999, "height": 8, "batch_size": 1, "color": 0}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}},
        {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}},
        {"prompt": {"2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}}},
        {},
        {"prompt": {"1": {"inputs": {}}}},
    ]
    for body, expected in zip(prompts, recorded, strict=True):
        answer = requests.post(f"{sim.url}/prompt", json=body, timeout=5)
        assert answer.status_code == 400
        got = answer.json()
        if expected["error"]["type"] == "prompt_outputs_failed_validation" and "'9'" in expected["error"]["details"]:
            # The traceback lines name the server's own files: compare everything else.
            for node in (got, expected):
                node["node_errors"]["2"]["errors"][0]["extra_info"].pop("traceback")
        assert got == expected


def test_the_queue_puts_front_prompts_first_and_deletes_pending_ones(sim):
    # Given a running prompt and two pending ones, one sent to the front
    first = requests.post(f"{sim.url}/prompt", json={"prompt": slow(50, 0.05, 2), "client_id": "q"}, timeout=5).json()
    second = requests.post(f"{sim.url}/prompt", json={"prompt": slow(3, 0.01, 3), "client_id": "q"}, timeout=5).json()
    front = requests.post(f"{sim.url}/prompt", json={"prompt": slow(3, 0.01, 4), "client_id": "q", "front": True},
                          timeout=5).json()
    assert front["number"] == -2
    queue = wait_for(lambda: (q := requests.get(f"{sim.url}/queue", timeout=5).json())["queue_running"] and q,
                     what="a running prompt")
    assert [i[1] for i in queue["queue_running"]] == [first["prompt_id"]]
    assert [i[1] for i in queue["queue_pending"]] == [front["prompt_id"], second["prompt_id"]]
    assert requests.get(f"{sim.url}/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 3}}
    # When one pending prompt is deleted and the running one interrupted by id
    assert requests.post(f"{sim.url}/queue", json={"delete": [second["prompt_id"]]}, timeout=5).text == ""
    requests.post(f"{sim.url}/interrupt", json={"prompt_id": second["prompt_id"]}, timeout=5)  # not running: no effect
    requests.post(f"{sim.url}/interrupt", json={"prompt_id": first["prompt_id"]}, timeout=5)
    # Then the first ends interrupted, the front one runs, the deleted one never reaches history
    wait_for(lambda: requests.get(f"{sim.url}/history/{front['prompt_id']}", timeout=5).json(), what="front prompt done")
    history = requests.get(f"{sim.url}/history/{first['prompt_id']}", timeout=5).json()[first["prompt_id"]]
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert history["status"]["messages"][-1][0] == "execution_interrupted"
    assert requests.get(f"{sim.url}/history/{second['prompt_id']}", timeout=5).json() == {}


def test_a_failing_node_sends_an_execution_error_like_the_recording(sim):
    client = Client(sim.url, "c3")
    workflow = slow(1, 0.0)
    workflow["2"] = {"class_type": "HarnessFail", "inputs": {"image": ["1", 0], "message": "harness boom"}}
    answer = requests.post(f"{sim.url}/prompt", json={"prompt": workflow, "client_id": "c3"}, timeout=5).json()
    wait_for(lambda: client.done(answer["prompt_id"]), what="the failing prompt to end")
    assert client.types_for(answer["prompt_id"]) == trace_types("6_exec_error")
    error = next(m["data"] for m in client.messages if isinstance(m, dict) and m["type"] == "execution_error")
    assert (error["node_id"], error["node_type"], error["exception_type"], error["exception_message"]) == (
        "2", "HarnessFail", "ValueError", "harness boom\n")
    client.close()


def test_system_stats_object_info_and_the_api_prefix_answer_like_comfyui(sim):
    stats = requests.get(f"{sim.url}/api/system_stats", timeout=5).json()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert {"name", "type", "vram_total", "vram_free"} <= set(stats["devices"][0])
    recorded = next(e.body for e in load("10_misc") if e.kind.startswith("GET /object_info/EmptyImage"))
    assert requests.get(f"{sim.url}/object_info/EmptyImage", timeout=5).json() == recorded
    assert requests.get(f"{sim.url}/history/does-not-exist", timeout=5).json() == {}
    assert "HarnessSleepProgress" in requests.get(f"{sim.url}/api/object_info", timeout=5).json()


def test_fault_switches_refuse_freeze_and_drop_the_websocket(sim):
    client = Client(sim.url, "f")
    wait_for(lambda: client.messages, what="greeting")
    # refuse: connections fail and the websocket is closed; none restores service
    sim.fault("refuse")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim.url}/queue", timeout=2)
    wait_for(lambda: not client._thread.is_alive(), what="the websocket to close")
    sim.fault("none")
    assert requests.get(f"{sim.url}/queue", timeout=2).status_code == 200
    # freeze: requests hang until thawed
    sim.fault("freeze")
    with pytest.raises(requests.Timeout):
        requests.get(f"{sim.url}/queue", timeout=0.5)
    sim.fault("none")
    assert requests.get(f"{sim.url}/queue", timeout=2).status_code == 200
    # drop_ws: open websockets are closed, new ones are welcome
    other = Client(sim.url, "g")
    wait_for(lambda: other.messages, what="greeting")
    sim.fault("drop_ws")
    wait_for(lambda: not other._thread.is_alive(), what="the websocket to be dropped")
    again = Client(sim.url, "g")
    wait_for(lambda: again.messages, what="greeting after reconnect")
    assert [r["path"] for r in sim.requests()].count("/queue") >= 2
    again.close()
