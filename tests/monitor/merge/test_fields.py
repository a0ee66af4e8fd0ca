"""Reading event fields for the merge (monitor/merge/fields.py): a result repr read through
JSON when it is plainly spelled gives exactly what ``ast.literal_eval`` gives."""

from __future__ import annotations

import ast
import random
import string
from typing import Any

from monitor.merge.fields import _NOT_PLAIN, _plain_literal, result_from_repr


def _random_value(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(9 if depth < 3 else 6)
    alphabet = string.printable + "éß€\u2028\x00\x7f"
    if kind == 0:
        return None
    if kind == 1:
        return rnd.random() < 0.5
    if kind == 2:
        return rnd.randrange(-10 ** rnd.randrange(1, 25), 10 ** rnd.randrange(1, 25))
    if kind == 3:
        return rnd.choice([rnd.random() * 10 ** rnd.randrange(-30, 30), -0.0, float("inf"), 1e16, 1e-5])
    if kind in (4, 5):
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(8)))
    if kind == 6:
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    if kind == 7:
        return {("".join(rnd.choice(alphabet) for _ in range(rnd.randrange(5))) if rnd.random() < 0.9
                 else rnd.randrange(5)): _random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}
    return tuple(_random_value(rnd, depth + 1) for _ in range(rnd.randrange(3)))


def test_a_job_results_repr_is_read_without_literal_eval_to_the_same_value() -> None:
    text = "{'job_id': 'j1', 'service': 'simulation', 'attempt': 0, 'output': None, 'ok': True, 'x': [1.5, -2, 1e+20]}"
    assert _plain_literal(text) == ast.literal_eval(text)
    assert result_from_repr(text) == {"job_id": "j1", "service": "simulation", "attempt": 0, "output": None,
                                      "ok": True, "x": [1.5, -2, 1e20]}
    # a constant's name inside a string stays text
    assert _plain_literal("{'a': 'None of it is True'}") == {"a": "None of it is True"}


def test_reprs_json_would_read_differently_go_to_literal_eval() -> None:
    for text in ("{1: 2}", "[1,]", "'a' 'b'", "(1, 2)", "{'a': {...}}", "'x\\'y'", "01", "nan",
                 " [1]", "[1] \n", "' \n {}", "'\ud800'", "{None: 1}", "- 1", "b'x'", ""):
        assert _plain_literal(text) is _NOT_PLAIN, text
    assert result_from_repr("(1, 2)") == (1, 2)
    assert result_from_repr("{'a': {...}}")["truncated"] is True


def test_random_reprs_read_the_fast_way_equal_literal_eval_exactly() -> None:
    rnd = random.Random(30)
    fast = 0
    for _ in range(8_000):
        text = repr(_random_value(rnd))
        if rnd.random() < 0.3:  # white space Python allows somewhere, or does not
            at = rnd.randrange(len(text) + 1)
            text = text[:at] + rnd.choice([" ", "\n", "\t", "\r", " \n "]) + text[at:]
        value = _plain_literal(text)
        if value is _NOT_PLAIN:
            continue
        fast += 1
        assert repr(value) == repr(ast.literal_eval(text)), text
    assert fast > 2_000


def test_a_long_run_of_digits_is_refused_at_once() -> None:
    assert _plain_literal("1" * 18_000 + "x") is _NOT_PLAIN


def test_a_flat_dict_is_copied_as_encoding_it_would_have_and_a_big_one_still_noted() -> None:
    from monitor.merge.fields import MAX_BLOB, json_blob

    small = {"message": "é\u2028\x00" * 50, "n": 2**62, "x": -1.2345678901234567e-300, "ok": True, "none": None}
    copied = json_blob(small)
    assert copied == small and copied is not small
    # text whose escapes push the encoding over the limit is noted, not kept
    big = {"message": "\x00" * (MAX_BLOB // 6 + 10)}
    assert json_blob(big)["truncated"] is True
    # and what is no flat scalar dict is encoded as before
    assert json_blob({"n": 2**70}) == {"n": 2**70}
    assert json_blob({1: "a"}) == {"1": "a"}
    assert json_blob({"t": (1, 2)}) == {"t": [1, 2]}


def test_the_quick_progress_check_accepts_only_reports_the_full_check_accepts() -> None:
    from monitor.merge.apply import _plainly_valid_progress, valid_progress

    rnd = random.Random(31)
    values = [None, 0, 1, -1, 2**53, 2**53 + 1, 10**400, 1.5, -0.5, float("nan"), float("inf"), True, False,
              "", "x", "a\x00b", "é" * 300, [], {}, [1], {"a": 1}]
    fields = ("uuid", "timestamp", "percent", "step", "total_steps", "eta_seconds", "message", "node",
              "preview", "attempt", "local_received")
    plain = {"type": "task-progress", "uuid": "j1", "timestamp": 1.0e9, "percent": 50.0, "step": 5,
             "total_steps": 10, "eta_seconds": 3.0, "message": "sampling", "node": "3", "attempt": 0}
    assert _plainly_valid_progress(plain) and valid_progress(plain)
    quick = 0
    for _ in range(20_000):
        ev = dict(plain)
        for name in rnd.sample(fields, rnd.randrange(1, 4)):
            if rnd.random() < 0.2:
                ev.pop(name, None)
            else:
                ev[name] = rnd.choice(values)
        if _plainly_valid_progress(ev):
            quick += 1
            assert valid_progress(ev), ev
    assert quick > 1_000
