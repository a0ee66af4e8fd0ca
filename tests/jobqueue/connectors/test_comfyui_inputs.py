"""Input images of comfyui jobs: refused at submit when bad, else fetched (inline, http(s)
through the SSRF guard, an earlier job's output), uploaded per job to the simulator over real
HTTP, and read by LoadImage / LoadImageMask."""

from __future__ import annotations

import base64
import io
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobqueue.client.jobs import submit_job
from jobqueue.client.workflows import submit_workflow
from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui import inputs, uploads
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW, ComfyUIConnector
from jobqueue.errors import InputImageFailed, InvalidPayloadError, JobFailed, SubmitError
from tests.jobqueue.comfyui_fixtures import connector, connector_for, noop, sim, sim_process
from tests.jobqueue.shared.test_output_store import s3

__all__ = ["connector", "s3", "sim", "sim_process"]  # fixtures


def png(color: Any = (10, 200, 30), size: tuple[int, int] = (3, 2), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


def noisy_png() -> bytes:
    """A 64x64 PNG of noise (so cutting it leaves a readable header and a truncated body)."""
    img = Image.frombytes("RGB", (64, 64), bytes((i * 7919) % 251 for i in range(64 * 64 * 3)))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def invert_workflow(name: str = "photo.png", loader: str = "LoadImage") -> dict[str, Any]:
    inputs_ = {"image": name, "upload": "image"} if loader == "LoadImage" else {"image": name, "channel": "red"}
    image = ["1", 0] if loader == "LoadImage" else ["4", 0]
    workflow: dict[str, Any] = {
        "1": {"class_type": loader, "inputs": inputs_},
        "2": {"class_type": "ImageInvert", "inputs": {"image": image}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    if loader == "LoadImageMask":
        workflow["4"] = {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}}
    return workflow


def pixel(result: dict[str, Any]) -> tuple[int, ...]:
    with Image.open(result["files"][0]["path"]) as img:
        return tuple(img.convert("RGB").getpixel((0, 0)))


def run(conn: ComfyUIConnector, job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return conn.run(Job(id=job_id, service="comfyui", payload=payload), noop)


class Images(BaseHTTPRequestHandler):
    """Serves ``/<name>`` from the class's ``files`` (404 otherwise); a name in ``redirects``
    answers 302 to its URL, one in ``slow`` waits that many seconds before its body."""

    files: dict[str, bytes] = {}
    redirects: dict[str, str] = {}
    slow: dict[str, float] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        if name in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[name])
            self.end_headers()
            return
        if name in self.slow:
            threading.Event().wait(self.slow[name])  # the server being slow, not a test's sync
            body = png()
        else:
            body = self.files.get(name)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("Handler", (Images,), {"files": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


# -- refused at submit ---------------------------------------------------------------------------
def test_bad_input_images_are_refused_at_submit_with_the_reason():
    good = b64(png())
    cases = [
        ({"other.png": good}, "images['other.png']: no LoadImage or LoadImageMask node uses it"),
        ({"photo.png": good, "extra.png": good}, "images['extra.png']: no LoadImage"),
        ({"photo.png": "bm90IGFuIGltYWdl"}, "images['photo.png']: not an image Pillow can read"),
        ({"photo.png": "data:image/png;base64," + b64(noisy_png()[:-60])}, "does not decode: image file is truncated"),
        ({"photo.png": "data:image/png,plain"}, "a data URL must be base64"),
        ({"photo.png": "%%%"}, "not base64"),
        ({"photo.png": 42}, "expected a data URL"),
        ({"photo.png": {"image": good}}, "an object entry is"),
        ({"../photo.png": good}, "not a file name inside ComfyUI's input folder"),
        ({"photo.png": "job:nojob"}, "not job:<job id>/<file name>"),
    ]
    for images, text in cases:
        with pytest.raises(InvalidPayloadError, match=r"comfyui: .*" + re.escape(text)):
            ComfyUIConnector.validate({"workflow": invert_workflow(), "images": images})


def test_a_node_naming_an_image_the_payload_lacks_or_another_jobs_folder_is_refused_at_submit():
    # Given a workflow with two loaders, only one of them given an image
    workflow = {**invert_workflow(), "5": {"class_type": "LoadImage", "inputs": {"image": "second.png"}}}
    with pytest.raises(InvalidPayloadError, match=r"node 5 \(LoadImage\) names 'second.png', which 'images' does not have"):
        ComfyUIConnector.validate({"workflow": workflow, "images": {"photo.png": b64(png())}})
    # And a loader naming a file in the worker's per-job upload folders, with or without images
    with pytest.raises(InvalidPayloadError, match="may not name another job's inputs"):
        ComfyUIConnector.validate({"workflow": invert_workflow("jobqueue/other-job/photo.png")})


def test_an_inline_image_larger_than_the_limit_is_refused_at_submit(monkeypatch):
    # Given a limit of 100 bytes
    monkeypatch.setattr(inputs, "MAX_INPUT_BYTES", 100)
    # When an inline image of more is submitted
    with pytest.raises(InvalidPayloadError, match="larger than"):
        ComfyUIConnector.validate({"workflow": invert_workflow(), "images": {"photo.png": b64(png(size=(64, 64)) * 4)}})


def test_good_images_pass_with_their_names_and_urls_and_job_files_are_left_to_the_worker():
    payload = {"workflow": invert_workflow("photo.png [input]"),
               "images": {"photo.png [input]": "https://example.org/a.png"}}
    assert ComfyUIConnector.validate(payload)["images"] == {"photo.png": "https://example.org/a.png"}
    payload = {"workflow": invert_workflow(), "images": {"photo.png": {"$prev": "files.0.url"}}}
    assert ComfyUIConnector.validate(payload)["images"] == {"photo.png": {"$prev": "files.0.url"}}
    assert "images" not in ComfyUIConnector.validate({"workflow": EXAMPLE_WORKFLOW})


# -- through the simulator -----------------------------------------------------------------------
def test_an_inline_image_is_uploaded_into_the_jobs_folder_and_comes_back_inverted(sim, connector):
    # Given a payload with a base64 image named as its LoadImage node names it
    payload = {"workflow": invert_workflow(), "images": {"photo.png": "data:image/png;base64," + b64(png())}}
    # When it runs
    result = run(connector, "job-a", payload)
    # Then the output is the input inverted as ComfyUI inverts (1 - v/255 in float32, saved
    # truncated: 200 comes back as 54, see tests/data/comfyui-inputs)
    assert pixel(result) == (245, 54, 225)
    # And the file went into jobqueue/<job id>/ of ComfyUI's input folder
    assert os.path.isfile(os.path.join(sim.server.input_dir, "jobqueue", "job-a", "photo.png"))
    # And ComfyUI got the node renamed, its other inputs kept; the payload itself is unchanged
    posted = [r for r in sim.requests() if r["path"] == "/prompt" and r["method"] == "POST"][-1]["body"]["prompt"]
    assert posted["1"]["inputs"] == {"image": "jobqueue/job-a/photo.png", "upload": "image"}
    assert payload["workflow"]["1"]["inputs"]["image"] == "photo.png"


def test_two_jobs_with_the_same_image_name_on_one_server_each_see_their_own(sim, connector):
    # Given two jobs whose images share a name but not their pixels
    first = run(connector, "job-1", {"workflow": invert_workflow(), "images": {"photo.png": b64(png((0, 0, 0)))}})
    second = run(connector, "job-2", {"workflow": invert_workflow(), "images": {"photo.png": b64(png((255, 0, 0)))}})
    # Then each output inverts its own input
    assert (pixel(first), pixel(second)) == ((255, 255, 255), (0, 255, 255))


def test_a_retried_job_reuses_its_uploaded_file_and_replaces_nothing(sim, connector):
    # Given a job that ran once
    payload = {"workflow": invert_workflow(), "images": {"photo.png": b64(png())}}
    run(connector, "again", payload)
    # When the same job runs again (a retry)
    run(connector, "again", payload)
    # Then ComfyUI kept the one file (same content, same name): nothing renamed or replaced
    assert os.listdir(os.path.join(sim.server.input_dir, "jobqueue", "again")) == ["photo.png"]


def test_an_image_url_on_a_private_address_is_refused_unless_its_network_is_allowed(sim, tmp_path, image_server):
    url, files = image_server
    files["photo.png"] = png((100, 100, 100))
    payload = {"workflow": invert_workflow(), "images": {"photo.png": f"{url}/photo.png"}}
    # Given a connector with the default rules: the loopback URL fails the job, naming the rule
    refusing = connector_for(sim, tmp_path / "a")
    try:
        with pytest.raises(InputImageFailed, match=r"input image 'photo.png': .*not a public address \(loopback\).*"
                                                   "JOBQUEUE_INPUT_ALLOWED_NETWORKS"):
            run(refusing, "ssrf", payload)
    finally:
        refusing.stop()
    # When 127.0.0.1 is allowed, the same job fetches it
    allowing = connector_for(sim, tmp_path / "b", input_allowed_networks=("127.0.0.1/32",))
    try:
        assert pixel(run(allowing, "fetched", payload)) == (155, 155, 155)
        # And a URL answering 404, or serving something that is no image, fails with the reason
        with pytest.raises(InputImageFailed, match="answered 404"):
            run(allowing, "missing", {**payload, "images": {"photo.png": f"{url}/nope.png"}})
        files["text.png"] = b"hello"
        with pytest.raises(InputImageFailed, match="not an image Pillow can read"):
            run(allowing, "text", {**payload, "images": {"photo.png": f"{url}/text.png"}})
    finally:
        allowing.stop()


def test_an_image_url_larger_than_the_limit_fails_the_job(sim, tmp_path, image_server, monkeypatch):
    url, files = image_server
    files["big.png"] = png(size=(300, 300)) + bytes(5000)
    monkeypatch.setattr(uploads, "MAX_INPUT_BYTES", 1000)
    conn = connector_for(sim, tmp_path, input_allowed_networks=("127.0.0.1/32",))
    try:
        with pytest.raises(InputImageFailed, match="input image 'photo.png': .*larger than"):
            run(conn, "big", {"workflow": invert_workflow(), "images": {"photo.png": f"{url}/big.png"}})
    finally:
        conn.stop()


def test_an_earlier_jobs_output_is_an_input_by_job_reference_and_by_store_url(connector):
    # Given a job that made a 64x64 image of colour 0x029A98 (EXAMPLE_WORKFLOW inverts 170648)
    made = run(connector, "txt2img", {"workflow": EXAMPLE_WORKFLOW})
    file = made["files"][0]
    # When later jobs take it as input, by job:<id>/<name> and by its store URL ($prev files.0.url)
    by_ref = run(connector, "by-ref", {"workflow": invert_workflow(),
                                       "images": {"photo.png": f"job:txt2img/{file['name']}"}})
    by_url = run(connector, "by-url", {"workflow": invert_workflow(), "images": {"photo.png": file["url"]}})
    # Then both invert it back to (within ComfyUI's truncation) the first job's EmptyImage colour
    assert pixel(by_ref) == pixel(by_url) == (0x01, 0x99, 0x97)
    # And a file the store does not have fails the job with the reason
    with pytest.raises(InputImageFailed, match="job txt2img has no output file 'nope.png'"):
        run(connector, "gone", {"workflow": invert_workflow(), "images": {"photo.png": "job:txt2img/nope.png"}})
    with pytest.raises(InputImageFailed, match="is not a file of the output store"):
        run(connector, "elsewhere", {"workflow": invert_workflow(), "images": {"photo.png": "s3://bucket/x/y.png"}})


def test_an_image_with_a_mask_goes_through_upload_mask_and_load_image_gives_the_mask(sim, connector):
    # Given a photo and a greyscale mask, white (repaint) on its left column
    mask = Image.new("L", (3, 2), 0)
    for y in range(2):
        mask.putpixel((0, y), 255)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "mask"}},
    }
    # When the job runs with {"image", "mask"}
    result = run(connector, "inpaint", {"workflow": workflow, "images": {"photo.png": {
        "image": b64(png()), "mask": b64(out.getvalue())}}})
    # Then LoadImage's MASK is the mask (white where to repaint)
    with Image.open(result["files"][0]["path"]) as img:
        assert [img.convert("L").getpixel((x, 0)) for x in range(3)] == [255, 0, 0]
    # And /upload/mask made the file the node reads, beside the uploaded photo
    assert sorted(os.listdir(os.path.join(sim.server.input_dir, "jobqueue", "inpaint"))) == \
        ["photo-masked.png", "photo.png"]
    assert any(r["path"] == "/upload/mask" for r in sim.requests())


def test_a_mask_of_another_size_than_its_image_fails_the_job(connector):
    with pytest.raises(InputImageFailed, match="the mask is 5x5, the image 3x2"):
        run(connector, "sizes", {"workflow": invert_workflow(), "images": {"photo.png": {
            "image": b64(png()), "mask": b64(png(size=(5, 5), mode="L", color=0))}}})


def test_load_image_mask_nodes_get_their_images_too(connector):
    # Given an image whose red channel is 200, read by LoadImageMask(channel=red) -> MaskToImage -> invert
    result = run(connector, "maskjob", {"workflow": invert_workflow(loader="LoadImageMask"),
                                        "images": {"photo.png": b64(png((200, 0, 0)))}})
    # Then the output is 1 - 200/255 in every channel (saved truncated: 54)
    assert pixel(result) == (54, 54, 54)


def test_a_workflow_without_images_runs_as_before_and_a_missing_server_file_fails_with_comfyuis_reason(connector):
    assert run(connector, "plain", {"workflow": EXAMPLE_WORKFLOW})["files"]
    with pytest.raises(Exception, match="Invalid image file: absent.png"):
        run(connector, "absent", {"workflow": invert_workflow("absent.png")})


def test_uploaded_names_follow_comfyuis_answer(tmp_path: Path):
    # A pure check of the rewrite: every loader naming the image, [input] or not, gets the answer
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png [input]"}},
                "2": {"class_type": "LoadImageMask", "inputs": {"image": "a.png", "channel": "alpha"}},
                "3": {"class_type": "Other", "inputs": {"image": "a.png"}}}
    out = uploads.rewrite(workflow, {"a.png": "jobqueue/j/a (1).png"})
    assert [out[n]["inputs"]["image"] for n in "123"] == ["jobqueue/j/a (1).png", "jobqueue/j/a (1).png", "a.png"]
    assert workflow["1"]["inputs"]["image"] == "a.png [input]"
    assert uploads.job_folder("j", "sub/a.png") == "jobqueue/j/sub"


# -- acceptance: real workers, real Redis, a simulator process over real sockets -----------------
def test_a_submitted_job_brings_its_image_to_a_real_worker_and_comes_back_inverted(app, start_worker, sim_process):
    # Given a real worker on a simulated ComfyUI process
    sim = sim_process()
    start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url)
    # When a job with an inline input image is submitted through Redis
    handle = submit_job("comfyui", {"workflow": invert_workflow(), "images": {"photo.png": b64(png((1, 2, 3)))}}, app=app)
    # Then its output is the input inverted
    assert pixel(handle.wait(timeout=60)) == (254, 253, 252)
    # And a job whose input names an output no job made fails with the reason, not a retry
    failing = submit_job("comfyui", {"workflow": invert_workflow(), "images": {"photo.png": "job:none/x.png"}}, app=app)
    with pytest.raises(JobFailed, match="input image 'photo.png': job none has no output file 'x.png'"):
        failing.wait(timeout=60)


def test_a_bad_input_image_is_refused_at_submit_and_nothing_is_enqueued(app):
    with pytest.raises(InvalidPayloadError, match="no LoadImage or LoadImageMask node uses it"):
        submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW, "images": {"photo.png": b64(png())}}, app=app)


def test_a_workflow_step_takes_the_previous_steps_output_as_its_input_image(app, start_worker, sim_process):
    # Given a real worker on a simulated ComfyUI process
    sim = sim_process()
    start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url)
    # When a workflow makes a 64x64 image, then upscales its output by 2 (the step's input image)
    upscale = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "made.png"}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                         "scale_by": 2.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "up"}},
    }
    flow = submit_workflow([
        ("comfyui", {"workflow": EXAMPLE_WORKFLOW}),
        ("comfyui", {"workflow": upscale, "images": {"made.png": {"$prev": "files.0.url"}}}),
    ], app=app)
    result = flow.wait(timeout=90)
    # Then the last step's output is the first step's image (0x029A98 inverted) at twice the size
    with Image.open(result["files"][0]["path"]) as img:
        assert img.size == (128, 128) and img.convert("RGB").getpixel((100, 100)) == (0xFD, 0x65, 0x67)


@pytest.mark.slow
def test_an_output_in_an_s3_store_is_the_input_of_a_job_on_another_machine(app, start_worker, sim_process, s3):
    # Given two workers with their own ComfyUI each (two machines) sharing an S3 output store
    bucket = s3.bucket()
    first_sim, second_sim = sim_process(), sim_process()
    store = {"OUTPUT_URL": f"s3://{bucket}/fleet", "CONNECTORS": "comfyui"}
    start_worker("gpu0", COMFYUI_URL=first_sim.url, OUTPUT_DIR="/nonexistent/a", **store)
    start_worker("gpu1", COMFYUI_URL=second_sim.url, OUTPUT_DIR="/nonexistent/b", **store)
    # When the first machine makes an image and the second takes it as job:<id>/<file>
    made = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, queue="gpu0", app=app)
    name = made.wait(timeout=60)["files"][0]["name"]
    used = submit_job("comfyui", {"workflow": invert_workflow(), "images": {"photo.png": f"job:{made.id}/{name}"}},
                      queue="gpu1", app=app)
    result = used.wait(timeout=60)
    # Then the second ComfyUI got it uploaded (its own input folder) and inverted it back
    assert (Path(second_sim.output_dir).parent / "input" / "jobqueue" / used.id / "photo.png").is_file()
    data = s3.client().get_object(Bucket=bucket, Key=f"fleet/{used.id}/{result['files'][0]['name']}")["Body"].read()
    with Image.open(io.BytesIO(data)) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (0x01, 0x99, 0x97)


def test_a_redirect_to_a_refused_address_and_a_slow_server_fail_the_job(sim, tmp_path, image_server, monkeypatch):
    url, files = image_server
    # Given an allowed image server (127.0.0.1) that redirects to 127.0.0.2 (loopback, not allowed)
    port = url.rsplit(":", 1)[1]
    Images.redirects["moved.png"] = f"http://127.0.0.2:{port}/photo.png"
    files["photo.png"] = png()
    conn = connector_for(sim, tmp_path, input_allowed_networks=("127.0.0.1/32",))
    try:
        # When a job names the redirecting URL, then the redirect is refused (every hop is checked)
        with pytest.raises(InputImageFailed, match=r"moved.png refused: 127\.0\.0\.2 resolves to 127\.0\.0\.2, not a public address \(loopback\)"):
            run(conn, "redirected", {"workflow": invert_workflow(), "images": {"photo.png": f"{url}/moved.png"}})
        # And a server slower than the fetch limit fails the job too
        monkeypatch.setattr(uploads, "FETCH_SECONDS", 0.5)
        Images.slow["slow.png"] = 3.0
        with pytest.raises(InputImageFailed, match="could not fetch .*slow.png: .*Timeout"):
            run(conn, "slow", {"workflow": invert_workflow(), "images": {"photo.png": f"{url}/slow.png"}})
    finally:
        Images.redirects.clear()
        Images.slow.clear()
        conn.stop()


def test_a_placeholder_outside_a_workflow_step_fails_the_job_saying_where_it_belongs(connector):
    with pytest.raises(InputImageFailed, match=r"is filled in only in a workflow step after the first"):
        run(connector, "lone", {"workflow": invert_workflow(), "images": {"photo.png": {"$prev": "files.0.url"}}})


def test_a_tenant_takes_as_input_only_its_own_tenants_outputs(app, start_worker, sim_process):
    # Given a job of tenant acme that made an image on a real worker
    sim = sim_process()
    start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url)
    made = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app, tenant="acme")
    name = made.wait(timeout=60)["files"][0]["name"]
    wanted = {"workflow": invert_workflow(), "images": {"photo.png": f"job:{made.id}/{name}"}}
    # When tenant globex names it as an input image, then the submit is refused (as for an unknown job)
    with pytest.raises(SubmitError, match=f"job {made.id} is not a job of tenant 'globex'"):
        submit_job("comfyui", wanted, app=app, tenant="globex")
    with pytest.raises(SubmitError, match="is not a job of tenant 'globex'"):
        submit_job("comfyui", {**wanted, "images": {"photo.png": f"job:no-such-job/{name}"}}, app=app,
                   tenant="globex")
    # And acme itself, and a submitter without a tenant, may use it
    assert submit_job("comfyui", wanted, app=app, tenant="acme").wait(timeout=60)["files"]
    assert submit_job("comfyui", wanted, app=app).wait(timeout=60)["files"]
