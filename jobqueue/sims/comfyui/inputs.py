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

Pixels travel as bytes (RGB rows, one byte per channel; masks one byte per pixel, 255 = 1.0),
so nodes can work on them without numpy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

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


def load_image(path: str) -> tuple[int, int, list[bytes], list[tuple[int, int, bytes]]]:
    """``LoadImage``: ``(width, height, RGB bytes per frame, (w, h, mask bytes) per frame)``;
    frames of another size than the first are skipped, as ComfyUI does."""
    images: list[bytes] = []
    masks: list[tuple[int, int, bytes]] = []
    width = height = 0
    for frame in _frames(path):
        rgb = frame.convert("RGB")
        if not images:
            width, height = rgb.size
        if rgb.size != (width, height):
            continue
        images.append(rgb.tobytes())
        if "A" in frame.getbands():
            masks.append((width, height, _inverted(frame.getchannel("A").tobytes())))
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = frame.convert("RGBA").getchannel("A").tobytes()
            masks.append((width, height, _inverted(alpha)))
        else:
            masks.append((EMPTY_MASK_SIZE, EMPTY_MASK_SIZE, bytes(EMPTY_MASK_SIZE * EMPTY_MASK_SIZE)))
    return width, height, images, masks


def load_mask(path: str, channel: str) -> tuple[int, int, bytes]:
    """``LoadImageMask``: ``(width, height, mask bytes)`` of ``channel`` (alpha inverted)."""
    frame = _frames(path)[0]
    if frame.getbands() != ("R", "G", "B", "A"):
        frame = frame.convert("RGBA")
    band = channel[0].upper()
    if band not in frame.getbands():
        return EMPTY_MASK_SIZE, EMPTY_MASK_SIZE, bytes(EMPTY_MASK_SIZE * EMPTY_MASK_SIZE)
    values = frame.getchannel(band).tobytes()
    width, height = frame.size
    return width, height, _inverted(values) if band == "A" else values


#: ``ImageScaleBy``'s methods and the Pillow filter standing in for each.
UPSCALE_METHODS = {"nearest-exact": 0, "bilinear": 2, "area": 4, "bicubic": 3, "lanczos": 1}


def resize(pixels: bytes, width: int, height: int, new_width: int, new_height: int, method: str) -> bytes:
    """RGB ``pixels`` resized to ``new_width`` x ``new_height`` (``ImageScaleBy``)."""
    from PIL import Image

    image = Image.frombytes("RGB", (width, height), pixels)
    return image.resize((new_width, new_height), UPSCALE_METHODS.get(method, 0)).tobytes()


_INVERT = bytes(range(255, -1, -1))


def _inverted(values: bytes) -> bytes:
    return values.translate(_INVERT)


def invert(values: bytes) -> bytes:
    """Every byte ``v`` as ``255 - v`` (``ImageInvert``'s ``1 - image`` on 8-bit values)."""
    return _inverted(values)
