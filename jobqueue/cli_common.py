"""What the ``jobqueue`` command's modules share (:mod:`jobqueue.cli`, :mod:`jobqueue.cli_keys`):
settings read once per command, a clean error for a missing extra, JSON as printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from jobqueue.config import Settings
from jobqueue.errors import ConfigError


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``overrides`` win: a command's own options), or a clean
    CLI error naming the bad variable."""
    try:
        return Settings.from_env(**overrides)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


@contextmanager
def needs_extra(what: str, extra: str) -> Iterator[None]:
    """Turn a missing optional dependency into a one-line error naming the extra to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"{what} needs the [{extra}] extra ({exc}): pip install 'jobqueue[{extra}]'") from None


def dump(value: Any) -> str:
    """``value`` as the commands print JSON: indented, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)
