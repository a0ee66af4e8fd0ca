"""The rules of out of memory and crashes without a server: which errors are out of memory,
the next VRAM tier, and the error a moved-up job fails with."""

from __future__ import annotations

from jobqueue.connectors.comfyui.outcome import out_of_memory
from jobqueue.sims.comfyui.options import OOM_TIPS, full_type_name
from jobqueue.sims.comfyui.options import out_of_memory as sim_oom
from jobqueue.worker.moveup import gave_up, next_tier


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
