"""Short form of ``python -m bench.comfyui_roundtrip``: the direct client and the connector on
one ComfyUI simulator, a few cached jobs each. Times are for docs/benchmarks.md; what this
asserts is that both sides complete and that the connector's requests are the protocol's."""

from __future__ import annotations

import pytest

from bench.comfyui_roundtrip import main

pytestmark = pytest.mark.timeout(120)


def test_the_comfyui_round_trip_bench_runs_both_sides_and_counts_the_connectors_requests(capsys):
    assert main(["--jobs", "5", "--skip-jobqueue"]) == 0
    out = capsys.readouterr().out
    [direct] = [line for line in out.splitlines() if line.startswith("| direct ComfyUI client")]
    [connector] = [line for line in out.splitlines() if line.startswith("| connector in-process")]
    assert "POST /prompt 1.00" in direct and "GET /history/<id> 1.00" in direct
    assert "GET /view 1.00" in connector and "GET /queue" not in connector
