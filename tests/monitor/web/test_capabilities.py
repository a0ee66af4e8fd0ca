"""Monitors started early and late show the same models, VRAM and tags of each worker (real
workers, real Redis, ComfyUI simulators over real sockets, real monitor processes)."""

from __future__ import annotations

from typing import Any

from tests.capability_fixtures import comfy_worker, start_sim
from tests.helpers import wait_for
from tests.monitor.conftest import comparable

__all__ = ["start_sim"]  # a fixture


def worker_caps(monitor: Any) -> dict[str, Any]:
    return {w["name"]: w["capabilities"] for w in monitor.state()["workers"]}


def test_early_and_late_monitors_show_the_same_models_vram_and_tags_of_each_worker(
        app, start_worker, start_monitor, start_sim, machine_id):
    # Given a monitor up before any worker
    early = start_monitor("early.db")
    # When a GPU machine with two checkpoints and a tagged worker, and a CPU machine start
    big = comfy_worker(start_worker, machine_id, "big", start_sim("a.safetensors", "b.safetensors", vram_gb=24),
                       worker_tags="customer:acme,region:eu")
    cpu = comfy_worker(start_worker, machine_id, "cpu", start_sim("a.safetensors"))
    expected = {
        big.node_name: {"models": ["a.safetensors", "b.safetensors"], "vram_total_gb": 24.0, "vram_free_gb": 23.5,
                        "tags": ["customer:acme", "region:eu"], "loaded": [], "load_seconds": None},
        cpu.node_name: {"models": ["a.safetensors"], "vram_total_gb": None, "vram_free_gb": None, "tags": [],
                        "loaded": [], "load_seconds": None},
    }
    wait_for(lambda: worker_caps(early) == expected, 30, interval=0.2, what="the early monitor to show capabilities")
    # And a second monitor starts only afterwards
    late = start_monitor("late.db")
    # Then both show the same capabilities (and the same state altogether)
    wait_for(lambda: worker_caps(late) == expected, 30, interval=0.2, what="the late monitor to show capabilities")
    wait_for(lambda: comparable(early.state()) == comparable(late.state()), 20, interval=0.2, what="equal states")
