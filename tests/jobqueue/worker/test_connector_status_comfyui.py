"""Issue 4 with the ComfyUI connector: its status events carry ComfyUI's own facts, and a
worker whose ComfyUI refuses connections steps aside until it is back. Real Redis, a real
worker process, the simulator over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.jobqueue.worker.test_connector_status as status_tests
from jobqueue.client.jobs import submit_job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.sims.comfyui.process import SimulatorProcess
from tests.helpers import wait_for
from tests.jobqueue.event_capture import EventCapture


@pytest.fixture
def capture(app: Any) -> Iterator[EventCapture]:
    receiver = EventCapture(app).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorProcess]:
    proc = SimulatorProcess(output_dir=tmp_path / "sim", log_path=tmp_path / "sim.log").start()
    yield proc
    proc.stop()


def test_a_comfyui_worker_reports_comfyuis_facts_and_steps_aside_while_it_refuses(app, start_worker, capture, sim):
    # Given a worker whose only connector is ComfyUI
    node = start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url, **status_tests.FAST).node_name

    def changes() -> list[str]:
        return status_tests.changes(capture, node, "comfyui")

    # Then its idle event carries ComfyUI's version and devices with their VRAM
    wait_for(lambda: changes()[-1:] == ["idle"], 15, what="comfyui idle")
    idle = [e for e in status_tests.statuses(capture, node, "comfyui") if e["status"] == "idle"][-1]
    assert idle["details"]["comfyui_version"] == "0.3.64"
    assert idle["details"]["url"] == sim.url
    assert {"name", "vram_free", "vram_total"} <= set(idle["details"]["devices"][0])
    assert "comfyui" in status_tests.consumed_queues(app, node)
    # When ComfyUI refuses connections
    sim.fault("refuse")
    # Then the connector reports it offline with the reason, and the worker stops consuming
    down = wait_for(lambda: [e for e in status_tests.statuses(capture, node, "comfyui")
                             if e["status"] in ("offline", "error") and not e["beat"]], 10)[0]
    assert sim.url in down["message"] and "unreachable" in down["message"]
    wait_for(lambda: "comfyui" not in status_tests.consumed_queues(app, node), 10, what="comfyui queue cancelled")
    handle = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app)
    # When ComfyUI is back
    sim.fault("none")
    # Then the worker is idle again, consumes again, and runs the job that waited
    wait_for(lambda: changes()[-1:] == ["idle"], 10, what="comfyui idle again")
    assert handle.wait(timeout=30)["worker"] == node
