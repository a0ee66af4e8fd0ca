"""The code's own checks, run with the suite so that CI keeps them true: ``mypy --strict`` on
both packages, ``ruff``, no module in jobqueue/ or monitor/ over 500 lines and no function
there over 60, and the package layout: the monitor imports no worker or connector code, the
sub-packages import each other in one direction only (no cycle), and the top level of each
package stays small."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

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


# -- the package layout: who may import whom ----------------------------------------------------

#: The sub-packages whose imports are checked, lowest first. A module may import (at module
#: level or inside a function) only from sub-packages of a LOWER rank, never from one of the same
#: or a higher rank, so there is no cycle between them:
#:
#: * ``shared`` is the vocabulary both sides speak (names, states of routing, records, steps);
#:   it imports no other sub-package.
#: * ``transport`` (the Celery app, result backend, kombu/redis plumbing) and ``connectors``
#:   (one module per image server) build on ``shared`` only; neither knows the other.
#: * ``client`` (submit and follow jobs), ``worker`` (run them) and ``sims`` (simulated image
#:   servers) build on those; the client never loads worker code, nor the worker client code.
#: * ``up`` (the one-command runner) starts all of them.
#: * the monitor's packages, in the order events flow: ``store`` (rows, queries), ``merge``
#:   (the pure rules, truth events included), ``ingest`` (collector, single writer), ``repair``
#:   (reconcile with the backend, feeding the writer), ``metrics``, ``web``.
#:
#: Top-level modules (``jobqueue``'s public API, ``errors``, ``states``, ``config``, ``cli``;
#: ``monitor.app``, ``server``, ...) wire the packages together and are not ranked.
LAYERS: dict[str, int] = {
    "jobqueue.shared": 0,
    "jobqueue.transport": 1,
    "jobqueue.connectors": 1,
    "jobqueue.client": 2,
    "jobqueue.worker": 2,
    "jobqueue.sims": 2,
    "jobqueue.up": 3,
    "monitor.store": 4,
    "monitor.merge": 5,
    "monitor.ingest": 6,
    "monitor.repair": 7,
    "monitor.metrics": 8,
    "monitor.web": 9,
}
#: What ``monitor`` may import from jobqueue: its top-level modules and these sub-packages
#: (never worker, connector, runner or simulator code).
MONITOR_MAY_IMPORT = ("jobqueue.client", "jobqueue.shared", "jobqueue.transport")
JOBQUEUE_TOP_LEVEL = ("jobqueue.errors", "jobqueue.states", "jobqueue.config")
MAX_TOP_LEVEL = {"jobqueue": 8, "monitor": 6}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (module level and inside functions), with its line:
    ``from a import b`` imports ``a.b`` when that is a module of ours, else ``a``. Imports under
    ``if TYPE_CHECKING:`` are left out: they exist for the type checker only, never at run time."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                yield (f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base), node.lineno


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those inside an ``if TYPE_CHECKING:`` block."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _source_files(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def _layer(module: str) -> str | None:
    return next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importing sub-package, imported sub-package) -> where (``module:line``)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in _source_files("jobqueue", "monitor"):
        source = _layer(_module_name(path))
        if source is None:
            continue
        for name, line in _imports(path):
            target = _layer(name)
            where = f"{_module_name(path)}:{line}"
            if target is not None and target != source and where not in edges.get((source, target), []):
                edges.setdefault((source, target), []).append(where)
    return edges


def _cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The groups of nodes that import each other in a ring (strongly connected components of
    more than one node, Tarjan's algorithm), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            ring = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(ring) > 1:
                found.append(sorted(ring))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_monitor_imports_no_worker_connector_runner_or_simulator_code():
    wrong = []
    for path in _source_files("monitor"):
        for name, line in _imports(path):
            if not (name == "jobqueue" or name.startswith("jobqueue.")):
                continue
            # ``jobqueue`` itself is the public API (``from jobqueue import submit_job``).
            allowed = name == "jobqueue" or any(name == m or name.startswith(m + ".")
                                                for m in (*MONITOR_MAY_IMPORT, *JOBQUEUE_TOP_LEVEL))
            if not allowed:
                wrong.append(f"{_module_name(path)}:{line} imports {name}")
    assert wrong == []


def test_sub_packages_import_only_lower_layers_so_no_import_cycle_exists():
    edges = _edges()
    upward = {f"{a} -> {b}": where for (a, b), where in edges.items() if LAYERS[b] >= LAYERS[a]}
    assert _cycles(edges) == [], upward
    assert upward == {}


def test_no_two_modules_import_each_other_even_through_others_or_inside_a_function():
    modules = {_module_name(path): path for path in _source_files("jobqueue", "monitor")}
    edges = [(module, name) for module, path in modules.items() for name, _ in _imports(path)
             if name in modules and name != module]
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d")]) == [
        ["a", "b", "c"], ["d", "e"]]
    assert _cycles([("a", "b"), ("b", "c"), ("a", "c")]) == []


def test_the_top_level_of_each_package_stays_small():
    counts = {package: sorted(p.name for p in (ROOT / package).glob("*.py")) for package in MAX_TOP_LEVEL}
    assert {p: len(names) for p, names in counts.items() if len(names) > MAX_TOP_LEVEL[p]} == {}, counts
