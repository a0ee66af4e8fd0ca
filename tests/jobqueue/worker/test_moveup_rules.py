"""The rules of out of memory and crashes without a server: which errors are out of memory,
the next VRAM tier, and the error a moved-up job fails with."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.connectors.comfyui.outcome import out_of_memory
from jobqueue.errors import ExecutionFailed, OutOfMemory
from jobqueue.sims.comfyui.options import OOM_TIPS, full_type_name
from jobqueue.sims.comfyui.options import out_of_memory as sim_oom
from jobqueue.worker.moveup import gave_up, move_up_if_out_of_memory, next_tier


def test_comfyuis_out_of_memory_is_told_by_torchs_type_old_and_new_or_by_its_tip():
    message = f"{sim_oom(vram_gib=8)}\n{OOM_TIPS}"
    assert out_of_memory({"exception_type": full_type_name(type(sim_oom())), "exception_message": message})
    assert out_of_memory({"exception_type": "torch.cuda.OutOfMemoryError", "exception_message": "CUDA out of memory."})
    # (a custom node wrapping torch's error in its own keeps ComfyUI's tip after the message)
    assert out_of_memory({"exception_type": "RuntimeError", "exception_message": message})
    assert not out_of_memory({"exception_type": "ValueError", "exception_message": "harness boom"})
    assert not out_of_memory({"exception_type": "RuntimeError", "exception_message": "Allocation on device 0 ok"})


def test_the_next_tier_is_the_smallest_vram_step_above_the_card_and_none_above_the_top():
    assert next_tier(8) == 10 and next_tier(9) == 10 and next_tier(24) == 32
    assert next_tier(1024) is None


def test_a_moved_up_job_that_waited_too_long_fails_naming_every_vram_tried_and_the_tier_it_waited_for():
    error = gave_up({"vram_tried": [8, 10], "vram_gb": 12.0, "worker": "gpu0@b"}, 30.0)
    assert error.message.startswith("out of GPU memory with 8, 10 GiB of VRAM (last on gpu0@b)")
    assert "no worker with 12 GiB or more took the job within 30 s" in error.message
    assert error.details["vram_tried"] == [8, 10]


class _Stub:
    """Attributes from keyword arguments (a task, request, runtime, connector or identity)."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


def _worker_with(vram_gb: float | None) -> Any:
    caps = {"capabilities": {"vram_total_gb": vram_gb}} if vram_gb else {}
    return _Stub(connectors={"comfyui": _Stub(details=caps)}, identity=_Stub(node_name="gpu0@a"))


def _task() -> Any:
    return _Stub(request=_Stub(id="j1", kwargs={"service": "comfyui"}, retries=0), app=_Stub(settings=_Stub(oom_wait=60.0)))


@pytest.mark.parametrize(("vram", "options", "why"), [
    (1024, {"queue": "comfyui"}, "no VRAM tier above 1024 GiB"),
    (None, {"queue": "comfyui"}, "this worker reports no GPU memory"),
    (8, {"queue": "gpu0"}, "the job is pinned to queue gpu0"),
])
def test_a_job_out_of_memory_with_nowhere_to_move_fails_at_once_saying_why(vram, options, why):
    error = OutOfMemory("out of GPU memory: node 1 (EmptyImage) raised torch.OutOfMemoryError", {"node_id": "1"})
    final = move_up_if_out_of_memory(_task(), _worker_with(vram), options, error)
    assert isinstance(final, OutOfMemory)
    assert final.message.startswith(error.message) and final.message.endswith(f"not moved up: {why}")
    assert final.details["node_id"] == "1" and final.details["vram_tried"] == ([vram] if vram else [])
    assert ("out of memory with" in final.message) == bool(vram)


def test_any_other_error_is_not_moved_up():
    assert move_up_if_out_of_memory(_task(), _worker_with(8), {}, ExecutionFailed("node 3 failed")) is None
