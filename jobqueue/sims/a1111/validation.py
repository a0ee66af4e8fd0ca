"""FastAPI's request validation of the WebUI's txt2img / img2img bodies, answer for answer.

The WebUI declares one pydantic body model per route, so FastAPI answers a bad body with
``422 {"detail": [<error>, ...]}``, one error per bad field, ``loc`` starting with ``"body"``.
The error's shape depends on pydantic's major version:

* AUTOMATIC1111 v1.10.1 runs FastAPI 0.94 on **pydantic 1**: ``{"loc", "msg", "type"}``
  (``type_error.integer``...), with pydantic 1's coercions (``1.5`` becomes ``1``, ``5`` becomes ``"5"``);
* Forge runs FastAPI 0.104 on **pydantic 2**: ``{"type", "loc", "msg", "input"[, "ctx"]}``
  (``int_parsing``...), stricter (no number -> string, no ``1.5`` -> int).

Unknown fields are ignored, as pydantic does by default.
"""

from __future__ import annotations

import json
import math
from typing import Any

from jobqueue.connectors.a1111.fields import ANY, BOOL, DICT, FLOAT, INT, LIST, STR, STR_LIST, request_fields

Error = dict[str, Any]

_TRUE = {1, "1", "on", "t", "true", "y", "yes"}
_FALSE = {0, "0", "off", "f", "false", "n", "no"}

_V1 = {
    INT: ("value is not a valid integer", "type_error.integer"),
    FLOAT: ("value is not a valid float", "type_error.float"),
    STR: ("str type expected", "type_error.str"),
    BOOL: ("value could not be parsed to a boolean", "type_error.bool"),
    LIST: ("value is not a valid list", "type_error.list"),
    DICT: ("value is not a valid dict", "type_error.dict"),
}


class _Invalid(Exception):
    def __init__(self, error: Error) -> None:
        super().__init__(error.get("msg"))
        self.error = error


def _v1(kind: str, loc: list[Any]) -> _Invalid:
    msg, kind_name = _V1[kind]
    return _Invalid({"loc": loc, "msg": msg, "type": kind_name})


def _v2(kind: str, msg: str, loc: list[Any], value: Any) -> _Invalid:
    return _Invalid({"type": kind, "loc": loc, "msg": msg, "input": value})


def _coerce_v1(kind: str, value: Any, loc: list[Any]) -> Any:
    if kind == INT:
        if isinstance(value, (dict, list)):
            raise _v1(INT, loc)
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise _v1(INT, loc) from None
    if kind == FLOAT:
        if isinstance(value, (dict, list)):
            raise _v1(FLOAT, loc)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _v1(FLOAT, loc) from None
    if kind == STR:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return str(value)
        raise _v1(STR, loc)
    if kind == BOOL:
        if value is True or value is False:
            return value
        probe = value.lower() if isinstance(value, str) else value
        try:
            if probe in _TRUE:
                return True
            if probe in _FALSE:
                return False
        except TypeError:  # unhashable: a list or an object
            pass
        raise _v1(BOOL, loc)
    if kind in (LIST, STR_LIST):
        if not isinstance(value, list):
            raise _v1(LIST, loc)
        return [_coerce_v1(STR, item, [*loc, i]) for i, item in enumerate(value)] if kind == STR_LIST else value
    if kind == DICT:
        if isinstance(value, dict):
            return value
        try:
            return dict(value)
        except (TypeError, ValueError):
            raise _v1(DICT, loc) from None
    return value


def _coerce_v2(kind: str, value: Any, loc: list[Any]) -> Any:
    if kind == INT:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _v2("finite_number", "Input should be a finite number", loc, value)
            if value != int(value):
                raise _v2("int_from_float", "Input should be a valid integer, got a number with a fractional part",
                          loc, value)
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _v2("int_parsing", "Input should be a valid integer, unable to parse string as an integer",
                          loc, value) from None
        raise _v2("int_type", "Input should be a valid integer", loc, value)
    if kind == FLOAT:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _v2("float_parsing", "Input should be a valid number, unable to parse string as a number",
                          loc, value) from None
        raise _v2("float_type", "Input should be a valid number", loc, value)
    if kind == STR:
        if isinstance(value, str):
            return value
        raise _v2("string_type", "Input should be a valid string", loc, value)
    if kind == BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float, str)):
            probe = value.strip().lower() if isinstance(value, str) else value
            if probe in _TRUE:
                return True
            if probe in _FALSE:
                return False
            raise _v2("bool_parsing", "Input should be a valid boolean, unable to interpret input", loc, value)
        raise _v2("bool_type", "Input should be a valid boolean", loc, value)
    if kind in (LIST, STR_LIST):
        if not isinstance(value, list):
            raise _v2("list_type", "Input should be a valid list", loc, value)
        return [_coerce_v2(STR, item, [*loc, i]) for i, item in enumerate(value)] if kind == STR_LIST else value
    if kind == DICT:
        if not isinstance(value, dict):
            raise _v2("dict_type", "Input should be a valid dictionary", loc, value)
        return value
    return value


def _body_error(pydantic: int, problem: str, raw: str = "", exc: json.JSONDecodeError | None = None,
                value: Any = None) -> Error:
    if problem == "json" and exc is not None:
        if pydantic == 1:
            return {"loc": ["body", exc.pos], "msg": str(exc), "type": "value_error.jsondecode",
                    "ctx": {"msg": exc.msg, "doc": raw, "pos": exc.pos, "lineno": exc.lineno, "colno": exc.colno}}
        return {"type": "json_invalid", "loc": ["body", exc.pos], "msg": "JSON decode error", "input": {},
                "ctx": {"error": exc.msg}}
    if problem == "missing":
        if pydantic == 1:
            return {"loc": ["body"], "msg": "field required", "type": "value_error.missing"}
        return {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    if pydantic == 1:
        return {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
    return {"type": "model_attributes_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from", "input": value}


def validate_request(raw: bytes, mode: str, flavour: str = "a1111") -> tuple[dict[str, Any] | None, list[Error]]:
    """Parse and check a request body like the WebUI's FastAPI does.

    Returns ``(request, [])`` with every field of the model (defaults filled in, values
    coerced), or ``(None, errors)``: the ``detail`` list of the 422 answer.
    """
    pydantic = 2 if flavour == "forge" else 1
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return None, [_body_error(pydantic, "missing")]
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [_body_error(pydantic, "json", text, exc)]
    if not isinstance(body, dict):
        return None, [_body_error(pydantic, "object", value=body)]
    coerce = _coerce_v2 if pydantic == 2 else _coerce_v1
    request: dict[str, Any] = {}
    errors: list[Error] = []
    for name, (kind, default) in request_fields(mode, flavour).items():
        if name not in body:
            request[name] = json.loads(json.dumps(default))  # a fresh copy of mutable defaults
            continue
        value = body[name]
        if value is None or kind == ANY:
            request[name] = value
            continue
        try:
            request[name] = coerce(kind, value, ["body", name])
        except _Invalid as exc:
            errors.append(exc.error)
    return (None, errors) if errors else (request, [])
