"""The comfyui connector against the simulator over real sockets: in-process for the
connector's own behaviour, and through real worker processes and Redis for acceptance."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.client.jobs import submit_job
from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui import outcome
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW, ComfyUIConnector
from jobqueue.errors import ExecutionFailed, InvalidPayloadError, JobCancelled, JobFailed
from jobqueue.sims.comfyui import engine
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.states import ConnectorStatus, JobStatus
from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import connector, noop, sim, sim_process, slow

__all__ = ["connector", "sim", "sim_process"]  # fixtures


# -- payload -------------------------------------------------------------------------------------
def test_the_example_payload_is_valid_and_bad_shapes_are_refused_clearly():
    assert ComfyUIConnector.validate(ComfyUIConnector.example_payload)["workflow"] == EXAMPLE_WORKFLOW
    cases = [
        ({}, "'workflow' must be a non-empty object"),
        ({"workflow": []}, "'workflow' must be a non-empty object"),
        ({"workflow": {"nodes": [], "links": []}}, "UI format"),
        ({"workflow": {"1": {"inputs": {}}}}, "node '1' has no 'class_type'"),
        ({"workflow": {"1": {"class_type": "X", "inputs": []}}}, "'inputs' that is not an object"),
        ({"workflow": EXAMPLE_WORKFLOW, "stall_timeout": 0}, "'stall_timeout' must be a positive"),
        ({"workflow": EXAMPLE_WORKFLOW, "extra": 1}, "unknown field"),
    ]
    for payload, text in cases:
        with pytest.raises(InvalidPayloadError, match=text):
            ComfyUIConnector.validate(payload)


# -- in-process connector ------------------------------------------------------------------------
def test_a_run_returns_outputs_and_fetches_every_file_and_a_cached_rerun_completes(connector, tmp_path):
    for job_id in ("first", "cached"):
        result = connector.run(Job(id=job_id, service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
        [file] = result["files"]
        assert file["node"] == "3" and file["filename"] == "jobqueue_00001_.png" and file["type"] == "output"
        assert Path(file["path"]) == (tmp_path / "outputs" / job_id / "jobqueue_00001_.png").resolve()
        assert Path(file["path"]).read_bytes().startswith(b"\x89PNG")
        assert result["outputs"]["3"]["images"][0]["filename"] == "jobqueue_00001_.png"


def _asked(sim: Any, before: int) -> list[str]:
    """The job routes ComfyUI was asked since request ``before`` (health checks left out)."""
    return [f"{r['method']} {r['path'].split('/history/')[0] + '/history/' if '/history/' in r['path'] else r['path']}"
            for r in sim.requests()[before:] if r["path"] not in ("/system_stats",) and not r["path"].startswith("/models")]


def test_a_cached_job_costs_one_post_and_one_download_and_no_poll_since_the_websocket_told_its_outputs(sim, connector):
    # Given a workflow ComfyUI has run once (every node cached now)
    connector.run(Job(id="warm", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    before = len(sim.requests())
    # When it runs again
    result = connector.run(Job(id="cached", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    # Then the connector asked ComfyUI exactly what the protocol needs: the websocket told the
    # prompt's start, its outputs and its end on one connection, so no /history read, no poll
    assert _asked(sim, before) == ["POST /prompt", "GET /view"]
    history = requests.get(f"{sim.url}/history/{result['prompt_id']}", timeout=5).json()[result["prompt_id"]]
    assert result["outputs"] == history["outputs"] and Path(result["files"][0]["path"]).read_bytes().startswith(b"\x89PNG")


def test_a_comfyui_older_than_0_3_is_read_through_history_since_its_cached_nodes_announce_no_outputs(
        sim, connector, monkeypatch):
    # Given a ComfyUI from before 0.3 (no version in /system_stats, no `executed` for a cached
    # node) that also writes a prompt's history a while after execution_success
    assert requests.post(f"{sim.url}/_sim/options", json={"older": True}, timeout=5).status_code == 200
    monkeypatch.setattr(engine, "HISTORY_LAG", 0.2)
    connector.run(Job(id="warm", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    before = len(sim.requests())
    # When a cached job ends
    result = connector.run(Job(id="cached", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    # Then the connector read the history (empty at first: it asked again) and fetched the file
    # only /history named
    assert result["files"][0]["filename"] == "jobqueue_00001_.png"
    assert len([r for r in sim.requests()[before:] if r["path"].startswith("/history/")]) >= 2


def test_a_success_whose_end_message_comes_late_is_still_told_by_the_websocket_and_never_read_early(
        sim, connector, monkeypatch):
    # Given a ComfyUI that sends `executing` with node null (after writing the history) a while
    # after execution_success, as one unloading its models in between does
    monkeypatch.setattr(engine, "HISTORY_LAG", 0.1)
    connector.run(Job(id="warm", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    before = len(sim.requests())
    # When a cached job ends
    result = connector.run(Job(id="cached", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    # Then the connector waited for the end message instead of reading a history not written yet
    assert _asked(sim, before) == ["POST /prompt", "GET /view"]
    assert result["files"][0]["filename"] == "jobqueue_00001_.png"


def test_a_success_whose_end_message_comes_later_than_the_socket_wait_is_confirmed_through_history(
        sim, connector, monkeypatch):
    # Given a ComfyUI that takes longer than the connector's wait between execution_success and
    # the end message (models unloading for seconds)
    monkeypatch.setattr(engine, "HISTORY_LAG", outcome.SOCKET_END_WAIT + 0.3)
    connector.run(Job(id="warm", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    before = len(sim.requests())
    # When a cached job ends
    result = connector.run(Job(id="cached", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    # Then it went on as before: /history, asked until written, and the file
    assert result["files"][0]["filename"] == "jobqueue_00001_.png"
    assert len([r for r in sim.requests()[before:] if r["path"].startswith("/history/")]) >= 2


def test_health_reports_devices_when_up_and_offline_with_the_reason_when_refused(sim, connector):
    health = connector.check_health()
    assert health.status == ConnectorStatus.IDLE
    assert health.details["comfyui_version"] == "0.3.64" and health.details["devices"][0]["name"] == "cpu"
    sim.fault("refuse")
    down = connector.check_health()
    assert down.status == ConnectorStatus.OFFLINE and "unreachable" in down.message and sim.url in down.message


def test_a_node_failure_fails_with_node_class_and_exception(connector):
    workflow = slow(1, 0.0)
    workflow["2"] = {"class_type": "HarnessFail", "inputs": {"image": ["1", 0], "message": "it broke"}}
    with pytest.raises(ExecutionFailed) as info:
        connector.run(Job(id="fail", service="comfyui", payload={"workflow": workflow}), noop)
    assert str(info.value) == "node 2 (HarnessFail) raised ValueError: it broke"
    assert info.value.details["node_type"] == "HarnessFail" and not info.value.retryable


def test_cancelling_a_prompt_pending_in_comfyuis_queue_deletes_it(sim, connector):
    # Given ComfyUI busy with another client's long prompt
    requests.post(f"{sim.url}/prompt", json={"prompt": slow(100, 0.05, 7), "client_id": "other"}, timeout=5)
    job = Job(id="queued", service="comfyui", payload={"workflow": slow(2, 0.01)})
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            connector.run(job, noop)
        except BaseException as exc:  # noqa: B036 - collected for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: len(requests.get(f"{sim.url}/queue", timeout=5).json()["queue_pending"]) == 1, what="our prompt pending")
    # When the job is cancelled
    connector.cancel(job)
    thread.join(10)
    # Then it ended cancelled and ComfyUI was told to delete it (not to interrupt the other prompt)
    assert outcome and isinstance(outcome[0], JobCancelled)
    deletes = [r for r in sim.requests() if r["path"] == "/queue" and r["method"] == "POST"]
    assert deletes and deletes[0]["body"] == {"delete": [outcome[0].details["prompt_id"]]}
    assert not [r for r in sim.requests() if r["path"] == "/interrupt"]
    requests.post(f"{sim.url}/interrupt", timeout=5)


# -- acceptance: real workers, real Redis, simulator over real sockets ---------------------------------
def comfy_worker(start_worker: Any, sim: SimulatorProcess, queues: str = "gpu0", **env: Any) -> Any:
    return start_worker(queues, CONNECTORS="comfyui", COMFYUI_URL=sim.url, **env)


def test_two_hundred_identical_workflows_all_complete_each_under_a_second(app, start_worker, sim_process):
    sim = sim_process()
    comfy_worker(start_worker, sim)
    handles = [submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app) for _ in range(200)]
    results = [h.wait(timeout=120) for h in handles]
    assert len(results) == 200
    assert all(r["files"] and Path(r["files"][0]["path"]).exists() for r in results)
    durations = sorted(r["duration"] for r in results)
    assert durations[-1] < 1.0, f"slowest job took {durations[-1]} s"


def test_a_twenty_step_workflow_shows_at_least_ten_increasing_progress_updates(app, start_worker, sim_process):
    sim = sim_process()
    comfy_worker(start_worker, sim)
    seen: list[dict[str, Any]] = []
    handle = submit_job("comfyui", {"workflow": slow(20, 0.1)}, app=app)
    handle.wait(timeout=60, on_progress=seen.append)
    stepped = [p for p in seen if p["step"] and p["node"] == "2"]
    assert len(stepped) >= 10, seen
    assert [p["step"] for p in stepped] == sorted({p["step"] for p in stepped})
    percents = [p["percent"] for p in stepped]
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    assert all(p["total_steps"] == 20 and "HarnessSleepProgress" in p["message"] for p in stepped)


def test_a_frozen_comfyui_hands_the_job_to_the_other_worker_within_stall_timeout_plus_five(app, start_worker, sim_process):
    # Given two workers, each with its own ComfyUI, both configured by one per-GPU URL setting
    sims = [sim_process(), sim_process()]
    urls = f"gpu0={sims[0].url},gpu1={sims[1].url}"
    workers = [start_worker(queues, CONNECTORS="comfyui", COMFYUI_URLS=urls, MAX_RETRIES=5)
               for queues in ("gpu0", "gpu1")]
    stall = 3.0
    handle = submit_job("comfyui", {"workflow": slow(20, 0.1), "stall_timeout": stall}, app=app)
    # When the ComfyUI running the job freezes mid-job
    wait_for(lambda: handle.progress()["step"] >= 2, timeout=30, what="the job to be under way")
    running = next(i for i, s in enumerate(sims) if any(r["path"] == "/prompt" for r in s.requests()))
    sims[running].fault("freeze")
    frozen_at = time.monotonic()
    result = handle.wait(timeout=stall + 20)
    # Then the job completed on the other worker, within stall timeout + 5 s
    elapsed = time.monotonic() - frozen_at
    assert result["worker"] == workers[1 - running].node_name and result["attempt"] >= 1
    # (on its own GPU's ComfyUI: each worker took its URL from the per-GPU setting)
    assert any(r["path"] == "/prompt" for r in sims[1 - running].requests())
    assert elapsed < stall + 5.0, f"took {elapsed:.1f} s after the freeze"


def test_a_killed_comfyui_fails_the_job_with_a_clear_error_within_ten_seconds(app, start_worker, sim_process):
    sim = sim_process()
    comfy_worker(start_worker, sim)
    handle = submit_job("comfyui", {"workflow": slow(100, 0.1)}, app=app)
    wait_for(lambda: handle.progress()["step"] >= 1, timeout=30, what="the job to be under way")
    sim.kill()
    killed_at = time.monotonic()
    # Then within 10 s the job has failed, or waits for a retry, with a clear error
    status = wait_for(lambda: (st := handle.status()) in (JobStatus.FAILED, JobStatus.RETRYING) and st, timeout=10,
                      what="the job to fail or retry")
    assert time.monotonic() - killed_at < 10.0
    error = app.AsyncResult(handle.id).info
    # (a server that died mid-job: issue 26's "ComfyUI exited or restarted")
    assert type(error).__name__ == "ServerCrashed", (status, error)
    assert sim.url in str(error) and "exited or restarted" in str(error) and "unreachable" in str(error)


def test_an_invalid_workflow_fails_naming_comfyuis_error_type_node_and_input(app, start_worker, sim_process):
    sim = sim_process()
    comfy_worker(start_worker, sim)
    workflow = {**EXAMPLE_WORKFLOW, "1": {"class_type": "EmptyImage",
                                          "inputs": {"width": 999999, "height": 8, "batch_size": 1, "color": 0}}}
    with pytest.raises(JobFailed) as info:
        submit_job("comfyui", {"workflow": workflow}, app=app).wait(timeout=30)
    message = info.value.error["message"]
    assert info.value.error["type"] == "ExecutionFailed"
    assert "prompt_outputs_failed_validation" in message and "value_bigger_than_max" in message
    assert "node 1 (EmptyImage) input 'width'" in message


def test_cancelling_a_queued_and_a_running_job_ends_both_cancelled_and_interrupts_comfyui(app, start_worker, sim_process):
    sim = sim_process()
    comfy_worker(start_worker, sim)
    running = submit_job("comfyui", {"workflow": slow(200, 0.1)}, app=app)
    wait_for(lambda: running.progress()["step"] >= 1, timeout=30, what="the first job to run")
    queued = submit_job("comfyui", {"workflow": slow(5, 0.1, 2)}, app=app)
    # When both are cancelled
    assert queued.cancel() and running.cancel()
    # Then both end cancelled, and ComfyUI was asked to interrupt the running prompt
    for handle in (queued, running):
        with pytest.raises(JobFailed) as info:
            handle.wait(timeout=20)
        assert info.value.status == JobStatus.CANCELLED.value
    assert wait_for(lambda: running.status() == JobStatus.CANCELLED)
    interrupts = wait_for(lambda: [r for r in sim.requests() if r["path"] == "/interrupt"], what="POST /interrupt")
    prompts = [r for r in sim.requests() if r["path"] == "/prompt" and r["method"] == "POST"]
    assert len(prompts) == 1 and interrupts and interrupts[0]["body"] == {"prompt_id": prompts[0]["body"]["prompt_id"]}
    history = wait_for(lambda: requests.get(f"{sim.url}/history/{prompts[0]['body']['prompt_id']}", timeout=5).json(),
                       what="the interrupted prompt in ComfyUI's history")
    assert next(iter(history.values()))["status"]["messages"][-1][0] == "execution_interrupted"
