"""The on-disk map store: round trip, stale and damaged stores, SIGKILL, same results as in RAM."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from casn_core.checkpoint import model_payload, save_checkpoint
from casn_core.data import ImageDataset, ImageRecord, build_test_transform, load_market
from casn_core.compute import Compute
from casn_core.engine.evaluate import evaluate_model
from casn_core.engine.evaluator import evaluate_rankings
from casn_core.engine.inference import (
    FeatureCache,
    extract,
    feature_distance,
    rank_query_casn,
)
from casn_core.engine.rerank import casn_distmat, iter_casn_distmat
from casn_core.metrics import evaluate_rank
from casn_core.models import build_model
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.store_build import StoreSource, StoreWriter, build_key, open_or_build_store, shard_range
from casn_core.rankings import RankingSpec
from casn_core.store import (
    AUTO_FLOAT32_MAX_BYTES,
    StoreError,
    default_map_dtype,
    files_sha256,
    float32_map_bytes,
    load_store,
    resolve_map_dtype,
    store_path,
    try_open_store,
)
from helpers import indicator_decided

SIZE = (64, 32)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from casn_core.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, SynthSpec(num_ids=12, num_cameras=3, images_per_id=5, seed=5, height=SIZE[0], width=SIZE[1]))
    return root


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("mobilenet_v2", num_classes=6, pretrained="none").eval()


@pytest.fixture(scope="module")
def model():
    return _model(0)


def _records(data: Path, split: str = "gallery") -> list:
    return list(getattr(load_market(data, splits=("query", "gallery")), split))


def _in_memory(model, records, map_dtype=torch.float32) -> FeatureCache:
    dataset = ImageDataset(records, build_test_transform(*SIZE))
    return extract(model, dataset, records, ExtractionConfig(batch_size=8, progress=False), map_dtype=map_dtype)


@contextlib.contextmanager
def _logged(messages: list[str]):
    """The map store's and its builder's messages (log records under casn_core), appended to ``messages``."""
    class Append(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("casn_core"), Append()  # the store and its builder
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _build(model, records, path, messages, map_dtype="float32", checkpoint=None):
    config = ExtractionConfig(SIZE, batch_size=8, map_dtype=map_dtype, progress=False)
    with _logged(messages):
        return open_or_build_store(model, records, path, config, source=StoreSource(checkpoint))


def _evaluate(model, data, store_dir=None, map_dtype="auto"):
    """eval's feature ranking and the CASN ranking named ``casn`` (w = 1 on the top 10)."""
    config = ExtractionConfig(SIZE, batch_size=8, map_dtype=map_dtype, store_dir=store_dir, progress=False)
    return evaluate_model(model, str(data), config, [RankingSpec("casn", 1.0, 10)])


@pytest.mark.parametrize("dtype_name,dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                              ("float16", torch.float16)])
def test_round_trip_equals_in_memory_extraction_and_is_reused(data, model, tmp_path, dtype_name, dtype):
    records = _records(data)
    reference = _in_memory(model, records, dtype)
    messages: list[str] = []
    store = _build(model, records, tmp_path / "g", messages, map_dtype=dtype_name)
    assert any("extracting" in m for m in messages)
    assert len(store) == len(records) and store.maps.dtype == dtype
    assert torch.equal(store.features, reference.features)
    assert np.array_equal(store.pids, reference.pids) and np.array_equal(store.camids, reference.camids)
    assert store.paths == reference.paths
    every = store.read_maps(np.arange(len(store)))
    assert every.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(every, reference.maps)
    picks = [5, 0, 5, len(records) - 1, 3]  # any order, repeats
    assert torch.equal(store.read_maps(picks), reference.maps[picks])
    cache = store.as_cache()
    assert torch.equal(cache.maps[2], reference.maps[2])
    assert torch.equal(cache.maps[1:4], reference.maps[1:4])
    assert torch.equal(cache.maps[torch.tensor([4, 1])], reference.maps[[4, 1]])
    # a second open trusts the committed store: no extraction
    messages.clear()
    again = _build(model, records, tmp_path / "g", messages, map_dtype=dtype_name)
    assert messages == [] and again.header["build"] == store.header["build"]


def test_truncated_store_is_rebuilt_with_a_message(data, model, tmp_path):
    records = _records(data)
    messages: list[str] = []
    store = _build(model, records, tmp_path / "g", messages)
    maps_file = store.path / store.header["build"] / "maps.npy"
    with open(maps_file, "r+b") as handle:
        handle.truncate(maps_file.stat().st_size // 2)
    key = build_key(model, records, checkpoint=None, root=None, input_size=SIZE, map_dtype="float32", amp="none")
    with pytest.raises(StoreError, match="truncated"):
        load_store(store.path, key)
    messages.clear()
    rebuilt = _build(model, records, tmp_path / "g", messages)
    assert any("truncated" in m and "rebuilding" in m for m in messages), messages
    assert torch.equal(rebuilt.read_maps(np.arange(len(records))), _in_memory(model, records).maps)


def test_store_of_another_checkpoint_files_or_dtype_is_rebuilt(data, model, tmp_path):
    records = _records(data)
    ckpt_a = save_checkpoint(tmp_path / "a.pt", model_payload(model, input_size=list(SIZE)))
    other = _model(1)
    ckpt_b = save_checkpoint(tmp_path / "b.pt", model_payload(other, input_size=list(SIZE)))
    messages: list[str] = []
    first = _build(model, records, tmp_path / "g", messages, checkpoint=ckpt_a)
    messages.clear()
    second = _build(other, records, tmp_path / "g", messages, checkpoint=ckpt_b)
    assert any("other checkpoint" in m for m in messages), messages
    assert not torch.equal(first.features, second.features)
    assert torch.equal(second.features, _in_memory(other, records).features)
    # the old build is gone, only the committed one remains
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(["header.json", second.header["build"]])
    # another file list (one image fewer) and another dtype are stale too
    key = build_key(other, records[:-1], checkpoint=ckpt_b, root=None, input_size=SIZE, map_dtype="float32",
                    amp="none")
    with pytest.raises(StoreError, match="other file list"):
        load_store(tmp_path / "g", key)
    key = build_key(other, records, checkpoint=ckpt_b, root=None, input_size=SIZE, map_dtype="bfloat16", amp="none")
    with pytest.raises(StoreError, match="other map dtype"):
        load_store(tmp_path / "g", key)
    os.utime(records[0].path, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched file: other file list
    messages.clear()
    _build(other, records, tmp_path / "g", messages, checkpoint=ckpt_b)
    assert any("other file list" in m for m in messages), messages


@pytest.mark.slow
def test_sigkill_during_extraction_leaves_no_trusted_store(data, model, tmp_path):
    records = _records(data)
    ckpt = save_checkpoint(tmp_path / "m.pt", model_payload(model, input_size=list(SIZE)))
    path = tmp_path / "g"
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys, time\n"
        "from casn_core.checkpoint import load_model\n"
        "from casn_core.data import load_market\n"
        "from casn_core.engine import store_build as store\n"
        "original = store.StoreWriter.write_rows\n"
        "def slow(self, *a, **k):\n"
        "    original(self, *a, **k)\n"
        "    print('WROTE', flush=True)\n"
        "    time.sleep(60)\n"
        "store.StoreWriter.write_rows = slow\n"
        "model, _ = load_model(sys.argv[1], 'cpu')\n"
        "records = list(load_market(sys.argv[2], splits=('query', 'gallery')).gallery)\n"
        "from casn_core.engine.extraction import ExtractionConfig\n"
        "config = ExtractionConfig((64, 32), batch_size=4, map_dtype='float32', progress=False)\n"
        "store.open_or_build_store(model, records, sys.argv[3], config, source=store.StoreSource(sys.argv[1]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(ckpt), str(data), str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # blocks until one batch is on disk (or the child died: "")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()
    assert line.strip() == "WROTE" and child.returncode == -signal.SIGKILL, line
    leftovers = [p.name for p in path.iterdir()]
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers), leftovers
    key = build_key(model, records, checkpoint=ckpt, root=None, input_size=SIZE, map_dtype="float32", amp="none")
    messages: list[str] = []
    with _logged(messages):
        assert try_open_store(path, key) is None
    assert any("no header.json" in m for m in messages), messages
    messages.clear()
    store = _build(model, records, path, messages, checkpoint=ckpt)
    assert any("interrupted extraction" in m for m in messages), messages
    assert not any(p.name.startswith(".tmp-") for p in path.iterdir())
    assert torch.equal(store.read_maps(np.arange(len(records))), _in_memory(model, records).maps)


@pytest.mark.numeric
def test_batched_reranking_from_the_store_equals_the_per_query_path(data, model, tmp_path):
    """Same distance matrix (to 2e-5) and metrics as rank_query_casn query by query on in-memory maps.

    Both paths are float32 with the same operations, but their products need not share a summation order
    (batch shapes, memory alignment, thread count), so not bit for bit: 2e-5 is about twice what float32
    rounding moves these unit-range distances against a float64 computation (8e-6, test_app_client). Only
    queries whose candidates' indicators float32 rounding cannot switch are compared (helpers), since a
    switched indicator changes a whole row; at least half of them must remain.
    """
    query_records, gallery_records = _records(data, "query"), _records(data, "gallery")
    query, gallery = _in_memory(model, query_records), _in_memory(model, gallery_records)
    dist = feature_distance(query.features, gallery.features)
    reference = np.empty(tuple(dist.shape))
    for i in range(len(query)):
        ranked = rank_query_casn(model, query.maps[i], gallery.maps, dist[i], RankingSpec.custom(1.0, 10),
                                 query_feature=query.features[i], gallery_features=gallery.features)
        reference[i, ranked.order] = ranked.distance
    messages: list[str] = []
    q_store = _build(model, query_records, tmp_path / "q", messages)
    g_store = _build(model, gallery_records, tmp_path / "g", messages)
    # tiny byte budget: many batches in both passes
    batched = casn_distmat(model, q_store.as_cache(), g_store.as_cache(), RankingSpec.custom(1.0, 10),
                           Compute(device="cpu", max_batch_bytes=3 * g_store.maps.row_bytes))
    assert batched.dtype == np.float32
    candidates = np.argsort(dist.numpy(), axis=1, kind="stable")[:, :10]
    decided = np.take_along_axis(indicator_decided(model, query.features, gallery.features, pre_margin=3e-5),
                                 candidates, axis=1).all(axis=1)
    assert decided.sum() >= len(decided) // 2, decided
    np.testing.assert_allclose(batched[decided], reference[decided], rtol=0, atol=2e-5)
    # no two distances of a compared query within 2 x 2e-5: the same rankings, hence the same metrics
    assert np.diff(np.sort(reference[decided], axis=1), axis=1).min() > 4e-5
    assert np.array_equal(np.argsort(batched[decided], axis=1, kind="stable"),
                          np.argsort(reference[decided], axis=1, kind="stable"))
    labels = (query.pids[decided], gallery.pids, query.camids[decided], gallery.camids)
    a, b = evaluate_rank(batched[decided], *labels, max_rank=10), evaluate_rank(reference[decided], *labels, max_rank=10)
    np.testing.assert_allclose(a["cmc"], b["cmc"], rtol=0, atol=1e-9)
    assert abs(a["mAP"] - b["mAP"]) <= 1e-9 and abs(a["mINP"] - b["mINP"]) <= 1e-9
    # K = all gallery images: every candidate re-scored
    full = casn_distmat(model, q_store.as_cache(), g_store.as_cache(), RankingSpec.custom(1.0, None))
    assert np.isfinite(full).all()


def test_eval_on_the_store_matches_the_in_memory_eval(data, model, tmp_path):
    """float32 store: identical metrics to 1e-9; 16-bit stores within the stated tolerance."""
    in_memory = _evaluate(model, data)
    stored = _evaluate(model, data, tmp_path / "store", "float32")
    assert stored["storage"]["maps"] == "store" and in_memory["storage"]["maps"] == "memory"
    for ranking in ("feature", "casn"):
        for name, value in in_memory[ranking].items():
            assert abs(stored[ranking][name] - value) <= 1e-9, (ranking, name)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "store").iterdir()) == ["gallery", "query"]
    # 16-bit maps: features stay float32 (same feature ranking); CASN metrics within 0.1 (stated in BENCHMARKS.md)
    half = _evaluate(model, data, tmp_path / "store", "bfloat16")
    assert half["storage"]["map_dtype"] == "bfloat16"
    assert half["feature"] == in_memory["feature"]
    for name, value in in_memory["casn"].items():
        assert abs(half["casn"][name] - value) <= 0.1, (name, half["casn"], in_memory["casn"])


def test_store_path_and_shards():
    assert store_path("s", "/d", "query", "float32") != store_path("s", "/d", "query", "bfloat16")
    assert store_path("s", "/d", "query", "float32") != store_path("s", "/e", "query", "float32")
    ranges = [shard_range(10, r, 3) for r in range(3)]
    assert ranges == [(0, 4), (4, 7), (7, 10)]
    assert shard_range(1, 1, 2) == (1, 1)


def test_bad_dtype_and_empty_records_are_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="float8"):
        open_or_build_store(model, [], tmp_path / "x", ExtractionConfig(SIZE, map_dtype="float8"))
    with pytest.raises(ValueError, match="no images"):
        open_or_build_store(model, [], tmp_path / "x", ExtractionConfig(SIZE, map_dtype="float32"))
    writer = StoreWriter.create(tmp_path / "y")
    assert writer.tmp.name.startswith(".tmp-")


@pytest.mark.numeric
def test_chunked_scoring_equals_the_whole_matrix(data, model):
    """eval scores both rankings a few query rows at a time: the same metrics (1e-9) as evaluate_rank of
    the whole matrices, whatever the chunk; the CASN blocks are the rows of casn_distmat (to 2e-5: feature
    distances of 3 query rows and of all of them are products of other shapes, so their last bits may
    differ, amplified by the unit-range normalisation over each query's candidates)."""
    query, gallery = _in_memory(model, _records(data, "query")), _in_memory(model, _records(data, "gallery"))
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    whole = casn_distmat(model, query, gallery, RankingSpec.custom(1.0, 10))
    max_rank = min(50, len(gallery))
    expected = {"feature": evaluate_rank(feature_distance(query.features, gallery.features), *labels, max_rank=max_rank),
                "casn": evaluate_rank(whole, *labels, max_rank=max_rank)}
    blocks = list(iter_casn_distmat(model, query, gallery, RankingSpec.custom(1.0, 10), Compute(chunk=3)))
    assert [start for start, _ in blocks] == list(range(0, len(query), 3))
    np.testing.assert_allclose(torch.cat([b for _, b in blocks]).numpy(), whole, rtol=0, atol=2e-5)
    # the metrics below must then be equal: no two distances of a query within 2 x 2e-5 of each other
    assert np.diff(np.sort(whole, axis=1), axis=1).min() > 4e-5
    for chunk in (1, 4, None):
        result = evaluate_rankings(model, query, gallery, [RankingSpec("casn", 1.0, 10)], Compute(chunk=chunk))
        for ranking in ("feature", "casn"):
            assert abs(result[ranking]["rank1"] - expected[ranking]["cmc"][0]) <= 1e-9
            assert abs(result[ranking]["rank5"] - expected[ranking]["cmc"][4]) <= 1e-9
            assert abs(result[ranking]["mAP"] - expected[ranking]["mAP"]) <= 1e-9
            assert abs(result[ranking]["mINP"] - expected[ranking]["mINP"]) <= 1e-9


def test_auto_map_dtype_is_float32_up_to_4_gib(data, model, tmp_path, monkeypatch):
    """auto = float32 while a split's float32 maps take <= 4 GiB (CPU and CUDA alike), bfloat16 above,
    logged; the eval default then equals the in-memory float32 numbers."""
    for device in ("cpu", "cuda"):
        assert default_map_dtype(device, AUTO_FLOAT32_MAX_BYTES) == "float32"
        assert default_map_dtype(device, AUTO_FLOAT32_MAX_BYTES + 1) == "bfloat16"
    messages: list[str] = []
    with _logged(messages):
        assert resolve_map_dtype("auto", "cpu", 5 << 30) == "bfloat16"
        assert resolve_map_dtype("auto", "cpu", 6 << 30, report=False) == "bfloat16"
        assert resolve_map_dtype("auto", "cpu", 1 << 30) == "float32"
    assert len(messages) == 1 and "5.0 GiB > 4 GiB" in messages[0], messages
    records = _records(data, "gallery")
    per_image = float32_map_bytes(model, SIZE, 1)
    assert per_image == 1280 * 4 * 2 * 4  # mobilenet_v2 at 64 x 32: 1280 channels of 4 x 2 (stride 16), float32
    assert float32_map_bytes(model, SIZE, len(records)) == per_image * len(records)
    with _logged(messages):
        store = open_or_build_store(model, records, tmp_path / "g", ExtractionConfig(SIZE, batch_size=8, progress=False))
        assert store.map_dtype == "float32"
        default = _evaluate(model, data, tmp_path / "store")
    in_memory = _evaluate(model, data)
    assert default["storage"]["map_dtype"] == "float32"
    assert default["feature"] == in_memory["feature"] and default["casn"] == in_memory["casn"]
    # a gallery over the limit: bfloat16 for both splits, with the reason logged
    monkeypatch.setattr("casn_core.store.AUTO_FLOAT32_MAX_BYTES", per_image * (len(records) - 1))
    messages.clear()
    with _logged(messages):
        half = _evaluate(model, data, tmp_path / "store")
    assert half["storage"]["map_dtype"] == "bfloat16"
    assert any("map dtype auto: bfloat16" in m for m in messages), messages


def test_file_list_hash_is_the_relpath_formula(tmp_path, monkeypatch):
    """``files_sha256`` slices paths under the root instead of calling ``os.path.relpath`` per file;
    the hash (which names every existing store) must equal the formula's for every spelling."""
    import hashlib

    def reference(records, root):
        digest = hashlib.sha256()
        for record in records:
            stat = Path(record.path).stat()
            rel = os.path.relpath(Path(record.path), root) if root is not None else str(Path(record.path))
            digest.update(f"{rel}\t{record.pid}\t{record.camid}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    root = tmp_path / "data"
    (root / "query").mkdir(parents=True)
    (root / "sub").mkdir()
    (tmp_path / "other.jpg").write_bytes(b"xy")
    for name in ("a.jpg", "b.jpg"):
        (root / "query" / name).write_bytes(b"x" * len(name))
    monkeypatch.chdir(tmp_path)
    spellings = [str(root / "query" / "a.jpg"), str(root / "sub" / ".." / "query" / "b.jpg"), "data/query/a.jpg",
                 str(tmp_path / "other.jpg"), Path(root / "query" / "b.jpg"), "./data//query/b.jpg",
                 str(root) + "//query/a.jpg"]
    records = [ImageRecord(path, 1, 2, 1) for path in spellings]
    for given_root in (root, str(root) + "/", "data", "data/sub/..", "/", None):
        assert files_sha256(records, given_root) == reference(records, given_root), given_root

