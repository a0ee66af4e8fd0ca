"""A small flat payload's summary is remembered, and reads exactly as computed afresh."""

from __future__ import annotations

from jobqueue.shared import summary
from jobqueue.shared.summary import summarize_payload


def test_a_repeated_flat_payloads_summary_is_computed_once_and_secrets_stay_masked(monkeypatch):
    summary._summarize_flat.cache_clear()
    calls: list[str] = []
    original = summary._summarize

    def counting(service: str, payload: object, secret_keys: str) -> str | None:
        calls.append(service)
        return original(service, payload, secret_keys)

    monkeypatch.setattr(summary, "_summarize", counting)
    payload = {"steps": 3, "step_seconds": 0.5, "api_key": "s3cret"}
    first = summarize_payload("simulation", dict(payload))
    assert summarize_payload("simulation", dict(payload)) == first == original("simulation", payload, summary.DEFAULT_PATTERN)
    assert calls == ["simulation"]
    assert "s3cret" not in (first or "") and "api_key='•••'" in (first or "")
    assert summarize_payload("simulation", dict(payload), "nothing-matches") != first  # the pattern is part of the key


def test_nested_payloads_are_summarised_afresh():
    workflow = {"1": {"class_type": "KSampler"}, "2": {"class_type": "KSampler"}}
    assert summarize_payload("comfyui", {"workflow": workflow}) == "2 nodes: KSampler×2"
    assert summarize_payload("comfyui", "not a payload") is None
