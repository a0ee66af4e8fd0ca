"""ComfyUI in production: a silent node is not a stall, a prompt never runs twice, outages are
waited out. In-process connector tests against the simulator, and acceptance tests with real
worker processes, real Redis and simulator processes over real sockets."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from jobqueue.client.jobs import submit_job
from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.errors import JobCancelled, JobStalled, JobTimedOut, ServiceUnavailable
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.states import JobStatus
from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import connector_for, noop, sim, sim_process, slow

__all__ = ["sim", "sim_process"]  # fixtures


def silent(seconds: float, color: int = 3) -> dict[str, Any]:
    """A node that says nothing at all for ``seconds`` (no progress update, as a VAE decode or
    a model load), then a save that notices an interrupt raised meanwhile when it starts."""
    workflow = slow(1, seconds, color)
    workflow["2"] = {"class_type": "SimSilentSleep", "inputs": {"image": ["1", 0], "seconds": seconds}}
    return workflow


def posted(sim: Any) -> list[str]:
    """Prompt ids POSTed to the simulator with our own ids (the connector's), in order."""
    return [r["body"]["prompt_id"] for r in sim.requests()
            if r["path"] == "/prompt" and r["method"] == "POST" and r["body"].get("prompt_id")]


def history(sim: Any) -> dict[str, Any]:
    result: dict[str, Any] = requests.get(f"{sim.url}/history", timeout=5).json()
    return result


def ended_at(entry: dict[str, Any]) -> float:
    """Wall time (s) of the last message in a history entry (ComfyUI stamps them in ms)."""
    return max(m[1]["timestamp"] for m in entry["status"]["messages"]) / 1000.0


def queue_ids(sim: Any) -> set[str]:
    body = requests.get(f"{sim.url}/queue", timeout=5).json()
    return {item[1] for key in ("queue_running", "queue_pending") for item in body[key]}


# -- in-process: the liveness rule ----------------------------------------------------------------
def test_a_job_waiting_behind_another_clients_long_prompt_is_alive(sim, tmp_path):
    # Given ComfyUI busy for 6 s with another client's prompt, and a stall limit of 2 s
    requests.post(f"{sim.url}/prompt", json={"prompt": silent(6, 9), "client_id": "someone-else"}, timeout=5)
    conn = connector_for(sim, tmp_path, stall_timeout=2.0)
    try:
        # When our job queues behind it, hearing nothing about its own prompt
        result = conn.run(Job(id="behind", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
    finally:
        conn.stop()
    # Then it waited and completed: a prompt ComfyUI lists as pending is alive
    assert result["files"] and len(posted(sim)) == 1


def test_a_prompt_running_silently_past_the_node_limit_stalls_and_is_interrupted(sim, tmp_path):
    # Given a node limit of 1.5 s (per job) and a node silent for 5 s
    conn = connector_for(sim, tmp_path, stall_timeout=30.0)
    try:
        job = Job(id="limit", service="comfyui", payload={"workflow": silent(5), "node_timeout": 1.5})
        started = time.monotonic()
        with pytest.raises(JobStalled) as caught:
            conn.run(job, noop)
        # Then it stalls after the node limit, not the stall limit, naming the limit
        assert 1.5 <= time.monotonic() - started < 6
        assert "node limit" in str(caught.value) and caught.value.details["node_timeout"] == 1.5
        [prompt_id] = posted(sim)
        assert any(r["path"] == "/interrupt" and r["body"] == {"prompt_id": prompt_id} for r in sim.requests())
        # and the abandoned prompt stays in the orphan book until ComfyUI has let it go
        assert prompt_id in conn.orphans.entries()
        assert conn.clean_orphans(timeout=2.0, wait=10.0) == set()
        assert prompt_id not in conn.orphans.entries() and prompt_id not in queue_ids(sim)
    finally:
        conn.stop()


def test_a_timed_out_prompt_still_running_is_removed_before_the_next_job_posts(sim, tmp_path):
    # Given a job that timed out while its prompt ran, and an interrupt that could not land
    # (the prompt runs a 3 s node without progress updates)
    conn = connector_for(sim, tmp_path)
    try:
        with pytest.raises(JobTimedOut):
            conn.run(Job(id="first", service="comfyui", payload={"workflow": silent(3), "timeout": 0.5}), noop)
        [abandoned] = posted(sim)
        assert abandoned in queue_ids(sim) and abandoned in conn.orphans.entries()
        # When the next job runs
        conn.run(Job(id="second", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
        # Then the abandoned prompt had left ComfyUI's queue before the next prompt was posted
        next_post = next(r for r in sim.requests()
                         if r["path"] == "/prompt" and r["method"] == "POST" and r["body"]["prompt_id"] != abandoned)
        entry = history(sim)[abandoned]
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert ended_at(entry) <= next_post["time"]
        assert conn.orphans.entries() == {}
    finally:
        conn.stop()


def run_in_thread(conn: Any, job: Job) -> tuple[threading.Thread, list[Any]]:
    """Run ``job`` on ``conn`` in a thread; the list gets its result or exception."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(conn.run(job, noop))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_a_prompt_that_leaves_comfyuis_queue_without_a_result_is_not_waited_for(sim, tmp_path):
    # Given our prompt pending behind another client's 8 s prompt, with a 30 s stall limit
    requests.post(f"{sim.url}/prompt", json={"prompt": silent(8, 9), "client_id": "someone-else"}, timeout=5)
    conn = connector_for(sim, tmp_path, stall_timeout=30.0)
    try:
        thread, outcome = run_in_thread(conn, Job(id="dropped", service="comfyui",
                                                 payload={"workflow": EXAMPLE_WORKFLOW}))
        ours = wait_for(lambda: [p for p in posted(sim) if p in queue_ids(sim)], 10, what="our prompt queued")[0]
        # When someone deletes it from ComfyUI's queue (no result, no message to us)
        requests.post(f"{sim.url}/queue", json={"delete": [ours]}, timeout=5)
        deleted = time.monotonic()
        thread.join(20)
        # Then the job ends at once as not reached (retried), long before the other prompt ends
        assert outcome and isinstance(outcome[0], ServiceUnavailable), outcome
        assert "left ComfyUI's queue without a result" in str(outcome[0])
        assert time.monotonic() - deleted < 5
    finally:
        conn.stop()


def test_a_cancelled_prompt_whose_interrupt_cannot_land_is_removed_before_the_next_job_posts(sim, tmp_path):
    # Given a job whose prompt runs a 4 s node without progress updates (an interrupt lands only
    # at the node's next update)
    conn = connector_for(sim, tmp_path)
    try:
        job = Job(id="cancelled", service="comfyui", payload={"workflow": silent(4)})
        thread, outcome = run_in_thread(conn, job)
        abandoned = wait_for(lambda: [p for p in posted(sim) if p in queue_ids(sim)], 10, what="the prompt")[0]
        # When the job is cancelled
        conn.cancel(job)
        thread.join(20)
        assert outcome and isinstance(outcome[0], JobCancelled), outcome
        # Then its prompt waits in the orphan book while ComfyUI still runs it
        assert abandoned in conn.orphans.entries() or abandoned not in queue_ids(sim)
        # And the next job's prompt is posted only after the abandoned one left ComfyUI
        conn.run(Job(id="next", service="comfyui", payload={"workflow": EXAMPLE_WORKFLOW}), noop)
        next_post = next(r for r in sim.requests()
                         if r["path"] == "/prompt" and r["method"] == "POST" and r["body"]["prompt_id"] != abandoned)
        assert ended_at(history(sim)[abandoned]) <= next_post["time"]
        assert conn.orphans.entries() == {}
    finally:
        conn.stop()


# -- acceptance: real workers, real Redis, simulator processes ------------------------------------
def comfy_worker(start_worker: Any, sim: SimulatorProcess, queues: str = "gpu0", **env: Any) -> Any:
    return start_worker(queues, CONNECTORS="comfyui", COMFYUI_URL=sim.url, **env)


def successes(sim: Any) -> list[str]:
    return [pid for pid, entry in history(sim).items() if entry["status"]["status_str"] == "success"]


def test_a_node_silent_for_25_s_completes_on_attempt_0_with_a_stall_timeout_of_8_s(app, start_worker, sim_process):
    # Given a worker whose stall timeout is 8 s
    sim = sim_process()
    comfy_worker(start_worker, sim, STALL_TIMEOUT="8")
    # When a job's node runs for 25 s without sending anything
    handle = submit_job("comfyui", {"workflow": silent(25)}, app=app)
    result = handle.wait(timeout=90)
    # Then it completed on its first attempt, and ComfyUI ran exactly one prompt for it
    assert result["attempt"] == 0 and result["files"]
    assert len(posted(sim)) == 1 and successes(sim) == posted(sim)
    assert not [r for r in sim.requests() if r["path"] == "/interrupt"]


def test_a_job_pinned_to_gpu0_waits_out_a_20_s_outage_of_its_comfyui(app, start_worker, sim_process):
    # Given a worker allowed a single counted retry, and its ComfyUI down
    sim = sim_process()
    worker = comfy_worker(start_worker, sim, MAX_RETRIES="1")
    sim.fault("refuse")
    down_at = time.monotonic()
    # When a job pinned to its GPU is submitted during the outage
    handle = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, queue="gpu0", app=app)
    wait_for(lambda: handle.status() == JobStatus.RETRYING, timeout=15, what="the first attempt to fail")
    # ... and the service comes back after 20 s (the outage under test, not a synchronisation)
    wait_for(lambda: time.monotonic() - down_at >= 20, timeout=30, interval=0.5, what="20 s of outage")
    assert handle.status() != JobStatus.FAILED, "the job burned its retries during the outage"
    sim.fault("none")
    back_at = time.monotonic()
    result = handle.wait(timeout=90)
    # Then it completed on that worker after the service returned, having retried (with
    # backoff, uncounted) more often than the retry limit, but not in a tight loop
    assert result["worker"] == worker.node_name and result["files"]
    assert 2 <= result["attempt"] <= 8, result["attempt"]
    assert time.monotonic() - back_at < 60
    assert len(posted(sim)) == 1


def test_a_comfyui_frozen_for_20_s_mid_job_runs_the_job_exactly_once(app, start_worker, sim_process):
    # Given a job under way on a ComfyUI that then freezes for 20 s (stall limit 5 s)
    sim = sim_process()
    comfy_worker(start_worker, sim)
    handle = submit_job("comfyui", {"workflow": slow(100, 0.2), "stall_timeout": 5}, app=app)
    wait_for(lambda: handle.progress()["step"] >= 2, timeout=30, what="the job to be under way")
    sim.fault("freeze")
    frozen_at = time.monotonic()
    # The worker gives the attempt up while ComfyUI is frozen
    wait_for(lambda: handle.status() == JobStatus.RETRYING or handle.progress().get("attempt", 0) >= 1,
             timeout=18, what="the stalled attempt to be given up")
    wait_for(lambda: time.monotonic() - frozen_at >= 20, timeout=30, interval=0.5, what="20 s of freeze")
    sim.fault("none")
    # When ComfyUI thaws
    result = handle.wait(timeout=120)
    # Then the job completed once, on a later attempt, and ComfyUI's history holds exactly one
    # successful prompt: the abandoned one was interrupted (or deleted) before it could finish
    assert result["attempt"] >= 1 and result["files"]
    prompts = posted(sim)
    assert len(prompts) == 2 and successes(sim) == [result["prompt_id"]] == [prompts[1]]
    abandoned = history(sim).get(prompts[0])
    assert abandoned is None or abandoned["status"]["messages"][-1][0] == "execution_interrupted"
    assert app.AsyncResult(handle.id).state == "SUCCESS"


def test_a_prompt_of_a_sigkilled_worker_is_gone_from_comfyui_before_the_restarted_worker_takes_a_job(
        app, start_worker, sim_process):
    # Given a worker killed (SIGKILL) while its prompt runs on ComfyUI
    sim = sim_process()
    first = comfy_worker(start_worker, sim)
    handle = submit_job("comfyui", {"workflow": slow(200, 0.1)}, app=app)
    wait_for(lambda: handle.progress()["step"] >= 2, timeout=30, what="the job to be under way")
    [orphan] = posted(sim)
    first.kill()
    assert orphan in queue_ids(sim), "the prompt outlives its worker"
    # When the worker restarts (same identity) and a new job arrives
    restarted = comfy_worker(start_worker, sim)
    assert restarted.node_name == first.node_name
    fresh = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app)
    fresh.wait(timeout=60)
    # Then the orphan was interrupted and had left ComfyUI's queue before any new prompt was posted
    seen = sim.requests()
    interrupt_at = next(i for i, r in enumerate(seen) if r["path"] == "/interrupt" and r["body"] == {"prompt_id": orphan})
    later_posts = [i for i, r in enumerate(seen) if r["path"] == "/prompt" and r["method"] == "POST"
                   and r["body"]["prompt_id"] != orphan]
    assert later_posts and interrupt_at < min(later_posts)
    entry = history(sim)[orphan]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    # ... and had ended (interrupted) before the restarted worker posted anything
    assert ended_at(entry) <= seen[min(later_posts)]["time"]


def test_previews_of_a_running_job_reach_the_result_backend_throttled(app, start_worker, sim_process, redis_client):
    # Given a job whose node sends a preview with each of 30 steps of 0.1 s
    sim = sim_process()
    comfy_worker(start_worker, sim)
    workflow = slow(30, 0.1)
    workflow["2"] = {"class_type": "SimPreviewSampler", "inputs": {"image": ["1", 0], "steps": 30, "delay": 0.1}}
    seen: list[dict[str, Any]] = []
    handle = submit_job("comfyui", {"workflow": workflow}, app=app)
    handle.wait(timeout=60, on_progress=seen.append)
    # Then its progress announced previews, at most 2 per second, the latest one stored in Redis
    numbers = [p["preview"] for p in seen if p.get("preview")]
    assert numbers and numbers == sorted(numbers)
    stored = redis_client.hgetall(f"jobqueue-preview-{handle.id}")
    assert stored[b"data"].startswith(b"\x89PNG") and stored[b"mime"] == b"image/png"
    assert 2 <= int(stored[b"seq"]) <= 3 / 0.5 + 2  # 3 s of steps at most 2 per second
