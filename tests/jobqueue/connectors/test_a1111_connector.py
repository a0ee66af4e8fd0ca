"""The a1111 connector against the WebUI simulator over real sockets: in-process for the
connector's own behaviour, and through real worker processes and Redis for acceptance."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.connectors.a1111.connector import A1111Connector, describe_error
from jobqueue.connectors.base import Job
from jobqueue.errors import (
    ConfigError,
    ExecutionFailed,
    InvalidPayloadError,
    JobCancelled,
    JobFailed,
    JobStalled,
)
from jobqueue.sims.a1111.process import A1111SimulatorProcess
from jobqueue.sims.a1111.server import A1111SimulatorThread
from jobqueue.states import ConnectorStatus, JobStatus
from jobqueue.up.embedded import free_port
from tests.helpers import wait_for
from tests.jobqueue.worker.test_connector_status import consumed_queues

XL = "sd_xl_base_1.0.safetensors [31e35c80fc]"


@pytest.fixture
def sim() -> Iterator[A1111SimulatorThread]:
    server = A1111SimulatorThread(step_seconds=0.02, load_seconds=0.5).start()
    yield server
    server.stop()


@pytest.fixture
def connector(sim: A1111SimulatorThread, tmp_path: Path) -> Iterator[A1111Connector]:
    conn = A1111Connector(Settings(a1111_url=sim.url, output_dir=str(tmp_path / "outputs")))
    conn.start()
    yield conn
    conn.stop()


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Any]:
    """Factory of simulator subprocesses (they can be frozen or killed for real)."""
    started: list[A1111SimulatorProcess] = []

    def start(**options: Any) -> A1111SimulatorProcess:
        proc = A1111SimulatorProcess(log_path=tmp_path / f"sim{len(started)}.log", **options).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class Reports:
    """A progress reporter that keeps every report."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, **report: Any) -> None:
        self.items.append(report)


def run_in_thread(connector: A1111Connector, job: Job) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(connector.run(job, Reports()))
        except BaseException as exc:  # noqa: B036 - collected for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, outcome


def other_client(url: str, body: dict[str, Any]) -> threading.Thread:
    """Another client's blocking txt2img on the same WebUI."""
    thread = threading.Thread(target=lambda: requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60))
    thread.start()
    return thread


def sim_busy(url: str) -> bool:
    return bool(requests.get(f"{url}/sdapi/v1/progress", timeout=5).json()["state"]["job_count"])


# -- payload -------------------------------------------------------------------------------------
def test_the_example_payload_is_valid_and_bad_fields_are_refused_naming_each_problem():
    assert A1111Connector.validate(A1111Connector.example_payload)["mode"] == "txt2img"
    cases = [
        ({"steps": -1}, "'steps' must be between 1 and 150 (the WebUI's UI limits; \"ui_limits\": false lifts them), "
                        "got -1"),
        ({"steps": -1, "ui_limits": False}, "'steps' must be >= 1, got -1"),
        ({"steps": "twenty"}, "'steps' must be an integer, got 'twenty'"),
        ({"steps": "7.5"}, "'steps' must be an integer, got '7.5'"),
        ({"cfg_scale": True}, "'cfg_scale' must be a number"),
        ({"width": 4096, "batch_size": 0}, "'width' must be between 64 and 2048"),
        ({"styles": [1]}, "'styles' must be a list of strings"),
        ({"prompt": None}, "'prompt' may not be null"),
        ({"promt": "typo"}, "unknown field(s) ['promt']"),
        ({"mode": "inpaint"}, "'mode' must be one of txt2img, img2img"),
        ({"mode": "img2img"}, "img2img needs 'init_images'"),
        ({"init_images": ["x"]}, "'init_images' is not a txt2img field"),
        ({"force_task_id": "mine"}, "'force_task_id' may not be set"),
        ({"send_images": False}, "'send_images' may not be set"),
        ({"override_settings": {"sd_model_checkpoint": 3}}, "sd_model_checkpoint' must be a string"),
        ({"stall_timeout": 0}, "'stall_timeout' must be a positive number"),
        ([], "payload must be a JSON object"),
    ]
    for payload, text in cases:
        with pytest.raises(InvalidPayloadError) as info:
            A1111Connector.validate(payload)
        assert text in str(info.value), (payload, str(info.value))
    both = pytest.raises(InvalidPayloadError, A1111Connector.validate, {"width": 4096, "batch_size": 0})
    assert "'batch_size' must be between 1 and 8" in str(both.value)
    assert A1111Connector.validate({"mode": "img2img", "init_images": ["aGk="], "denoising_strength": 0.4})


def test_only_what_the_webui_can_run_is_enforced_when_ui_limits_are_lifted_and_numeric_strings_are_numbers():
    # The UI's slider limits are a default: the API takes 200 steps, 4096 px, batch 16, cfg 40
    big = {"steps": 200, "width": 4096, "height": 64, "batch_size": 16, "cfg_scale": 40}
    with pytest.raises(InvalidPayloadError, match="'steps' must be between 1 and 150"):
        A1111Connector.validate(big)
    assert A1111Connector.validate({**big, "ui_limits": False})["steps"] == 200
    # Numeric strings are what the WebUI's models make of them (pydantic 1 and 2 alike), and go on as numbers
    assert A1111Connector.validate({"steps": "20", "cfg_scale": "7.5", "seed": " 5"}) == {
        "steps": 20, "cfg_scale": 7.5, "seed": 5, "mode": "txt2img"}
    # ui_limits is ours: never sent to the WebUI
    from jobqueue.connectors.a1111.payload import request_body
    assert "ui_limits" not in request_body(A1111Connector.validate({**big, "ui_limits": False}), "t")


def test_webui_error_answers_are_described_in_one_line():
    detail = {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]}
    assert describe_error(422, detail) == "the WebUI refused the request (422): steps: value is not a valid integer"
    crashed = {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory"}
    assert describe_error(500, crashed) == "the WebUI answered 500: OutOfMemoryError: CUDA out of memory"
    # Forge's and FastAPI's other shapes keep their message
    assert describe_error(404, {"detail": "Not Found"}) == "the WebUI answered 404: Not Found"
    forge = {"error": "RuntimeError", "detail": "", "body": "", "message": "Model not loaded"}
    assert describe_error(500, forge) == "the WebUI answered 500: RuntimeError: Model not loaded"


def test_each_worker_takes_its_gpus_webui_url_and_a_bad_url_map_names_its_variable():
    settings = Settings.from_env({"JOBQUEUE_A1111_URL": "http://h:7860", "JOBQUEUE_A1111_URLS": "gpu1=http://h:7861"})
    assert settings.a1111_url_for(1) == "http://h:7861" and settings.a1111_url_for(0) == "http://h:7860"
    assert Settings.from_env(settings.to_env()).a1111_urls == {"gpu1": "http://h:7861"}
    with pytest.raises(ConfigError, match="JOBQUEUE_A1111_URLS"):
        Settings.from_env({"JOBQUEUE_A1111_URLS": "http://no-key:7860"})


# -- in-process connector ------------------------------------------------------------------------
def test_health_reports_checkpoint_and_version_and_offline_with_the_reason_when_refused(sim, connector):
    health = connector.check_health()
    assert health.status == ConnectorStatus.IDLE
    assert health.details["sd_model_checkpoint"].startswith("v1-5-pruned-emaonly")
    assert health.details["version"] == "v1.10.1" and health.details["flavour"] == "a1111"
    assert health.details["busy"] is False and "v1.10.1" in health.details["summary"]
    sim.fault("refuse")
    down = connector.check_health()
    assert down.status == ConnectorStatus.OFFLINE and "unreachable" in down.message and sim.url in down.message


def test_an_older_webui_without_ping_or_task_ids_is_checked_through_options_and_still_runs(sim, connector):
    # Given a build from before v1.6: /internal/ping and /internal/progress answer 404
    sim.configure(legacy=True, step_seconds=0.03)
    # Then health falls back to /sdapi/v1/options, and a job runs with its progress
    assert connector.check_health().status == ConnectorStatus.IDLE
    reports = Reports()
    result = connector.run(Job(id="old", service="a1111", payload={"steps": 40, "width": 64, "height": 64}), reports)
    assert result["files"] and max(r.get("step") or 0 for r in reports.items) >= 10
    # (/internal/progress was asked once; after its 404 the connector never asks again)
    assert len([r for r in sim.requests() if r["path"] == "/internal/progress"]) == 1


def test_a_run_writes_every_image_and_returns_the_webuis_info(connector, tmp_path):
    job = Job(id="j1", service="a1111", payload={"prompt": "a cat", "seed": 5, "steps": 3, "n_iter": 2,
                                                   "batch_size": 2, "width": 64, "height": 64})
    result = connector.run(job, Reports())
    assert [f["filename"] for f in result["files"]] == ["00000-5.png", "00001-6.png", "00002-7.png", "00003-8.png"]
    for item in result["files"]:
        path = Path(item["path"])
        assert path.parent == (tmp_path / "outputs" / "j1").resolve() and path.read_bytes().startswith(b"\x89PNG")
    assert result["info"]["seed"] == 5 and result["info"]["sampler_name"] == "Euler"
    assert result["info"]["sd_model_name"] == "v1-5-pruned-emaonly" and result["task_id"] == "jobqueue-j1-0"


def test_every_new_live_preview_of_the_webui_is_handed_to_the_job_as_a_png(sim, connector):
    # Given a job whose previews are collected (the WebUI renders one every 10 steps)
    sim.configure(step_seconds=0.03)
    job = Job(id="previews", service="a1111", payload={"steps": 60, "width": 64, "height": 64})
    previews: list[tuple[bytes, str]] = []
    job.report_preview = lambda data, mime: previews.append((data, mime))  # type: ignore[method-assign]
    # When it runs
    connector.run(job, Reports())
    # Then several distinct PNG previews arrived, none twice in a row
    assert len(previews) >= 3, len(previews)
    assert all(mime == "image/png" and data.startswith(b"\x89PNG") for data, mime in previews)
    assert all(a != b for a, b in pairwise(previews))


def test_a_sampler_the_webui_does_not_have_fails_before_anything_runs(sim, connector):
    # Given A1111 1.10, which would run an unknown sampler as DPM++ 2M and answer 200
    with pytest.raises(ExecutionFailed) as info:
        connector.run(Job(id="s", service="a1111", payload={"steps": 2, "sampler_name": "Nope"}), Reports())
    # Then the job fails at once against /sdapi/v1/samplers, naming what the WebUI has, and
    # nothing was posted
    assert str(info.value).startswith("the WebUI has no sampler 'Nope'") and "DPM++ 2M, DPM++ 2M SDE" in str(info.value)
    assert not info.value.retryable
    assert not [r for r in sim.requests() if r["path"] == "/sdapi/v1/txt2img"]
    # And a sampler with a scheduler suffix is the sampler it names
    result = connector.run(Job(id="k", service="a1111", payload={"steps": 2, "sampler_name": "DPM++ 2M Karras"}),
                           Reports())
    assert result["info"]["sampler_name"] == "DPM++ 2M"


def test_an_answer_whose_info_shows_another_sampler_or_checkpoint_than_asked_is_not_honoured():
    from jobqueue.connectors.a1111.answers import unhonoured

    # What a 1.9+ WebUI answers when it fell back silently: the job is failed with both names
    fallback = unhonoured({"sampler_name": "Nope"}, {"sampler_name": "DPM++ 2M"})
    assert fallback is not None and fallback.startswith("the WebUI ran sampler 'DPM++ 2M' instead of 'Nope'")
    assert unhonoured({"sampler_name": "Euler a Karras"}, {"sampler_name": "Euler a"}) is None
    info = {"sd_model_name": "sd_xl_base_1.0", "sd_model_hash": "31e35c80fc"}
    for alias in ("sd_xl_base_1.0.safetensors [31e35c80fc]", "sd_xl_base_1.0", "XL/sd_xl_base_1.0.safetensors",
                  "31e35c80fc", "other-name [31e35c80fc]"):
        assert unhonoured({"override_settings": {"sd_model_checkpoint": alias}}, info) is None, alias
    assert "instead of 'v1-5'" in str(unhonoured({"override_settings": {"sd_model_checkpoint": "v1-5"}}, info))


def test_a_checkpoint_the_webui_does_not_have_fails_the_job_and_its_aliases_are_honoured(sim, connector):
    # An unknown checkpoint is dropped silently by the WebUI: the info says which model ran
    with pytest.raises(ExecutionFailed, match="ran checkpoint 'v1-5-pruned-emaonly' .* instead of 'nope.safetensors'"):
        connector.run(Job(id="c", service="a1111", payload={
            "steps": 1, "override_settings": {"sd_model_checkpoint": "nope.safetensors"}}), Reports())
    # A short hash or a name without extension is the checkpoint itself
    for alias in ("31e35c80fc", "sd_xl_base_1.0"):
        result = connector.run(Job(id=f"c-{alias}", service="a1111", payload={
            "steps": 1, "override_settings": {"sd_model_checkpoint": alias}}), Reports())
        assert result["info"]["sd_model_name"] == "sd_xl_base_1.0"


def test_a_webui_busy_with_another_clients_job_is_alive_and_its_progress_is_not_ours(sim, connector):
    # Given another client's job that runs longer than our stall timeout
    sim.configure(step_seconds=0.05)
    other = other_client(sim.url, {"steps": 50, "force_task_id": "theirs"})
    wait_for(lambda: sim_busy(sim.url), what="the other job to run")
    # When our job is sent with a 1.5 s stall timeout
    reports = Reports()
    job = Job(id="ours", service="a1111", payload={"steps": 4, "stall_timeout": 1.5})
    result = connector.run(job, reports)
    other.join(10)
    # Then it waited (not stalled), said so, and reported only its own steps
    assert result["files"]
    assert reports.items[1]["message"] == "waiting: the WebUI is busy with another client's job"
    assert all(r.get("total_steps") in (None, 4) for r in reports.items), reports.items


def test_another_clients_silent_checkpoint_load_longer_than_the_stall_timeout_is_waited_out(sim, connector):
    # Given another client's job whose checkpoint switch shows no progress for 3 s
    sim.configure(load_seconds=3.0)
    other = other_client(sim.url, {"steps": 2, "override_settings": {"sd_model_checkpoint": XL}})
    wait_for(lambda: sim_busy(sim.url), what="the other job to start loading")
    # When our job, with a 1.5 s stall timeout, waits behind it
    result = connector.run(Job(id="patient", service="a1111", payload={"steps": 2, "stall_timeout": 1.5}), Reports())
    other.join(10)
    # Then it was not declared stalled: a busy WebUI is alive
    assert result["files"]


def test_a_checkpoint_switch_that_outlasts_the_stall_timeout_counts_as_alive(sim, connector):
    sim.configure(load_seconds=3.0)
    reports = Reports()
    job = Job(id="switch", service="a1111",
              payload={"steps": 3, "stall_timeout": 1.5, "override_settings": {"sd_model_checkpoint": XL}})
    result = connector.run(job, reports)
    assert result["info"]["sd_model_name"] == "sd_xl_base_1.0"
    assert any(r.get("message") == f"loading checkpoint {XL}" for r in reports.items)


def test_a_sampling_step_slower_than_the_stall_timeout_is_alive_within_the_node_limit(sim, connector):
    # Given a WebUI that answers but shows no progress for 2.5 s per step, with a 1 s stall timeout
    sim.configure(step_seconds=2.5)
    started = time.monotonic()
    # When the job runs (the node limit is the default 600 s)
    result = connector.run(Job(id="slow", service="a1111", payload={"steps": 2, "stall_timeout": 1.0}), Reports())
    # Then it completes, after progress stood still for longer than the stall timeout: an
    # answering WebUI with unchanged progress is not a stall
    assert result["files"] and time.monotonic() - started >= 2 * 2.5


def test_progress_that_stays_unchanged_longer_than_the_node_limit_stalls(sim, connector):
    # Given a WebUI that answers but whose sampling step takes far longer than the node limit
    sim.configure(step_seconds=30.0)
    started = time.monotonic()
    with pytest.raises(JobStalled, match="showed no progress for 1.5 s"):
        connector.run(Job(id="stuck", service="a1111", payload={"steps": 3, "node_timeout": 1.5}), Reports())
    assert time.monotonic() - started < 1.5 + 3
    # And the connector interrupted its task (the WebUI honours it at its next step: a real
    # WebUI runs the request on whatever the client does, so it is not idle at once) and keeps
    # the request in its orphan book until the WebUI is done with it
    assert any(r["path"] == "/sdapi/v1/interrupt" for r in sim.requests())
    assert requests.get(f"{sim.url}/sdapi/v1/progress", timeout=5).json()["state"]["interrupted"] is True
    assert "jobqueue-stuck-0" in connector.orphans.entries()


def test_a_frozen_webui_stalls_the_job_within_the_stall_timeout(sim, connector):
    sim.configure(step_seconds=0.1)
    job = Job(id="frozen", service="a1111", payload={"steps": 100, "stall_timeout": 1.5})
    thread, outcome = run_in_thread(connector, job)
    wait_for(lambda: sim_busy(sim.url), what="the job to run")
    sim.fault("freeze")
    frozen = time.monotonic()
    thread.join(15)
    assert isinstance(outcome[0], JobStalled) and "did not answer /sdapi/v1/progress" in str(outcome[0])
    assert time.monotonic() - frozen < 1.5 + 5
    sim.fault("none")


def test_a_job_cancelled_while_its_webui_is_frozen_ends_cancelled_not_stalled(sim, connector):
    sim.configure(step_seconds=0.1)
    job = Job(id="frozen-cancel", service="a1111", payload={"steps": 100, "stall_timeout": 1.5})
    thread, outcome = run_in_thread(connector, job)
    wait_for(lambda: sim_busy(sim.url), what="the job to run")
    sim.fault("freeze")
    connector.cancel(job)
    thread.join(20)
    # (JobStalled would hand a cancelled job to another worker)
    assert isinstance(outcome[0], JobCancelled), outcome
    sim.fault("none")


def test_cancelling_a_job_queued_behind_another_clients_never_interrupts_that_job(sim, connector):
    sim.configure(step_seconds=0.05)
    other = other_client(sim.url, {"steps": 200, "force_task_id": "theirs"})
    wait_for(lambda: sim_busy(sim.url), what="the other job to run")
    job = Job(id="queued", service="a1111", payload={"steps": 2})
    thread, outcome = run_in_thread(connector, job)
    wait_for(lambda: any(r["path"] == "/internal/progress" for r in sim.requests()), what="our task to be asked about")
    connector.cancel(job)
    thread.join(15)
    assert isinstance(outcome[0], JobCancelled) and "before the WebUI started it" in str(outcome[0])
    assert not [r for r in sim.requests() if r["path"] in ("/sdapi/v1/interrupt", "/sdapi/v1/skip")]
    requests.post(f"{sim.url}/sdapi/v1/interrupt", timeout=5)
    other.join(10)


# -- as the real WebUI behaves (issue 26) ----------------------------------------------------------
def _cancel_while_queued(sim: A1111SimulatorThread, connector: A1111Connector) -> threading.Thread:
    """Another client's long job runs; our job "gone" is cancelled while queued behind it."""
    other = other_client(sim.url, {"steps": 400, "force_task_id": "theirs"})
    wait_for(lambda: sim_busy(sim.url), what="the other job to run")
    job = Job(id="gone", service="a1111", payload={"steps": 150, "width": 64, "height": 64})
    thread, outcome = run_in_thread(connector, job)
    wait_for(lambda: "jobqueue-gone-0" in sim.server.engine.runs, what="our request to reach the WebUI")
    connector.cancel(job)
    thread.join(15)
    assert isinstance(outcome[0], JobCancelled) and "before the WebUI started it" in str(outcome[0])
    assert "jobqueue-gone-0" in connector.orphans.entries()
    return other


@pytest.mark.parametrize("version", ["1.10", "1.7"])
def test_a_request_abandoned_while_queued_is_interrupted_when_it_begins_not_run_ahead_of_the_next_job(
        sim, connector, version):
    # Given a WebUI with task ids (1.10) or without (1.7: by job order), and a cancelled queued
    # job whose request the WebUI still holds (a closed socket does not stop it)
    sim.configure(step_seconds=0.02, version=version)
    other = _cancel_while_queued(sim, connector)
    # When the next job runs behind it
    result = connector.run(Job(id="next", service="a1111", payload={"steps": 5, "width": 64, "height": 64}), Reports())
    other.join(15)
    # Then the abandoned request was interrupted as it began, the other client's job was not,
    # and the next job ran after it, in full
    runs = sim.server.engine.runs
    gone, theirs, ours = runs["jobqueue-gone-0"], runs["theirs"], runs["jobqueue-next-0"]
    assert gone["interrupted"] and gone["steps"] < 150, gone
    assert not theirs["interrupted"] and theirs["steps"] == 400
    assert result["files"] and ours["steps"] == 5 and ours["started"] >= gone["ended"]
    # And the book no longer holds it once the WebUI is done with it
    connector.check_health()
    assert "jobqueue-gone-0" not in connector.orphans.entries()


def test_on_a_webui_before_1_8_progress_and_interrupt_follow_the_order_of_jobs(sim, connector):
    # Given a 1.7 WebUI (no task ids for API requests) busy with another client's job
    sim.configure(version="1.7", step_seconds=0.03)
    assert connector.check_health().details["task_ids"] is False
    other = other_client(sim.url, {"steps": 60})
    wait_for(lambda: sim_busy(sim.url), what="the other job to run")
    # When our job waits behind it, then runs, and is cancelled mid-way
    reports = Reports()
    job = Job(id="old", service="a1111", payload={"steps": 150, "width": 64, "height": 64})
    thread = threading.Thread(target=lambda: pytest.raises(JobCancelled, connector.run, job, reports))
    thread.start()
    wait_for(lambda: any((r.get("step") or 0) >= 5 for r in reports.items), 20, what="our own steps")
    connector.cancel(job)
    thread.join(15)
    other.join(10)
    # Then it waited, reported only its own steps, and interrupted only its own job
    assert reports.items[1]["message"] == "waiting: the WebUI is busy with another client's job"
    assert all(r.get("total_steps") in (None, 150) for r in reports.items)
    runs = sim.server.engine.runs
    assert runs["jobqueue-old-0"]["interrupted"] and runs["jobqueue-old-0"]["steps"] < 150
    assert [r for r in runs.values() if r is not runs["jobqueue-old-0"]][0]["steps"] == 60


def test_the_next_clients_job_running_while_our_images_are_encoded_never_lands_on_our_job(sim, connector):
    # Given a WebUI slow to encode our answer, and another client's job queued behind ours
    sim.configure(step_seconds=0.02, encode_seconds=3.0)
    reports = Reports()
    job = Job(id="mine", service="a1111", payload={"steps": 10, "width": 64, "height": 64})
    previews: list[bytes] = []
    job.report_preview = lambda data, mime: previews.append(data)  # type: ignore[method-assign]
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(connector.run(job, reports)))
    thread.start()
    wait_for(lambda: sim.server.engine.tasks.current == "jobqueue-mine-0", what="our job to run")
    other = other_client(sim.url, {"steps": 300, "force_task_id": "theirs"})
    # When their job runs (with previews) while our answer is on its way, and someone cancels it
    wait_for(lambda: sim.server.engine.state.sampling_step >= 25 and sim.server.engine.tasks.current == "theirs",
             what="their job under way during our encoding")
    assert thread.is_alive()
    requests.post(f"{sim.url}/sdapi/v1/interrupt", timeout=5)
    thread.join(15)
    other.join(10)
    # Then our job succeeded with only its own progress and preview
    assert outcome and outcome[0]["files"], outcome
    assert all(r.get("total_steps") in (None, 10) for r in reports.items), reports.items
    assert len(previews) <= 1


def test_the_silent_reload_after_an_override_is_restored_counts_as_loading_not_a_stall(sim, connector):
    # Given a job that switched the checkpoint by override (restored afterwards)
    sim.configure(load_seconds=2.5, step_seconds=0.02)
    connector.run(Job(id="xl", service="a1111", payload={"steps": 1, "override_settings": {"sd_model_checkpoint": XL}}),
                  Reports())
    # When a plain job follows, with a 1 s node limit, while the WebUI reloads its own model for 2.5 s
    reports = Reports()
    result = connector.run(Job(id="plain", service="a1111", payload={"steps": 2, "node_timeout": 1.0}), reports)
    # Then it completed on the options' checkpoint, and said what the WebUI was doing
    assert result["info"]["sd_model_name"] == "v1-5-pruned-emaonly" and sim.server.engine.loads == 2
    assert any("loads its checkpoint" in (r.get("message") or "") for r in reports.items)


def test_an_unknown_override_option_and_out_of_memory_fail_with_the_webuis_message(sim, connector):
    with pytest.raises(ExecutionFailed) as unknown:
        connector.run(Job(id="opt", service="a1111", payload={"steps": 1, "override_settings": {"no_such": 1}}),
                      Reports())
    assert str(unknown.value) == ("the WebUI answered 500: KeyError: 'no_such' "
                                  "(override_settings names an option this WebUI does not have)")
    sim.configure(oom_next=1)
    with pytest.raises(ExecutionFailed, match="the WebUI answered 500: OutOfMemoryError: CUDA out of memory"):
        connector.run(Job(id="oom", service="a1111", payload={"steps": 1}), Reports())


def test_a_500_from_progress_is_an_answer_not_silence_and_previews_are_skipped(sim, connector):
    # Given a job whose previews the WebUI cannot encode (samples_format avif): /progress answers 500
    sim.configure(step_seconds=0.05)
    reports = Reports()
    job = Job(id="avif", service="a1111", payload={"steps": 60, "width": 64, "height": 64, "stall_timeout": 1.0,
                                                   "override_settings": {"samples_format": "avif"}})
    # When it runs for longer than its stall timeout
    result = connector.run(job, reports)
    # Then it was not taken for a silent WebUI: it completed, with its progress, and said why no previews
    assert result["files"] and max(r.get("step") or 0 for r in reports.items) >= 30
    assert any("live previews unavailable" in (r.get("message") or "") and "Invalid image format" in r["message"]
               for r in reports.items)


# -- acceptance: real workers, real Redis, the simulator over real sockets ------------------------
def a1111_worker(start_worker: Any, sim: A1111SimulatorProcess, queues: str = "gpu0", **env: Any) -> Any:
    return start_worker(queues, CONNECTORS="a1111", A1111_URL=sim.url, **env)


def test_txt2img_shows_at_least_five_increasing_progress_updates_and_writes_a_png(app, start_worker, sim_process):
    sim = sim_process(step_seconds=0.1)
    a1111_worker(start_worker, sim)
    seen: list[dict[str, Any]] = []
    handle = submit_job("a1111", {"prompt": "a lighthouse", "steps": 40, "seed": 11, "width": 64, "height": 64},
                        app=app)
    result = handle.wait(timeout=60, on_progress=seen.append)
    stepped = [p for p in seen if p.get("step")]
    # (an update may repeat its step when only something else changed, e.g. a new preview)
    updates = [p for i, p in enumerate(stepped) if i == 0 or p["step"] != stepped[i - 1]["step"]]
    assert len(updates) >= 5, seen
    assert all(a["step"] < b["step"] and a["percent"] < b["percent"] for a, b in pairwise(updates)), updates
    assert all(p["total_steps"] == 40 and "step" in p["message"] for p in stepped)
    [file] = result["files"]
    assert Path(file["path"]).read_bytes().startswith(b"\x89PNG") and file["filename"] == "00000-11.png"
    assert result["info"]["seed"] == 11 and result["info"]["sampler_name"] == "Euler"


def test_a_cancelled_running_job_ends_cancelled_the_webui_is_idle_within_five_seconds_and_the_next_job_runs(
        app, start_worker, sim_process):
    sim = sim_process(step_seconds=0.1)
    a1111_worker(start_worker, sim)
    running = submit_job("a1111", {"steps": 150}, app=app)
    wait_for(lambda: (running.progress() or {}).get("step", 0) >= 2, 30, what="the job to be under way")
    # When it is cancelled
    assert running.cancel()
    cancelled_at = time.monotonic()
    # Then it ends cancelled, the WebUI was interrupted and is idle within 5 s
    with pytest.raises(JobFailed) as info:
        running.wait(timeout=20)
    assert info.value.status == JobStatus.CANCELLED.value
    wait_for(lambda: sim.state()["state"]["job_count"] == 0 and not sim.state()["busy"], 5, what="an idle WebUI")
    assert time.monotonic() - cancelled_at < 5.0
    assert any(r["path"] == "/sdapi/v1/interrupt" for r in sim.requests())
    # And the next job is fine
    assert submit_job("a1111", {"steps": 3}, app=app).wait(timeout=30)["files"]


def test_a_cancelled_multi_image_job_stops_the_webui_before_its_next_image(app, start_worker, sim_process):
    # Given a job of three images (n_iter 3) under way on its first
    sim = sim_process(step_seconds=0.1)
    a1111_worker(start_worker, sim)
    running = submit_job("a1111", {"steps": 40, "n_iter": 3, "width": 64, "height": 64}, app=app)
    wait_for(lambda: (running.progress() or {}).get("step", 0) >= 2, 30, what="the first image under way")
    # When it is cancelled
    assert running.cancel()
    # Then it ends cancelled, the WebUI was interrupted (never skipped: a skip can land on the
    # next job), and it never began image 2
    with pytest.raises(JobFailed) as info:
        running.wait(timeout=20)
    assert info.value.status == JobStatus.CANCELLED.value
    wait_for(lambda: sim.state()["state"]["job_count"] == 0 and not sim.state()["busy"], 5, what="an idle WebUI")
    paths = [r["path"] for r in sim.requests()]
    assert "/sdapi/v1/interrupt" in paths and "/sdapi/v1/skip" not in paths
    assert sim.state()["generated"] <= 1  # (an interrupted WebUI still returns the image it was on)


def test_an_img2img_job_runs_through_a_worker_and_writes_its_image(app, start_worker, sim_process, tmp_path):
    # Given a worker on a WebUI, and a small init image
    import base64
    import io

    from PIL import Image

    sim = sim_process(step_seconds=0.01)
    a1111_worker(start_worker, sim)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    # When an img2img job runs
    result = submit_job("a1111", {"mode": "img2img", "init_images": [init], "denoising_strength": 0.5,
                                  "steps": 5, "width": 64, "height": 64}, app=app).wait(timeout=60)
    # Then the WebUI's img2img route answered it and its PNG is written
    assert any(r["path"] == "/sdapi/v1/img2img" for r in sim.requests())
    assert result["files"] and result["files"][0]["mime"] == "image/png"


def test_a_payload_with_steps_minus_one_is_refused_at_submit_and_nothing_is_enqueued(app, redis_client):
    with pytest.raises(InvalidPayloadError, match="'steps' must be between 1 and 150"):
        submit_job("a1111", {"prompt": "x", "steps": -1}, app=app)
    assert redis_client.llen("a1111") == 0 and not redis_client.keys("celery-task-meta-*")


def test_a_frozen_webui_hands_the_job_to_the_other_worker_within_stall_timeout_plus_five(app, start_worker, sim_process):
    # Given two workers, each with its own WebUI, configured by one per-GPU URL setting
    sims = [sim_process(step_seconds=0.1), sim_process(step_seconds=0.1)]
    urls = f"gpu0={sims[0].url},gpu1={sims[1].url}"
    workers = [start_worker(queues, CONNECTORS="a1111", A1111_URLS=urls, MAX_RETRIES=5) for queues in ("gpu0", "gpu1")]
    stall = 3.0
    handle = submit_job("a1111", {"steps": 20, "stall_timeout": stall}, app=app)
    # When the WebUI running the job freezes mid-job
    wait_for(lambda: (handle.progress() or {}).get("step", 0) >= 2, 30, what="the job to be under way")
    running = next(i for i, s in enumerate(sims) if any(r["path"] == "/sdapi/v1/txt2img" for r in s.requests()))
    sims[running].fault("freeze")
    frozen_at = time.monotonic()
    result = handle.wait(timeout=stall + 20)
    # Then the job completed on the other worker, within stall timeout + 5 s
    elapsed = time.monotonic() - frozen_at
    assert result["worker"] == workers[1 - running].node_name and result["attempt"] >= 1
    assert elapsed < stall + 5.0, f"took {elapsed:.1f} s after the freeze"
    sims[running].fault("none")


def test_a_killed_webui_fails_the_job_clearly_stops_the_queue_and_resumes_when_it_returns(app, start_worker, sim_process):
    # Given a worker on a WebUI at a fixed port
    port = free_port()
    sim = sim_process(step_seconds=0.1, port=port)
    worker = a1111_worker(start_worker, sim, MAX_RETRIES=0)
    wait_for(lambda: "a1111" in consumed_queues(app, worker.node_name), 15, what="the worker to consume a1111")
    handle = submit_job("a1111", {"steps": 150}, app=app)
    wait_for(lambda: (handle.progress() or {}).get("step", 0) >= 1, 30, what="the job to be under way")
    # When the WebUI is killed
    sim.kill()
    killed_at = time.monotonic()
    # Then the job fails within 10 s with a clear error naming the WebUI
    with pytest.raises(JobFailed) as info:
        handle.wait(timeout=10)
    assert time.monotonic() - killed_at < 10.0
    # (a WebUI that died mid-request: issue 26's "exited or restarted")
    assert info.value.error["type"] == "ServerCrashed"
    assert sim.url in info.value.error["message"] and "exited or restarted" in info.value.error["message"]
    # ... and the worker stops consuming a1111 (its own queues stay)
    wait_for(lambda: "a1111" not in consumed_queues(app, worker.node_name), 15, what="the worker to step aside")
    assert "gpu0" in consumed_queues(app, worker.node_name)
    # When the WebUI comes back on the same port
    sim_process(step_seconds=0.1, port=port)
    # Then the worker consumes a1111 again and runs the next job
    wait_for(lambda: "a1111" in consumed_queues(app, worker.node_name), 20, what="the worker to consume again")
    assert submit_job("a1111", {"steps": 3}, app=app).wait(timeout=30)["worker"] == worker.node_name


def test_the_monitor_summary_of_an_a1111_payload_names_size_steps_seed_and_prompt_never_the_images():
    from jobqueue.shared.summary import summarize_payload

    assert summarize_payload("a1111", A1111Connector.example_payload) == (
        "txt2img 512×512, 20 steps, seed 42: a lighthouse on a cliff at dusk, oil painting")
    img2img = {"mode": "img2img", "init_images": ["A" * 100000], "n_iter": 2, "prompt": "x"}
    assert summarize_payload("a1111", img2img) == "img2img 512×512, 50 steps, 2×1 images: x"
