"""One rule reads a job's error, whatever form it arrives in (exception, event repr, backend
record): the client, the monitor's event reader and its truth repair all use it."""

from __future__ import annotations

from jobqueue.errors import ExecutionFailed, error_info
from jobqueue.shared.names import parse_exception


def test_an_exception_with_details_describes_itself():
    error = ExecutionFailed("node 3 failed", {"node_id": "3"})
    assert error_info(error) == {"type": "ExecutionFailed", "message": "node 3 failed", "details": {"node_id": "3"}}


def test_another_exception_gives_its_class_name_and_text():
    assert error_info(KeyError("x")) == {"type": "KeyError", "message": "'x'", "details": {}}


def test_an_event_repr_and_a_backend_record_of_the_same_error_read_the_same():
    from_event = error_info("ExecutionFailed('node 3 failed', {'node_id': '3'})")
    from_backend = error_info({"exc_type": "ExecutionFailed", "exc_message": ["node 3 failed", {"node_id": "3"}]})
    assert from_event == from_backend == {
        "type": "ExecutionFailed", "message": "node 3 failed", "details": {"node_id": "3"}}


def test_a_module_qualified_repr_keeps_only_the_class_name():
    assert error_info("jobqueue.errors.JobStalled('no progress')")["type"] == "JobStalled"


def test_a_backend_record_with_a_bare_message_reads_it_as_the_message():
    assert error_info({"exc_type": "ValueError", "exc_message": "bad"}) == {
        "type": "ValueError", "message": "bad", "details": {}}


def test_a_repr_whose_arguments_are_not_literals_keeps_them_whole_as_the_message():
    assert error_info("Boom(<object at 0x1>)") == {"type": "Boom", "message": "<object at 0x1>", "details": {}}


def test_text_that_is_not_a_repr_and_none_are_kept_as_the_message():
    assert error_info("it broke") == {"type": None, "message": "it broke", "details": {}}
    assert error_info(None) == {"type": None, "message": "", "details": {}}


def test_the_monitors_event_reader_is_the_same_function():
    assert parse_exception is error_info
