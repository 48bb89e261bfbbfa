"""Images per second of the procedural pedestrian generator (``python -m casn_core synth``).

Times :func:`casn_core.data.synth.generate_dataset` end to end -- planning, rendering, writing the
JPEG, the PNG mask and the manifest -- into a temporary folder, ``--repeats`` times, and reports the
median. The target is at least 200 images/s on 2 cores at 256x128.

    python bench/synth_speed.py [--ids 60 --cameras 4 --images-per-id 20 --workers 0 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from casn_core.data.synth import SynthSpec, generate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=60)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--images-per-id", type=int, default=20)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = []
    num_images = 0
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            spec = SynthSpec(args.ids, args.cameras, args.images_per_id, args.seed + repeat, args.height, args.width)
            manifest = generate_dataset(out, spec, args.workers)
            seconds = time.perf_counter() - started
        num_images = manifest["num_images"]
        rates.append(num_images / seconds)
    print(json.dumps({
        "images_per_s": round(statistics.median(rates), 1),
        "height": args.height, "width": args.width, "images": num_images, "workers": args.workers,
        "repeats": args.repeats, "all_images_per_s": [round(r, 1) for r in rates],
        "includes": "render + JPEG + PNG mask + manifest", "cpus": os.cpu_count(), "python": platform.python_version(),
    }))
    return 0

if __name__ == "__main__":
    sys.exit(main())
