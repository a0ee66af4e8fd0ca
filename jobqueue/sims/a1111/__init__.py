"""A simulated Stable Diffusion WebUI (AUTOMATIC1111 v1.10.1 or Forge) for tests and demos:
the ``/sdapi/v1`` API over real HTTP, model-free generation that takes real time per step,
live previews, and fault switches. Start one with ``jobqueue a1111-sim --port 7860``."""

from __future__ import annotations

from jobqueue.sims.a1111.server import A1111SimServer, A1111SimulatorThread, run

__all__ = ["A1111SimServer", "A1111SimulatorThread", "run"]
