"""Flower 2.2's task search language for ``GET /flower/api/tasks?search=``, so a query written
for Flower finds the same tasks here.

The language: terms separated by spaces are ANDed, ``OR`` between them ORs, parentheses group
(at most 5 deep); a term is a case-insensitive substring of the whole task (id, name, state,
worker, args, kwargs, result) or, with a qualifier, of one field: ``name:``, ``worker:``,
``args:``, ``kwargs:``, ``result:``; ``state:`` is exact, and ``kwargs:key=value`` matches one
keyword argument exactly. Double quotes keep spaces in a term (``\\"`` and ``\\\\`` escape).
A substring needs 3 characters; ``NOT`` and ``-term`` are refused. Limits: 2,048 characters,
128 tokens. A query Flower refuses is refused here with Flower's message (:class:`QueryError`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

FIELDS = frozenset({"name", "state", "worker", "args", "kwargs", "result"})
MIN_SUBSTRING = 3
MAX_LENGTH = 2048
MAX_TOKENS = 128
MAX_DEPTH = 5


class QueryError(ValueError):
    """A search Flower refuses; ``str()`` is Flower's message (with the position when known)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(f"{message}." if position is None else f"{message} at position {position}.")


@dataclass(frozen=True)
class Term:
    field: str | None
    value: str


@dataclass(frozen=True)
class Group:
    """All (``any_of`` False) or any (True) of ``children``."""

    any_of: bool
    children: tuple[Query, ...]


Query = Term | Group


@dataclass(frozen=True)
class _Token:
    kind: str  # TERM, AND, OR, LPAREN, RPAREN, EOF
    value: str
    position: int


def parse(text: str | None) -> Query | None:
    """The parsed query, or None when there is nothing to match (every task matches)."""
    query = (text or "").strip()
    if len(query) > MAX_LENGTH:
        raise QueryError(f"Query exceeds {MAX_LENGTH} characters")
    tokens = _tokens(query)
    if tokens[0].kind == "EOF":
        return None
    parser = _Parser(tokens)
    found = parser.any_of(0)
    if parser.current.kind != "EOF":
        raise QueryError(f"Unexpected {parser.current.value!r}", parser.current.position)
    return found


def _tokens(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(query):
        if query[at].isspace():
            at += 1
            continue
        if query[at] in "()":
            tokens.append(_Token("LPAREN" if query[at] == "(" else "RPAREN", query[at], at))
        else:
            value, quoted, end = _word(query, at)
            kind = value if not quoted and value in ("AND", "OR") else "TERM"
            if not quoted and value == "NOT":
                raise QueryError("NOT is not supported", at)
            tokens.append(_Token(kind, value, at))
            at = end - 1
        if len(tokens) > MAX_TOKENS:
            raise QueryError(f"Query exceeds {MAX_TOKENS} tokens")
        at += 1
    return tokens + [_Token("EOF", "", len(query))]


def _word(query: str, start: int) -> tuple[str, bool, int]:
    """The term starting at ``start``: its text, whether quotes were used, where it ends."""
    out: list[str] = []
    quoted = inside = False
    at = start
    while at < len(query):
        char = query[at]
        if char == "\\" and at + 1 < len(query) and query[at + 1] in '"\\':
            out.append(query[at + 1])
            at += 2
            continue
        if char == '"':
            quoted, inside = True, not inside
        elif not inside and (char.isspace() or char in "()"):
            break
        else:
            out.append(char)
        at += 1
    if inside:
        raise QueryError("Unterminated quoted phrase", start)
    if not out:
        raise QueryError("Empty search term", start)
    return "".join(out), quoted, at


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.at]

    def _operand_after(self, operator: _Token) -> None:
        self.at += 1
        if self.current.kind in ("EOF", "RPAREN", "AND", "OR"):
            raise QueryError(f"{operator.kind} must be followed by a search term", operator.position)

    def any_of(self, depth: int) -> Query:
        children = [self.all_of(depth)]
        while self.current.kind == "OR":
            self._operand_after(self.current)
            children.append(self.all_of(depth))
        return _combine(True, children)

    def all_of(self, depth: int) -> Query:
        children = [self.primary(depth)]
        while self.current.kind not in ("EOF", "RPAREN", "OR"):
            if self.current.kind == "AND":
                self._operand_after(self.current)
            children.append(self.primary(depth))
        return _combine(False, children)

    def primary(self, depth: int) -> Query:
        token = self.current
        if token.kind == "LPAREN":
            if depth >= MAX_DEPTH:
                raise QueryError(f"Query nesting exceeds {MAX_DEPTH} levels", token.position)
            self.at += 1
            if self.current.kind == "RPAREN":
                raise QueryError("Empty group", token.position)
            inner = self.any_of(depth + 1)
            if self.current.kind != "RPAREN":
                raise QueryError("Missing closing parenthesis", token.position)
            self.at += 1
            return inner
        if token.kind != "TERM":
            raise QueryError("Expected a search term", token.position)
        self.at += 1
        return _term(token)


def _combine(any_of: bool, children: list[Query]) -> Query:
    flat: list[Query] = []
    for child in children:
        for each in child.children if isinstance(child, Group) and child.any_of == any_of else (child,):
            if each not in flat:
                flat.append(each)
    return flat[0] if len(flat) == 1 else Group(any_of, tuple(flat))


def _term(token: _Token) -> Term:
    field: str | None = None
    value = token.value
    name, colon, rest = value.partition(":")
    if colon and name.casefold() in FIELDS:
        field, value = name.casefold(), rest
    if field is None and value.startswith("-"):
        raise QueryError("Negation with '-' is not supported", token.position)
    if not value:
        raise QueryError("Search qualifier requires a value", token.position)
    exact = field == "state" or (field == "kwargs" and "=" in value)
    if not exact and len(value.strip()) < MIN_SUBSTRING:
        raise QueryError(f"Substring search terms must contain at least {MIN_SUBSTRING} characters", token.position)
    return Term(field, value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return (value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)).casefold()


def _kwargs_pairs(value: Any) -> frozenset[str]:
    mapping = value if isinstance(value, dict) else None
    if mapping is None and isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = None
        mapping = parsed if isinstance(parsed, dict) else None
    return frozenset(f"{_text(k)}={_text(v)}" for k, v in (mapping or {}).items())


def matches(query: Query | None, task: dict[str, Any]) -> bool:
    """Whether Flower's task dict ``task`` (``uuid``, ``name``, ``state``, ``worker``, ``args``,
    ``kwargs``, ``result``) is found by ``query``."""
    if query is None:
        return True
    if isinstance(query, Group):
        found = (matches(child, task) for child in query.children)
        return any(found) if query.any_of else all(found)
    value = _text(query.value)
    if query.field == "state":
        return _text(task.get("state")) == value
    if query.field == "kwargs" and "=" in value:
        key, _, item = value.partition("=")
        return f"{key.strip()}={item.strip()}" in _kwargs_pairs(task.get("kwargs"))
    if query.field:
        return value in _text(task.get(query.field))
    return value in "\x00".join(_text(task.get(k)) for k in ("uuid", "name", "state", "worker", "args", "kwargs",
                                                              "result"))
