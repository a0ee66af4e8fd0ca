"""Flower's task search language, checked against Flower's own parser and search engine
(PyPI ``flower``, a test dependency) as the oracle: the same queries are refused with the same
messages and the others find the same tasks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from flower.utils import search as flower
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.web import flower_search as fs

TASKS: list[dict[str, Any]] = [
    {"uuid": "a1", "name": "plain.add", "state": "SUCCESS", "worker": "plain@box", "args": "(2, 3)",
     "kwargs": "{}", "result": "5"},
    {"uuid": "b2", "name": "plain.boom", "state": "FAILURE", "worker": "plain@box", "args": "()",
     "kwargs": "{'reason': 'Boom', 'n': 3}", "result": "ValueError('boom')"},
    {"uuid": "c3", "name": "render.image", "state": "STARTED", "worker": "gpu0@rig", "args": "('a cat',)",
     "kwargs": "{'size': 512}", "result": None},
    {"uuid": "d4", "name": "Plain.Tsum", "state": "RETRY", "worker": None, "args": "([1, 2, 3],)",
     "kwargs": "not a dict", "result": "6"},
]

WORDS = ["plain", "add", "boom", "state:success", "state:FAILURE", "kwargs:n=3", "kwargs:size = 512", "args:cat",
         "name:plain", "worker:gpu0", "result:boom", "AND", "OR", "NOT", "(", ")", '"a cat"', '"', "-x", "ab",
         "kwargs:reason=boom", "args:", "foo:bar", "\\\"box\\\"", "render", "(plain OR render)", "tsum"]


def engine() -> flower.TaskSearchEngine:
    found = flower.TaskSearchEngine()
    for task in TASKS:
        found.upsert(SimpleNamespace(**{**task, "worker": SimpleNamespace(hostname=task["worker"])
                                        if task["worker"] else None}))
    return found


def ours(query: str) -> set[str] | str:
    try:
        parsed = fs.parse(query)
    except fs.QueryError as exc:
        return str(exc)
    return {t["uuid"] for t in TASKS if fs.matches(parsed, t)}


def theirs(query: str) -> set[str] | str:
    try:
        return set(engine().matching_ids(query))
    except flower.QuerySyntaxError as exc:
        return str(exc)


@pytest.mark.parametrize("query", [
    "", "plain", "plain.add", "state:success", "state:SUCCESS OR state:failure", "kwargs:n=3", "kwargs:reason=boom",
    "kwargs:size=512", "args:cat", '"a cat"', "name:plain AND worker:box", "(plain OR render) AND result:boom",
    "worker:gpu0 OR result:boom", "foo:bar", "tsum", "((((plain))))",
])
def test_a_query_finds_the_tasks_flower_finds(query):
    assert ours(query) == theirs(query)
    assert isinstance(ours(query), set)


@pytest.mark.parametrize("query", [
    "ab", "NOT plain", "-plain", "plain AND", "OR plain", "(plain", "plain)", "()", '"plain', '""', "args:",
    "((((((plain))))))", "x" * 2049, " ".join(["plain"] * 129),
])
def test_a_query_flower_refuses_is_refused_with_flowers_message(query):
    refused = ours(query)
    assert isinstance(refused, str) and refused == theirs(query)


@settings(max_examples=400)
@given(st.lists(st.sampled_from(WORDS), max_size=8))
def test_any_mix_of_terms_operators_and_quotes_agrees_with_flower(words):
    query = " ".join(words)
    assert ours(query) == theirs(query)
