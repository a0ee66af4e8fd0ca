"""The code's own checks, run with the suite so that CI keeps them true: ``mypy --strict`` on
both packages, ``ruff``, no module in jobqueue/ or monitor/ over 500 lines and no function
there over 60."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

MAX_LINES = 500
#: Longest function, from its ``def`` to its last line (docstring and nested functions included).
MAX_FUNCTION_LINES = 60


@pytest.mark.slow
def test_mypy_strict_finds_nothing_in_jobqueue_and_monitor():
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "jobqueue", "monitor"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]


def test_ruff_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-5000:]


def test_no_module_of_jobqueue_or_monitor_is_over_500_lines():
    long = {str(path.relative_to(ROOT)): n for package in ("jobqueue", "monitor")
            for path in (ROOT / package).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_function_in_jobqueue_or_monitor_is_over_60_lines():
    long = {}
    for package in ("jobqueue", "monitor"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert long == {}
