"""The monitor's side of live previews: ``progress.preview`` from task-progress events, and
``GET /api/jobs/<id>/preview`` serving what the worker stored in the result backend's Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobqueue.config import Settings
from jobqueue.errors import MalformedEvent
from jobqueue.shared.previews import RedisPreviewStore
from monitor.merge.apply import apply
from monitor.store import Store

T0 = 1_700_000_000.0
PNG = b"\x89PNG\r\n\x1a\n" + b"pretend-image-bytes"


def progress(t: float, **fields: Any) -> dict[str, Any]:
    return {"type": "task-progress", "timestamp": T0 + t, "local_received": T0 + t, "uuid": "j1", "attempt": 0,
            "total_steps": 10, **fields}


def test_progress_carries_the_latest_preview_number_even_when_only_the_preview_moved(sqlite_store: Store):
    # Given a running job whose progress announced preview 1 at step 3
    with sqlite_store.write() as tx:
        apply({"type": "task-started", "timestamp": T0, "local_received": T0, "uuid": "j1", "hostname": "gpu0@vm1"}, tx)
        apply(progress(1, step=3, percent=30.0, preview=1), tx)
    assert sqlite_store.job("j1")["progress"]["preview"] == 1  # type: ignore[index]
    # When a new preview arrives at the same step, then one without any preview field
    with sqlite_store.write() as tx:
        moved = apply(progress(2, step=3, percent=30.0, preview=2), tx)
    # Then the job shows the new number; a malformed number is refused like any bad field
    assert moved and sqlite_store.job("j1")["progress"]["preview"] == 2  # type: ignore[index]
    with pytest.raises(MalformedEvent, match="preview"), sqlite_store.write() as tx:
        apply(progress(3, step=4, percent=40.0, preview="x"), tx)


def test_a_job_without_previews_has_no_preview_in_its_progress(sqlite_store: Store):
    with sqlite_store.write() as tx:
        apply({"type": "task-started", "timestamp": T0, "local_received": T0, "uuid": "j1", "hostname": "gpu0@vm1"}, tx)
        apply(progress(1, step=3, percent=30.0), tx)
    assert "preview" not in sqlite_store.job("j1")["progress"]  # type: ignore[index]


@pytest.fixture
def preview_app(redis_url: str, tmp_path: Path) -> Any:
    from monitor.app import create_app

    settings = Settings(broker_url=redis_url, result_backend=redis_url, monitor_db=f"sqlite:///{tmp_path / 'm.db'}")
    application = create_app(settings)
    yield application
    application.extensions["jobqueue_monitor"].close()


def test_the_preview_route_serves_the_stored_image_uncached_and_404s_without_one(preview_app, redis_client):
    client = preview_app.test_client()
    # Given no preview yet
    missing = client.get("/api/jobs/j1/preview")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    # When the worker stored two (only the latest is kept)
    store = RedisPreviewStore(redis_client)
    store.put("j1", b"old", "image/jpeg")
    store.put("j1", PNG, "image/png")
    # Then the route serves the latest, with its number, never cached
    found = client.get("/api/jobs/j1/preview?seq=2")
    assert found.status_code == 200 and found.data == PNG and found.mimetype == "image/png"
    assert found.headers["X-Preview-Seq"] == "2" and found.headers["Cache-Control"] == "no-store"
    assert found.headers["X-Content-Type-Options"] == "nosniff"
