"""The result a ``task-succeeded`` carries is rendered when the event is sent, not before the result is stored."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from jobqueue.shared.names import TASK_SUCCEEDED
from jobqueue.worker.event_times import StampingDispatcher, note_result, times_of


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        self.sent.append((type, fields))


class CountedRepr(dict):
    renders = 0

    def __repr__(self) -> str:
        CountedRepr.renders += 1
        return super().__repr__()


def test_the_result_is_rendered_masked_only_when_its_event_is_sent():
    app = SimpleNamespace()
    result = CountedRepr(output="hi", api_key="s3cret")
    note_result(app, "j1", result, 1000)
    assert CountedRepr.renders == 0  # nothing rendered on the way to the stored result
    recorder = Recorder()
    StampingDispatcher(recorder, times_of(app)).send(TASK_SUCCEEDED, uuid="j1", result="celery's repr")
    (_, fields), = recorder.sent
    assert CountedRepr.renders == 1
    assert "'output': 'hi'" in fields["result"] and "s3cret" not in fields["result"]


def test_a_result_too_long_or_unprintable_leaves_celerys_own_repr():
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    app = SimpleNamespace()
    note_result(app, "long", {"output": "x" * 100}, 50)
    note_result(app, "odd", Unprintable(), 1000)
    recorder = Recorder()
    dispatcher = StampingDispatcher(recorder, times_of(app))
    dispatcher.send(TASK_SUCCEEDED, uuid="long", result="short")
    dispatcher.send(TASK_SUCCEEDED, uuid="odd", result="celery's")
    assert [fields["result"] for _, fields in recorder.sent] == ["short", "celery's"]
