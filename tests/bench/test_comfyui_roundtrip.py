"""Short form of ``python -m bench.comfyui_roundtrip``: the direct client and the connector on
one ComfyUI simulator, a few cached jobs each. Times are for docs/benchmarks.md; what this
asserts is that both sides complete and that the connector's requests are the protocol's."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import requests

from bench.comfyui_roundtrip import main, request_log
from jobqueue.sims.comfyui.process import SimulatorProcess

pytestmark = pytest.mark.timeout(120)


def test_the_comfyui_round_trip_bench_runs_both_sides_and_counts_the_connectors_requests(capsys):
    assert main(["--jobs", "5", "--skip-jobqueue"]) == 0
    out = capsys.readouterr().out
    [direct] = [line for line in out.splitlines() if line.startswith("| direct ComfyUI client")]
    [connector] = [line for line in out.splitlines() if line.startswith("| connector in-process")]
    assert "POST /prompt 1.00" in direct and "GET /history/<id> 1.00" in direct
    assert "GET /view 1.00" in connector and "GET /queue" not in connector


def test_the_bench_runs_all_three_sides_on_a_given_comfyui_url_with_a_given_workflow(tmp_path, capsys):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "benchwf"}},
    }
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))
    server = SimulatorProcess(output_dir=tmp_path / "out").start()  # stands in for a running ComfyUI
    try:
        assert main(["--jobs", "2", "--comfyui-url", server.url + "/", "--workflow", str(path)]) == 0
        prompts = [r["body"] for r in server.requests() if r["method"] == "POST" and r["path"] == "/prompt"]
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert f"at {server.url} (external server), workflow {path} (2 nodes)" in out
    # it answers GET /_sim/requests, so its requests are counted as a real ComfyUI's with the
    # request-log custom node are: the worker's cached jobs skip /history
    [ours] = [line for line in out.splitlines() if line.startswith("| through jobqueue")]
    assert "GET /history/<id> 0.00" in ours and "GET /view 1.00" in ours
    # the direct client and the connector alone (a warm-up + 2 jobs each), then the worker and the
    # direct client taking turns (10 warm-up rounds + 2): all used this server
    assert len(prompts) == (1 + 2) * 2 + (10 + 2) * 2
    assert all(body["prompt"] == workflow for body in prompts)


def test_an_external_server_that_serves_the_simulators_request_log_is_counted_and_one_that_does_not_is_not(
        tmp_path):
    server = SimulatorProcess(output_dir=tmp_path / "out").start()
    try:
        requests.get(f"{server.url}/system_stats", timeout=5).raise_for_status()
        log = request_log(server.control_url, None)  # answers GET /_sim/requests, as a real one can
        assert log is not None and any(r["path"] == "/system_stats" for r in log())
        assert request_log("http://127.0.0.1:9", None) is None  # nobody there
    finally:
        server.stop()
    plain = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        assert request_log(f"http://127.0.0.1:{plain.server_address[1]}", None) is None  # no log: nothing to count
    finally:
        plain.shutdown()
        plain.server_close()
