"""Helpers for the app's tests: a tiny checkpoint, a tiny dataset, the app served in-process on a free port."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)


def make_checkpoint(path: str | Path, backbone: str = "mobilenet_v2", num_classes: int = 8, seed: int = 0,
                    input_size: tuple[int, int] = (128, 64), threshold: float | None = None) -> Path:
    """A randomly initialised CASN checkpoint (stands in for a trained one in tests)."""
    import torch

    from casn_core import build_model
    from casn_core.attention import DEFAULT_THRESHOLD
    from casn_core.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(backbone, num_classes=num_classes, pretrained="none").eval()
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    return save_checkpoint(path, model_payload(model, input_size=list(input_size), train_config={"threshold": threshold}))


def make_dataset(out: str | Path, num_ids: int = 16, num_cameras: int = 2, images_per_id: int = 4, seed: int = 0,
                 height: int = 128, width: int = 64) -> Path:
    """A small procedural Market-layout dataset: the second half of ``num_ids`` are the test identities."""
    from casn_core.data.synth import SynthSpec, generate_dataset

    out = Path(out)
    generate_dataset(out, SynthSpec(num_ids=num_ids, num_cameras=num_cameras, images_per_id=images_per_id, seed=seed,
                               height=height, width=width))
    return out


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app at {url} did not answer /config within {timeout} s")
        time.sleep(0.1)


def make_unlabelled_gallery(data: str | Path, out: str | Path, seed: int = 0) -> dict:
    """A folder of person crops with no naming convention, made from a Market-layout set's test images.

    Every query and gallery image is copied under a random name (half of them into a nested
    sub-folder); a text file and a truncated JPEG are added. Returns ``{"folder", "names"
    (new relative name -> original Market name), "bad": [the two bad files' names]}``.
    """
    import random
    import shutil

    rng = random.Random(seed)
    out = Path(out)
    (out / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    names = {}
    sources = sorted((Path(data) / "query").glob("*.jpg")) + sorted((Path(data) / "bounding_box_test").glob("*.jpg"))
    for i, source in enumerate(sources):
        stem = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))
        rel = f"nested/deeper/{stem}.jpg" if i % 2 else f"{stem}.jpg"
        shutil.copyfile(source, out / rel)
        names[rel] = source.name
    (out / "notes.txt").write_text("not an image\n")
    data_bytes = sources[0].read_bytes()
    (out / "nested" / "truncated.jpg").write_bytes(data_bytes[: len(data_bytes) // 3])
    return {"folder": out, "names": names, "bad": ["notes.txt", "truncated.jpg"]}


@contextlib.contextmanager
def serving(demo, service):
    """Launch a built page in this process on a free 127.0.0.1 port; yields its url."""
    from app.server import free_port, launch_kwargs

    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(prevent_thread_lock=True, quiet=True,
                                                   **launch_kwargs(service, "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url)
        yield url
    finally:
        demo.close()


@contextlib.contextmanager
def running_gallery_app(checkpoint, gallery, cache_dir, topk: int = 10):
    """Unlabelled mode (``python app.py --gallery DIR``) in this process; yields ``(url, SearchService)``."""
    from app.server import build_gallery

    demo, service = build_gallery(checkpoint, gallery, cache_dir, topk=topk, progress=False)
    with serving(demo, service) as url:
        yield url, service


@contextlib.contextmanager
def running_app(checkpoint, data, cache_dir, topk: int = 10, max_upload_bytes: int | None = None,
                ranking_cache: int = 512):
    """Build and launch the app in this process on a free 127.0.0.1 port; yields ``(url, service)``."""
    from app.server import build, free_port, launch_kwargs
    from app.uploads import MAX_UPLOAD_BYTES

    demo, service = build(checkpoint, data, cache_dir, topk=topk, max_upload_bytes=max_upload_bytes or MAX_UPLOAD_BYTES,
                          ranking_cache=ranking_cache, progress=False)
    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(prevent_thread_lock=True, quiet=True,
                                                   **launch_kwargs(service, "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url)
        yield url, service
    finally:
        demo.close()
