"""The dataset summary off the app's start path: block-wise scoring equals scoring eval's whole
CASN matrix (with blocks forced small, so that the 12 queries span several, one of them partial); the disk
cache beside the map stores is used only when its key matches; the background job gives the same summary."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import app.offline  # noqa: F401  (before gradio)
from app_helpers import make_checkpoint, make_dataset
from reference import reference_per_query


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    from app.state import load_state

    root = tmp_path_factory.mktemp("app-summary")
    checkpoint = make_checkpoint(root / "tiny.pt", seed=2)
    data = make_dataset(root / "data", seed=5)
    return load_state(checkpoint, data, root / "cache", topk=10, progress=False)


def _per_query(summary) -> list:
    return [(s.first_true_rank, s.ap) for s in summary.per_query]


@pytest.mark.numeric
def test_blocks_equal_the_whole_matrix(state, monkeypatch):
    import casn_core.engine.rerank as rerank
    from app.core import RankingSpec, casn_distmat
    from app.ranking import summarise_dataset

    whole = casn_distmat(state.model, state.query, state.gallery,  # default blocks: one for this tiny set
                         RankingSpec.custom(state.attention_weight, state.topk, state.threshold))
    expected = reference_per_query(whole, state.query.pids, state.gallery.pids, state.query.camids,
                                   state.gallery.camids)  # a plain loop, not the app's scorer

    block_rows = 5  # 12 queries: blocks of 5, 5 and 2 rows
    monkeypatch.setattr(rerank, "query_chunk", lambda num_gallery, block_bytes=None: block_rows)
    blocks = []
    original = rerank.feature_distance_blocks

    def spy(*args, **kwargs):
        for start, block in original(*args, **kwargs):
            blocks.append(block.shape[0])
            yield start, block

    monkeypatch.setattr(rerank, "feature_distance_blocks", spy)
    summary = summarise_dataset(state)
    assert len(state.query) == 12 and blocks[:3] == [5, 5, 2], blocks  # several blocks, the last one partial
    for i, (first, ap) in enumerate(_per_query(summary)):
        if expected[i] is not None:
            assert first == expected[i][0] and ap == pytest.approx(expected[i][1], abs=1e-12), i
        else:
            assert first is None and ap is None
    valid = [e for e in expected if e is not None]
    assert summary.casn["mAP"] == pytest.approx(sum(e[1] for e in valid) / len(valid), abs=1e-12)
    assert summary.casn["mINP"] == pytest.approx(sum(e[2] for e in valid) / len(valid), abs=1e-12)
    assert summary.casn["rank1"] == pytest.approx(sum(e[0] == 1 for e in valid) / len(valid), abs=1e-12)


def test_cache_is_used_only_when_its_key_matches(state, caplog):
    from app.summary import SummaryJob, cache_path, summary_key

    path = cache_path(state, summary_key(state))
    path.unlink(missing_ok=True)
    first = SummaryJob(state, background=False)
    assert not first.cached and path.is_file()
    again = SummaryJob(state, background=False)
    assert again.cached and _per_query(again.result()) == _per_query(first.result())
    assert again.result().casn == first.result().casn and again.result().feature == first.result().feature

    # a file made for other stores (same name, other key) is recomputed, never trusted
    data = json.loads(path.read_text())
    data["key"]["gallery_store"]["checkpoint_sha256"] = "0" * 64
    data["casn"]["ap"] = [0.5] * len(data["casn"]["ap"])
    path.write_text(json.dumps(data))
    caplog.set_level(logging.INFO, logger="app")
    caplog.clear()
    stale = SummaryJob(state, background=False)
    assert not stale.cached and any("recomputing" in m for m in caplog.messages)
    assert _per_query(stale.result()) == _per_query(first.result())

    path.write_text("{truncated")
    caplog.clear()
    broken = SummaryJob(state, background=False)
    assert not broken.cached and any("recomputing" in m for m in caplog.messages)
    assert json.loads(path.read_text())["key"] == summary_key(state)  # rewritten whole

    # other ranking settings: another key, another file
    from dataclasses import replace

    other = replace(state, topk=3)
    assert cache_path(other, summary_key(other)) != path


def test_background_job_gives_the_same_summary(state):
    from app.summary import SummaryJob, cache_path, summary_key

    cache_path(state, summary_key(state)).unlink(missing_ok=True)
    reference = SummaryJob(state, background=False).result()
    cache_path(state, summary_key(state)).unlink()
    job = SummaryJob(state, background=True)
    assert _per_query(job.result(timeout=120)) == _per_query(reference) and job.ready
