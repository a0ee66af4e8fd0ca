"""Warm routing through real workers and ComfyUI simulators that pay for loading a checkpoint:
a job goes first to a worker that has its checkpoint loaded, and a cold worker still takes it
when the warm one is busy."""

from __future__ import annotations

from typing import Any

import requests

from jobqueue import submit_job
from jobqueue.client.waiting import online_capabilities
from jobqueue.sims.a1111.process import A1111SimulatorProcess
from jobqueue.sims.comfyui.models import checkpoint_workflow
from tests.capability_fixtures import comfy_worker, consumes, start_sim
from tests.helpers import wait_for
from tests.monitor.conftest import start_monitor

__all__ = ["start_monitor", "start_sim"]  # fixtures

A, B = "a.safetensors", "b.safetensors"


def sim_state(sim: Any) -> dict[str, Any]:
    state: dict[str, Any] = requests.get(f"{sim.url}/_sim/state", timeout=5).json()
    return state


def two_machines(start_worker: Any, start_sim: Any, machine_id: str, app: Any, load_seconds: float = 0.5,
                 **env: str) -> tuple[list[Any], list[Any]]:
    """Two machines holding a and b whose loads take ``load_seconds``, each with a worker
    consuming both checkpoints' queues."""
    sims = [start_sim(A, B), start_sim(A, B)]
    for sim in sims:
        sim.set_options(load_seconds=load_seconds)
    workers = [comfy_worker(start_worker, machine_id, name, sim, warm_grace="1.0", **env)
               for name, sim in zip(("one", "two"), sims, strict=True)]
    for worker in workers:
        wait_for(lambda w=worker: consumes(app, w, f"comfyui.model.{A}") and consumes(app, w, f"comfyui.model.{B}"),
                 30, what="both workers to take both checkpoints' jobs")
    return sims, workers


def test_jobs_alternating_two_checkpoints_on_two_workers_mostly_run_where_their_checkpoint_is_loaded(
        app, start_worker, start_sim, machine_id):
    # Given two workers that can run both checkpoints, a load costing 0.5 s
    sims, workers = two_machines(start_worker, start_sim, machine_id, app)
    # When 12 jobs alternate a and b
    jobs = [submit_job("comfyui", {"workflow": checkpoint_workflow(A if i % 2 == 0 else B, f"w{i}")}, app=app)
            for i in range(12)]
    results = [job.wait(timeout=120) for job in jobs]
    # Then each checkpoint was loaded at most twice in all (once per worker at worst), where
    # taking jobs as they come reloads on about every other job
    loads = sum(sim_state(sim)["loads"] for sim in sims)
    assert loads <= 4, f"{loads} loads for 12 jobs"
    # And both workers took part, each running one checkpoint's jobs after its first
    assert {r["worker"] for r in results} == {w.node_name for w in workers}


def test_a_cold_idle_worker_takes_a_job_whose_warm_worker_is_busy(app, start_worker, start_sim, machine_id):
    # Given worker one has a loaded and worker two has b loaded, both idle
    sims, workers = two_machines(start_worker, start_sim, machine_id, app, load_seconds=0.2)
    first = submit_job("comfyui", {"workflow": checkpoint_workflow(A, "first")}, app=app).wait(timeout=60)
    warm_a = next(w for w in workers if w.node_name == first["worker"])
    other = next(w for w in workers if w is not warm_a)
    sim_a = sims[workers.index(warm_a)]
    # (the other worker leaves a's jobs to it while it is idle)
    wait_for(lambda: not consumes(app, other, f"comfyui.model.{A}"), 30, what="the other worker to leave a's jobs")
    # When a's worker is kept busy (its server stops answering mid-job) and another job of a comes
    sim_a.fault("freeze")
    try:
        busy = submit_job("comfyui", {"workflow": checkpoint_workflow(A, "busy")}, app=app)
        wait_for(lambda: busy.status() == "processing", 30, what="a's worker to be busy")
        waiting = submit_job("comfyui", {"workflow": checkpoint_workflow(A, "waiting")}, app=app)
        # Then the other worker runs it, loading a, while a's worker is still busy
        result = waiting.wait(timeout=60)
        assert result["worker"] == other.node_name
        assert busy.status() == "processing"
    finally:
        sim_a.fault("none")
    assert busy.wait(timeout=120)["worker"] in (warm_a.node_name, other.node_name)


V15, XL = "v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"


def test_a1111_jobs_alternating_two_checkpoints_run_where_loaded_and_the_monitor_shows_what_each_holds(
        app, start_worker, start_monitor, machine_id, tmp_path):  # noqa: F811 (fixture)
    # Given two WebUIs with both checkpoints (a switch takes 0.5 s), a worker on each, a monitor
    monitor = start_monitor()
    webuis = [A1111SimulatorProcess(step_seconds=0.02, load_seconds=0.5, log_path=tmp_path / f"webui{i}.log").start()
              for i in range(2)]
    try:
        workers = [start_worker("gpu0", CONNECTORS="a1111", A1111_URL=w.url, MACHINE_ID=f"{machine_id}-{i}",
                                WARM_GRACE="1.0") for i, w in enumerate(webuis)]
        for worker in workers:
            wait_for(lambda w=worker: consumes(app, w, f"a1111.model.{V15}") and consumes(app, w, f"a1111.model.{XL}"),
                     30, what="both workers to take both checkpoints' jobs")
        # When 12 jobs alternate the two checkpoints (named by file name, one of the WebUI's aliases)
        jobs = [submit_job("a1111", {"prompt": f"p{i}", "steps": 2, "width": 64, "height": 64,
                                     "override_settings": {"sd_model_checkpoint": V15 if i % 2 == 0 else XL}}, app=app)
                for i in range(12)]
        results = [job.wait(timeout=120) for job in jobs]
        # Then the WebUIs switched checkpoints at most twice each
        loads = sum(w.state()["loads"] for w in webuis)
        assert loads <= 4, f"{loads} checkpoint switches for 12 jobs"
        # And the monitor shows on each worker what it ran last as loaded, with the load measured
        for worker in workers:
            last = max((i for i, r in enumerate(results) if r["worker"] == worker.node_name), default=None)
            assert last is not None, "both workers ran jobs"
            want = [V15 if last % 2 == 0 else XL]

            def shown(w: Any = worker) -> Any:
                return monitor.get(f"/api/workers/{w.node_name}").json().get("capabilities", {}).get("loaded")

            wait_for(lambda w=worker, want=want: shown(w) == want, 30, interval=0.2, what="the monitor to show it")
    finally:
        for webui in webuis:
            webui.stop()


def slow_workflow(ckpt: str, prefix: str, steps: int = 30) -> dict[str, Any]:
    """A workflow loading ``ckpt`` that then samples ``steps`` steps of 0.1 s."""
    workflow = checkpoint_workflow(ckpt, prefix)
    workflow["5"] = {"class_type": "HarnessSleepProgress", "inputs": {"image": ["3", 0], "steps": steps, "delay": 0.1}}
    workflow["4"]["inputs"]["images"] = ["5", 0]
    return workflow


def test_a_queued_job_of_a_checkpoint_nobody_has_loaded_expects_the_measured_load_in_its_eta(
        app, start_worker, start_sim, start_monitor, machine_id):  # noqa: F811 (fixture)
    # Given two workers (a load takes 0.5 s), one of which measured it: a cold run of a, then a warm one
    monitor = start_monitor()
    sims, workers = two_machines(start_worker, start_sim, machine_id, app, health_interval="0.5")
    for sim in sims:
        sim.set_models([A, B, "c.safetensors"])
    wait_for(lambda: sum("c.safetensors" in cap.models for cap in online_capabilities(app)) == 2, 30,
             what="both workers to have c")
    first = submit_job("comfyui", {"workflow": checkpoint_workflow(A, "m0")}, app=app).wait(timeout=60)
    other = next(w for w in workers if w.node_name != first["worker"])
    wait_for(lambda: not consumes(app, other, f"comfyui.model.{A}"), 30, what="the other worker to leave a's jobs")
    again = submit_job("comfyui", {"workflow": checkpoint_workflow(A, "m1")}, app=app).wait(timeout=60)
    assert again["worker"] == first["worker"]
    # When both are kept busy (a long job of a, then one of b) and jobs of c and a wait
    busy = [submit_job("comfyui", {"workflow": slow_workflow(ckpt, f"s{ckpt}")}, app=app) for ckpt in (A, B)]
    wait_for(lambda: all(job.status() == "processing" for job in busy), 60, what="both workers to be busy")
    cold = submit_job("comfyui", {"workflow": checkpoint_workflow("c.safetensors", "cold")}, app=app)
    warm = submit_job("comfyui", {"workflow": checkpoint_workflow(A, "warm")}, app=app)
    # Then the client expects c's job to wait for a load (about the 0.5 s measured), a's for none
    expected = cold.expected_load()
    assert 0.3 <= expected <= 2.0, expected
    assert warm.expected_load() == 0.0
    # And the monitor's estimates say the same

    def estimate() -> dict[str, Any]:
        jobs: dict[str, Any] = monitor.get("/api/estimates").json()["jobs"]
        return jobs
    wait_for(lambda: cold.id in estimate() and estimate()[cold.id]["load"] > 0.3, 30, interval=0.2,
             what="the monitor to count c's load")
    assert estimate().get(warm.id, {"load": 0.0})["load"] == 0.0
    for job in [*busy, cold, warm]:
        job.wait(timeout=120)
