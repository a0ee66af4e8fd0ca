"""A simulated Stable Diffusion WebUI (AUTOMATIC1111 1.7-1.10 or Forge) for tests and demos:
the ``/sdapi/v1`` API over real HTTP, model-free generation that takes real time per step,
live previews, fault switches, and the real WebUI's ways (requests that outlive their client,
images encoded after the lock, silent sampler and checkpoint fallbacks, out of memory). Start one with ``jobqueue a1111-sim --port 7860``."""

from __future__ import annotations

from jobqueue.sims.a1111.server import A1111SimServer, A1111SimulatorThread, run

__all__ = ["A1111SimServer", "A1111SimulatorThread", "run"]
