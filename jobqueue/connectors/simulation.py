"""The ``simulation`` connector: a stand-in GPU service for demos and tests.

It runs ``steps`` steps of ``step_seconds`` each and reports every step, so progress,
cancellation, timeouts and failures behave like a real image job without a GPU. Setting
``simulation_down_file`` (``JOBQUEUE_SIMULATION_DOWN_FILE``) gives tests a service that can go
down: while that file exists, health checks and new steps fail as if the service were gone,
and a job that arrives then is refused before it starts with
:class:`~jobqueue.errors.ServiceNotReached` (as ComfyUI's and A1111's connectors do when their
service does not answer): the attempt does not count as a retry.
"""

from __future__ import annotations

import os
from typing import Any

from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.connectors.payloads import SimulationPayload, validate_simulation
from jobqueue.errors import ExecutionFailed, ServiceNotReached, ServiceUnavailable
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
        return result
