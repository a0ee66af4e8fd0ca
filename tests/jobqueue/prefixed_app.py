"""A jobqueue worker app whose broker keys carry a kombu ``global_keyprefix`` (for
``celery -A tests.jobqueue.prefixed_app worker``): the environment's settings, plus the prefix."""

from __future__ import annotations

from jobqueue import WORKER_CLASS
from jobqueue.transport.app import create_app

#: The ``global_keyprefix`` every broker key and channel of this app carries.
KEY_PREFIX = "jqtest:"


def prefixed(app: object) -> object:
    """``app`` with :data:`KEY_PREFIX` added to its broker transport options (before it connects)."""
    conf = app.conf  # type: ignore[attr-defined]
    conf.broker_transport_options = {**(conf.broker_transport_options or {}), "global_keyprefix": KEY_PREFIX}
    return app


app = prefixed(create_app(worker_class=WORKER_CLASS))  # a jobqueue worker, as jobqueue.app
