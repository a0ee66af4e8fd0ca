"""The simulator's upload routes and LoadImage / LoadImageMask behave as ComfyUI v0.3.64's
(server.py ``image_upload`` / ``upload_mask``, nodes.py ``LoadImage`` / ``LoadImageMask``)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import sim

__all__ = ["sim"]  # a fixture


def png(size: tuple[int, int] = (4, 3), mode: str = "RGB", color: Any = (10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


def gradient() -> bytes:
    """A 3x2 image whose pixels all differ (so an inversion is checked pixel by pixel)."""
    img = Image.new("RGB", (3, 2))
    img.putdata([(0, 10, 20), (30, 40, 50), (60, 70, 80), (90, 100, 110), (120, 130, 140), (250, 251, 252)])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def upload(url: str, data: bytes, name: str = "photo.png", route: str = "/upload/image", **fields: str) -> requests.Response:
    return requests.post(url + route, files={"image": (name, data, "image/png")}, data=fields, timeout=10)


def run(url: str, workflow: dict[str, Any]) -> dict[str, Any]:
    """POST the workflow and wait for its history entry."""
    answer = requests.post(url + "/prompt", json={"prompt": workflow}, timeout=10)
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]

    def entry() -> Any:
        return requests.get(f"{url}/history/{prompt_id}", timeout=5).json().get(prompt_id)

    found = wait_for(entry, timeout=20)
    return dict(found)


def saved(url: str, entry: dict[str, Any], node: str = "3") -> Image.Image:
    item = entry["outputs"][node]["images"][0]
    data = requests.get(url + "/view", params=item, timeout=5).content
    return Image.open(io.BytesIO(data))


def load_invert_save(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }


def test_an_upload_lands_in_its_subfolder_and_answers_name_subfolder_and_type(sim: Any) -> None:
    # Given a simulated ComfyUI
    # When an image is uploaded into a subfolder of the input folder
    answer = upload(sim.url, png(), subfolder="jobqueue/job-1", type="input")
    # Then it answers ComfyUI's JSON with the subfolder as sent, and the file is there
    assert answer.status_code == 200
    assert answer.json() == {"name": "photo.png", "subfolder": "jobqueue/job-1", "type": "input"}
    assert os.path.isfile(os.path.join(sim.server.input_dir, "jobqueue", "job-1", "photo.png"))


def test_a_name_taken_by_another_file_is_renamed_and_the_same_file_is_not_saved_twice(sim: Any) -> None:
    # Given an uploaded photo.png
    assert upload(sim.url, png()).json()["name"] == "photo.png"
    # When the same bytes come again, then different bytes under the same name, then with overwrite
    same = upload(sim.url, png()).json()["name"]
    other = upload(sim.url, png(color=(1, 2, 3))).json()["name"]
    third = upload(sim.url, png(color=(4, 5, 6))).json()["name"]
    replaced = upload(sim.url, png(color=(7, 8, 9)), overwrite="true").json()["name"]
    # Then the duplicate keeps its name, the others are renamed "name (n).png", overwrite replaces
    assert (same, other, third, replaced) == ("photo.png", "photo (1).png", "photo (2).png", "photo.png")
    with Image.open(os.path.join(sim.server.input_dir, "photo.png")) as img:
        assert img.getpixel((0, 0)) == (7, 8, 9)


def test_an_upload_leaving_the_folder_is_refused_and_an_unknown_type_is_a_server_error(sim: Any) -> None:
    # Given a simulated ComfyUI
    # When uploads name a subfolder outside the input folder, no file, or an unknown type
    escaping = upload(sim.url, png(), subfolder="../../etc")
    no_file = requests.post(sim.url + "/upload/image", data={"type": "input"}, timeout=5)
    bad_type = upload(sim.url, png(), type="models")
    # Then ComfyUI's answers: 400, 400, 500
    assert (escaping.status_code, no_file.status_code, bad_type.status_code) == (400, 400, 500)


def test_load_image_invert_save_gives_back_the_inverted_pixels(sim: Any) -> None:
    # Given an image uploaded into a job's subfolder
    name = upload(sim.url, gradient(), name="g.png", subfolder="jobqueue/j").json()["name"]
    # When LoadImage -> ImageInvert -> SaveImage runs on "subfolder/name"
    entry = run(sim.url, load_invert_save(f"jobqueue/j/{name}"))
    # Then the saved image is the input inverted, pixel by pixel, as ComfyUI computes it
    # (float32 1 - v/255, saved as clip(255 x) truncated: 93 -> 161, as a real ComfyUI wrote)
    assert entry["status"]["status_str"] == "success"
    with Image.open(io.BytesIO(gradient())) as original:
        values = np.array(original.convert("RGB")).astype(np.float32) / 255.0
    expected = np.clip(255.0 * (1.0 - values), 0, 255).astype(np.uint8).tobytes()
    assert saved(sim.url, entry).convert("RGB").tobytes() == expected


RECORDED = Path(__file__).parents[2] / "data" / "comfyui-inputs"


@pytest.mark.parametrize("case", ["inverted", "loaded", "alpha-mask", "red-mask", "scaled"])
def test_loaded_images_come_out_with_the_bytes_a_real_comfyui_wrote(sim: Any, case: str) -> None:
    # Given the recorded input (every 8-bit value in each channel) uploaded
    upload(sim.url, (RECORDED / "input.png").read_bytes(), name="all.png")
    # When the recorded workflow of this case runs on the simulator
    load = {"class_type": "LoadImage", "inputs": {"image": "all.png"}}
    middle = {
        "inverted": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "alpha-mask": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "red-mask": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
        "scaled": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                            "scale_by": 2.0}},
    }.get(case)
    if case == "red-mask":
        load = {"class_type": "LoadImageMask", "inputs": {"image": "all.png", "channel": "red"}}
    workflow = {"1": load, "3": {"class_type": "SaveImage", "inputs": {"images": ["2" if middle else "1", 0],
                                                                       "filename_prefix": case}}}
    if middle:
        workflow["2"] = middle
    entry = run(sim.url, workflow)
    # Then the saved pixels are those ComfyUI 0.3.64 saved (tests/data/comfyui-inputs/README.md)
    with Image.open(RECORDED / f"{case}.png") as real:
        got = saved(sim.url, entry)
        assert got.size == real.size
        assert got.convert("RGB").tobytes() == real.convert("RGB").tobytes()


def test_a_load_image_naming_a_missing_file_is_refused_with_comfyuis_custom_validation_error(sim: Any) -> None:
    # Given a simulated ComfyUI without the file
    # When a prompt's LoadImage names it
    answer = requests.post(sim.url + "/prompt", json={"prompt": load_invert_save("jobqueue/x/nope.png")}, timeout=5)
    # Then POST /prompt answers 400 with the node's custom_validation_failed error
    assert answer.status_code == 400
    errors = answer.json()["node_errors"]["1"]["errors"]
    assert errors == [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                       "details": "image - Invalid image file: jobqueue/x/nope.png", "extra_info": {"input_name": "image"}}]


def test_object_info_lists_the_input_folders_images_for_load_image(sim: Any) -> None:
    # Given two uploads, one at the top of the input folder and one in a subfolder
    upload(sim.url, png(), name="top.png")
    upload(sim.url, png(), name="deep.png", subfolder="sub")
    # When /object_info/LoadImage is read
    info = requests.get(sim.url + "/object_info/LoadImage", timeout=5).json()["LoadImage"]
    # Then the combo lists the top-level image only (as ComfyUI's os.listdir), with image_upload
    assert info["input"]["required"]["image"] == [["top.png"], {"image_upload": True}]
    assert info["output"] == ["IMAGE", "MASK"]


def mask_to_image(loader: dict[str, Any]) -> dict[str, Any]:
    return {
        "1": loader,
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0 if loader["class_type"] == "LoadImageMask" else 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "mask"}},
    }


def test_upload_mask_writes_the_original_with_the_masks_alpha_and_load_image_reads_it_as_one_minus_alpha(sim: Any) -> None:
    # Given an uploaded photo and a mask whose alpha is 0 (to repaint) on its left half
    upload(sim.url, png((4, 2)), name="photo.png", subfolder="s")
    mask = Image.new("RGBA", (4, 2), (0, 0, 0, 255))
    for y in range(2):
        for x in range(2):
            mask.putpixel((x, y), (0, 0, 0, 0))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    # When the mask is uploaded through /upload/mask against the photo
    ref = json.dumps({"filename": "photo.png", "subfolder": "s", "type": "input"})
    answer = upload(sim.url, out.getvalue(), name="photo-mask.png", route="/upload/mask", subfolder="s",
                    type="input", original_ref=ref)
    # Then the new file is the photo's colours with the mask's alpha
    assert answer.json() == {"name": "photo-mask.png", "subfolder": "s", "type": "input"}
    with Image.open(os.path.join(sim.server.input_dir, "s", "photo-mask.png")) as img:
        assert img.mode == "RGBA" and img.getpixel((0, 0)) == (10, 200, 30, 0) and img.getpixel((3, 1)) == (10, 200, 30, 255)
    # And LoadImage's MASK output is 1 - alpha: white on the left half
    entry = run(sim.url, mask_to_image({"class_type": "LoadImage", "inputs": {"image": "s/photo-mask.png"}}))
    grey = saved(sim.url, entry).convert("L")
    assert [grey.getpixel((x, 0)) for x in range(4)] == [255, 255, 0, 0]


def test_upload_mask_without_its_original_saves_nothing_yet_answers_200(sim: Any) -> None:
    # Given no original image
    ref = json.dumps({"filename": "absent.png", "subfolder": "", "type": "input"})
    # When a mask is uploaded against it
    answer = upload(sim.url, png(mode="RGBA", color=(0, 0, 0, 0)), name="m.png", route="/upload/mask", original_ref=ref)
    # Then ComfyUI answers as if it were saved, but nothing is written (its refusal is dropped)
    assert answer.status_code == 200 and answer.json()["name"] == "m.png"
    assert not os.path.exists(os.path.join(sim.server.input_dir, "m.png"))
    # And without an original_ref the handler raises: a 500
    assert upload(sim.url, png(), name="n.png", route="/upload/mask").status_code == 500


def test_load_image_mask_reads_one_channel_and_inverts_alpha(sim: Any) -> None:
    # Given an RGBA image with red 200 and alpha 55
    upload(sim.url, png((2, 2), "RGBA", (200, 0, 0, 55)), name="m.png")
    # When LoadImageMask reads its red, then its alpha channel
    red = run(sim.url, mask_to_image({"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "red"}}))
    alpha = run(sim.url, mask_to_image({"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "alpha"}}))
    # Then red is as stored and alpha is inverted (255 - 55)
    assert saved(sim.url, red).convert("L").getpixel((0, 0)) == 200
    assert saved(sim.url, alpha).convert("L").getpixel((0, 0)) == 200
    # And a channel outside the combo is refused
    bad = requests.post(sim.url + "/prompt", json={"prompt": mask_to_image(
        {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "cyan"}})}, timeout=5)
    assert bad.status_code == 400 and bad.json()["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"


def test_a_file_that_is_not_an_image_is_uploaded_and_fails_when_load_image_runs(sim: Any) -> None:
    # Given a text file uploaded as an image (ComfyUI does not look inside)
    assert upload(sim.url, b"not an image", name="fake.png").status_code == 200
    # When LoadImage runs on it
    entry = run(sim.url, load_invert_save("fake.png"))
    # Then the prompt fails at that node with PIL's error
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_id"] == "1" and "cannot identify image file" in error["exception_message"]
