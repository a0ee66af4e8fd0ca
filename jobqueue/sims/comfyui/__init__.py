"""A simulated ComfyUI (v0.3.64 protocol) for tests and demos: real HTTP + websocket,
model-free nodes, caching, and fault switches. Start one with
``python -m jobqueue.sims.comfyui --port 8188`` or :func:`jobqueue.sims.comfyui.server.run`."""

from __future__ import annotations

from jobqueue.sims.comfyui.server import SimServer, SimulatorThread, run

__all__ = ["SimServer", "SimulatorThread", "run"]
