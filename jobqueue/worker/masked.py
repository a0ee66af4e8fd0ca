"""What a worker shows of a job's result and arguments: secrets masked (:mod:`jobqueue.shared.masking`).

Celery makes one text of a task's return value (``saferepr``) and uses it twice: in the
``task-succeeded`` event (sent by the worker's :class:`~celery.worker.request.Request`) and in
the ``Task ... succeeded in ...: <result>`` log line (written by the tracer, in the pool's
process). The result backend gets the real value. So the job task uses
:class:`MaskingRequest`, which masks the text before the event leaves, and the tracer's logger
gets a :class:`MaskingLogFilter`, which masks it (and the logged arguments) before any handler
writes it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.request import Request

from jobqueue.shared.masking import DEFAULT_PATTERN, mask, mask_event, mask_text

#: Celery's tracer logs task outcomes (with the result's repr) on this logger.
TRACE_LOGGER = "celery.app.trace"


class MaskingRequest(Request):  # type: ignore[misc]  # Celery is untyped
    """A job's request whose events carry masked results, errors and arguments."""

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        settings = getattr(self.task.app, "settings", None)
        pattern = getattr(settings, "secret_keys_pattern", DEFAULT_PATTERN)
        super().send_event(type, **mask_event(fields, pattern))


class MaskingLogFilter(logging.Filter):
    """Masks the values of a log record's arguments (Celery passes a dict: ``return_value``,
    ``args``, ``kwargs``, ``exc``...), its message text and its traceback (formatted here,
    masked, and left in ``exc_text``, which formatters print instead). Never drops a record."""

    def __init__(self, pattern: str = DEFAULT_PATTERN) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: mask(v, self.pattern) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(mask(v, self.pattern) for v in record.args)
        if isinstance(record.msg, str):
            record.msg = mask(record.msg, self.pattern)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text, self.pattern)
        return True


def install_log_filter(pattern: str) -> MaskingLogFilter:
    """Put one :class:`MaskingLogFilter` with ``pattern`` on Celery's tracer logger (replacing
    an earlier one: a second worker app in the same process changes the pattern, never stacks)."""
    logger = logging.getLogger(TRACE_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, MaskingLogFilter)]:
        logger.removeFilter(old)
    new = MaskingLogFilter(pattern)
    logger.addFilter(new)
    return new
