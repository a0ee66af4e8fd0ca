"""Output files served by the monitor: ranges, validators and content types, the same from the
monitor's own disk and from the output store (S3 through moto's server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.s3 import MotoS3Server
from jobqueue.config import Settings
from jobqueue.connectors import media
from jobqueue.shared.outputs import save_output
from tests.conftest import REDIS_DB

JOB = "job-files-1"


def _app(settings: Settings) -> Any:
    """A monitor app whose store knows job ``JOB``."""
    from monitor.app import create_app
    from monitor.merge.apply import apply

    app = create_app(settings)
    with app.extensions["jobqueue_monitor"].store.write() as tx:
        apply({"type": "task-sent", "uuid": JOB, "timestamp": 1_700_000_000.0,
               "kwargs": json.dumps({"service": "simulation", "queue": "simulation"})}, tx)
    return app


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3Server]:
    from s3fs import S3FileSystem

    server = MotoS3Server(log_path=tmp_path / "moto.log").start()
    for key, value in server.aws_env().items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # fsspec keeps one per process: not one of an earlier server
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A test client of a monitor serving JOB's files from its disk, or from an S3 store."""
    base = {"monitor_db": f"sqlite:///{tmp_path / 'files.db'}", "broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "output_dir": str(tmp_path / "out")}
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        base["output_url"] = f"s3://{server.bucket()}/outs"
    settings = Settings(**base).resolved()
    for kind, name in (("video", "clip.mp4"), ("audio", "tone.wav"), ("model", "mesh.glb"), ("image", "a.png")):
        save_output(settings, JOB, name, media.generate(kind, 300_000))
    for name, data in (("notes.txt", b"hello"), ("data.json", b"{}"), ("mesh.obj", b"v 0 0 0\n"),
                       ("s.flac", b"fLaC"), ("s.mp3", b"ID3"), ("s.ogg", b"OggS"), ("m.webm", b"\x1a\x45"),
                       ("p.jpg", b"\xff\xd8"), ("p.webp", b"RIFF"), ("p.gif", b"GIF89a")):
        save_output(settings, JOB, name, [data])
    app = _app(settings)
    yield app.test_client()
    app.extensions["jobqueue_monitor"].close()


def test_a_range_request_gets_206_with_only_those_bytes_and_the_full_length(client: Any) -> None:
    whole = client.get(f"/jobs/{JOB}/files/clip.mp4")
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    assert len(whole.data) == 300_000 and whole.headers["Content-Type"] == "video/mp4"
    part = client.get(f"/jobs/{JOB}/files/clip.mp4", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 100-199/300000"
    assert part.headers["Content-Length"] == "100" and part.data == whole.data[100:200]
    tail = client.get(f"/jobs/{JOB}/files/clip.mp4", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == whole.data[-10:]
    start = client.get(f"/jobs/{JOB}/files/clip.mp4", headers={"Range": "bytes=299990-"})
    assert start.headers["Content-Range"] == "bytes 299990-299999/300000" and start.data == whole.data[-10:]


def test_a_range_past_the_end_is_416_and_names_the_size(client: Any) -> None:
    reply = client.get(f"/jobs/{JOB}/files/tone.wav", headers={"Range": "bytes=400000-"})
    assert reply.status_code == 416 and reply.headers["Content-Range"] == "bytes */300000"
    assert reply.data == b""


def test_a_matching_validator_gets_304_and_a_stale_one_the_file(client: Any) -> None:
    first = client.get(f"/jobs/{JOB}/files/a.png")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and len(etag) > 2 and modified.endswith("GMT")
    assert client.get(f"/jobs/{JOB}/files/a.png", headers={"If-None-Match": etag}).status_code == 304
    assert client.get(f"/jobs/{JOB}/files/a.png", headers={"If-Modified-Since": modified}).status_code == 304
    stale = client.get(f"/jobs/{JOB}/files/a.png", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.data == first.data
    # An If-Range of another version sends the whole file, of this version the range
    other = client.get(f"/jobs/{JOB}/files/a.png", headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert other.status_code == 200 and len(other.data) == 300_000
    same = client.get(f"/jobs/{JOB}/files/a.png", headers={"Range": "bytes=0-3", "If-Range": etag})
    assert same.status_code == 206 and same.data == b"\x89PNG"


def test_each_output_kind_has_its_content_type_and_media_play_inline(client: Any) -> None:
    expected = {"clip.mp4": "video/mp4", "m.webm": "video/webm", "tone.wav": "audio/wav", "s.mp3": "audio/mpeg",
                "s.flac": "audio/flac", "s.ogg": "audio/ogg", "mesh.glb": "model/gltf-binary", "mesh.obj": "model/obj",
                "data.json": "application/json", "notes.txt": "text/plain; charset=utf-8", "a.png": "image/png",
                "p.jpg": "image/jpeg", "p.webp": "image/webp", "p.gif": "image/gif"}
    for name, kind in expected.items():
        reply = client.get(f"/jobs/{JOB}/files/{name}")
        assert reply.status_code == 200 and reply.headers["Content-Type"] == kind, name
        attachment = "attachment" in reply.headers.get("Content-Disposition", "")
        assert attachment == (kind.split("/")[0] not in ("image", "video", "audio")), name
        assert "sandbox" in reply.headers["Content-Security-Policy"]
