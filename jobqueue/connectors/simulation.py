"""The ``simulation`` connector: a stand-in GPU service for demos and tests.

It runs ``steps`` steps of ``step_seconds`` each and reports every step, so progress,
cancellation, timeouts and failures behave like a real image job without a GPU. Setting
``simulation_down_file`` (``JOBQUEUE_SIMULATION_DOWN_FILE``) gives tests a service that can go
down: while that file exists, health checks and new steps fail as if the service were gone.
"""

from __future__ import annotations

import os
from typing import Any

from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.errors import ExecutionFailed, InvalidPayloadError, ServiceUnavailable
from jobqueue.states import ConnectorStatus

#: Upper bounds that keep a typo from booking a worker for a day.
MAX_STEPS = 100_000
MAX_STEP_SECONDS = 3600.0


class SimulationConnector(Connector):
    """Pretends to render: sleeps step by step and reports each step."""

    service = "simulation"
    example_payload = {"steps": 10, "step_seconds": 0.5, "fail_at_step": None, "output": "hello"}

    @classmethod
    def validate(cls, payload: Any) -> dict[str, Any]:
        payload = super().validate(payload)
        unknown = set(payload) - {"steps", "step_seconds", "fail_at_step", "output", "seed"}
        if unknown:
            raise InvalidPayloadError(f"simulation: unknown field(s) {sorted(unknown)}")
        steps = payload.get("steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
            raise InvalidPayloadError(f"simulation: 'steps' must be an integer 0..{MAX_STEPS}")
        seconds = payload.get("step_seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise InvalidPayloadError("simulation: 'step_seconds' must be a number")
        if not 0 <= seconds <= MAX_STEP_SECONDS:
            raise InvalidPayloadError(f"simulation: 'step_seconds' must be 0..{MAX_STEP_SECONDS}")
        fail_at = payload.get("fail_at_step")
        if fail_at is not None and (isinstance(fail_at, bool) or not isinstance(fail_at, int)):
            raise InvalidPayloadError("simulation: 'fail_at_step' must be an integer or null")
        return {
            "steps": steps,
            "step_seconds": float(seconds),
            "fail_at_step": fail_at,
            "output": payload.get("output"),
            **({"seed": payload["seed"]} if "seed" in payload else {}),
        }

    def _down(self) -> bool:
        path = self.settings.simulation_down_file
        return bool(path) and os.path.exists(path)

    def check_health(self) -> Health:
        if self._down():
            return Health(ConnectorStatus.ERROR, "simulated service is down")
        return Health(ConnectorStatus.IDLE, "", {"kind": "simulation", "gpu": self.gpu})

    def run(self, job: Job, report_progress: ProgressReporter) -> dict[str, Any]:
        payload = self.validate(job.payload)
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
