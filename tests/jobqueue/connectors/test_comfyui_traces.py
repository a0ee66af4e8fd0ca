"""The connector's protocol state machine replays recordings of a real ComfyUI (v0.3.64).

The traces are test data in ``tests/data/comfyui-traces`` (see its README); each test feeds the
recorded websocket messages and REST answers to the pure protocol code and checks it reaches
the outcome the real server reached.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobqueue.connectors.comfyui.protocol import (
    ERROR,
    INTERRUPTED,
    SUCCESS,
    PromptTracker,
    describe_execution_error,
    describe_validation_error,
    history_entry,
    outcome_from_history,
    output_files,
    queue_position,
    queue_snapshot,
)

TRACES = Path(__file__).resolve().parents[2] / "data" / "comfyui-traces"
_LINE = re.compile(r"^\[\s*([\d.]+)\] (.*?): (.*)$")


@dataclass
class Event:
    time: float
    kind: str
    body: Any


def load(name: str) -> list[Event]:
    """Parse one trace file into (time, kind, JSON body) events."""
    path = TRACES / f"{name}.txt"
    if not path.exists():
        pytest.fail(f"recorded ComfyUI trace {path} is missing: it belongs to tests/data/comfyui-traces")
    events = []
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        assert match, f"unparsable trace line in {name}: {line[:80]}"
        events.append(Event(float(match.group(1)), match.group(2), json.loads(match.group(3))))
    return events


def ws_messages(events: list[Event], kinds: tuple[str, ...] = ("ws",)) -> list[Any]:
    """Websocket frames in order: JSON messages as dicts, binary frames rebuilt as bytes."""
    frames: list[Any] = []
    for event in events:
        if event.kind in kinds:
            frames.append(event.body)
        elif event.kind == "ws-bin":
            frames.append(binary_frame(event.body))
    return frames


def binary_frame(meta: dict[str, Any]) -> bytes:
    """Rebuild a binary preview frame from what the trace recorded about it."""
    png = bytes.fromhex(meta["magic"]) + b"\x00" * 8
    if meta["binary_event"] == 4:
        blob = json.dumps(meta["metadata"]).encode()
        return struct.pack(">II", 4, len(blob)) + blob + png
    return struct.pack(">II", meta["binary_event"], meta["image_format"]) + png


def posted_prompt_id(events: list[Event], index: int = 0) -> str:
    posts = [e.body for e in events if e.kind.startswith("POST /prompt -> 200")]
    return str(posts[index]["prompt_id"])


def history_of(events: list[Event], prompt_id: str) -> dict[str, Any] | None:
    for event in events:
        if event.kind.startswith(f"GET /history/{prompt_id}"):
            return history_entry(event.body, prompt_id)
    return None


def replay(name: str, kinds: tuple[str, ...] = ("ws",)) -> tuple[PromptTracker, list[float], list[Event]]:
    """Feed a trace's messages to a tracker for its prompt; return it and the percents seen."""
    events = load(name)
    prompt_id = posted_prompt_id(events)
    entry = history_of(events, prompt_id)
    workflow = entry["prompt"][2] if entry else None
    tracker = PromptTracker(prompt_id, workflow)
    percents = []
    for frame in ws_messages(events, kinds):
        if isinstance(frame, bytes):
            tracker.feed_binary(frame)
        else:
            tracker.feed(frame)
        percents.append(tracker.progress().percent)
    return tracker, percents, events


def test_a_fresh_run_ends_successfully_with_its_output_and_monotonic_progress():
    # Given the recorded fresh run, When its messages are replayed
    tracker, percents, events = replay("1_fresh")
    # Then the prompt finished successfully, every node done, progress monotonic up to 100
    assert tracker.finished and tracker.ended and tracker.outcome == SUCCESS
    assert tracker.done == {"1", "2", "3"} and tracker.cached == set()
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert tracker.outputs["3"]["images"][0]["filename"] == "harness_00001_.png"
    # And /history confirms it with the same file
    entry = history_of(events, tracker.prompt_id)
    assert entry is not None and outcome_from_history(entry) == (SUCCESS, {})
    assert output_files(entry["outputs"]) == [
        {"node": "3", "filename": "harness_00001_.png", "subfolder": "", "type": "output"}]


def test_a_cached_run_counts_cached_nodes_as_done_and_ends_at_once():
    tracker, percents, events = replay("2_cached")
    assert tracker.outcome == SUCCESS and tracker.ended
    assert tracker.cached == {"1", "2", "3"}
    assert percents[-1] == 100.0
    assert outcome_from_history(history_of(events, tracker.prompt_id) or {})[0] == SUCCESS


def test_the_cached_race_leaves_the_socket_silent_and_only_history_knows_the_result():
    # Given the race: the websocket opened after a cached POST sees only a status message
    events = load("3_race")
    prompt_id = posted_prompt_id(events, 1)
    tracker = PromptTracker(prompt_id)
    for frame in ws_messages(events, ("ws",)):
        assert tracker.feed(frame) is False
    # Then the tracker never learns anything (a naive client would wait forever)...
    assert not tracker.started and not tracker.finished
    # ...while /history already holds the success and /queue no longer knows the prompt
    entry = history_of(events, prompt_id)
    assert entry is not None and outcome_from_history(entry)[0] == SUCCESS
    queue = [e.body for e in events if e.kind.startswith("GET /queue")][-1]
    assert queue_position(queue, prompt_id) is None


def test_node_progress_moves_the_percent_and_names_node_and_step_without_waiting_for_max():
    events = load("4_progress")
    prompt_id = posted_prompt_id(events)
    tracker = PromptTracker(prompt_id, (history_of(events, prompt_id) or {})["prompt"][2])
    steps = []
    percents = []
    for frame in ws_messages(events):
        tracker.feed(frame)
        progress = tracker.progress()
        percents.append(progress.percent)
        if frame["type"] == "progress":
            steps.append((progress.node, progress.node_type, progress.step, progress.total_steps))
            # The running node's fraction counts before it reaches max
            assert 100 * 1 / 3 < progress.percent < 100 * 2 / 3 + 0.01
    assert steps == [("2", "HarnessSleepProgress", i, 5) for i in range(1, 6)]
    assert percents == sorted(percents) and percents[-1] == 100.0


@pytest.mark.parametrize("name", ["5_interrupt", "5b_interrupt_targeted"])
def test_an_interrupted_run_ends_interrupted_at_the_running_node(name):
    tracker, percents, events = replay(name)
    assert tracker.outcome == INTERRUPTED and tracker.ended
    assert tracker.error is not None and tracker.error["node_id"] == "2"
    assert percents[-1] < 100.0
    kind, data = outcome_from_history(history_of(events, tracker.prompt_id) or {})
    assert kind == INTERRUPTED and data["node_type"] == "HarnessSleepProgress"


def test_an_execution_error_names_node_class_exception_and_message():
    tracker, _, events = replay("6_exec_error")
    assert tracker.outcome == ERROR
    kind, data = outcome_from_history(history_of(events, tracker.prompt_id) or {})
    assert kind == ERROR
    message, details = describe_execution_error(data)
    assert message == "node 2 (HarnessFail) raised ValueError: harness boom"
    assert details["node_id"] == "2" and details["exception_type"] == "ValueError" and details["traceback"]


def test_every_recorded_400_becomes_a_message_with_the_error_type_and_the_offending_node_input():
    bodies = [e.body for e in load("7_invalid") if e.kind.startswith("POST /prompt -> 400")]
    assert len(bodies) == 7
    messages = [describe_validation_error(body) for body in bodies]
    for (message, details), body in zip(messages, bodies, strict=True):
        assert body["error"]["type"] in message and details["type"] == body["error"]["type"]
        assert details["node_errors"] == body["node_errors"]
    assert "NoSuchNode does not exist" in messages[0][0]
    assert "required_input_missing on node 2 (SaveImage) input 'images'" in messages[1][0]
    assert "value_bigger_than_max on node 1 (EmptyImage) input 'width': Value 999999 bigger than max of 16384" in messages[2][0]
    assert "prompt_no_outputs" in messages[3][0]
    assert "exception_during_validation on node 2 (SaveImage)" in messages[4][0] and "'9'" in messages[4][0]
    assert "no_prompt" in messages[5][0]
    assert "missing the class_type property" in messages[6][0]


@pytest.mark.parametrize("name, event", [("8_binary_legacy", 1), ("8b_binary_metadata", 4)])
def test_binary_preview_frames_are_kept_as_the_latest_preview_and_do_not_disturb_the_run(name, event):
    tracker, percents, _ = replay(name)
    assert tracker.outcome == SUCCESS and tracker.ended
    assert tracker.preview is not None and tracker.preview.startswith(b"\x89PNG")
    assert percents == sorted(percents)


def test_a_metadata_preview_of_another_prompt_is_ignored():
    events = load("8b_binary_metadata")
    tracker = PromptTracker("someone-else")
    frames = [f for f in ws_messages(events) if isinstance(f, bytes)]
    assert frames and not any(tracker.feed_binary(f) for f in frames)
    assert tracker.preview is None


def test_queue_answers_say_running_pending_or_gone():
    events = load("9_queue")
    first, second, front = (posted_prompt_id(events, i) for i in range(3))
    queue = [e.body for e in events if e.kind == "GET /queue -> 200"][0]
    assert queue_position(queue, first) == "running"
    assert queue_position(queue, second) == "pending" and queue_position(queue, front) == "pending"
    assert queue_snapshot(queue) == ((first,), (front, second))
    after_delete = [e.body for e in events if e.kind == "GET /queue -> 200"][1]
    assert queue_position(after_delete, second) is None
    # A deleted prompt never reaches /history: the connector calls that "lost" unless it cancelled it
    assert history_of(events, second) is None


def test_messages_after_a_reconnect_still_drive_the_prompt_to_its_end():
    # Given a tracker that saw the start of the prompt before the socket was replaced
    events = load("11_reconnect")
    prompt_id = posted_prompt_id(events)
    tracker = PromptTracker(prompt_id)
    tracker.feed({"type": "execution_start", "data": {"prompt_id": prompt_id}})
    # When the new socket's messages arrive (the first 'executing' carries no prompt id)
    for frame in ws_messages(events, ("ws2",)):
        tracker.feed(frame)
        if frame["type"] == "executing" and frame["data"].get("prompt_id") is None:
            assert tracker.running == "2"
    # Then the run ends successfully with its output
    assert tracker.outcome == SUCCESS and tracker.ended and "3" in tracker.outputs


def test_messages_of_other_prompts_never_move_a_tracker():
    tracker = PromptTracker("not-this-one")
    for frame in ws_messages(load("1_fresh")) + ws_messages(load("6_exec_error")):
        tracker.feed(frame)
    assert not tracker.started and not tracker.finished and tracker.progress().percent == 0.0
