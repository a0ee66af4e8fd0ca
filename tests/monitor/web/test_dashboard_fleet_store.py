"""The job page of a fleet that shares no disk, in a real headless Chromium: the output image
comes from the S3 store (moto's S3 server, a real process), and the webhook tries are listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.s3 import MotoS3Server
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.sims.comfyui.process import SimulatorProcess
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import screenshot
from tests.webhook_receiver import Receiver

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3Server]:
    """moto's S3 server; the standard AWS variables (ours, hence every child's) point at it."""
    server = MotoS3Server(log_path=tmp_path / "moto.log").start()
    for key, value in server.aws_env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Answers the first try 500, then 200."""
    started = Receiver(lambda n: 500 if n == 0 else 200).start()
    yield started
    started.stop()


def test_the_job_page_shows_the_image_from_the_bucket_and_lists_the_webhook_tries(
        s3: MotoS3Server, receiver: Receiver, start_worker: Any, start_monitor: Any, chromium: Any,
        tmp_path: Path) -> None:
    # Given a ComfyUI worker writing to a bucket, and a monitor reading that bucket (its own
    # output_dir is empty: nothing is shared on disk)
    bucket = s3.bucket()
    sim = SimulatorProcess(output_dir=tmp_path / "sim-out", log_path=tmp_path / "sim.log").start()
    try:
        output_url = f"s3://{bucket}/outputs"
        # (the receiver listens on loopback: opened on purpose for the worker and the monitor)
        start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url, OUTPUT_URL=output_url,
                     WEBHOOK_BACKOFF="0.5", WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
        monitor = start_monitor(JOBQUEUE_OUTPUT_URL=output_url,
                                JOBQUEUE_OUTPUT_DIR=str(tmp_path / "monitor-has-no-outputs"),
                                JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
        # When a job with a webhook is submitted through the API and its page is opened
        reply = monitor.post("/api/jobs", {"service": "comfyui", "payload": {"workflow": EXAMPLE_WORKFLOW},
                                           "webhook_url": receiver.url})
        assert reply.status_code == 201, reply.text
        job_id = reply.json()["jobs"][0]["id"]
        context = chromium.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{monitor.url}/jobs/{job_id}")
            # Then the output image loads (from the bucket, through the monitor)
            page.wait_for_selector('#job-status [data-status="completed"]')
            page.wait_for_function("""() => { const img = document.querySelector('#job-outputs img');
                return img && img.complete && img.naturalWidth > 0; }""")
            src = page.get_attribute("#job-outputs img", "src")
            assert src and src.startswith(f"/jobs/{job_id}/files/"), src
            # And the webhook's tries are listed: one failed (500), one delivered
            page.wait_for_selector("#job-webhooks .webhook-try.delivered")
            tries = page.locator("#job-webhooks .webhook-try").all_inner_texts()
            assert len(tries) == 2 and "500" in tries[0] and "delivered (200)" in tries[1], tries
            screenshot(page, "job-s3-webhooks")
        finally:
            context.close()
        wait_for(lambda: len(receiver.requests) == 2, 10, what="both tries at the receiver")
    finally:
        sim.stop()
