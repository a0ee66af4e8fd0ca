"""Jobs go only where they can run: real workers, real Redis, ComfyUI simulators over real
sockets, each simulator a "machine" with its own model files (and VRAM)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobqueue import submit_job
from jobqueue.client.batches import submit_batch
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.errors import InvalidRequirementError
from jobqueue.shared import queued
from jobqueue.shared.routing import vram_step
from jobqueue.sims.comfyui.models import checkpoint_workflow
from jobqueue.states import JobStatus
from tests.capability_fixtures import comfy_worker, consumes, start_sim
from tests.helpers import ROOT, child_env, wait_for
from tests.monitor.conftest import start_monitor  # noqa: F401, F811 (fixture)

__all__ = ["start_sim"]  # a fixture


def test_jobs_needing_a_model_all_run_on_the_machine_that_has_it(app, start_worker, start_sim, machine_id):
    # Given two machines: one with checkpoint a, one with checkpoint b
    wa = comfy_worker(start_worker, machine_id, "a", start_sim("a.safetensors"))
    wb = comfy_worker(start_worker, machine_id, "b", start_sim("b.safetensors"))
    wait_for(lambda: consumes(app, wb, "comfyui.model.b.safetensors"), 30, what="b's worker to take b's jobs")
    assert consumes(app, wa, "comfyui.model.a.safetensors") and not consumes(app, wa, "comfyui.model.b.safetensors")
    # When 4 jobs need b: two say so, two only name it in their checkpoint loader
    jobs = [submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, requires={"models": ["b.safetensors"]}, app=app)
            for _ in range(2)]
    jobs += [submit_job("comfyui", {"workflow": checkpoint_workflow("b.safetensors", f"j{i}")}, app=app)
             for i in range(2)]
    # (and a batch whose workflow loads b is routed the same way, job by job)
    batch = submit_batch("comfyui", {"workflow": checkpoint_workflow("b.safetensors", "batch")}, 2, app=app)
    # Then all run on b's machine and none fails for a missing model
    results = [job.wait(timeout=60) for job in jobs + batch]
    assert [r["worker"] for r in results] == [wb.node_name] * 6
    assert [r["attempt"] for r in results] == [0] * 6
    assert "value_not_in_list" not in wa.log_text() + wb.log_text()
    # And the broker never offered them to a's worker (no hand-back was needed)
    assert "handing it back" not in wa.log_text()


def test_a_job_needing_a_missing_model_waits_saying_so_and_runs_once_a_machine_has_it(
        app, start_worker, start_sim, machine_id, settings):
    # Given machines with a and b, and a job whose checkpoint is c
    comfy_worker(start_worker, machine_id, "a", start_sim("a.safetensors"))
    wb = comfy_worker(start_worker, machine_id, "b", start_sim("b.safetensors"))
    wait_for(lambda: consumes(app, wb, "comfyui.model.b.safetensors"), 30, what="b's worker to take b's jobs")
    job = submit_job("comfyui", {"workflow": checkpoint_workflow("c.safetensors")}, app=app)
    # Then it stays queued, and the client and the CLI say why
    assert job.waiting_for() == "no online worker has model c.safetensors"
    assert job.status() == JobStatus.QUEUED
    out = subprocess.run([sys.executable, "-m", "jobqueue.cli", "status", job.id], env=child_env(settings.to_env()),
                         cwd=str(ROOT), capture_output=True, timeout=60, check=True)
    report = json.loads(out.stdout)
    assert report["status"] == "queued" and report["waiting_for"] == "no online worker has model c.safetensors"
    # When a third machine with c and its worker start
    wc = comfy_worker(start_worker, machine_id, "c", start_sim("c.safetensors"))
    # Then the job completes there
    result = job.wait(timeout=60)
    assert result["worker"] == wc.node_name and result["attempt"] == 0


def test_a_job_needing_more_vram_than_a_machine_has_runs_only_on_the_machine_with_enough(
        app, start_worker, start_sim, machine_id):
    # Given two machines with the same checkpoint: one GPU of 8 GiB, one of 24 GiB
    small = comfy_worker(start_worker, machine_id, "small", start_sim("a.safetensors", vram_gb=8))
    big = comfy_worker(start_worker, machine_id, "big", start_sim("a.safetensors", vram_gb=24))
    wait_for(lambda: consumes(app, big, f"comfyui.vram.{vram_step(20)}"), 30, what="the 24 GiB worker to take 20 GiB jobs")
    assert not consumes(app, small, f"comfyui.vram.{vram_step(20)}")
    # When jobs need 20 GiB (the small machine stays idle all along)
    jobs = [submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, requires={"vram_gb": 20}, app=app) for _ in range(3)]
    # Then every one runs on the big machine, first time
    results = [job.wait(timeout=60) for job in jobs]
    assert [(r["worker"], r["attempt"]) for r in results] == [(big.node_name, 0)] * 3
    # And a job that fits both (6 GiB) may run on either
    assert submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, requires={"vram_gb": 6}, app=app).wait(
        timeout=60)["worker"] in (small.node_name, big.node_name)
    # And one no machine can hold (40 GiB) waits, saying so
    huge = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, requires={"vram_gb": 40}, app=app)
    assert "40" in (huge.waiting_for() or "") and huge.status() == JobStatus.QUEUED


def test_a_job_requiring_a_tag_runs_only_on_the_worker_that_declares_it(app, start_worker, start_sim, machine_id):
    # Given two identical machines, one worker started with customer:acme
    plain = comfy_worker(start_worker, machine_id, "plain", start_sim("a.safetensors"))
    acme = comfy_worker(start_worker, machine_id, "acme", start_sim("a.safetensors"), worker_tags="customer:acme,region:eu")
    wait_for(lambda: consumes(app, acme, "comfyui.tag.customer%3Aacme"), 30, what="acme's worker to take acme's jobs")
    # When acme's jobs come in (the other worker stays idle all along)
    jobs = [submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, requires={"tags": ["customer:acme"]}, app=app)
            for _ in range(3)]
    # Then every one runs on acme's worker
    assert [job.wait(timeout=60)["worker"] for job in jobs] == [acme.node_name] * 3
    # And a job needing nothing still goes to either
    assert submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app).wait(timeout=60)["worker"] in (
        plain.node_name, acme.node_name)


def test_a_worker_lacking_one_of_several_requirements_hands_the_job_back_without_a_retry(
        app, start_worker, start_sim, machine_id):
    # Given acme's worker has only a; the job needs acme's tag and model b (routed on the tag)
    acme_a = comfy_worker(start_worker, machine_id, "acme-a", start_sim("a.safetensors"), worker_tags="customer:acme")
    wait_for(lambda: consumes(app, acme_a, "comfyui.tag.customer%3Aacme"), 30, what="acme's worker to subscribe")
    job = submit_job("comfyui", {"workflow": checkpoint_workflow("b.safetensors")},
                     requires={"tags": ["customer:acme"]}, app=app)
    # Then that worker hands it back before starting it, and the job is still simply queued
    wait_for(lambda: "handing it back" in acme_a.log_text(), 30, what="the hand-back")
    assert job.status() == JobStatus.QUEUED
    assert job.waiting_for() == "no online worker has model b.safetensors"
    # When an acme machine with b appears, the job runs there, on its first attempt
    acme_b = comfy_worker(start_worker, machine_id, "acme-b", start_sim("b.safetensors"), worker_tags="customer:acme")
    result = job.wait(timeout=60)
    assert result["worker"] == acme_b.node_name and result["attempt"] == 0
    assert app.AsyncResult(job.id).retries in (0, None)


def test_a_model_deleted_since_the_last_check_sends_the_job_back_queued_without_using_a_retry(
        app, start_worker, start_sim, start_monitor, machine_id, settings):  # noqa: F811 (fixture)
    # Given b's machine, whose worker checked its service at start (the next check is far off)
    monitor = start_monitor()
    sim_b = start_sim("b.safetensors")
    wb = comfy_worker(start_worker, machine_id, "b", sim_b, health_interval="120")
    wait_for(lambda: consumes(app, wb, "comfyui.model.b.safetensors"), 30, what="b's worker to take b's jobs")
    # When b is deleted on that machine and a job loading b arrives
    sim_b.set_models([])
    job = submit_job("comfyui", {"workflow": checkpoint_workflow("b.safetensors")}, app=app)
    # Then the worker does not fail it: it hands it back and stops taking b's jobs
    wait_for(lambda: "no longer on this worker" in wb.log_text(), 30, what="the hand-back")
    wait_for(lambda: not consumes(app, wb, "comfyui.model.b.safetensors"), 30, what="b's queue to be dropped")
    # And it reads queued, with why, for the client, the CLI and the monitor (not retrying), and
    # it counts as queued again for the queue caps (the queue is dropped before the hand-back's
    # Retry is raised and its state stored: until then it reads processing)
    wait_for(lambda: job.status() == JobStatus.QUEUED, 10, what="the job to be queued again")
    assert job.waiting_for() == "no online worker has model b.safetensors"
    out = subprocess.run([sys.executable, "-m", "jobqueue.cli", "status", job.id], env=child_env(settings.to_env()),
                         cwd=str(ROOT), capture_output=True, timeout=60, check=True)
    assert json.loads(out.stdout)["status"] == "queued"
    assert json.loads(out.stdout)["waiting_for"] == "no online worker has model b.safetensors"
    shown = wait_for(lambda: (lambda j: j if j["status"] == "queued" and j["attempt"] >= 1 else None)(
        monitor.get(f"/api/jobs/{job.id}").json()), 30, interval=0.2, what="the monitor to show it queued")
    assert shown["error"]["type"] == "ModelsVanished"
    assert shown["waiting_for"] == "no online worker has model b.safetensors"
    assert queued.counts(app, ["comfyui"]) == {"comfyui": 1}
    # When another machine with b starts, the job completes there without a retry counted
    wb2 = comfy_worker(start_worker, machine_id, "b2", start_sim("b.safetensors"))
    assert job.wait(timeout=60)["worker"] == wb2.node_name
    assert app.AsyncResult(job.id).retries == 0
    assert queued.counts(app, ["comfyui"]) == {"comfyui": 0}


def test_a_malformed_requirement_is_refused_at_submit_and_nothing_is_enqueued(app, redis_client):
    with pytest.raises(InvalidRequirementError):
        submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, requires={"vram_gb": -1}, app=app)
    assert [k for k in redis_client.keys("*") if not k.startswith(b"_kombu")] == []
