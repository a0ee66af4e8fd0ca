"""A queued job's wait counts the jobs ahead of it and what the busy workers still have to do
(a queued job behind a 30 s job must not say 2 s)."""

from __future__ import annotations

from monitor.web.eta import annotate, busy_until, cold_loads, first_start_in

NOW = 1_800_000_000.0


def queued(job_id: str, submitted_at: float, priority: int = 5) -> dict:
    return {"id": job_id, "status": "queued", "queue": "simulation", "service": "simulation",
            "priority": priority, "submitted_at": submitted_at}


def test_a_queued_job_behind_a_busy_worker_waits_for_the_running_jobs_eta_then_each_job_ahead():
    # Given one online worker whose running job reported 30 s left 4 s ago, and a median of 2 s
    running = {"id": "r", "status": "processing", "service": "simulation", "eta_seconds": 30.0, "eta_at": NOW - 4}
    workers = [{"name": "gpu0@a", "status": "online", "current_job": "r", "queues": ["simulation", "gpu0"]}]
    medians = {"simulation": 2.0}
    jobs = [queued("second", NOW - 5), queued("first", NOW - 10), queued("urgent", NOW - 1, priority=9)]
    # When the queued jobs are annotated
    annotate(jobs, medians, busy=busy_until(workers, {"r": running}, medians, now=NOW))
    by_id = {j["id"]: j for j in jobs}
    # Then the order is priority then age, and each waits for the running job (26 s) plus
    # one median per job up to and including itself
    assert [by_id[i]["queue_position"] for i in ("urgent", "first", "second")] == [1, 2, 3]
    assert [by_id[i]["eta_seconds"] for i in ("urgent", "first", "second")] == [28.0, 30.0, 32.0]


def test_a_running_job_without_an_eta_counts_its_services_median_minus_the_time_it_has_run():
    # Given two workers: one running for 10 s a job whose service takes 25 s, one idle
    running = {"id": "r", "status": "processing", "service": "simulation", "started_at": NOW - 10}
    workers = [{"name": "gpu0@a", "status": "online", "current_job": "r", "queues": ["simulation"]},
               {"name": "gpu1@a", "status": "online", "current_job": None, "queues": ["simulation"]},
               {"name": "gpu2@a", "status": "offline", "current_job": None, "queues": ["simulation"]}]
    medians = {"simulation": 25.0}
    jobs = [queued("a", NOW - 3), queued("b", NOW - 2), queued("c", NOW - 1)]
    # When annotated
    annotate(jobs, medians, busy=busy_until(workers, {"r": running}, medians, now=NOW))
    # Then a starts on the idle worker (25 s), b on the busy one once free (15 + 25 s), c after a
    # (the offline worker counts for nothing)
    assert [j["eta_seconds"] for j in jobs] == [25.0, 40.0, 50.0]


def test_a_place_frees_when_the_first_queued_job_of_the_service_is_expected_to_start():
    jobs = [{"service": "comfyui", "eta_seconds": 50.0}, {"service": "comfyui", "eta_seconds": 30.0},
            {"service": "simulation", "eta_seconds": 2.0}, {"service": "comfyui", "eta_seconds": None}]
    # The soonest comfyui job is expected to have run in 30 s, a run takes 20 s: it starts in 10 s
    assert first_start_in(jobs, "comfyui", 20.0) == 10.0
    assert first_start_in(jobs, "comfyui", 45.0) == 0.0
    assert first_start_in(jobs, "a1111", 20.0) is None


def test_the_first_queued_job_of_a_checkpoint_no_online_worker_has_loaded_waits_a_load_more():
    # Given two idle workers that measured a 3 s load: one has a loaded, none has b
    workers = [{"name": "gpu0@a", "status": "online", "current_job": None, "services": ["comfyui"],
                "queues": ["comfyui.model.a", "comfyui.model.b"],
                "capabilities": {"loaded": ["a"], "load_seconds": 3.0}},
               {"name": "gpu0@b", "status": "online", "current_job": None, "services": ["comfyui"],
                "queues": ["comfyui.model.a", "comfyui.model.b"],
                "capabilities": {"loaded": [], "load_seconds": 5.0}}]
    jobs = [{**queued(f"{q}{i}", NOW - 10 + i), "queue": f"comfyui.model.{q}", "service": "comfyui"}
            for i, q in enumerate(["a", "b", "b"])]
    # When annotated with a 1 s median
    annotate(jobs, {"comfyui": 1.0}, busy=busy_until(workers, {}, {"comfyui": 1.0}, now=NOW), loads=cold_loads(workers))
    by_id = {j["id"]: j for j in jobs}
    # Then a's job waits its run only; b's jobs, one on each worker, a run plus the smallest
    # measured load each
    assert by_id["a0"]["eta_seconds"] == 1.0 and "load_seconds" not in by_id["a0"]
    assert by_id["b1"]["eta_seconds"] == 4.0 and by_id["b1"]["load_seconds"] == 3.0
    assert by_id["b2"]["eta_seconds"] == 4.0 and by_id["b2"]["load_seconds"] == 3.0
    # And with one worker, the second job of b waits for the first (loaded once) plus its run
    one = [{**workers[1], "capabilities": {"loaded": [], "load_seconds": 3.0}}]
    jobs = [{**queued(f"b{i}", NOW - 10 + i), "queue": "comfyui.model.b", "service": "comfyui"} for i in range(2)]
    annotate(jobs, {"comfyui": 1.0}, busy=busy_until(one, {}, {"comfyui": 1.0}, now=NOW), loads=cold_loads(one))
    assert [j["eta_seconds"] for j in jobs] == [4.0, 5.0] and "load_seconds" not in jobs[1]


def test_no_load_is_added_where_nothing_was_measured_or_the_job_needs_no_checkpoint():
    workers = [{"name": "gpu0@a", "status": "online", "current_job": None, "services": ["comfyui"],
                "queues": ["comfyui", "comfyui.model.b"], "capabilities": {"loaded": [], "load_seconds": None}}]
    loads = cold_loads(workers)
    assert loads.of("comfyui.model.b", "comfyui") == 0.0
    assert cold_loads([{**workers[0], "capabilities": {"loaded": [], "load_seconds": 2.0}}]).of("comfyui", "comfyui") == 0.0
