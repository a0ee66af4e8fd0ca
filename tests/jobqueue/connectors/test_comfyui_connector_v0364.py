"""The connector is right on a ComfyUI that behaves as v0.3.64 does (the simulator made
faithful, over real HTTP and websockets): a slow history after success, a model a V3 loader
finds missing when it runs, a workflow that would kill the executor, partial validation, a
silenced socket, interrupts nobody here asked for, blocked outputs, a cleared history, out of
memory, and the atomic cancel of newer servers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from jobqueue import submit_job
from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW, ComfyUIConnector
from jobqueue.connectors.comfyui.rest import ComfyUIRest
from jobqueue.errors import ExecutionFailed, InvalidPayloadError, ServiceUnavailable
from jobqueue.sims.comfyui import models
from jobqueue.states import JobStatus
from jobqueue.worker.handback import vanished_models
from tests.capability_fixtures import comfy_worker, consumes, start_sim
from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import connector, connector_for, noop, sim, slow
from tests.jobqueue.sims.test_comfyui_sim import Client

__all__ = ["connector", "sim", "start_sim"]  # fixtures


def options(sim: Any, **values: Any) -> None:
    assert requests.post(f"{sim.url}/_sim/options", json=values, timeout=5).status_code == 200


def posts(sim: Any) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if r["method"] == "POST" and r["path"] == "/prompt"]


def job(workflow: dict[str, Any], name: str = "j", attempt: int = 0, **payload: Any) -> Job:
    return Job(id=name, service="comfyui", payload={"workflow": workflow, **payload}, attempt=attempt)


def image(color: int = 5) -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}}


def save(source: str, prefix: str = "t") -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


def run_in_thread(conn: ComfyUIConnector, the_job: Job) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(conn.run(the_job, noop))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_a_history_written_seconds_after_execution_success_completes_the_job_once(sim, connector):
    # Given a ComfyUI that unloads its models for 7 s between execution_success and /history
    # (the connector used to give up after 5 s, call it lost and run the job again)
    options(sim, history_gap=7.0)
    # When a job runs
    result = connector.run(job(EXAMPLE_WORKFLOW), noop)
    # Then it completes with its file, posted once
    assert result["files"][0]["filename"] == "jobqueue_00001_.png"
    assert len(posts(sim)) == 1


def test_a_model_a_v3_loader_finds_missing_when_it_runs_is_handed_back_like_a_vanished_one(sim, connector):
    models.set_models(text_encoders=["a.safetensors"])
    try:
        quad = {"class_type": "QuadrupleCLIPLoader", "inputs": {"clip_name1": "a.safetensors", "clip_name2": "a.safetensors",
                                                                "clip_name3": "a.safetensors", "clip_name4": "gone.safetensors"}}
        workflow = {"1": image(), "2": quad, "3": {"class_type": "SimUseModel", "inputs": {"image": ["1", 0],
                                                                                          "model": ["2", 0]}},
                    "4": save("3")}
        required = tuple(ComfyUIConnector.required_models({"workflow": workflow}))
        assert "gone.safetensors" in required
        with pytest.raises(ExecutionFailed) as failed:
            connector.run(job(workflow), noop)
        assert failed.value.details["missing_models"] == ["gone.safetensors"]
        assert "FileNotFoundError" in failed.value.message
        # Then the worker's hand-back rule recognises it as a model gone from this machine
        assert vanished_models(failed.value, required) == ["gone.safetensors"]
    finally:
        models.set_models(text_encoders=[])


def test_a_workflow_with_a_node_without_inputs_is_refused_at_submit():
    workflow = {**EXAMPLE_WORKFLOW, "9": {"class_type": "EmptyImage"}}
    with pytest.raises(InvalidPayloadError, match="node '9' has no 'inputs'.*stop running any prompt"):
        ComfyUIConnector.validate({"workflow": workflow})


PARTIAL = {"1": image(), "2": save("1", "good"), "3": {"class_type": "ImageInvert", "inputs": {}}, "4": save("3", "bad")}


def test_partial_node_errors_fail_the_job_unless_the_payload_allows_partial_outputs(sim, connector):
    # When ComfyUI accepts the workflow with output 4 invalid
    with pytest.raises(ExecutionFailed, match="required_input_missing on node 3 \\(ImageInvert\\) input 'image'") as failed:
        connector.run(job(PARTIAL, "strict"), noop)
    # Then the job failed with ComfyUI's node errors
    assert failed.value.details["node_errors"]["3"]["dependent_outputs"] == ["4"]
    # When the payload allows partial outputs
    result = connector.run(job(PARTIAL, "lenient", partial_outputs="warn"), noop)
    # Then it completes with the valid output and a warning naming the other
    assert [f["node"] for f in result["files"]] == ["2"]
    assert result["warnings"] == ["output node 4 did not run: node 3 (ImageInvert) required_input_missing: "
                                  "Required input is missing"]


def test_a_socket_silenced_by_a_late_closing_old_connection_is_reopened_and_the_job_completes(sim, tmp_path):
    # Given a job of 16 progress steps 0.4 s apart and a 5 s node limit
    conn = connector_for(sim, tmp_path, comfyui_node_timeout=5.0)
    try:
        thread, outcome = run_in_thread(conn, job(slow(16, 0.4), "long"))
        wait_for(lambda: any(r["path"] == "/prompt" for r in sim.requests()), what="the POST")
        # When a connection with the connector's client id opens and closes (an old socket's
        # handler ending after the new one registered): ComfyUI drops the registration
        intruder = Client(sim.url, conn.client_id)
        intruder.close()
        wait_for(lambda: requests.get(f"{sim.url}/_sim/state", timeout=5).json()["sockets"] == 0,
                 what="the registration to go")
        # Then the connector notices the silence, reopens, and the job completes
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome[0], dict), outcome
        assert requests.get(f"{sim.url}/_sim/state", timeout=5).json()["sockets"] == 1
        assert len(posts(sim)) == 1
    finally:
        conn.stop()


def test_an_interrupt_nobody_here_asked_for_hands_the_job_back_once_then_fails_it(sim, connector):
    for attempt, error in ((0, ServiceUnavailable), (1, ExecutionFailed)):
        thread, outcome = run_in_thread(connector, job(slow(30, 0.1, color=attempt), f"a{attempt}", attempt))
        wait_for(lambda: requests.get(f"{sim.url}/queue", timeout=5).json()["queue_running"], what="running")
        # When someone presses Cancel in ComfyUI's UI (a global interrupt)
        requests.post(f"{sim.url}/interrupt", json={}, timeout=5)
        thread.join(15)
        # Then the first attempt hands the job back (retryable), the next one fails it
        assert type(outcome[0]) is error, outcome
        assert "although jobqueue did not ask" in str(outcome[0])
        assert outcome[0].details["interrupted_by"] == "not jobqueue"


def test_an_interrupt_during_a_last_node_without_progress_lets_the_job_complete(sim, connector):
    workflow = {"1": image(), "2": {"class_type": "SimSlowSave", "inputs": {"images": ["1", 0], "seconds": 1.5,
                                                                          "filename_prefix": "late"}}}
    thread, outcome = run_in_thread(connector, job(workflow))
    wait_for(lambda: any(r["path"] == "/prompt" for r in sim.requests()), what="the POST")
    wait_for(lambda: requests.get(f"{sim.url}/queue", timeout=5).json()["queue_running"], what="running")
    wait_for(lambda: connector._router._boxes, what="the job to follow its prompt")  # noqa: SLF001
    requests.post(f"{sim.url}/interrupt", json={}, timeout=5)
    thread.join(15)
    assert isinstance(outcome[0], dict), outcome
    assert outcome[0]["files"][0]["filename"] == "late_00001_.png"


def test_outputs_blocked_by_a_node_are_warnings_of_a_completed_job(sim, connector):
    workflow = {"1": image(), "2": {"class_type": "SimBlockOutputs", "inputs": {"image": ["1", 0], "block": True,
                                                                              "message": "filtered"}},
                "3": save("2", "blocked"), "4": save("1", "free")}
    result = connector.run(job(workflow), noop)
    assert [f["node"] for f in result["files"]] == ["4"]
    assert result["warnings"] == ["node 3 (SaveImage) did not run: Execution Blocked: filtered"]


def test_a_history_cleared_between_the_end_and_our_read_is_told_from_a_lost_prompt(sim, connector, monkeypatch):
    # Given a user who clears ComfyUI's history just before the connector reads it (a ComfyUI
    # older than 0.3, whose end the connector reads through /history)
    options(sim, older=True)
    read = ComfyUIRest.history

    def cleared_first(self: ComfyUIRest, prompt_id: str, timeout: float) -> Any:
        requests.post(f"{sim.url}/history", json={"clear": True}, timeout=5)
        return read(self, prompt_id, timeout)

    monkeypatch.setattr(ComfyUIRest, "history", cleared_first)
    # When a job succeeds: the websocket said so and announced its outputs
    result = connector.run(job(EXAMPLE_WORKFLOW), noop)
    # Then it completes from those, with a warning, and was posted once
    assert result["files"][0]["filename"] == "jobqueue_00001_.png"
    assert "history entry was gone" in result["warnings"][0]
    assert len(posts(sim)) == 1


def test_out_of_memory_fails_with_comfyuis_type_message_and_tips(sim, connector):
    options(sim, oom_next=1)
    with pytest.raises(ExecutionFailed) as failed:
        connector.run(job(EXAMPLE_WORKFLOW), noop)
    assert failed.value.details["exception_type"] == "torch.OutOfMemoryError"
    assert "raised torch.OutOfMemoryError: Allocation on device 0" in failed.value.message
    assert failed.value.details["exception_message"].endswith("set the batch_size to a large number.")


@pytest.mark.parametrize("newer", [False, True])
def test_a_cancel_uses_the_atomic_job_cancel_when_the_server_offers_it(sim, connector, newer):
    options(sim, newer=newer)
    the_job = job(slow(50, 0.1), "cancelled")
    thread, outcome = run_in_thread(connector, the_job)
    wait_for(lambda: requests.get(f"{sim.url}/queue", timeout=5).json()["queue_running"], what="running")
    connector.cancel(the_job)
    thread.join(15)
    assert type(outcome[0]).__name__ == "JobCancelled"
    paths = [r["path"] for r in sim.requests() if r["method"] == "POST"]
    cancel = [p for p in paths if p.startswith("/api/jobs/")]
    assert len(cancel) == 1
    assert ("/interrupt" in paths) is not newer


def test_a_newer_server_runs_jobs_and_its_missing_node_type_reads_clearly(sim, connector):
    options(sim, newer=True)
    assert connector.run(job(EXAMPLE_WORKFLOW), noop)["files"][0]["filename"] == "jobqueue_00001_.png"
    with pytest.raises(ExecutionFailed, match="missing_node_type: Node 'NoSuchNode' not found. The custom node may "
                                              "not be installed. \\(Node ID '#9'\\)"):
        connector.run(job({**EXAMPLE_WORKFLOW, "9": {"class_type": "NoSuchNode", "inputs": {}}}, "unknown"), noop)


def test_queue_items_of_five_or_six_elements_are_read_alike():
    from jobqueue.connectors.comfyui.protocol import queue_position

    newer = {"queue_running": [[0, "p1", {}, {"create_time": 1}, ["9"], {}]], "queue_pending": [[1, "p2", {}, {}, []]]}
    assert (queue_position(newer, "p1"), queue_position(newer, "p2"), queue_position(newer, "p3")) == \
        ("running", "pending", None)


# -- real workers ----------------------------------------------------------------------------------
def photomaker_workflow(name: str) -> dict[str, Any]:
    return {"1": image(), "2": {"class_type": "PhotoMakerLoader", "inputs": {"photomaker_model_name": name}},
            "3": {"class_type": "SimUseModel", "inputs": {"image": ["1", 0], "model": ["2", 0]}}, "4": save("3")}


def test_a_v3_loaders_file_deleted_since_the_last_check_sends_the_job_back_without_using_a_retry(
        app, start_worker, start_sim, machine_id):
    # Given a machine with photomaker file p.bin, whose worker checked its service at start
    sim_p = start_sim()
    sim_p.set_models(photomaker=["p.bin"])
    wp = comfy_worker(start_worker, machine_id, "p", sim_p, health_interval="120")
    wait_for(lambda: consumes(app, wp, "comfyui.model.p.bin"), 30, what="p's worker to take p.bin's jobs")
    # When p.bin is deleted there and a job loading it with a V3 loader arrives (ComfyUI
    # accepts the prompt and the loader fails when it runs)
    sim_p.set_models(photomaker=[])
    job = submit_job("comfyui", {"workflow": photomaker_workflow("p.bin")}, app=app)
    # Then the worker hands the job back instead of failing it, and stops taking p.bin's jobs
    wait_for(lambda: "no longer on this worker" in wp.log_text(), 30, what="the hand-back")
    wait_for(lambda: not consumes(app, wp, "comfyui.model.p.bin"), 30, what="p.bin's queue to be dropped")
    # and the job reads queued again, not retrying (it processes until the hand-back's Retry is stored)
    wait_for(lambda: job.status() == JobStatus.QUEUED, 10, what="the job to be queued again")
    # When another machine with p.bin starts, the job completes there without a retry counted
    sim_q = start_sim()
    sim_q.set_models(photomaker=["p.bin"])
    wq = comfy_worker(start_worker, machine_id, "q", sim_q)
    assert job.wait(timeout=60)["worker"] == wq.node_name
    assert app.AsyncResult(job.id).retries == 0
