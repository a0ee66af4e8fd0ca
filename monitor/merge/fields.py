"""Reading an event's fields for the merge: checked, bounded, or :class:`MalformedEvent`.

Pure functions of the event dict. The merge rules (:mod:`monitor.merge.job_rules`) and the I/O
layer (:mod:`monitor.merge.apply`) read every field through these, so a malformed event is refused
before anything is touched and nothing oversized reaches the database.
"""

from __future__ import annotations

import ast
import json
import math
import re
from datetime import datetime, timezone
from typing import Any, TypeVar

from jobqueue.errors import MalformedEvent
from jobqueue.shared.job_record import to_json
from jobqueue.shared.names import parse_exception

#: Longest id (job uuid, worker name, service) we accept.
MAX_ID = 255
#: Longest free text we keep (messages, error texts); longer is cut.
MAX_TEXT = 2000
#: Largest JSON blob (details, result, error details) we keep, in characters.
MAX_BLOB = 20000
#: Celery cuts a ``task-succeeded`` result repr at the task's ``resultrepr_maxsize``; a repr
#: this close to our tasks' limit (see :data:`jobqueue.worker.task.RESULT_REPR_MAX`) may be cut.
REPR_SAFE = 19000


def malformed(event_type: str, msg: str) -> MalformedEvent:
    """The error for a bad field of an event of ``event_type``."""
    return MalformedEvent(f"{event_type}: {msg}")


def event_id(ev: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    """A printable id of at most :data:`MAX_ID` characters (None when absent and optional)."""
    value = ev.get(key)
    if value is None or value == "":
        if required:
            raise malformed(ev["type"], f"missing {key}")
        return None
    if not isinstance(value, str) or len(value) > MAX_ID or not value.isprintable():
        raise malformed(ev["type"], f"bad {key}")
    return value


def event_num(ev: dict[str, Any], key: str, *, required: bool = False) -> float | None:
    """A finite number (not a bool) as a float."""
    value = ev.get(key)
    if value is None:
        if required:
            raise malformed(ev["type"], f"missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise malformed(ev["type"], f"bad {key}")
    return float(value)


def event_int(ev: dict[str, Any], key: str, default: int | None = None) -> int | None:
    """An int of at most 2**53 in magnitude (not a bool); ``default`` when absent."""
    value = ev.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**53:
        raise malformed(ev["type"], f"bad {key}")
    return value


_State = TypeVar("_State")


def shallow_copy(state: _State) -> _State:
    """A shallow copy of a rules' state (a dataclass instance): ``dataclasses.replace`` without
    its keyword call per field; the rules replace values, never change them in place."""
    twin: _State = object.__new__(type(state))
    twin.__dict__.update(state.__dict__)
    return twin


def clip_text(value: Any) -> str:
    """``value`` as text of at most :data:`MAX_TEXT` characters (longer is cut, with "…")."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def json_blob(value: Any) -> Any:
    """A JSON-safe copy of ``value`` no bigger than :data:`MAX_BLOB` (else a note)."""
    if type(value) is dict and _flat_size(value) <= MAX_BLOB:
        return dict(value)  # what the encoding below would decide, without encoding it
    try:
        encoded = to_json(value)
    except (TypeError, ValueError, RecursionError):
        return {"unserialisable": clip_text(repr(value))}
    if len(encoded) > MAX_BLOB:
        return {"truncated": True, "size": len(encoded), "preview": encoded[:MAX_TEXT]}
    if type(value) is dict and all(type(k) is str and type(v) in _SCALARS for k, v in value.items()):
        return dict(value)  # decoding it again would give an equal dict (most events' fields)
    return json.loads(encoded)


#: Types whose values JSON gives back unchanged (a flat dict of them is its own safe copy).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat_size(value: dict[Any, Any]) -> float:
    """At least the length of ``json.dumps(value)`` for a dict of text keys and scalar values
    (six characters a character of text: the longest escape; 24 a float, 20 an int below
    2**63); infinite for any other dict (encoded, then)."""
    size = 2
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            return math.inf
        if kind is str:
            size += 6 * len(item) + 2
        elif kind is float:
            size += 24
        elif kind is int and -2**63 < item < 2**63:
            size += 20
        elif item is None or kind is bool:
            size += 5
        else:
            return math.inf
        size += 6 * len(key) + 6
    return size


#: Most characters of a task's args or kwargs text kept (Celery's own reprs are cut at 1,024
#: unless the sender raises ``argsrepr_maxsize``).
MAX_ARGS = 10_000


def iso_time(value: Any) -> float | None:
    """Unix time of an ISO-8601 string (Celery's ``eta``/``expires`` in events), else None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def task_details(ev: dict[str, Any], *, foreign: bool) -> dict[str, Any]:
    """What one task-sent/-received event says of its task (absent values left out): ``eta``
    and ``expires`` as Unix times, ``routing_key``, ``exchange``, ``group_id`` and, when
    ``foreign`` (not a jobqueue job, whose kwargs are its options), ``args`` and ``kwargs``."""
    out: dict[str, Any] = {}
    for key in ("eta", "expires"):
        when = iso_time(ev.get(key))
        if when is not None:
            out[key] = when
    for key, source in (("routing_key", "routing_key"), ("exchange", "exchange"), ("group_id", "group")):
        value = ev.get(source) or (ev.get("group_id") if key == "group_id" else None)
        if isinstance(value, str) and 0 < len(value) <= MAX_ID:
            out[key] = value
    if foreign:
        for key in ("args", "kwargs"):
            value = ev.get(key)
            if value is not None and value != "":
                text = value if isinstance(value, str) else to_json(value)
                out[key] = text if len(text) <= MAX_ARGS else text[:MAX_ARGS] + "…"
    return out


def event_time(ev: dict[str, Any]) -> float:
    """When the event happened: its ``timestamp``, else when it was received."""
    ts = event_num(ev, "timestamp")
    if ts is None:
        ts = event_num(ev, "local_received")
    if ts is None:
        raise malformed(ev["type"], "missing timestamp")
    return ts


def received_time(ev: dict[str, Any], ts: float) -> float:
    """When the monitor received the event (``ts`` when unknown)."""
    value = event_num(ev, "local_received")
    return ts if value is None else value


def progress_fields(ev: dict[str, Any]) -> dict[str, Any]:
    """A ``task-progress`` event's progress, clamped: percent in [0, 100], steps ≥ 0."""
    percent = event_num(ev, "percent")
    step = event_int(ev, "step")
    total = event_int(ev, "total_steps")
    eta = event_num(ev, "eta_seconds")
    node = ev.get("node")
    if node is not None and not isinstance(node, (str, int)):
        raise malformed(ev["type"], "bad node")
    if percent is None and step is None:
        raise malformed(ev["type"], "no percent or step")
    if percent is None and step is not None and total:
        percent = 100.0 * step / total
    fields = {
        "percent": round(min(max(percent or 0.0, 0.0), 100.0), 2),
        "step": max(step or 0, 0),
        "total_steps": max(total or 0, 0),
        "message": clip_text(ev.get("message")),
        "node": None if node is None else clip_text(node)[:MAX_ID],
        "eta_seconds": None if eta is None or eta < 0 else eta,
    }
    preview = event_int(ev, "preview")  # sequence number of the job's latest live preview
    if preview is not None and preview > 0:
        fields["preview"] = preview
    return fields


def error_from(ev: dict[str, Any]) -> dict[str, Any]:
    """The error a ``task-failed``/``task-retried`` event reports: type, message, details
    (parsed from the exception repr; taken as given from a repair event)."""
    error = ev.get("error")
    if ev.get("source") == "repair" and isinstance(error, dict):
        parsed = {"type": error.get("type"), "message": error.get("message"), "details": error.get("details")}
    else:
        exc = ev.get("exception")
        if exc is not None and not isinstance(exc, str):
            raise malformed(ev["type"], "bad exception")
        parsed = parse_exception(exc)
    etype = parsed.get("type")
    return {
        "type": etype[:MAX_ID] if isinstance(etype, str) else None,
        "message": clip_text(parsed.get("message")),
        "details": json_blob(parsed.get("details") if isinstance(parsed.get("details"), dict) else {}),
    }


def _has_ellipsis(value: Any) -> bool:
    if value is Ellipsis:
        return True
    if isinstance(value, dict):
        return any(_has_ellipsis(k) or _has_ellipsis(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_ellipsis(v) for v in value)
    return False


#: A repr made only of single-quoted strings without quotes, backslashes, line ends or
#: surrogates, decimal numbers, None/True/False and ``{}[]:,`` (a job's result dict, usually),
#: with white space only between two of these: the same text in JSON's spelling means the same
#: value. Each number ends where its digits end (no backtracking between ways to split digits).
_PLAIN_TOKEN = (r"""(?:'[^'"\\\n\r\ud800-\udfff]*'|-?\d+(?!\d)(?:\.\d+(?!\d))?(?:e[-+]?\d+(?!\d))?"""
                r"""|None|True|False|[{}\[\]:,])""")
_PLAIN_REPR = re.compile(rf"{_PLAIN_TOKEN}(?:[ \t\n]*{_PLAIN_TOKEN})*")
#: A string (kept, in double quotes) or a constant (in JSON's spelling) of a plain repr.
_PLAIN_WORD = re.compile(r"'[^']*'|None|True|False")
_JSON_WORDS = {"None": "null", "True": "true", "False": "false"}
_NOT_PLAIN = object()


def _json_word(match: re.Match[str]) -> str:
    word = match[0]
    return _JSON_WORDS.get(word) or f'"{word[1:-1]}"'


def _plain_literal(text: str) -> Any:
    """``ast.literal_eval(text)`` for a plain repr (:data:`_PLAIN_REPR`) read as JSON, four times
    cheaper; :data:`_NOT_PLAIN` for any other text, or one JSON refuses (a dict with a number
    for a key, a trailing comma, two strings side by side), which goes to ``literal_eval``."""
    if _PLAIN_REPR.fullmatch(text) is None:
        return _NOT_PLAIN
    try:
        return json.loads(_PLAIN_WORD.sub(_json_word, text))
    except ValueError:
        return _NOT_PLAIN


def result_from_repr(text: str) -> Any:
    """The value of a ``task-succeeded`` result repr when it is whole; else an explicit
    ``{"truncated": True, ...}`` marker (the whole result comes from the result backend at
    the next repair). Celery's saferepr cuts long reprs and elides nesting below 3 levels
    (``{...}``, read back as Ellipsis): such a value is never shown as if it were the result."""
    if len(text) < REPR_SAFE:
        plain = _plain_literal(text)
        if plain is not _NOT_PLAIN:
            return plain
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            value = Ellipsis
        if not _has_ellipsis(value):
            return value
    return {"truncated": True, "size": len(text), "preview": None,
            "reason": "the event carried a shortened result; the result backend holds it whole"}
