"""``python -m jobqueue.sims.a1111 --port 7860``: serve a simulated Stable Diffusion WebUI."""

from __future__ import annotations

import argparse
import logging

from jobqueue.sims.a1111.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobqueue.sims.a1111", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    parser.add_argument("--control-port", type=int, default=None,
                        help="extra port serving only the /_sim/ fault switches (0 picks one)")
    parser.add_argument("--flavour", choices=("a1111", "forge"), default="a1111",
                        help="AUTOMATIC1111 v1.10.1 (pydantic 1 errors) or Forge (pydantic 2 errors)")
    parser.add_argument("--step-seconds", type=float, default=0.05, help="time per sampling step")
    parser.add_argument("--load-seconds", type=float, default=1.0, help="time to switch checkpoints")
    parser.add_argument("--webui-version", default="1.10", choices=("1.7", "1.8", "1.9", "1.10"),
                        help="A1111 release to imitate (1.7: no task ids; <= 1.8: unknown sampler is a 404)")
    parser.add_argument("--vram-gb", type=float, default=24.0,
                        help="simulated VRAM: a request needing more (2 GB + 1.5 GB per megapixel x batch) is out of memory")
    parser.add_argument("--announce", action="store_true", help="print one JSON line with the URLs when ready")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s a1111-sim %(levelname)s %(message)s")
    run(args.host, args.port, flavour=args.flavour, control_port=args.control_port,
        step_seconds=args.step_seconds, load_seconds=args.load_seconds, version=args.webui_version,
        vram_gb=args.vram_gb, announce=args.announce)


if __name__ == "__main__":
    main()
