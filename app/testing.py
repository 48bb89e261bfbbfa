"""Helpers for the app's tests and benchmark: a tiny checkpoint, a tiny dataset, an app on a free port."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)


def make_checkpoint(path: str | Path, backbone: str = "mobilenet_v2", num_classes: int = 8, seed: int = 0,
                    input_size: tuple[int, int] = (128, 64), threshold: float = 0.3) -> Path:
    """A randomly initialised CASN checkpoint (stands in for a trained one in tests)."""
    import torch

    from casn_core import build_model
    from casn_core.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(backbone, num_classes=num_classes, pretrained="none").eval()
    return save_checkpoint(path, model_payload(model, input_size=list(input_size), train_config={"threshold": threshold}))


def make_dataset(out: str | Path, num_ids: int = 16, num_cameras: int = 2, images_per_id: int = 4, seed: int = 0,
                 height: int = 128, width: int = 64) -> Path:
    """A small procedural Market-layout dataset: the second half of ``num_ids`` are the test identities."""
    from casn_core.data.synth import generate_dataset

    out = Path(out)
    generate_dataset(out, num_ids=num_ids, num_cameras=num_cameras, images_per_id=images_per_id, seed=seed,
                     height=height, width=width)
    return out


def bench_inputs(checkpoint: str | None, data: str | None, cache_dir: Path, scratch: Path,
                 log=print) -> tuple[Path, Path, str]:
    """The app benchmarks' ``(checkpoint, dataset, note)``: the bundled checkpoint and demo set by
    default; a random-init mobilenet_v2 (256x128) stands in when the bundled checkpoint is missing."""
    from app.demo import DEFAULT_CHECKPOINT, ensure_demo_data

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    note = str(path.name)
    if not path.is_file():
        path = make_checkpoint(Path(scratch) / "random_mobilenet_v2.pt", "mobilenet_v2", num_classes=60,
                               input_size=(256, 128))
        note = "random-init mobilenet_v2 256x128 (bundled checkpoint missing)"
    return path, (Path(data) if data else ensure_demo_data(cache_dir, log=log)), note


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


@contextlib.contextmanager
def running_app(checkpoint, data, cache_dir, topk: int = 10, max_upload_bytes: int | None = None):
    """Build and launch the app in this process on a free 127.0.0.1 port; yields ``(url, handlers)``."""
    from app.server import build, free_port, launch_kwargs
    from app.uploads import MAX_UPLOAD_BYTES

    demo, handlers = build(checkpoint, data, cache_dir, topk=topk,
                           max_upload_bytes=max_upload_bytes or MAX_UPLOAD_BYTES, progress=False, log=lambda *_: None)
    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(prevent_thread_lock=True, quiet=True,
                                                   **launch_kwargs(handlers, "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url)
        yield url, handlers
    finally:
        demo.close()
