"""The app benchmarks' shared part: their inputs, and the app run as a separate process (``python app.py``).

Benchmarks talk to the app only as a user's client does (``gradio_client`` over HTTP), so they
import nothing of ``app``; memory is the app process's own resident set (``/proc/<pid>/status``).

- :func:`bench_inputs` -- the bundled checkpoint (or, when missing, a random-init MobileNetV2 CASN at
  256x128, reported as such) and the demo-sized generated set (or ``--data``).
- :func:`served_app` -- start ``app.py`` on a free 127.0.0.1 port, wait until it answers, stop it after.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CHECKPOINT = REPO_ROOT / "checkpoints" / "casn_mobilenetv2_synth.pt"
DEMO_SET = {"num_ids": 120, "num_cameras": 4, "images_per_id": 8, "seed": 20190616, "height": 256, "width": 128}
"""The app's demo set (``app/demo.py``): 60 test identities, 480 query + gallery images."""

log = logging.getLogger(__name__)


def bench_inputs(checkpoint: str | None, data: str | None, scratch: Path) -> tuple[Path, Path, str]:
    """``(checkpoint, dataset, note)`` for an app benchmark."""
    import torch

    from casn_core import build_model
    from casn_core.checkpoint import model_payload, save_checkpoint
    from casn_core.data.synth import SynthSpec, generate_dataset

    path = Path(checkpoint) if checkpoint else BUNDLED_CHECKPOINT
    note = path.name
    if not path.is_file():
        torch.manual_seed(0)
        model = build_model("mobilenet_v2", num_classes=60, pretrained="none").eval()
        path = save_checkpoint(Path(scratch) / "random_mobilenet_v2.pt", model_payload(model, input_size=[256, 128]))
        note = "random-init mobilenet_v2 256x128 (bundled checkpoint missing)"
    if data:
        return path, Path(data), note
    out = Path(scratch) / "demo_data"
    log.info("generating the demo-sized set into %s", out)
    generate_dataset(out, SynthSpec(**DEMO_SET), workers=min(4, os.cpu_count() or 1))
    return path, out, note


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status_kib(pid: int, fields: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """``fields`` of process ``pid``'s Linux ``/proc/<pid>/status`` in KiB (``VmHWM``: peak resident set)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name = line.split(":")[0]
        if name in fields:
            out[name] = int(line.split()[1])
    missing = [name for name in fields if name not in out]
    if missing:
        raise RuntimeError(f"no {', '.join(missing)} for process {pid}")
    return out


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB."""
    return proc_status_kib(pid, ("VmRSS",))["VmRSS"] / 1024


class RssSampler:
    """Samples :func:`rss_mib` of ``pid`` in a background thread; ``peak`` is the largest value seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


@contextlib.contextmanager
def served_app(checkpoint: Path, data: Path, cache_dir: Path, extra: list[str] | None = None, timeout: float = 600.0,
               log_file: Path | None = None, store_dir: Path | None = None, env: dict[str, str] | None = None):
    """Run ``python app.py`` on a free port until the block ends; yields ``(url, process, seconds to ready)``.

    ``store_dir``: the app's map stores (default ``<cache_dir>/store``); ``env``: extra environment
    variables for the child (e.g. thread counts)."""
    import httpx

    port = free_port()
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--checkpoint", str(checkpoint), "--data", str(data),
               "--cache-dir", str(cache_dir), "--store-dir", str(store_dir or Path(cache_dir) / "store"), "--port", str(port),
               *(extra or [])]
    output = open(log_file or os.devnull, "wb")
    child_env = {**os.environ, **(env or {}), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=child_env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/"
    # one client for the whole wait: httpx.get builds a client (and its TLS context) per call, which
    # took a third of a core from the app it was timing on a 2-core machine and added seconds of noise
    poller = httpx.Client(timeout=2)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode} before serving (log: {log_file})")
            try:
                if poller.get(f"{url}config").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"app.py did not answer within {timeout} s")
            time.sleep(0.05)
        ready = time.perf_counter() - start
        poller.close()
        yield url, process, ready
    finally:
        poller.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output.close()


def dataset_images(data: Path) -> tuple[list[str], list[str]]:
    """Query and gallery image paths of a Market-layout folder (for uploads)."""
    query = sorted(str(p) for p in (Path(data) / "query").glob("*.jpg"))
    gallery = sorted(str(p) for p in (Path(data) / "bounding_box_test").glob("*.jpg"))
    return query, gallery
