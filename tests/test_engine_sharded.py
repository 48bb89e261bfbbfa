"""``torchrun --nproc_per_node 2 -m casn_core eval``: sharded extraction into one store."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from casn_core.checkpoint import load_model, model_payload, save_checkpoint
from casn_core.cli import main as cli_main
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.store_build import Shard, split_stores
from casn_core.models import build_model
from helpers import torch_threads

SIZE = (64, 32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from casn_core.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("sharded")
    data = root / "data"
    generate_dataset(data, SynthSpec(num_ids=10, num_cameras=3, images_per_id=5, seed=11, height=SIZE[0], width=SIZE[1]))
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=5, pretrained="none")
    ckpt = save_checkpoint(root / "m.pt", model_payload(model, input_size=list(SIZE), train_config={"threshold": 0.3}))
    return data, ckpt


@pytest.mark.slow
def test_two_gloo_processes_extract_the_same_store_as_one(setup, tmp_path, caplog):
    # batch size 1 everywhere: a convolution's rounding can depend on the batch it runs in, and the
    # shards' batches differ from one process's; per image the bytes must be identical
    data, ckpt = setup
    sharded_dir, single_dir = tmp_path / "sharded", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out_json = tmp_path / "eval2.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "casn_core",
         "eval", "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu", "--topk", "10",
         "--batch-size", "1", "--store-dir", str(sharded_dir), "--map-dtype", "float32", "--json", str(out_json)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = json.loads(out_json.read_text())

    single_json = tmp_path / "eval1.json"
    with torch_threads(1):  # as the torchrun workers (OMP_NUM_THREADS=1): the same kernels, so the same bits
        assert cli_main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu", "--topk", "10",
                         "--batch-size", "1", "--store-dir", str(single_dir), "--map-dtype", "float32",
                         "--json", str(single_json)]) == 0
    single = json.loads(single_json.read_text())
    assert {k: sharded[k] for k in ("feature", "casn")} == {k: single[k] for k in ("feature", "casn")}

    model, _ = load_model(ckpt, "cpu")
    caplog.set_level(logging.INFO, logger="casn_core")  # the store and its builder
    for a, b in zip(split_stores(model, str(data), _config(sharded_dir, "float32"), checkpoint=ckpt),
                    split_stores(model, str(data), _config(single_dir, "float32"), checkpoint=ckpt)):
        assert not [m for m in caplog.messages if "map store" in m]  # both stores committed and trusted: nothing extracted again
        assert torch.equal(a.read_maps(np.arange(len(a))), b.read_maps(np.arange(len(b))))
        assert torch.equal(a.features, b.features)
        assert a.paths == b.paths and np.array_equal(a.pids, b.pids)
        assert a.header["key"] == b.header["key"]
    assert not any(p.name.startswith(".tmp-") for p in sharded_dir.rglob("*"))


@pytest.mark.slow
def test_sharded_store_api_with_two_processes_in_one_test(setup, tmp_path, caplog):
    """open_or_build_store with world_size=2 (torch.multiprocessing, gloo): equals the one-process store
    (batch size 1: see the test above)."""
    import torch.multiprocessing as mp

    data, ckpt = setup
    mp.start_processes(_worker, args=(str(data), str(ckpt), str(tmp_path / "two"), _free_port()), nprocs=2,
                       start_method="spawn", join=True)
    model, _ = load_model(ckpt, "cpu")
    caplog.set_level(logging.INFO, logger="casn_core")  # the store and its builder
    two = split_stores(model, str(data), _config(tmp_path / "two"), checkpoint=ckpt)
    assert not [m for m in caplog.messages if "map store" in m]  # the workers' store is committed and trusted
    with torch_threads(1):  # the workers' thread count: the same kernels, so the same bits per image
        one = split_stores(model, str(data), _config(tmp_path / "one"), checkpoint=ckpt)
    for a, b in zip(two, one):
        assert torch.equal(a.read_maps(np.arange(len(a))), b.read_maps(np.arange(len(b))))
        assert torch.equal(a.features, b.features)


def _config(store_dir, map_dtype: str = "bfloat16") -> ExtractionConfig:
    """One image per batch (every process extracts image by image, so the bits agree) and no progress bar."""
    return ExtractionConfig(tuple(SIZE), batch_size=1, map_dtype=map_dtype, store_dir=store_dir, progress=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, data: str, ckpt: str, store_dir: str, port: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # a spawned worker process of its own: nothing to restore
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, _ = load_model(ckpt, "cpu")
        split_stores(model, data, _config(store_dir), checkpoint=ckpt, shard=Shard(rank, 2))
    finally:
        dist.destroy_process_group()
