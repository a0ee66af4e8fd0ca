"""The simulator's node classes: model-free, with the same inputs and ``/object_info`` shape
as ComfyUI's own (``EmptyImage``, ``ImageInvert``, ``SaveImage``, ``PreviewImage``, ``LoadImage``,
``LoadImageMask``, ``MaskToImage``, ``ImageScaleBy``: :mod:`jobqueue.sims.comfyui.inputs` reads the files) plus the
two test nodes the recorded traces used (``HarnessSleepProgress``, ``HarnessFail``) and the
simulator's own: ``SimPreviewSampler`` sends a live preview with every step the way a sampler
with latent previews does; ``SimSilentSleep`` sleeps without any progress (a VAE decode, a
model load: nothing an interrupt can land on) and ``SimSlowSave`` is an output node that does
(a large batch saved: an interrupt during the last node is never honoured); ``SimBlockOutputs`` blocks its output the way
ComfyUI's ``ExecutionBlocker`` does (a switch node, a filter); ``SimCrash`` takes the whole
server down (a custom node that segfaults): it comes back empty after ``crash_restart`` s.

Generated images are uniform colours (:class:`Image`), so those nodes never hold pixel
buffers; only saving writes real PNG bytes. A loaded image carries its pixels (and
``ImageInvert`` inverts them), so what comes back is what a real ComfyUI makes of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jobqueue.sims.comfyui import inputs


@dataclass(frozen=True)
class Image:
    """A batch of uniform-colour images (what an ``IMAGE`` socket carries here), or of real
    pixels (``pixels``: a float32 array ``(batch, height, width, 3)`` in 0..1, from ``LoadImage``)."""

    width: int
    height: int
    batch_size: int
    color: int
    pixels: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Mask:
    """A batch of masks (a ``MASK`` socket): a float32 array ``(batch, height, width)`` in 0..1."""

    values: Any = field(compare=False, repr=False)


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

    async def crash(self) -> None: ...

    #: The server's folders by kind: ``input``, ``output``, ``temp``.
    folders: dict[str, str]


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
    #: ComfyUI's ``VALIDATE_INPUTS``: ``(folders, inputs) -> True or a message``; the inputs it
    #: takes (``validated``) skip the combo check.
    validate: Callable[[dict[str, str], dict[str, Any]], Any] | None = None
    validated: tuple[str, ...] = ()
    #: Inputs whose combo lists the input folder's files (``LoadImage``'s ``image``).
    folder_combos: tuple[str, ...] = ()
    #: ComfyUI's ``IS_CHANGED``: ``(folders, inputs) -> a value``; part of the cache key.
    is_changed: Callable[[dict[str, str], dict[str, Any]], Any] | None = None

    def input_spec(self, name: str) -> tuple[str, list[Any]] | None:
        """``(category, spec)`` of input ``name``, or None when the node has no such input."""
        if name in self.required:
            return "required", self.required[name]
        if name in self.optional:
            return "optional", self.optional[name]
        return None

    def object_info(self, files: list[str] | None = None) -> dict[str, Any]:
        """This node as ``GET /object_info`` describes it (``files``: the input folder's, for
        the inputs that list them)."""
        required = {name: ([list(files or [])] + spec[1:] if name in self.folder_combos else spec)
                    for name, spec in self.required.items()}
        inputs: dict[str, Any] = {"required": required}
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
    pixels = None if img.pixels is None else 1.0 - img.pixels
    return (Image(img.width, img.height, img.batch_size, 0xFFFFFF ^ img.color, pixels),), None


async def _image_scale_by(ctx: NodeContext, image: Any, upscale_method: str, scale_by: float) -> NodeResult:
    """``ImageScaleBy``: ``round(size * scale_by)``; real pixels resized with Pillow's filter
    closest to ComfyUI's method (uniform colours just change size)."""
    img = _image(image)
    width, height = round(img.width * scale_by), round(img.height * scale_by)
    pixels = None if img.pixels is None else inputs.resize(img.pixels, width, height, upscale_method)
    return (Image(width, height, img.batch_size, img.color, pixels),), None


def _check_image(folders: dict[str, str], values: dict[str, Any]) -> Any:
    """``LoadImage.VALIDATE_INPUTS`` (and ``LoadImageMask``'s): the file must exist."""
    image = values.get("image")
    if not isinstance(image, str) or not inputs.exists_annotated_filepath(image, folders):
        return f"Invalid image file: {image}"
    return True


def _file_hash(folders: dict[str, str], values: dict[str, Any]) -> str:
    """``LoadImage.IS_CHANGED``: the file's SHA-256 (empty when it cannot be read)."""
    try:
        with open(inputs.get_annotated_filepath(str(values.get("image")), folders), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return ""


async def _load_image(ctx: NodeContext, image: str) -> NodeResult:
    images, masks = inputs.load_image(inputs.get_annotated_filepath(image, ctx.folders))
    batch, height, width, _ = images.shape
    return (Image(width, height, batch, 0, images), Mask(masks)), None


async def _load_image_mask(ctx: NodeContext, image: str, channel: str) -> NodeResult:
    return (Mask(inputs.load_mask(inputs.get_annotated_filepath(image, ctx.folders), channel)),), None


async def _mask_to_image(ctx: NodeContext, mask: Any) -> NodeResult:
    if not isinstance(mask, Mask):
        raise TypeError(f"input 'mask' must be linked to a MASK output, got {type(mask).__name__}")
    pixels = inputs.mask_to_image(mask.values)
    batch, height, width, _ = pixels.shape
    return (Image(width, height, batch, 0, pixels),), None


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


async def _crash(ctx: NodeContext, image: Any) -> NodeResult:
    await ctx.crash()  # never returns: the server dies under it
    return (_image(image),), None


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
        NodeDef("ImageScaleBy", {"image": ["IMAGE"], "upscale_method": [list(inputs.UPSCALE_METHODS)],
                                 "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]},
                _image_scale_by, outputs=("IMAGE",), category="image/upscaling"),
        NodeDef("LoadImage", {"image": [[], {"image_upload": True}]}, _load_image, outputs=("IMAGE", "MASK"),
                validate=_check_image, validated=("image",), folder_combos=("image",), is_changed=_file_hash),
        NodeDef("LoadImageMask", {"image": [[], {"image_upload": True}], "channel": [list(inputs.CHANNELS)]},
                _load_image_mask, outputs=("MASK",), category="mask", validate=_check_image, validated=("image",),
                folder_combos=("image",), is_changed=_file_hash),
        NodeDef("MaskToImage", {"mask": ["MASK"]}, _mask_to_image, outputs=("IMAGE",), category="mask",
                python_module="comfy_extras.nodes_mask"),
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
            "SimCrash",
            {"image": ["IMAGE"]},
            _crash,
            outputs=("IMAGE",),
            category="testing",
            python_module="jobqueue.sims.comfyui",
            description="Kills the server (a custom node that segfaults); it restarts with an empty queue and history.",
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
