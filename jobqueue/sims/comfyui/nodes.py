"""The simulator's node classes: model-free, with the same inputs and ``/object_info`` shape
as ComfyUI's own (``EmptyImage``, ``ImageInvert``, ``SaveImage``, ``PreviewImage``) plus the
two test nodes the recorded traces used (``HarnessSleepProgress``, ``HarnessFail``) and the
simulator's own: ``SimPreviewSampler`` sends a live preview with every step the way a sampler
with latent previews does; ``SimSilentSleep`` sleeps without any progress (a VAE decode, a
model load: nothing an interrupt can land on) and ``SimSlowSave`` is an output node that does
(a large batch saved: an interrupt during the last node is never honoured); ``SimBlockOutputs`` blocks its output the way
ComfyUI's ``ExecutionBlocker`` does (a switch node, a filter).

Images are uniform colours (:class:`Image`), so a node never holds pixel buffers; only
saving writes real PNG bytes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Image:
    """A batch of uniform-colour images (what an ``IMAGE`` socket carries here)."""

    width: int
    height: int
    batch_size: int
    color: int


@dataclass(frozen=True)
class Blocker:
    """ComfyUI's ``ExecutionBlocker``: an output that blocks every node it reaches; the first
    node it reaches reports ``message`` (None: block silently)."""

    message: str | None


class NodeContext(Protocol):
    """What a running node may ask of the executor."""

    async def progress(self, value: int, maximum: int, preview: Image | None = None) -> None: ...

    async def sleep(self, seconds: float) -> None: ...

    async def load_checkpoint(self, name: str) -> None: ...

    def save_images(self, image: Image, kind: str, prefix: str,
                    text: dict[str, str] | None = None) -> list[dict[str, Any]]: ...


#: ``(outputs, ui)``: one value per declared output, and the UI dict output nodes report.
NodeResult = tuple[tuple[Any, ...], "dict[str, Any] | None"]
RunFunc = Callable[..., Awaitable[NodeResult]]


@dataclass(frozen=True)
class NodeDef:
    """One node class: its inputs, outputs, and how it runs."""

    name: str
    required: dict[str, list[Any]]
    run: RunFunc
    optional: dict[str, list[Any]] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_node: bool = False
    category: str = "image"
    python_module: str = "nodes"
    description: str = ""

    def input_spec(self, name: str) -> tuple[str, list[Any]] | None:
        """``(category, spec)`` of input ``name``, or None when the node has no such input."""
        if name in self.required:
            return "required", self.required[name]
        if name in self.optional:
            return "optional", self.optional[name]
        return None

    def object_info(self) -> dict[str, Any]:
        """This node as ``GET /object_info`` describes it."""
        inputs: dict[str, Any] = {"required": self.required}
        order: dict[str, list[str]] = {"required": list(self.required)}
        if self.optional:
            inputs["optional"] = self.optional
            order["optional"] = list(self.optional)
        if self.hidden:
            inputs["hidden"] = self.hidden
            order["hidden"] = list(self.hidden)
        return {
            "input": inputs,
            "input_order": order,
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.outputs),
            "name": self.name,
            "display_name": self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


def _image(value: Any, name: str = "image") -> Image:
    if not isinstance(value, Image):
        raise TypeError(f"input '{name}' must be linked to an IMAGE output, got {type(value).__name__}")
    return value


async def _empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0) -> NodeResult:
    return (Image(width, height, batch_size, color),), None


async def _image_invert(ctx: NodeContext, image: Any) -> NodeResult:
    img = _image(image)
    return (Image(img.width, img.height, img.batch_size, 0xFFFFFF ^ img.color),), None


def png_text(prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, str]:
    """The PNG text metadata ComfyUI's ``SaveImage`` writes: the API prompt as ``prompt`` and
    every ``extra_pnginfo`` entry (the UI ``workflow``...) under its own key, all as JSON."""
    text: dict[str, str] = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            text[str(key)] = json.dumps(value)
    return text


async def _save_image(ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI", prompt: Any = None,
                      extra_pnginfo: Any = None) -> NodeResult:
    text = png_text(prompt, extra_pnginfo)
    return (), {"images": ctx.save_images(_image(images, "images"), "output", filename_prefix, text)}


async def _preview_image(ctx: NodeContext, images: Any, prompt: Any = None, extra_pnginfo: Any = None) -> NodeResult:
    return (), {"images": ctx.save_images(_image(images, "images"), "temp", "", png_text(prompt, extra_pnginfo))}


async def _sleep_progress(ctx: NodeContext, image: Any, steps: int = 5, delay: float = 0.1) -> NodeResult:
    img = _image(image)
    for step in range(1, steps + 1):
        await ctx.sleep(delay)
        await ctx.progress(step, steps)
    return (img,), None


async def _preview_sampler(ctx: NodeContext, image: Any, steps: int = 10, delay: float = 0.2) -> NodeResult:
    """Like a sampler with latent previews: per step a sleep, then progress with a preview
    whose colour moves from the input's towards its inverse (so each frame differs)."""
    img = _image(image)
    for step in range(1, steps + 1):
        await ctx.sleep(delay)
        mix = step / steps
        channels = [((img.color >> s) & 0xFF, ((0xFFFFFF ^ img.color) >> s) & 0xFF) for s in (16, 8, 0)]
        color = 0
        for start, end in channels:
            color = (color << 8) | int(start + (end - start) * mix)
        await ctx.progress(step, steps, preview=Image(min(img.width, 512), min(img.height, 512), 1, color))
    return (img,), None


async def _silent_sleep(ctx: NodeContext, image: Any, seconds: float = 1.0) -> NodeResult:
    """Sleeps without a progress update: an interrupt during it is noticed only by the next node."""
    img = _image(image)
    await ctx.sleep(seconds)
    return (img,), None


async def _slow_save(ctx: NodeContext, images: Any, seconds: float = 1.0, filename_prefix: str = "ComfyUI",
                     prompt: Any = None, extra_pnginfo: Any = None) -> NodeResult:
    """An output node that takes ``seconds`` without progress (a large batch written to a slow disk)."""
    await ctx.sleep(seconds)
    return await _save_image(ctx, images, filename_prefix, prompt, extra_pnginfo)


async def _block_outputs(ctx: NodeContext, image: Any, block: bool = True, message: str = "blocked") -> NodeResult:
    return ((Blocker(message or None) if block else _image(image)),), None


async def _fail(ctx: NodeContext, image: Any, message: str = "harness boom") -> NodeResult:
    raise ValueError(message)


_INT_SIZE = ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}]

#: Every node class the simulator knows, by class_type.
NODES: dict[str, NodeDef] = {
    node.name: node
    for node in (
        NodeDef(
            "EmptyImage",
            {
                "width": _INT_SIZE,
                "height": _INT_SIZE,
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}],
            },
            _empty_image,
            outputs=("IMAGE",),
        ),
        NodeDef("ImageInvert", {"image": ["IMAGE"]}, _image_invert, outputs=("IMAGE",)),
        NodeDef(
            "SaveImage",
            {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save."}],
            },
            _save_image,
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "PreviewImage",
            {"images": ["IMAGE", {"tooltip": "The images to preview."}]},
            _preview_image,
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
            description="Saves the input images to your ComfyUI temp directory.",
        ),
        NodeDef(
            "HarnessSleepProgress",
            {
                "image": ["IMAGE"],
                "steps": ["INT", {"default": 5, "min": 1, "max": 100000}],
                "delay": ["FLOAT", {"default": 0.1, "min": 0.0, "max": 60.0, "step": 0.01}],
            },
            _sleep_progress,
            outputs=("IMAGE",),
            category="harness",
            python_module="custom_nodes.harness_nodes",
        ),
        NodeDef(
            "SimPreviewSampler",
            {
                "image": ["IMAGE"],
                "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
                "delay": ["FLOAT", {"default": 0.2, "min": 0.0, "max": 60.0, "step": 0.01}],
            },
            _preview_sampler,
            outputs=("IMAGE",),
            category="sampling",
            python_module="jobqueue.sims.comfyui",
            description="Sleeps per step and sends a live preview with each step's progress.",
        ),
        NodeDef(
            "SimSilentSleep",
            {"image": ["IMAGE"], "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}]},
            _silent_sleep,
            outputs=("IMAGE",),
            category="testing",
            python_module="jobqueue.sims.comfyui",
            description="Sleeps without reporting progress.",
        ),
        NodeDef(
            "SimSlowSave",
            {"images": ["IMAGE"], "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}],
             "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            _slow_save,
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
            category="testing",
            python_module="jobqueue.sims.comfyui",
            description="Saves like SaveImage after sleeping without progress.",
        ),
        NodeDef(
            "SimBlockOutputs",
            {"image": ["IMAGE"], "block": ["BOOLEAN", {"default": True}],
             "message": ["STRING", {"default": "blocked"}]},
            _block_outputs,
            outputs=("IMAGE",),
            category="testing",
            python_module="jobqueue.sims.comfyui",
            description="Blocks its output (ComfyUI's ExecutionBlocker); an empty message blocks silently.",
        ),
        NodeDef(
            "HarnessFail",
            {"image": ["IMAGE"], "message": ["STRING", {"default": "harness boom"}]},
            _fail,
            outputs=("IMAGE",),
            category="harness",
            python_module="custom_nodes.harness_nodes",
        ),
    )
}
