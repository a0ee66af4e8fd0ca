"""``python -m jobqueue.sims.comfyui --port 8188``: serve a simulated ComfyUI."""

from __future__ import annotations

import argparse
import logging

from jobqueue.sims.comfyui.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobqueue.sims.comfyui", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188, help="0 picks a free port")
    parser.add_argument("--control-port", type=int, default=None,
                        help="extra port serving only the /_sim/ fault switches (0 picks one)")
    parser.add_argument("--output-dir", default=None, help="where SaveImage writes (default: a temp dir)")
    parser.add_argument("--temp-dir", default=None, help="where PreviewImage writes (default: a temp dir)")
    parser.add_argument("--announce", action="store_true", help="print one JSON line with the URLs when ready")
    parser.add_argument("--models", default=None,
                        help="comma-separated checkpoint files present (CheckpointLoaderSimple options, /models)")
    parser.add_argument("--vram-gb", type=float, default=None, help="VRAM of the simulated GPU in /system_stats")
    parser.add_argument("--history-gap", type=float, default=0.0,
                        help="seconds between a prompt's last message and its /history entry (model unloading)")
    parser.add_argument("--newer", action="store_true", help="answer like a ComfyUI newer than 0.3.64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s comfyui-sim %(levelname)s %(message)s")
    run(args.host, args.port, output_dir=args.output_dir, temp_dir=args.temp_dir,
        control_port=args.control_port, announce=args.announce,
        models_present=args.models.split(",") if args.models is not None else None, vram_gb=args.vram_gb,
        history_gap=args.history_gap, newer=args.newer)


if __name__ == "__main__":
    main()
