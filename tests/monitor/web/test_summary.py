"""summarize_payload(): a short, safe summary of a job's payload for the monitor."""

from __future__ import annotations

from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.shared.summary import MAX_SUMMARY, summarize_payload


def test_a_comfyui_payload_is_summarised_by_node_count_and_class_types():
    summary = summarize_payload("comfyui", {"workflow": EXAMPLE_WORKFLOW})
    assert summary is not None
    assert summary.startswith(f"{len(EXAMPLE_WORKFLOW)} nodes: ")
    for node in EXAMPLE_WORKFLOW.values():
        assert node["class_type"] in summary


def test_repeated_class_types_are_counted_once_with_a_multiplier():
    workflow = {"1": {"class_type": "CLIPTextEncode"}, "2": {"class_type": "CLIPTextEncode"}, "3": {"class_type": "KSampler"}}
    assert summarize_payload("comfyui", {"workflow": workflow}) == "3 nodes: CLIPTextEncode×2, KSampler"


def test_a_comfyui_payload_with_input_images_counts_them_and_shows_none_of_their_bytes():
    workflow = {"1": {"class_type": "LoadImage"}, "2": {"class_type": "LoadImage"}, "3": {"class_type": "SaveImage"}}
    images = {"a.png": "data:image/png;base64,iVBORw0KGgoAAAA", "b.png": "https://example.org/b.png"}
    summary = summarize_payload("comfyui", {"workflow": workflow, "images": images})
    assert summary == "3 nodes + 2 input images: LoadImage×2, SaveImage"


def test_a_simulation_payload_is_summarised_by_its_fields():
    assert summarize_payload("simulation", {"steps": 3, "step_seconds": 0.1, "output": "hi", "fail_at_step": None}) \
        == "output='hi' step_seconds=0.1 steps=3"


def test_a_summary_is_short_and_printable_whatever_the_payload():
    summary = summarize_payload("simulation", {"output": "x\n\x00" * 10_000})
    assert summary is not None and len(summary) <= MAX_SUMMARY and summary.isprintable()
    huge = {"workflow": {str(i): {"class_type": f"Node{i}" + "\n"} for i in range(1000)}}
    summary = summarize_payload("comfyui", huge)
    assert summary is not None and len(summary) <= MAX_SUMMARY and summary.startswith("1000 nodes: ")


def test_no_payload_gives_no_summary_and_an_unknown_service_lists_field_names():
    assert summarize_payload("simulation", None) is None
    assert summarize_payload("flux", {"prompt": "cat", "seed": 1}) == "fields: prompt, seed"
