"""Record what a real ComfyUI makes of a 16x16 image holding every 8-bit value, through
jobqueue's real worker: inverted, saved as loaded, its alpha as LoadImage's mask, its red
channel through LoadImageMask, and scaled by 2 (nearest-exact). See README.md beside it.

Usage: a worker serving comfyui on a real ComfyUI (on the broker below), then
``python record.py <output folder> [broker URL]``.
"""

from __future__ import annotations

import base64
import io
import shutil
import sys
from pathlib import Path

from PIL import Image

from jobqueue import submit_job
from jobqueue.config import Settings
from jobqueue.transport.app import create_app


def main(out_dir: Path, broker: str) -> None:
    app = create_app(Settings(broker_url=broker))
    img = Image.new("RGBA", (16, 16))
    img.putdata([(i, 255 - i, (i * 7) % 256, (i * 13) % 256) for i in range(256)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (out_dir / "input.png").write_bytes(buf.getvalue())
    data = base64.b64encode(buf.getvalue()).decode()
    load = {"class_type": "LoadImage", "inputs": {"image": "all.png"}}
    scale = {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}
    cases = {
        "inverted": {"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}},
        "loaded": {},
        "alpha-mask": {"2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}}},
        "red-mask": {"2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}}},
        "scaled": {"2": {"class_type": "ImageScaleBy", "inputs": scale}},
    }
    for name, extra in cases.items():
        loader = load
        if name == "red-mask":
            loader = {"class_type": "LoadImageMask", "inputs": {"image": "all.png", "channel": "red"}}
        save = {"class_type": "SaveImage", "inputs": {"images": ["2" if extra else "1", 0], "filename_prefix": name}}
        handle = submit_job("comfyui", {"workflow": {"1": loader, **extra, "3": save}, "images": {"all.png": data}},
                            app=app)
        result = handle.wait(timeout=300)
        shutil.copy(result["files"][0]["path"], out_dir / f"{name}.png")
        print(name, handle.id, "ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/10")
