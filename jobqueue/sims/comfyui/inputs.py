"""The simulator's input folder and image loading, as ComfyUI v0.3.64 has them.

* File names with annotations (``folder_paths.annotated_filepath``): ``"x.png [output]"``,
  ``"x.png [input]"``, ``"x.png [temp]"`` name a file of that folder; a plain name (which may
  hold a subfolder, ``"clipspace/x.png"``) is a file of the input folder. Nothing stops a
  ``..`` here, as in ComfyUI (only the upload routes check paths).
* ``LoadImage`` (``nodes.LoadImage.load_image``): every frame of the file's size in RGB (EXIF
  rotation applied; 16-bit ``I`` images scaled by 1/255), and the mask ``1 - alpha`` when the
  image has an alpha channel (or a palette with transparency), else a 64x64 zero mask.
* ``LoadImageMask``: one channel (``alpha``, ``red``, ``green``, ``blue``) of the image as
  RGBA; the alpha channel inverted (``1 - alpha``).

Pixels travel as ComfyUI's do: float32 arrays in 0..1 (numpy here, torch there), images
``(batch, height, width, 3)`` and masks ``(batch, height, width)``, with the same arithmetic,
so a saved image has the same bytes a real ComfyUI writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: ComfyUI's ``LoadImageMask._color_channels``.
CHANNELS = ["alpha", "red", "green", "blue"]
#: The mask ``LoadImage`` gives an image without alpha (ComfyUI: ``torch.zeros((64, 64))``).
EMPTY_MASK_SIZE = 64
#: Extensions ComfyUI's ``filter_files_content_types(files, ["image"])`` lets through (by MIME type).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif")


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """``(name without annotation, folder kind or None)`` (``folder_paths.annotated_filepath``)."""
    for kind in ("output", "input", "temp"):
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix) - 1], kind
    return name, None


def get_annotated_filepath(name: str, folders: Mapping[str, str]) -> str:
    """The path of an annotated file name; a plain name is in the input folder."""
    plain, kind = annotated_filepath(name)
    return os.path.join(folders[kind or "input"], plain)


def exists_annotated_filepath(name: str, folders: Mapping[str, str]) -> bool:
    """Whether the file exists (``folder_paths.exists_annotated_filepath``: any path, even a folder)."""
    return os.path.exists(get_annotated_filepath(name, folders))


def input_images(input_dir: str) -> list[str]:
    """The image files directly in the input folder, sorted: the options ``LoadImage``'s
    ``image`` combo lists (subfolders are not listed, yet a name in one is valid)."""
    try:
        names = os.listdir(input_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(input_dir, n))
                  and n.lower().endswith(IMAGE_EXTENSIONS))


def input_files(input_dir: str) -> list[str]:
    """Every file directly in the input folder, sorted (``LoadImageMask``'s combo)."""
    try:
        names = os.listdir(input_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(input_dir, n)))


def _frames(path: str) -> list[PILImage]:
    from PIL import Image, ImageOps, ImageSequence

    with Image.open(path) as img:
        frames = []
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            frames.append(frame.copy())
        return frames


def _unit(values: Any) -> Any:
    """8-bit values as ComfyUI's float32 in 0..1 (``np.array(x).astype(np.float32) / 255.0``)."""
    import numpy as np

    return np.array(values).astype(np.float32) / 255.0


def load_image(path: str) -> tuple[Any, Any]:
    """``LoadImage``: ``(images (B, H, W, 3), masks (B, h, w))`` as float32 arrays; frames of
    another size than the first are skipped, as ComfyUI does."""
    import numpy as np

    images: list[Any] = []
    masks: list[Any] = []
    size = None
    for frame in _frames(path):
        rgb = frame.convert("RGB")
        size = size or rgb.size
        if rgb.size != size:
            continue
        images.append(_unit(rgb))
        if "A" in frame.getbands():
            masks.append(1.0 - _unit(frame.getchannel("A")))
        elif frame.mode == "P" and "transparency" in frame.info:
            masks.append(1.0 - _unit(frame.convert("RGBA").getchannel("A")))
        else:
            masks.append(np.zeros((EMPTY_MASK_SIZE, EMPTY_MASK_SIZE), dtype=np.float32))
    if len({m.shape for m in masks}) > 1:  # torch.cat would raise on masks of two sizes
        raise RuntimeError("Sizes of tensors must match except in dimension 0")
    return np.stack(images), np.stack(masks)


def load_mask(path: str, channel: str) -> Any:
    """``LoadImageMask``: the ``(1, H, W)`` float32 mask of ``channel`` (alpha inverted)."""
    import numpy as np

    frame = _frames(path)[0]
    if frame.getbands() != ("R", "G", "B", "A"):
        frame = frame.convert("RGBA")
    band = channel[0].upper()
    if band not in frame.getbands():
        return np.zeros((1, EMPTY_MASK_SIZE, EMPTY_MASK_SIZE), dtype=np.float32)
    mask = _unit(frame.getchannel(band))
    return (1.0 - mask if band == "A" else mask)[None]


def to_bytes(image: Any) -> bytes:
    """One (H, W, 3) float image as SaveImage writes it: ``clip(255 * x, 0, 255)`` cast to
    uint8 (truncated, so 1 - v/255 may come back as 254 - v, as on a real ComfyUI)."""
    import numpy as np

    return bytes(np.clip(255.0 * image, 0, 255).astype(np.uint8).tobytes())


def mask_to_image(masks: Any) -> Any:
    """``MaskToImage``: each mask as a grey RGB image."""
    import numpy as np

    flat = masks.reshape((-1, masks.shape[-2], masks.shape[-1]))
    return np.repeat(flat[..., None], 3, axis=-1)


#: ``ImageScaleBy``'s methods (``nearest-exact`` computed as torch does; the others with
#: Pillow's closest filter on float planes).
UPSCALE_METHODS = {"nearest-exact": 0, "bilinear": 2, "area": 4, "bicubic": 3, "lanczos": 1}


def resize(images: Any, width: int, height: int, method: str) -> Any:
    """``(B, H, W, 3)`` float images resized to ``width`` x ``height`` (``ImageScaleBy``)."""
    import numpy as np
    from PIL import Image

    _, in_h, in_w, _ = images.shape
    if method == "nearest-exact":  # torch: src = floor((dst + 0.5) * in / out)
        rows = np.minimum(((np.arange(height) + 0.5) * in_h / height).astype(np.int64), in_h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * in_w / width).astype(np.int64), in_w - 1)
        return images[:, rows][:, :, cols]
    planes = [[np.asarray(Image.fromarray(img[:, :, c], mode="F").resize((width, height), UPSCALE_METHODS[method]))
               for c in range(3)] for img in images]
    return np.stack([np.stack(p, axis=-1) for p in planes]).astype(np.float32)
