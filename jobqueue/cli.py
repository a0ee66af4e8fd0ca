"""The ``jobqueue`` command line (click).

    jobqueue up                                   # broker (embedded if needed), worker, monitor
    jobqueue submit simulation '{"steps": 5}' --wait; jobqueue submit comfyui --workflow my_workflow_api.json
    jobqueue status <job id>; jobqueue cancel <job id>; jobqueue purge <queue>; jobqueue jobs --status queued
    jobqueue workers; jobqueue outputs <job id>
    jobqueue worker -Q gpu1                       # = celery -A jobqueue worker -Q gpu1

Settings come from ``JOBQUEUE_*`` variables (docs/configuration.md), read once per command.
Adding a subcommand is one decorated function below (``@main.command()``); import heavy
modules inside it so ``jobqueue --help`` stays fast and works when an optional part is missing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from jobqueue.cli_common import dump as _dump
from jobqueue.cli_common import load_settings, needs_extra
from jobqueue.cli_keys import keys
from jobqueue.errors import ConfigError, JobFailed, SubmitError, WaitTimeout


@contextmanager
def celery_app() -> Iterator[Any]:
    """A Celery app for one command, closed afterwards (no process-wide app in the CLI)."""
    from jobqueue.transport.app import create_app

    app = create_app(load_settings())
    try:
        yield app
    finally:
        app.close()


def parse_payload(text: str, param_hint: str = "PAYLOAD") -> dict[str, Any]:
    """A payload argument (inline JSON, ``@file`` or ``-`` for stdin) as a dict, or a usage
    error saying what is wrong with it."""
    from jobqueue.client.commands import PayloadError, read_payload

    try:
        return read_payload(text)
    except PayloadError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None


def job_payload(payload: str | None, workflow: str | None) -> dict[str, Any]:
    """The job's payload from PAYLOAD or ``--workflow`` (exactly one of them)."""
    from jobqueue.client.commands import PayloadError, workflow_payload

    if (payload is None) == (workflow is None):
        raise click.UsageError("give the payload (PAYLOAD: JSON, @file or -) or --workflow FILE, one of them")
    if payload is not None:
        return parse_payload(payload)
    try:
        return workflow_payload(str(workflow))
    except PayloadError as exc:
        raise click.BadParameter(str(exc), param_hint="--workflow") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jobqueue")
def main() -> None:
    """jobqueue: image-generation jobs on GPU workers through Celery."""


main.add_command(keys)


@main.command()
@click.option("-Q", "--queues", default="gpu0", show_default=True, help="Queues of the one worker.")
@click.option("--comfyui-port", type=int, default=8188, show_default=True,
              help="Port for the ComfyUI simulator (a free one if busy).")
@click.option("--no-comfyui-sim", is_flag=True, help="Do not start the ComfyUI simulator.")
@click.option("--no-monitor", is_flag=True, help="Do not start the monitor.")
@click.option("--stop-timeout", type=float, default=10.0, show_default=True,
              help="Seconds each process gets to stop before it is killed.")
@click.option("--debug", is_flag=True,
              help="Copy every process's output (and the monitor's request log) to the console.")
@click.option("--no-auth", is_flag=True,
              help="Do not protect the monitor's controls with a generated token (localhost only).")
def up(queues: str, comfyui_port: int, no_comfyui_sim: bool, no_monitor: bool, stop_timeout: float,
       debug: bool, no_auth: bool = False) -> None:
    """Run everything: broker (embedded Redis if none answers), worker, simulator, monitor.

    Ctrl-C stops everything. A process that dies is restarted; one that keeps dying stops
    everything with a non-zero exit. Logs go to JOBQUEUE_DATA_DIR/logs (default ./.jobqueue).
    """
    from jobqueue.up.runner import UpOptions, run_up

    options = UpOptions(queues=queues, comfyui_sim=not no_comfyui_sim, comfyui_port=comfyui_port,
                        monitor=not no_monitor, stop_timeout=stop_timeout, debug=debug,
                        auth=not no_auth)
    try:
        code = run_up(os.environ, options)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    sys.exit(code)


@main.command()
@click.argument("service")
@click.argument("payload_json", metavar="PAYLOAD", required=False)  # its 1.x name (the CLI surface stays)
@click.option("--workflow", default=None,
              help='A ComfyUI workflow saved with "Save (API)" (a file, or - for stdin) as the payload.')
@click.option("--wait", is_flag=True, help="Wait for the result, with a progress bar (on stderr).")
@click.option("--priority", type=int, default=None, help="0 (lowest) .. 9 (most urgent); default 5.")
@click.option("--queue", default=None, help="Pin the job: gpu0, machine.<id>, gpu0.<id>.")
@click.option("--timeout", type=float, default=None, help="The job's own time limit in seconds.")
@click.option("--wait-timeout", type=float, default=None,
              help="With --wait: stop waiting after this many seconds (the job goes on).")
@click.option("--requires", "requires_json", default=None,
              help='What the worker must have, as JSON (or @file): {"models": [...], "vram_gb": 20, "tags": [...]}.')
def submit(service: str, payload_json: str | None, wait: bool, priority: int | None, queue: str | None,
           timeout: float | None, wait_timeout: float | None, requires_json: str | None = None,
           workflow: str | None = None) -> None:
    """Submit a job to SERVICE with PAYLOAD: JSON, @file, or - (stdin); or --workflow FILE.

    Prints the job id. With --wait, prints the id on stderr, shows real progress and prints
    the result as JSON on stdout; exits 1 with the error when the job fails, or when the
    service's queue is full (JOBQUEUE_MAX_QUEUED).
    """
    from kombu.exceptions import OperationalError

    from jobqueue.client.jobs import submit_job
    from jobqueue.up.embedded import broker_answers

    body = job_payload(payload_json, workflow)
    requires = parse_payload(requires_json, "--requires") if requires_json else None
    with celery_app() as app:
        if not broker_answers(app.settings.broker_url):
            raise click.ClickException(
                f"broker {app.settings.broker_url} does not answer (is `jobqueue up` running? "
                "is JOBQUEUE_BROKER_URL right?)")
        try:
            handle = submit_job(service, body, priority=priority, queue=queue, timeout=timeout, app=app,
                                requires=requires)
        except SubmitError as exc:
            raise click.ClickException(str(exc)) from None
        except OperationalError as exc:
            raise click.ClickException(f"broker {app.settings.broker_url} unreachable: {exc}") from None
        if not wait:
            click.echo(handle.id)
            return
        click.echo(f"job {handle.id}", err=True)
        result = _wait_with_progress_bar(handle, wait_timeout)
    click.echo(_dump(result))


def _describe(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    text = progress.get("message") or ""
    eta = progress.get("eta_seconds")
    return f"{text} (eta {eta:.1f} s)" if isinstance(eta, (int, float)) else text


def _wait_with_progress_bar(handle: Any, wait_timeout: float | None) -> Any:
    """Wait for ``handle`` while a bar on stderr follows the job's reported percent."""
    shown = 0
    with click.progressbar(length=100, label="progress", file=sys.stderr, show_eta=False,
                           item_show_func=_describe) as bar:

        def on_progress(progress: dict[str, Any]) -> None:
            nonlocal shown
            percent = int(progress.get("percent") or 0)
            bar.update(max(0, percent - shown), progress)
            shown = max(shown, percent)

        try:
            result = handle.wait(timeout=wait_timeout, on_progress=on_progress)
        except JobFailed as exc:
            raise click.ClickException(str(exc)) from None
        except WaitTimeout as exc:
            raise click.ClickException(str(exc)) from None
        bar.update(100 - shown, {"message": "done"})
    return result


@main.command()
@click.argument("job_id")
def status(job_id: str) -> None:
    """Print JOB_ID's status and progress as JSON (and its result or error once it ended).

    A job still waiting in its queue reads "queued"; an id that was never submitted (or was
    forgotten with its result) exits 1 saying the job is unknown.
    """
    from jobqueue.client.jobs import get_job
    from jobqueue.states import JobStatus

    with celery_app() as app:
        handle = get_job(job_id, app=app)
        state = handle.status()
        if state == JobStatus.UNKNOWN:
            raise click.ClickException(
                f"job {job_id} is unknown: never submitted, or forgotten with its result")
        report: dict[str, Any] = {"id": job_id, "status": state.value, "progress": handle.progress()}
        if state in (JobStatus.QUEUED, JobStatus.RETRYING):
            report["waiting_for"] = handle.waiting_for()
        if state == JobStatus.COMPLETED:
            report["result"] = handle.result()
        elif state.is_final:
            try:
                handle.result()
            except JobFailed as exc:
                report["error"] = exc.error
    click.echo(_dump(report))


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel JOB_ID: a queued job never runs, a running one is stopped on its service (and a
    workflow step takes the steps after it along). Exits 1 for an unknown or ended job."""
    from jobqueue.client.jobs import get_job
    from jobqueue.states import JobStatus

    with celery_app() as app:
        handle = get_job(job_id, app=app)
        state = handle.status()
        if state == JobStatus.UNKNOWN:
            raise click.ClickException(f"job {job_id} is unknown: never submitted, or forgotten with its result")
        if state.is_final or not handle.cancel():
            raise click.ClickException(f"job {job_id} already ended ({handle.status().value}): nothing to cancel")
    click.echo(f"cancelled {job_id}")


@main.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, yes: bool = False) -> None:
    """Remove every message waiting in QUEUE, every priority level; its jobs are recorded cancelled."""
    from jobqueue.client.purge import purge as purge_queue
    from jobqueue.transport.broker_queues import BrokerError
    yes or click.confirm(f"Remove every message waiting in queue {queue!r}?", abort=True)
    with celery_app() as app:
        try:
            report = purge_queue(queue, app=app)
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"purged {report.removed} message(s) from {queue} ({len(report.jobs)} job(s) cancelled)")


@main.command()
@click.option("--status", "state", default=None, help="Only jobs in this status (queued, processing, failed...).")
@click.option("--service", default=None, help="Only jobs of this service.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the monitor's job objects as JSON.")
def jobs(state: str | None, service: str | None, limit: int, as_json: bool = False) -> None:
    """List the newest jobs, from the monitor (JOBQUEUE_MONITOR_URL, else JOBQUEUE_MONITOR_HOST:PORT)."""
    from jobqueue.client.commands import CommandError, jobs_table, list_jobs
    from jobqueue.states import JobStatus

    if state is not None and state not in {s.value for s in JobStatus}:
        raise click.BadParameter(f"{state!r} is not one of {', '.join(s.value for s in JobStatus)}",
                                 param_hint="--status")
    try:
        found = list_jobs(load_settings(), state, service, limit)
    except CommandError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_dump(found) if as_json else jobs_table(found))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
def workers(as_json: bool = False) -> None:
    """The fleet at a glance: each worker, its status, machine, connector badges and job.

    From the monitor when JOBQUEUE_MONITOR_URL is set (offline and draining workers too);
    else the workers online now answer over the broker."""
    from jobqueue.client.commands import CommandError, fleet, workers_table

    with celery_app() as app:
        try:
            source, found = fleet(app.settings, app)
        except CommandError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(_dump(found))
        return
    click.echo(workers_table(found) if found else f"no worker ({source})")


@main.command()
@click.argument("job_id")
@click.option("-o", "--output-dir", default=None, help="Where to put the files (default ./<job id>).")
def outputs(job_id: str, output_dir: str | None = None) -> None:
    """Download JOB_ID's files from the output store and print their paths (exit 1: none)."""
    from pathlib import Path

    from jobqueue.client.commands import CommandError, download_outputs

    try:
        copies = download_outputs(load_settings(), job_id, Path(output_dir or job_id))
    except CommandError as exc:
        raise click.ClickException(str(exc)) from None
    for path in copies:
        click.echo(str(path))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.option("--exit-when-idle", "exit_when_idle", type=click.FloatRange(min=0), default=None,
              help="Exit cleanly after this many seconds with no job (default JOBQUEUE_EXIT_WHEN_IDLE; 0: never).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...], exit_when_idle: float | None = None) -> None:
    """Start a worker: the same as ``celery -A jobqueue worker CELERY_ARGS...``; with
    ``--exit-when-idle SECONDS`` it exits (code 0, warm shutdown) after that long idle."""
    argv = [sys.executable, "-m", "celery", "-A", "jobqueue", "worker", *celery_args]
    env = dict(os.environ)
    if exit_when_idle is not None:
        env["JOBQUEUE_EXIT_WHEN_IDLE"] = repr(exit_when_idle)
    os.execve(sys.executable, argv, env)


@main.command()
@click.option("--host", default=None, help="Address to bind (default JOBQUEUE_MONITOR_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default JOBQUEUE_MONITOR_PORT, 5555).")
@click.option("--broker", default=None, help="Broker URL of the Celery app to watch (default JOBQUEUE_BROKER_URL).")
@click.option("--result-backend", default=None,
              help="Its result backend (default JOBQUEUE_RESULT_BACKEND, else the broker's Redis).")
@click.option("--url-prefix", default=None,
              help="Serve everything under this path, e.g. /flower (default JOBQUEUE_MONITOR_URL_PREFIX).")
@click.option("--debug", is_flag=True, help="Serve with Werkzeug's development server instead of gunicorn.")
@click.option("--upgrade-only", is_flag=True,
              help="Migrate the store (JOBQUEUE_MONITOR_DB) to the newest schema, print its revision before and after, and exit.")
def monitor(host: str | None, port: int | None, debug: bool = False, upgrade_only: bool = False,
            broker: str | None = None, result_backend: str | None = None, url_prefix: str | None = None) -> None:
    """Run the monitor (collector, store from JOBQUEUE_MONITOR_DB, API, dashboard) under gunicorn,
    on any Celery app's broker: its workers need nothing of jobqueue."""
    import logging

    options = {"broker_url": broker, "result_backend": result_backend, "monitor_url_prefix": url_prefix}
    settings = load_settings(**{k: v for k, v in options.items() if v is not None})
    if upgrade_only:
        upgrade_store(settings.monitor_db)
        return
    with needs_extra("the monitor", "monitor"):
        from monitor.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(settings, host, port, debug=debug)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def upgrade_store(url: str) -> None:
    """``jobqueue monitor --upgrade-only``: migrate the store at ``url`` and print its revision
    before and after; a store that cannot be reached or migrated is a clean error (exit 1)."""
    with needs_extra("the monitor", "monitor"):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, SQLAlchemyError

        from monitor.store.migrate import upgrade_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError as exc:
        raise click.ClickException(f"JOBQUEUE_MONITOR_DB is not a database URL: {exc}") from None
    try:
        done = upgrade_url(url)
    except (SQLAlchemyError, ConfigError) as exc:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"the monitor's store {shown} cannot be upgraded: {reason}") from None
    before = done.before or ("none (a store of a monitor from before migrations)" if done.adopted else "none (empty)")
    click.echo(f"store {shown}\nrevision before: {before}\nrevision after:  {done.after}")


@main.command("comfyui-sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8188, show_default=True, help="Port (0 picks a free one).")
@click.option("--control-port", type=int, default=None, help="Extra port serving only the /_sim/ fault switches.")
@click.option("--output-dir", default=None, help="Where SaveImage writes (default: a temp dir).")
@click.option("--models", default=None, help="Comma-separated checkpoint files the simulator has.")
@click.option("--vram-gb", type=float, default=None, help="VRAM of the simulated GPU (default: a CPU device).")
def comfyui_sim(host: str, port: int, control_port: int | None, output_dir: str | None,
                models: str | None = None, vram_gb: float | None = None) -> None:
    """Run the ComfyUI simulator (real HTTP + websocket, ComfyUI v0.3.64 protocol)."""
    with needs_extra("the ComfyUI simulator", "comfyui-sim"):
        from jobqueue.sims.comfyui.server import run

    run(host, port, control_port=control_port, output_dir=output_dir,
        models_present=models.split(",") if models is not None else None, vram_gb=vram_gb)


@main.command("a1111-sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=7860, show_default=True, help="Port (0 picks a free one).")
@click.option("--control-port", type=int, default=None, help="Extra port serving only the /_sim/ fault switches.")
@click.option("--flavour", type=click.Choice(["a1111", "forge"]), default="a1111", show_default=True,
              help="AUTOMATIC1111 v1.10.1 or Forge (their 422 bodies differ).")
@click.option("--step-seconds", type=float, default=0.05, show_default=True, help="Time per sampling step.")
@click.option("--webui-version", type=click.Choice(["1.7", "1.8", "1.9", "1.10"]), default="1.10", show_default=True,
              help="A1111 release to imitate (1.7: no task ids; <= 1.8: an unknown sampler is a 404).")
def a1111_sim(host: str, port: int, control_port: int | None, flavour: str, step_seconds: float,
              webui_version: str) -> None:
    """Run the Stable Diffusion WebUI (A1111/Forge) simulator: the /sdapi/v1 API over real HTTP."""
    with needs_extra("the WebUI simulator", "a1111-sim"):
        from jobqueue.sims.a1111.server import run

    run(host, port, control_port=control_port, flavour=flavour, step_seconds=step_seconds, version=webui_version)


if __name__ == "__main__":
    main()
