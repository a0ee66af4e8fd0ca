"""Requirements, capabilities and their rules, without a broker: parsing, routing, matching,
the reason a job waits, and the models a ComfyUI workflow names."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.client.jobs import prepare_job
from jobqueue.connectors.comfyui.models import vram_of, workflow_models
from jobqueue.errors import InvalidRequirementError
from jobqueue.shared.requirements import (
    Capabilities,
    Requirements,
    capabilities_from_details,
    capability_queues,
    parse_requires,
    route_queue,
    satisfies,
    waiting_for,
)
from jobqueue.sims.comfyui.models import checkpoint_workflow
from jobqueue.worker.capabilities import CapabilityGate


def cap(worker: str = "w", models: tuple[str, ...] = (), vram: int = 0, tags: tuple[str, ...] = ()) -> Capabilities:
    return Capabilities(worker, "comfyui", frozenset(models), vram, frozenset(tags))


@pytest.mark.parametrize("bad", [
    "a.safetensors", ["a.safetensors"], {"model": ["a"]}, {"models": "a.safetensors"}, {"models": [""]},
    {"models": [3]}, {"models": ["a,b"]}, {"vram_gb": 0}, {"vram_gb": -4}, {"vram_gb": "24"}, {"vram_gb": True},
    {"vram_gb": float("nan")}, {"vram_gb": 5000}, {"tags": "customer:acme"}, {"tags": [None]},
    {"models": ["m"] * 65},
])
def test_a_malformed_requirement_is_refused_with_a_clear_message(bad: Any) -> None:
    with pytest.raises(InvalidRequirementError, match="requires"):
        parse_requires(bad)


def test_a_well_formed_requirement_is_kept_with_duplicates_removed() -> None:
    req = parse_requires({"models": ["b.safetensors", "b.safetensors"], "vram_gb": 20, "tags": ["customer:acme"]})
    assert req == Requirements(("b.safetensors",), 20.0, ("customer:acme",))
    assert Requirements.from_dict(req.as_dict()) == req


def test_the_models_a_workflow_names_are_required_without_the_caller_naming_them() -> None:
    # Given a workflow whose checkpoint loader and LoRA loader name files
    workflow = checkpoint_workflow("b.safetensors")
    workflow["9"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "model": ["1", 0]}}
    workflow["10"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}
    workflow["11"] = {"class_type": "SomethingElse", "inputs": {"model_name": "not-a-file"}}
    # Then they are read, checkpoint first, and merged with what the caller gave
    assert workflow_models(workflow) == ["b.safetensors", "style.safetensors", "4x.pth"]
    kwargs, send = prepare_job("comfyui", {"workflow": workflow}, is_redis=True, requires={"tags": ["region:eu"]})
    req = Requirements.from_dict(kwargs["options"]["requires"])
    assert req.models == ("b.safetensors", "style.safetensors", "4x.pth")
    assert req.tags == ("region:eu",)
    assert send["queue"] == route_queue("comfyui", req)
    assert workflow_models({"1": "garbage", "2": {"inputs": None}}) == []


def test_a_job_is_routed_on_its_most_selective_requirement() -> None:
    assert route_queue("comfyui", Requirements()) == "comfyui"
    assert route_queue("comfyui", Requirements(models=("b.safetensors",), vram_gb=20)) == "comfyui.model.b.safetensors"
    assert route_queue("comfyui", Requirements(models=("b",), tags=("customer:acme",))) == "comfyui.tag.customer%3Aacme"
    assert route_queue("comfyui", Requirements(vram_gb=18)) == "comfyui.vram.20"
    assert route_queue("comfyui", Requirements(models=("sdxl/base v1.safetensors",))) == "comfyui.model.sdxl%2Fbase%20v1.safetensors"


def test_a_worker_consumes_exactly_the_queues_of_jobs_it_can_run() -> None:
    worker = cap(models=("a.safetensors",), vram=24, tags=("customer:acme",))
    queues = capability_queues(worker)
    assert "comfyui.model.a.safetensors" in queues and "comfyui.tag.customer%3Aacme" in queues
    assert "comfyui.vram.24" in queues and "comfyui.vram.32" not in queues
    for req in (Requirements(vram_gb=24), Requirements(vram_gb=5), Requirements(models=("a.safetensors",))):
        assert route_queue("comfyui", req) in queues and satisfies(req, worker)
    assert route_queue("comfyui", Requirements(vram_gb=25)) not in queues


def test_the_reason_a_job_waits_names_what_no_online_worker_has() -> None:
    workers = [cap("wa", models=("a",), tags=("customer:acme",)), cap("wb", models=("b",), vram=24)]
    assert waiting_for("comfyui", Requirements(models=("b",)), workers) is None
    assert waiting_for("comfyui", Requirements(models=("c.safetensors",)), workers) == \
        "no online worker has model c.safetensors"
    assert waiting_for("comfyui", Requirements(models=("c",), vram_gb=48), workers) == \
        "no online worker has model c, 48 GiB of VRAM"
    assert waiting_for("comfyui", Requirements(models=("b",), tags=("customer:acme",)), workers) == \
        "no online worker has all of: tag customer:acme, model b"
    assert waiting_for("comfyui", Requirements(models=("a",)), []) == "no online worker runs comfyui"
    assert waiting_for("comfyui", Requirements(), []) is None


def test_capabilities_are_read_back_from_connector_details_as_cards_are_sold() -> None:
    total, free = vram_of([{"type": "cpu", "vram_total": 64 * 2**30},
                           {"type": "cuda", "vram_total": 25_757_220_864, "vram_free": 20 * 2**30}])
    assert (total, free) == (23.99, 20.0)
    details = {"capabilities": {"models": {"checkpoints": ["a"], "loras": ["l"]}, "vram_total_gb": total,
                                "tags": ["customer:acme"]}}
    assert capabilities_from_details("w", "comfyui", details) == cap("w", ("a", "l"), 24, ("customer:acme",))
    assert capabilities_from_details("w", "comfyui", {"capabilities": "junk"}) == Capabilities("w", "comfyui")


class FakeQueue:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeConsumer:
    """Records add/cancel like Celery's consumer (the gate's only contact with it)."""

    def __init__(self, queues: list[str]) -> None:
        self.task_consumer = self
        self.queues = [FakeQueue(q) for q in queues]
        self.hub = None
        self.on_message = print  # it can take messages (Celery's event loop set its handler)

    def add_task_queue(self, name: str) -> None:
        self.queues.append(FakeQueue(name))

    def cancel_task_queue(self, name: str) -> None:
        self.queues = [q for q in self.queues if q.name != name]


def test_the_gate_follows_capabilities_and_holds_a_queue_off_after_a_hand_back() -> None:
    # Given a worker consuming its own queues, with model a
    now = [100.0]
    wanted = {"comfyui.model.a"}
    consumer = FakeConsumer(["gpu0", "comfyui"])
    gate = CapabilityGate(lambda: set(wanted), ("comfyui",), clock=lambda: now[0])
    gate.bind(consumer)
    names = lambda: sorted(q.name for q in consumer.queues)  # noqa: E731
    assert names() == ["comfyui", "comfyui.model.a", "gpu0"]
    # When model b appears and a goes away, the model queues follow; others are left alone
    wanted.clear()
    wanted.add("comfyui.model.b")
    gate.sync_now()
    assert names() == ["comfyui", "comfyui.model.b", "gpu0"]
    # When it hands back a job of b and of its pinned queue, both are held off for a while
    gate.hold_off("comfyui.model.b", 5)
    gate.hold_off("gpu0", 5)
    assert names() == ["comfyui"]
    now[0] += 6
    gate.sync_now()
    assert names() == ["comfyui", "comfyui.model.b", "gpu0"]
