"""Outputs of every kind move in chunks: the simulation connector makes a video, an audio track,
a 3D model... of any size, a real worker streams each into the output store, and a large one
reaches S3 (moto's server) without the worker holding it."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.output_memory import RssSampler, store_one
from bench.s3 import MotoS3Server
from jobqueue import submit_job
from jobqueue.connectors import media
from jobqueue.errors import InvalidPayloadError

MIB = 1 << 20


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3Server]:
    server = MotoS3Server(log_path=tmp_path / "moto.log").start()
    for key, value in server.aws_env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def test_a_simulated_job_stores_a_video_with_its_poster_an_audio_track_and_a_model(app: Any, start_worker: Any) -> None:
    # Given a simulation worker on the local output store
    start_worker("gpu0")
    # When a job asks for a video, an audio track and a 3D model
    files = [{"kind": "video", "mb": 0.5}, {"kind": "audio", "mb": 0.25, "name": "voice.wav"}, {"kind": "model", "mb": 0.125}]
    result = submit_job("simulation", {"files": files}, app=app).wait(timeout=60)
    # Then each is stored whole, of the size asked, with its content type
    video, audio, model = result["files"]
    assert (video["name"], video["content_type"], video["size"]) == ("video-1.mp4", "video/mp4", MIB // 2)
    assert (audio["name"], audio["content_type"]) == ("voice.wav", "audio/wav")
    assert (model["name"], model["content_type"], model["size"]) == ("model-3.glb", "model/gltf-binary", MIB // 8)
    # And the video starts with the real clip, its poster (a PNG) stored beside it
    assert Path(video["path"]).read_bytes()[:len(media.clip())] == media.clip()
    poster = Path(video["path"]).with_name(video["poster"])
    assert video["poster"] == "video-1.poster.png" and poster.read_bytes().startswith(b"\x89PNG")
    # And the audio track is a WAV a reader decodes
    with wave.open(audio["path"]) as track:
        assert track.getframerate() == 8000 and track.getnframes() > 0


def test_a_bad_file_request_is_refused_at_submit(app: Any) -> None:
    for bad in ([{"kind": "hologram"}], [{"kind": "video", "mb": -1}], [{"kind": "text", "name": "../x"}]):
        with pytest.raises(InvalidPayloadError):
            submit_job("simulation", {"files": bad}, app=app)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_100_mb_video_reaches_s3_while_the_worker_grows_by_less_than_64_mb(
        s3: MotoS3Server, app: Any, start_worker: Any) -> None:
    # Given a worker whose output store is an S3 bucket, warmed up by a 1 MiB output
    bucket = s3.bucket()
    worker = start_worker("gpu0", OUTPUT_URL=f"s3://{bucket}/big")
    store_one(app, worker.pid, 1.0, timeout=60)
    # When a job makes a 100 MiB video
    measured = store_one(app, worker.pid, 100.0, timeout=240)
    # Then the bucket holds all of it
    key = measured["entry"]["url"].split(f"s3://{bucket}/", 1)[1]
    assert s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"] == 100 * MIB
    tail = s3.client().get_object(Bucket=bucket, Key=key, Range=f"bytes={100 * MIB - 4}-")["Body"].read()
    assert tail == bytes(4)
    # And the worker's memory grew by less than 64 MB meanwhile
    assert measured["peak"] - measured["baseline"] < 64, measured


def test_the_sampler_sees_a_process_that_does_hold_a_large_buffer(tmp_path: Path) -> None:
    # The bound above means something only if the sampler would see a worker holding the file
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(200 << 20); "
                              "b[::4096] = b'x' * len(b[::4096]); sys.stdout.write('ok\\n'); sys.stdout.flush(); "
                              "time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ok\n"
        assert RssSampler(child.pid).tree_mb() > 150
    finally:
        child.kill()
        child.wait()
