"""Reading JSON messages and base64 bodies with less overhead per call than ``json.loads`` and
``base64.b64decode``, with exactly their results and errors.

The monitor decodes every event of the stream twice over (a kombu envelope, then its body):
``json.loads``'s Python layers (encoding detection, a decoder's ``decode`` and ``raw_decode``,
the whitespace checks) and ``b64decode``'s wrapper cost about as much as the C scanning itself
for these small documents. Anything the direct path does not read whole goes to the standard
library, which answers it as it always did.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

#: The C scanner of the standard library's default JSON decoder (the one ``json.loads`` uses
#: without arguments): called directly it spares ``json.loads``'s Python layers per message.
_SCAN_JSON: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
#: What ``json.loads`` lets follow a document.
_JSON_WHITESPACE = " \t\n\r"


def json_text(text: str) -> Any:
    """``json.loads(text)``: the same value, or the same error, with less overhead per call.

    The scanner reads a document that starts at the first character and is followed by
    whitespace only; anything else (leading whitespace, a BOM, extra data, invalid JSON) goes
    to ``json.loads``, which answers it -- or raises -- exactly as before."""
    try:
        value, end = _SCAN_JSON(text, 0)
    except Exception:  # StopIteration or JSONDecodeError: json.loads says what is wrong
        return json.loads(text)
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        return json.loads(text)
    return value


def json_message(raw: bytes) -> Any:
    """``json.loads(raw)`` for a message's bytes (see :func:`json_text`): UTF-8 read directly,
    any other encoding, a BOM or invalid UTF-8 through ``json.loads`` itself."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return json.loads(raw)
    try:
        value, end = _SCAN_JSON(text, 0)
    except Exception:
        return json.loads(raw)
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        return json.loads(raw)
    return value


def b64decode(body: Any) -> bytes:
    """``base64.b64decode(body)`` (same bytes, same errors) without its Python wrapper for a str."""
    if type(body) is str:
        try:
            return binascii.a2b_base64(body)
        except ValueError:
            pass  # b64decode raises its own error for it
    return base64.b64decode(body)
