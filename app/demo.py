"""The bundled default: the committed demo checkpoint and a demo set generated at first start.

The demo query/gallery set is the project's procedural pedestrians
(:func:`casn_core.data.synth.generate_dataset`) with a fixed seed, written once into the cache
folder (atomically: generated in a temporary folder, then renamed), so ``python app.py`` works on a
fresh machine with no download. Its seed differs from the training set's, so the demo identities
are unseen by the checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "casn_mobilenetv2_synth.pt"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "app"
DEFAULT_STORE_DIR = REPO_ROOT / ".cache" / "store"
"""Map stores: ``python -m casn_core eval``'s default ``--store-dir`` when run from the repository."""

DEMO_SETTINGS = {"num_ids": 120, "num_cameras": 4, "images_per_id": 8, "seed": 20190616, "height": 256, "width": 128}
"""Procedural demo set: fixed seed (not the training seed), Market layout. The generator makes the
second half of the identities the test identities: 60 people, 480 query + gallery images."""


def demo_data_dir(cache_dir: str | os.PathLike) -> Path:
    tag = "_".join(f"{k}{v}" for k, v in DEMO_SETTINGS.items())
    return Path(cache_dir) / "demo_data" / tag


def ensure_demo_data(cache_dir: str | os.PathLike, settings: dict | None = None) -> Path:
    """The demo dataset folder, generated deterministically on first use."""
    from app.core import SynthSpec, generate_dataset

    settings = dict(DEMO_SETTINGS if settings is None else settings)
    out = demo_data_dir(cache_dir) if settings == DEMO_SETTINGS else Path(cache_dir) / "demo_data" / "custom"
    marker = out / ".complete"
    if marker.is_file():
        return out
    log.info("demo data: generating %d procedural identities x %d cameras (seed %d) into %s (first start only)",
             settings["num_ids"], settings["num_cameras"], settings["seed"], out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    try:
        spec = SynthSpec(num_ids=settings["num_ids"], num_cameras=settings["num_cameras"],
                         images_per_id=settings["images_per_id"], seed=settings["seed"],
                         height=settings["height"], width=settings["width"])
        generate_dataset(tmp, spec, workers=min(4, os.cpu_count() or 1))
        (tmp / ".complete").write_text(json.dumps(settings))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
