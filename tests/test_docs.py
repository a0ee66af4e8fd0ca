"""The docs run as written: every code block of README.md and docs/*.md marked runnable
(``<!-- runnable -->`` on the line before its fence, see docs/developers.md) runs against a live
``jobqueue up`` (embedded Redis, ComfyUI simulator, worker, monitor) from a second shell that
exports nothing and sits in the same folder, the way a new user tries them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobqueue.up.embedded import free_port
from tests.helpers import ROOT, child_env
from tests.jobqueue.up_process import UpProcess

#: The line that marks the next fenced block as runnable.
MARKER = "<!-- runnable -->"
#: Languages a runnable block may be written in, and how each is run.
RUNNERS = {"python": [sys.executable, "-"], "bash": ["bash", "-euo", "pipefail", "-s"]}
#: Longest a block may run (s).
BLOCK_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    """One runnable code block: where it is, its language and its code."""

    path: Path
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def runnable_blocks(paths: list[Path]) -> list[Block]:
    """The blocks marked runnable in ``paths``; a marker not followed by a python or bash
    fence is an error (a typo must not drop a block silently)."""
    blocks = []
    for path in paths:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.strip() != MARKER:
                continue
            fence = lines[index + 1].strip() if index + 1 < len(lines) else ""
            language = fence.removeprefix("```")
            if not fence.startswith("```") or language not in RUNNERS:
                raise AssertionError(f"{path}:{index + 1}: {MARKER} must precede a ```python or ```bash fence")
            end = next((i for i in range(index + 2, len(lines)) if lines[i].strip() == "```"), None)
            if end is None:
                raise AssertionError(f"{path}:{index + 2}: unclosed fence")
            blocks.append(Block(path, index + 3, language, "\n".join(lines[index + 2:end]) + "\n"))
    return blocks


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = runnable_blocks(DOCS)


@pytest.fixture(scope="module")
def live_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``jobqueue up`` with an embedded Redis, run from a fresh folder; yields that folder."""
    folder = tmp_path_factory.mktemp("first-hour")
    env = child_env({
        "JOBQUEUE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # nobody runs it: embedded
        "JOBQUEUE_MACHINE_ID": f"docs{uuid.uuid4().hex[:6]}",
        "JOBQUEUE_MONITOR_PORT": str(free_port()),
    })
    up = UpProcess(env, folder / "up.log", "--comfyui-port", str(free_port()), cwd=folder)
    try:
        up.wait_up()
        yield folder
    finally:
        up.cleanup()


def test_the_readme_marks_its_python_cli_and_comfyui_blocks_runnable():
    readme = [block for block in BLOCKS if block.path.name == "README.md"]
    assert [block.language for block in readme] == ["python", "bash", "python", "bash"]
    assert any('submit_job("comfyui"' in block.code for block in readme)
    assert any("submit_batch(" in block.code and "seed" in block.code for block in BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_a_runnable_block_runs_as_written_against_jobqueue_up(block: Block, live_system: Path):
    # Given a live system, and a second shell in its folder with no JOBQUEUE_* exported
    env = child_env({})
    # When the block runs as written
    done = subprocess.run(RUNNERS[block.language], input=block.code, env=env, cwd=str(live_system),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    # Then it succeeds
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
