"""The ``simulation`` connector: a stand-in GPU service for demos and tests.

It runs ``steps`` steps of ``step_seconds`` each and reports every step, so progress,
cancellation, timeouts and failures behave like a real image job without a GPU. Setting
``simulation_down_file`` (``JOBQUEUE_SIMULATION_DOWN_FILE``) gives tests a service that can go
down: while that file exists, health checks and new steps fail as if the service were gone,
and a job that arrives then is refused before it starts with
:class:`~jobqueue.errors.ServiceNotReached` (as ComfyUI's and A1111's connectors do when their
service does not answer): the attempt does not count as a retry.

A payload's ``files`` (``[{"kind": "video", "mb": 500}]``) makes output files of any kind and
size (:mod:`jobqueue.sims.media`), streamed chunk by chunk into the output store as a real
connector streams what it downloads, so outputs can be tested and measured without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from jobqueue.connectors import media
from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.connectors.payloads import SimulationPayload, validate_simulation
from jobqueue.errors import ExecutionFailed, ServiceNotReached, ServiceUnavailable
from jobqueue.shared.outputs import content_type, save_output
from jobqueue.states import ConnectorStatus


class SimulationConnector(Connector):
    """Pretends to render: sleeps step by step and reports each step."""

    service = "simulation"
    example_payload = {"steps": 10, "step_seconds": 0.5, "fail_at_step": None, "output": "hello"}
    payload_models = (SimulationPayload,)

    @classmethod
    def validate(cls, payload: Any) -> dict[str, Any]:
        return validate_simulation(payload)

    def _down(self) -> bool:
        path = self.settings.simulation_down_file
        return bool(path) and os.path.exists(path)

    def check_health(self) -> Health:
        if self._down():
            return Health(ConnectorStatus.ERROR, "simulated service is down")
        return Health(ConnectorStatus.IDLE, "", {"kind": "simulation", "gpu": self.gpu})

    def run(self, job: Job, report_progress: ProgressReporter) -> dict[str, Any]:
        payload = self.validate(job.payload)
        if self._down():  # nothing was handed over: like a service that does not answer
            raise ServiceNotReached("simulated service is down", {"down_file": self.settings.simulation_down_file})
        steps, seconds = payload["steps"], payload["step_seconds"]
        report_progress(step=0, total_steps=steps, message="starting")
        for step in range(1, steps + 1):
            job.sleep(seconds)
            if self._down():
                raise ServiceUnavailable("simulated service went down during the job")
            if payload["fail_at_step"] == step:
                raise ExecutionFailed(
                    f"simulated failure at step {step}", {"step": step, "node": f"step-{step}"}
                )
            report_progress(step=step, total_steps=steps, message=f"step {step}/{steps}")
        job.check()
        result: dict[str, Any] = {"output": payload["output"], "steps": steps}
        if "seed" in payload:
            result["seed"] = payload["seed"]
        if payload.get("files"):
            result["files"] = self._make_files(job, payload["files"])
        return result

    def _make_files(self, job: Job, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stream each requested file into the output store; a video gets its poster beside it."""
        entries: list[dict[str, Any]] = []
        for index, spec in enumerate(files, 1):
            kind = spec["kind"]
            name = spec.get("name") or f"{kind}-{index}.{media.EXTENSIONS[kind]}"
            chunks = _checked(job, media.generate(kind, int(spec["mb"] * (1 << 20))))
            entry = save_output(self.settings, job.id, name, chunks)
            entry["content_type"] = content_type(entry["name"])
            if kind == "video":
                poster = save_output(self.settings, job.id, entry["name"].rsplit(".", 1)[0] + ".poster.png",
                                     [media.poster()])
                entry["poster"] = poster["name"]
            entries.append(entry)
        return entries


def _checked(job: Job, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks``, stopping (raising) when the job is cancelled or times out mid-file."""
    for chunk in chunks:
        job.check()
        yield chunk
