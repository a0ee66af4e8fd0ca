"""The output store: a job's files go to one store every machine reaches (S3 here, through
moto's S3 server as a real process), and the monitor serves them from it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.s3 import MotoS3Server
from jobqueue import submit_job
from jobqueue.config import Settings
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.shared.outputs import OutputStore, is_safe_name, save_output
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.up.embedded import free_port
from tests.conftest import settings_env
from tests.helpers import child_env, stop_process_group, wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3Server]:
    """moto's S3 server; the standard AWS variables (ours, hence every child's) point at it."""
    server = MotoS3Server(log_path=tmp_path / "moto.log").start()
    for key, value in server.aws_env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


@pytest.fixture
def comfyui(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(output_dir=tmp_path / "sim-out", log_path=tmp_path / "sim.log").start()
    yield sim
    sim.stop()


# -- unit: the store itself ---------------------------------------------------------------------
def test_names_that_could_leave_the_jobs_folder_are_refused() -> None:
    for bad in ("", "../x.png", "a/b.png", ".hidden", "..", "a\\b", "x\x00.png", "a..png"):
        assert not is_safe_name(bad), bad
    store = OutputStore("/tmp/nowhere")
    with pytest.raises(ValueError):
        store.path("job", "../../etc/passwd")
    assert is_safe_name("jobqueue_00001_.png")


def test_a_local_store_writes_under_the_job_id_and_renames_a_second_file_of_the_same_name(tmp_path: Path) -> None:
    # Given the default store: the local output_dir
    settings = Settings(output_dir=str(tmp_path / "out"))
    # When two files of the same name are saved for one job
    first = save_output(settings, "job-1", "sub/dir/a.png", [PNG_MAGIC, b"1"], alternative="9")
    second = save_output(settings, "job-1", "a.png", [PNG_MAGIC, b"22"], alternative="9")
    # Then both are stored under <output_dir>/<job id>/, the second one renamed
    assert first["name"] == "a.png" and second["name"] == "9_a.png"
    assert Path(first["path"]) == (tmp_path / "out" / "job-1" / "a.png").resolve()
    assert first["url"] == "file://" + first["path"] and first["size"] == 9
    assert Path(second["path"]).read_bytes() == PNG_MAGIC + b"22"


# -- integration: worker, ComfyUI simulator, moto S3, monitor in another directory -------------
def test_a_comfyui_png_lands_in_the_bucket_not_on_disk_and_a_monitor_elsewhere_serves_it(
        s3: MotoS3Server, comfyui: SimulatorProcess, settings: Settings, app: Any, start_worker: Any,
        tmp_path: Path) -> None:
    # Given a bucket, and a ComfyUI worker whose output store is that bucket
    bucket = s3.bucket()
    output_url = f"s3://{bucket}/fleet"
    start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=comfyui.url, OUTPUT_URL=output_url)
    # When a ComfyUI job runs
    handle = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app)
    result = handle.wait(timeout=60)
    # Then its PNG is in the bucket under <prefix>/<job id>/, listed with its store URL
    [entry] = result["files"]
    assert entry["url"] == f"s3://{bucket}/fleet/{handle.id}/{entry['name']}"
    assert "path" not in entry
    assert s3.keys(bucket) == [f"fleet/{handle.id}/{entry['name']}"]
    body = s3.client().get_object(Bucket=bucket, Key=f"fleet/{handle.id}/{entry['name']}")["Body"].read()
    assert body.startswith(PNG_MAGIC)
    # And not on the worker's local disk
    assert not Path(settings.output_dir).exists() or not any(Path(settings.output_dir).rglob("*.png"))

    # When a monitor runs in another working directory, with the same store settings
    elsewhere = tmp_path / "monitor-host"
    elsewhere.mkdir()
    port = free_port()
    env = child_env({**settings_env(settings), "JOBQUEUE_OUTPUT_URL": output_url,
                     "JOBQUEUE_OUTPUT_DIR": str(elsewhere / "no-outputs-here"),
                     "JOBQUEUE_MONITOR_DB": f"sqlite:///{elsewhere / 'monitor.db'}"})
    log = open(tmp_path / "monitor.log", "wb")
    monitor = subprocess.Popen([sys.executable, "-m", "monitor.server", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=str(elsewhere), env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def job_known() -> bool:
            assert monitor.poll() is None, (tmp_path / "monitor.log").read_text()[-3000:]
            try:
                return requests.get(f"{base}/api/jobs/{handle.id}", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(job_known, 60, interval=0.2, what="the monitor to know the job")
        reply = requests.get(f"{base}/jobs/{handle.id}/files/{entry['name']}", timeout=10)
        # Then it serves the PNG from the bucket
        assert reply.status_code == 200
        assert reply.headers["Content-Type"] == "image/png"
        assert reply.content == body
        # And bad names, unknown jobs and missing files are plain 404s
        for path in (f"/jobs/{handle.id}/files/..%2F..%2Fetc", f"/jobs/{handle.id}/files/missing.png",
                     f"/jobs/no-such-job/files/{entry['name']}"):
            missing = requests.get(base + path, timeout=10)
            assert missing.status_code == 404 and "Traceback" not in missing.text, path
    finally:
        stop_process_group(monitor)
        log.close()


def test_with_presigning_the_monitor_redirects_to_a_url_that_serves_the_file(
        s3: MotoS3Server, settings: Settings, tmp_path: Path) -> None:
    # Given a file of a known job in the bucket and a monitor app that presigns
    from monitor.app import create_app
    from monitor.merge.apply import apply

    bucket = s3.bucket()
    monitor_settings = Settings(broker_url=settings.broker_url, output_url=f"s3://{bucket}/p",
                                output_presign_seconds=60.0,
                                monitor_db=f"sqlite:///{tmp_path / 'presign.db'}").resolved()

    save_output(monitor_settings, "job-7", "out.png", [PNG_MAGIC, b"x"])
    flask_app = create_app(monitor_settings)
    with flask_app.extensions["jobqueue_monitor"].store.write() as tx:
        apply({"type": "task-sent", "uuid": "job-7", "timestamp": 1_700_000_000.0,
               "kwargs": json.dumps({"service": "comfyui", "queue": "comfyui"})}, tx)
    # When the file is asked for
    reply = flask_app.test_client().get("/jobs/job-7/files/out.png")
    # Then the monitor redirects to a presigned URL that serves it
    assert reply.status_code == 302
    location = reply.headers["Location"]
    assert location.startswith(s3.endpoint) and "Signature" in location
    assert requests.get(location, timeout=10).content == PNG_MAGIC + b"x"
