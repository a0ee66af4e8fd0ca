"""The worker's concerns: one list, installed once per app, and never loaded by a client."""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any

from celery import signals

from jobqueue.config import Settings
from jobqueue.shared.names import RUN_JOB_TASK
from jobqueue.transport.app import create_app
from jobqueue.worker import bootsteps
from jobqueue.worker.concerns import CONCERNS, install
from jobqueue.worker.poison import PoisonStep
from tests.helpers import ROOT


def _ours(signal: Any) -> list[Any]:
    return [r for r in signal.receivers if isinstance(r[0][0], str) and r[0][0].startswith("jobqueue.")]


def test_installing_the_concerns_into_two_apps_connects_each_handler_once(settings: Settings) -> None:
    # Given two apps, each with the worker's concerns installed (the second one twice)
    first, second = create_app(settings), create_app(settings)
    try:
        install(first)
        install(second)
        install(second)
        # Then every handler of the list is connected once, whatever the number of apps
        for signal in (signals.task_received, signals.task_prerun, signals.task_postrun, signals.task_revoked):
            expected = sum(1 for c in CONCERNS for s, _ in c.handlers if s is signal)
            assert len(_ours(signal)) == expected > 0, signal.name
        # And each app has the job task and every step once
        for app in (first, second):
            assert RUN_JOB_TASK in app.tasks
            assert set(app.steps["consumer"]) >= {PoisonStep, bootsteps.StatusStep, bootsteps.QueueGateStep}
            assert set(app.steps["worker"]) >= {bootsteps.RuntimeStep, bootsteps.LeaseStep, bootsteps.OrphanStep}
    finally:
        first.close()
        second.close()


def test_a_client_app_has_no_worker_code_and_jobqueue_app_builds_our_worker(settings: Settings) -> None:
    # Given a client process that builds jobqueue's default app and sends through it
    code = ("import sys, jobqueue\n"
            "app = jobqueue.get_app()\n"
            "assert 'jobqueue.run_job' not in app.tasks\n"
            "assert not [m for m in sys.modules if m.startswith('jobqueue.worker')], sorted(sys.modules)\n"
            "print(app.worker_class)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                         env={**settings.to_env(), "PATH": "/usr/bin:/bin"})
    # Then no worker module was imported, and the app names the worker class that installs them
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "jobqueue.worker.node:Worker"


def test_the_transport_imports_nothing_of_the_worker() -> None:
    for path in (ROOT / "jobqueue" / "transport").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("jobqueue.worker")], path
