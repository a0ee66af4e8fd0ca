"""``jobqueue up``: the whole system in one command, on a fresh machine.

First a plan, before anything starts: the broker (the configured one if it answers, else an
embedded Redis, on the configured port when it is a free local one), the ComfyUI simulator's
port and the monitor's port, each checked the way its server binds (``SO_REUSEADDR``: a port
that was just closed counts as free). A busy monitor port, or another ``up`` running on the
same data directory, stops ``up`` here, with nothing started.

Then, in order: the embedded Redis (persisting to ``JOBQUEUE_DATA_DIR/redis``, so a restart
loses no queued job), the simulator (if its module exists), one worker for ``gpu0``, the
monitor (if its module exists). Every child gets the effective broker through
``JOBQUEUE_BROKER_URL`` and ``JOBQUEUE_RESULT_BACKEND``; once all run, ``up`` writes its run
file (:mod:`jobqueue.up.state`) so other shells find that broker by themselves.

A child that dies is restarted on the same port with backoff; a crash loop stops everything
with a non-zero exit and the child's last output lines. Ctrl-C or SIGTERM stops everything in
reverse order; if ``up`` itself is killed, the kernel stops its children
(:mod:`jobqueue.shared.lifeline`). The console shows one line per child state change; children's
output goes to ``JOBQUEUE_DATA_DIR/logs/<child>.log`` (and to the console with ``--debug``).
"""

from __future__ import annotations

import importlib
import secrets
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from jobqueue.config import Settings
from jobqueue.errors import ProcessFailed
from jobqueue.up.embedded import (
    EmbeddedRedisPlan,
    broker_answers,
    free_port,
    plan_embedded_redis,
    port_is_free,
    redis_server_executable,
)
from jobqueue.up.state import read_live_run_file, remove_run_file, write_run_file
from jobqueue.up.supervisor import (
    ChildSpec,
    RestartPolicy,
    Supervisor,
    component_available,
    component_command,
    tcp_answers,
)
from jobqueue.worker.identity import WorkerIdentity

#: The package extra that brings each optional component's dependencies (pyproject.toml).
COMPONENT_EXTRAS = {"monitor": "monitor", "comfyui-sim": "comfyui-sim"}


def install_hint(component: str) -> str:
    """What to install when ``component`` cannot run: its extra, or everything ``up`` runs."""
    extra = COMPONENT_EXTRAS.get(component, "up")
    return f"install it with: pip install 'jobqueue[{extra}]' (or 'jobqueue[up]' for everything)"


#: Port the ComfyUI simulator takes when it is free (ComfyUI's own default).
COMFYUI_PORT = 8188
#: Connector module that must import before the worker enables ``comfyui``.
COMFYUI_CONNECTOR = "jobqueue.connectors.comfyui.connector"


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
    #: Copy every child's output (and the monitor's request log) to the console.
    debug: bool = False
    #: When a dead child is restarted, and when ``up`` gives up.
    restart: RestartPolicy = field(default_factory=RestartPolicy)
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


@dataclass
class _Plan:
    """Every port ``up`` will use, chosen before anything starts."""

    #: The embedded Redis to start (None: the configured broker answers).
    redis: EmbeddedRedisPlan | None = None
    #: Simulator port (None: no simulator).
    comfyui_port: int | None = None
    #: Monitor port (None: no monitor).
    monitor_port: int | None = None


class _Up:
    """One run of ``jobqueue up`` (kept as an object so each step is a small method)."""

    def __init__(self, environ: Mapping[str, str], options: UpOptions, sup: Supervisor) -> None:
        self.env = {k: v for k, v in environ.items()}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.options = options
        self.sup = sup
        self.settings = Settings.from_env(self.env)
        self.data_dir = Path(self.settings.data_dir).resolve()
        self.env["JOBQUEUE_DATA_DIR"] = str(self.data_dir)
        self.plan = _Plan()
        self.app: Any = None
        self.wrote_run_file = False
        self.summary: list[tuple[str, str]] = []

    # -- plan ------------------------------------------------------------------------------
    def make_plan(self) -> None:
        """Choose and check every port; raise :class:`ProcessFailed` before anything starts."""
        other = read_live_run_file(self.data_dir)
        if other is not None:
            raise ProcessFailed(
                f"another jobqueue up (pid {other['pid']}) is running with data dir {self.data_dir}: "
                "stop it first, or give this one its own JOBQUEUE_DATA_DIR")
        taken: set[int] = set()
        if not broker_answers(self.settings.broker_url, settings=self.settings):
            self.plan.redis = plan_embedded_redis(self.settings.broker_url)
            taken.add(self.plan.redis.port)
        elif not broker_answers(self.settings.result_backend, settings=self.settings):
            raise ProcessFailed(f"result backend {self.settings.result_backend} does not answer")
        if self.options.monitor and component_available("monitor")[0]:
            host, port = self.settings.monitor_host, self.settings.monitor_port
            if port == 0:
                port = free_port(host)
            elif port in taken or not port_is_free(port, host):
                raise ProcessFailed(f"monitor port {host}:{port} is in use (set JOBQUEUE_MONITOR_PORT)")
            self.plan.monitor_port = port
            taken.add(port)
        if self.options.comfyui_sim and component_available("comfyui-sim")[0]:
            port = self.options.comfyui_port
            while port == 0 or port in taken or not port_is_free(port):
                port = free_port()
            self.plan.comfyui_port = port

    # -- start -----------------------------------------------------------------------------
    def broker(self) -> None:
        plan = self.plan.redis
        if plan is None:
            self.summary.append(("broker", f"{self.settings.broker_url} (configured)"))
            return
        self.sup.say(f"broker {self.settings.broker_url} does not answer: starting an embedded Redis")
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.sup.start(ChildSpec(
            name="redis",
            argv=plan.command(redis_server_executable(), str(redis_dir)),
            where=plan.url,
            env=self.env,
            ready=lambda: broker_answers(plan.url, timeout=0.5),
            ready_timeout=20.0,
            death_signal=signal.SIGTERM,  # lets Redis flush its append-only file
        ))
        self.env["JOBQUEUE_BROKER_URL"] = plan.url
        self.env["JOBQUEUE_RESULT_BACKEND"] = plan.url
        self.settings = Settings.from_env(self.env)
        self.summary.append(("broker", f"{plan.url} (embedded redis-server, data in {redis_dir})"))

    def comfyui_sim(self) -> bool:
        port = self.plan.comfyui_port
        if port is None:
            if self.options.comfyui_sim:
                self.sup.say(f"ComfyUI simulator not available ({component_available('comfyui-sim')[1]}): "
                             f"skipping it; {install_hint('comfyui-sim')}")
            return False
        url = f"http://127.0.0.1:{port}"
        self.sup.start(ChildSpec(
            name="comfyui-sim",
            argv=component_command("comfyui-sim", "127.0.0.1", port),
            where=url,
            env=self.env,
            ready=lambda: tcp_answers("127.0.0.1", port),
            ready_timeout=30.0,
        ))
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
        from jobqueue.transport.app import create_app

        self.app = app = create_app(self.settings)  # to ping the worker (at start and restarts)
        self.sup.start(ChildSpec(
            name="worker",
            argv=[sys.executable, "-m", "celery", "-A", "jobqueue", "worker",
                  "-Q", self.options.queues, "--loglevel", "INFO"],
            where=node,
            env=self.env,
            ready=lambda: _answers_ping(app, node),
            ready_timeout=60.0,
        ))
        self.summary.append(("worker", f"{node} (connectors {', '.join(connectors)}; "
                                       f"queues {', '.join(identity.queues)})"))

    def monitor(self) -> None:
        port = self.plan.monitor_port
        if port is None:
            if self.options.monitor:
                self.sup.say(f"monitor not available ({component_available('monitor')[1]}): skipping it; "
                             f"{install_hint('monitor')}")
            return
        host = self.settings.monitor_host
        login = ""
        if self.options.auth and not (self.settings.monitor_token or self.settings.monitor_basic_auth):
            # Like Jupyter: a token per run, handed over in the URL fragment (never sent to the server).
            self.env["JOBQUEUE_MONITOR_TOKEN"] = secrets.token_urlsafe(24)
            login = "/#token=" + self.env["JOBQUEUE_MONITOR_TOKEN"]
        self.sup.start(ChildSpec(
            name="monitor",
            argv=component_command("monitor", host, port, debug=self.options.debug),
            where=f"http://{host}:{port}",
            env=self.env,
            ready=lambda: tcp_answers(host, port),
            ready_timeout=60.0,
        ))
        prefix = self.settings.monitor_url_prefix.strip().strip("/")  # login: the page under it
        self.summary.append(("monitor", f"http://{host}:{port}{'/' + prefix if prefix else ''}{login}"))

    def write_run_file(self) -> None:
        write_run_file(self.data_dir, {
            "broker_url": self.settings.broker_url,
            "result_backend": self.settings.result_backend,
            "monitor_url": dict(self.summary).get("monitor"),
            "comfyui_url": dict(self.summary).get("comfyui-sim"),
        })
        self.wrote_run_file = True

    def print_summary(self) -> None:
        lines = ["", "jobqueue is up:"]
        lines += [f"  {name:<12} {where}" for name, where in self.summary]
        lines.append(f"  {'logs':<12} {self.data_dir / 'logs'}")
        lines += [
            f"Other shells in this folder (or with JOBQUEUE_DATA_DIR={self.data_dir}) find this broker "
            "by themselves; or:",
            f"  export JOBQUEUE_BROKER_URL={self.settings.broker_url}",
            "Try, in another shell:",
            "  jobqueue submit simulation '{\"steps\": 10, \"step_seconds\": 0.3}' --wait",
            "Press Ctrl-C to stop everything.",
            "",
        ]
        self.sup.say("\n".join(lines))

    def cleanup(self) -> None:
        if self.wrote_run_file:
            remove_run_file(self.data_dir)
        if self.app is not None:
            self.app.close()


def run_up(environ: Mapping[str, str], options: UpOptions, *, sup: Supervisor | None = None) -> int:
    """Run ``jobqueue up`` until a signal or a crash loop; return the exit code."""
    settings = Settings.from_env(environ)  # a ConfigError leaves before anything starts
    sup = sup or Supervisor(stop_timeout=options.stop_timeout, echo=options.debug, policy=options.restart,
                            log_dir=Path(settings.data_dir).resolve() / "logs")
    up = _Up(environ, options, sup)
    interrupted: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not interrupted:
            sup.say(f"\n{signal.Signals(signum).name}: stopping everything")
        interrupted.append(signum)
        sup.stopping.set()

    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        up.make_plan()
        up.broker()
        with_comfyui = up.comfyui_sim()
        up.worker(with_comfyui)
        up.monitor()
        up.write_run_file()
        up.print_summary()
        dead = sup.watch()
        if dead is not None:
            tail = "\n".join(f"  {line}" for line in dead.lines)
            sup.say(f"{dead.name} keeps dying: stopping everything. Its last output lines "
                    f"(all in {up.data_dir / 'logs' / (dead.name + '.log')}):\n{tail}")
            code = 1
    except ProcessFailed as exc:
        if not interrupted:
            sup.say(f"error: {exc}")
            failed = [c for c in sup.children if not c.alive() and c.lines]
            if failed:
                sup.say(f"{failed[-1].name}'s last output lines:\n" + "\n".join(f"  {x}" for x in failed[-1].lines))
            code = 1
    finally:
        sup.stop_all()
        up.cleanup()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code == 0:
        sup.say("stopped.")
    return code
