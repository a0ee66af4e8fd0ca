"""The partition drill (bench/chaos/partition.py): machines as network namespaces, one cut off
the broker mid-job for 30 s, with ComfyUI and with the Stable Diffusion WebUI (A1111). Needs
root and iproute2 (CI runs as root); fails, never skips, without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import partition

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow, pytest.mark.serial]


@pytest.mark.parametrize("service", ["comfyui", "a1111"])
def test_a_job_on_a_machine_cut_off_for_30_s_finishes_exactly_once_elsewhere(tmp_path: Path, service: str) -> None:
    # Given two machines (namespaces), each with a worker and a simulator of the service
    # (ComfyUI, or the A1111 WebUI), and the broker, an S3 store and the monitor on the host
    # When the machine running a 30 s job is cut off 4 s into it, for 30 s, then healed
    result = partition.run(tmp_path, machines=2, job_seconds=30, cut=30.0, after=2, service=service)
    print(result.line())
    # Then the job finished exactly once, on the other machine, and nothing was lost
    assert result.lost == 0 and result.duplicates == 0, result.line()
    assert result.redelivered_to and result.cut_machine not in result.redelivered_to, result.line()
    # And the cut-off worker never reported it done
    assert result.cutoff_done == 0, result.line()
    # And the monitor showed the machine offline during the cut, its job lost then running
    # elsewhere, and the machine online after the heal
    assert result.offline_seen and result.lost_seen and result.online_after, result.line()
    statuses = result.job_statuses
    lost_at = next(i for i, s in enumerate(statuses) if s.startswith("lost@"))
    assert any(s.startswith(("processing@", "completed@")) and result.cut_machine not in s
               for s in statuses[lost_at + 1:]), result.line()
    # And the healed machine took new work
    assert result.after_on_cut_machine == 2, result.line()
