"""Secrets stay secret: values under secret-looking keys are shown as ``"•••"``.

A payload may carry an API key, a password or a cookie for the service a job calls; the worker
needs the real value, nobody looking at the fleet does. Every path a payload, its arguments or
a result takes towards a viewer goes through :func:`mask`: the job metadata and payload summary
a submitter puts in Celery's ``kwargsrepr`` (``task-sent``/``task-received`` events), the facts
a worker keeps for late monitors, the result repr of ``task-succeeded`` events and Celery's
worker log lines (:mod:`jobqueue.worker.masked`), and every event the monitor stores (its
single writer masks before applying, so its API, pages and websocket show masked values only).
The result backend keeps the real values: the client and the retry path read them there.

A key is secret when the pattern (``JOBQUEUE_SECRET_KEYS_PATTERN``, by default
:data:`DEFAULT_PATTERN`) matches anywhere in it, ignoring case: ``api_key``, ``Password``,
``db_password``, ``X-Auth-Token``. Text is masked where it holds serialised structure: JSON or
a Python repr is parsed, masked and written back; otherwise ``'key': 'value'``, ``key=value``
and URL query pairs (``?token=...``) have their value replaced.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from typing import Any

#: What a secret value is shown as.
MASK = "•••"
#: Keys whose values are secret unless configured otherwise.
DEFAULT_PATTERN = "password|secret|token|api_key|authorization|cookie"
#: Longest text parsed as JSON or a repr (longer text only gets the pattern-based masking).
MAX_PARSE = 200_000
#: Containers nested deeper than this are shown as :data:`MASK` whole (a hostile event must
#: not exhaust the stack, and nothing real nests that deep).
MAX_DEPTH = 64

_QUOTED_PAIR = re.compile(r"""(?P<q>['"])(?P<key>[^'"\\]{1,200})(?P=q)(?P<sep>\s*[:=]\s*)"""
                          r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,{}\[\]()'"]+)""")
_BARE_PAIR = re.compile(r"""(?<![\w.-])(?P<key>[A-Za-z_][\w.-]{0,200})(?P<sep>=)"""
                        r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&,;'"{}\[\]()]+)""")


#: Exact types :func:`mask` returns as they are without a look (no secret fits in one).
_PLAIN = frozenset({int, float, bool, type(None)})


@functools.lru_cache(maxsize=16)
def secret_keys(pattern: str = DEFAULT_PATTERN) -> re.Pattern[str]:
    """The compiled, case-insensitive key pattern."""
    return re.compile(pattern, re.IGNORECASE)


def is_secret_key(key: Any, pattern: str = DEFAULT_PATTERN) -> bool:
    """True when ``key`` is a string the pattern matches anywhere."""
    return isinstance(key, str) and _key_is_secret(key, pattern)


@functools.lru_cache(maxsize=4096)
def _key_is_secret(key: str, pattern: str) -> bool:
    """:func:`is_secret_key` of a string, remembered: every submit and every job's start and end
    masks the same few option and payload keys."""
    return secret_keys(pattern).search(key) is not None


def mask(value: Any, pattern: str = DEFAULT_PATTERN, _depth: int = 0) -> Any:
    """A copy of ``value`` with every value under a secret key replaced by :data:`MASK`, at any
    depth (dicts, lists, tuples, and text holding serialised structure: :func:`mask_text`).
    Never changes ``value`` itself; anything else is returned as is."""
    if type(value) in _PLAIN:  # numbers, booleans and None hold no secret (the common fields)
        return value
    if isinstance(value, (dict, list, tuple)) and _depth >= MAX_DEPTH:
        return MASK
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k, pattern) and v is not None
                else v if type(v) in _PLAIN else mask(v, pattern, _depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, pattern, _depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(mask(v, pattern, _depth + 1) for v in value)
    if isinstance(value, str):
        return mask_text(value, pattern) if _depth < MAX_DEPTH else value
    return value


def _parsed(text: str) -> tuple[Any, str] | None:
    """``(value, "json" | "repr")`` when ``text`` is a JSON or Python literal container."""
    stripped = text.strip()
    if len(stripped) > MAX_PARSE or stripped[:1] not in ("{", "[", "("):
        return None
    try:
        return json.loads(stripped), "json"
    except (ValueError, RecursionError):
        pass
    if "..." in stripped:
        return None  # a repr Celery shortened ({...}): masked by pattern, kept shortened
    try:
        return ast.literal_eval(stripped), "repr"
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def mask_text(text: str, pattern: str = DEFAULT_PATTERN) -> str:
    """``text`` with the values of secret keys it spells replaced by :data:`MASK`; the text
    itself when it names no secret key (the common case, decided by one search)."""
    keys = secret_keys(pattern)
    if not keys.search(text):
        return text
    parsed = _parsed(text)
    if parsed is not None:
        value, kind = parsed
        masked = mask(value, pattern)
        if masked == value:
            return text
        return json.dumps(masked, ensure_ascii=False, default=str) if kind == "json" else repr(masked)

    def quoted(match: re.Match[str]) -> str:
        if not keys.search(match["key"]):
            return match[0]
        value = match["value"]
        shown = f"{value[0]}{MASK}{value[0]}" if value[:1] in ("'", '"') else MASK
        return f"{match['q']}{match['key']}{match['q']}{match['sep']}{shown}"

    def bare(match: re.Match[str]) -> str:
        if not keys.search(match["key"]):
            return match[0]
        value = match["value"]
        shown = f"{value[0]}{MASK}{value[0]}" if value[:1] in ("'", '"') else MASK
        return f"{match['key']}{match['sep']}{shown}"

    return _BARE_PAIR.sub(bare, _QUOTED_PAIR.sub(quoted, text))


#: Event fields that carry payload, arguments, results or errors (everything else in an event
#: is the monitor's own bookkeeping and is left alone, so a broad pattern cannot hide an id).
EVENT_VALUE_FIELDS = ("args", "kwargs", "result", "exception", "traceback", "error", "meta", "message",
                      "payload_summary", "fields")


def mask_event(event: Any, pattern: str = DEFAULT_PATTERN) -> Any:
    """``event`` with its value-carrying fields masked (a ``job-truth``'s ``fields`` one level
    down: its keys are the job's columns, its values the job's data). Other events and
    non-dict input are returned as they are, and so is an event with nothing to mask (the
    common case: no copy per event; ``event`` itself is never changed)."""
    if not isinstance(event, dict):
        return event
    out: dict[str, Any] | None = None
    keys = secret_keys(pattern)
    for name in EVENT_VALUE_FIELDS:
        value = event.get(name)
        if value is None or (type(value) is str and keys.search(value) is None):
            continue  # text naming no secret key stays as it is (what mask_text decides first)
        if out is None:
            out = dict(event)
        if name == "fields" and isinstance(value, dict):
            out[name] = {k: mask(v, pattern) for k, v in value.items()}
        else:
            out[name] = mask(value, pattern)
    return event if out is None else out
