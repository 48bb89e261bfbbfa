"""The app's explained pair (:mod:`app.pair`): its JSON is the endpoints' and exports' (keys, order, values),
and the text is read from its attributes. No model: a hand-made :class:`PairExplanation`."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from app.exports import header
from app.markdown import pair_markdown
from app.pair import DATASET_PAIR, SEARCH_PAIR, UPLOADED_PAIR, ExplainedPair, ImageRef, PairExplanation, ScorePart

LIBRARY_KEYS = ["same_probability", "feature_distance", "attention_distance", "threshold", "map1", "map2", "rows1",
                "rows2", "span1", "span2", "aligned1", "aligned2", "similarity", "similarity_map1",
                "similarity_map2", "similarity_rows1", "similarity_rows2"]


def _explanation() -> PairExplanation:
    grid = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    rows = np.array([0.1, 0.5, 0.2], dtype=np.float32)
    return PairExplanation(0.75, 0.5, 0.125, 0.3, grid, grid + 1, rows, rows * 2, (0, 1), (1, 2), rows, rows,
                           0.875, grid, grid, rows, rows)


def _dataset_pair(score: ScorePart) -> ExplainedPair:
    query = ImageRef(index=2, name="query/0001_c1s1_000001_00.jpg", pid=1, camid=1)
    gallery = ImageRef(index=7, name="bounding_box_test/0002_c2s1_000001_00.jpg", pid=2, camid=2)
    return ExplainedPair(_explanation(), DATASET_PAIR, query, gallery, true_match=False, ranking_score=score)


def test_score_parts_keep_the_keys_of_each_case():
    left_out = ScorePart(None, note="left out")
    assert left_out.to_json() == {"rank": None, "reranked_with_attention": False, "note": "left out"}
    placed = dict(rank=3, of=19, topk=10, attention_weight=1.0)
    reranked = ScorePart(**placed, reranked_with_attention=True, feature_part=0.25, attention_part=0.5, total=0.75)
    assert list(reranked.to_json().items()) == [
        ("rank", 3), ("of", 19), ("reranked_with_attention", True), ("topk", 10), ("attention_weight", 1.0),
        ("feature_part", 0.25), ("attention_part", 0.5), ("total", 0.75)]
    beyond = ScorePart(**placed, note="beyond the top 10")
    assert list(beyond.to_json()) == ["rank", "of", "reranked_with_attention", "topk", "attention_weight", "note"]
    # w = 0 is a value, not a missing one
    assert ScorePart(**{**placed, "attention_weight": 0.0}, note="w = 0").to_json()["attention_weight"] == 0.0


def test_the_json_of_each_kind_of_pair():
    explanation = _explanation()
    score = ScorePart(3, 19, True, 10, 1.0, 0.25, 0.5, 0.75)
    dataset = _dataset_pair(score).to_json()
    assert list(dataset) == LIBRARY_KEYS + ["kind", "query", "gallery", "true_match", "ranking_score"]
    assert {k: dataset[k] for k in LIBRARY_KEYS} == explanation.to_json()
    assert dataset["kind"] == "dataset pair" and dataset["true_match"] is False
    assert list(dataset["query"].items()) == [("index", 2), ("name", "query/0001_c1s1_000001_00.jpg"), ("pid", 1),
                                              ("camid", 1)]
    assert dataset["ranking_score"] == score.to_json()
    upload = ExplainedPair(explanation, UPLOADED_PAIR, images=("a.jpg", "b.png")).to_json()
    assert list(upload)[len(LIBRARY_KEYS):] == ["kind", "images"]
    assert upload["kind"] == "uploaded pair" and upload["images"] == ["a.jpg", "b.png"]
    search = ExplainedPair(explanation, SEARCH_PAIR, ImageRef(name="q.jpg"), ImageRef(name="x/y.jpg")).to_json()
    assert list(search)[len(LIBRARY_KEYS):] == ["kind", "query", "gallery"]
    assert (search["kind"], search["query"], search["gallery"]) == ("search pair", {"name": "q.jpg"},
                                                                    {"name": "x/y.jpg"})


def test_text_is_read_from_the_attributes():
    pair = _dataset_pair(ScorePart(3, 19, True, 10, 1.0, 0.25, 0.5, 0.75))
    text = pair_markdown(pair)
    assert text.startswith("**query** `query/0001_c1s1_000001_00.jpg` (id 1, cam 1) vs **gallery** "
                           "`bounding_box_test/0002_c2s1_000001_00.jpg` (id 2, cam 2): **wrong identity**")
    assert "| BCE same-person probability (eq. 3) | **0.750** |" in text
    assert "| kept rows (threshold t = 0.30) | query 0-1, gallery 1-2 |" in text
    assert "| ranking score d (rank 3 of 19) | **0.750** = 0.250 feature + 0.500 attention |" in text
    assert "by d_f alone" in pair_markdown(_dataset_pair(ScorePart(3, 19, False, 10, 0.0, note="w = 0")))
    assert "| ranking | left out |" in pair_markdown(_dataset_pair(ScorePart(None, note="left out")))
    upload = pair_markdown(ExplainedPair(_explanation(), UPLOADED_PAIR, images=("a.jpg", "b.jpg")),
                           ("image 1", "image 2"))
    assert upload.startswith("| quantity | value |") and "image 1 0-1, image 2 1-2" in upload
    view = SimpleNamespace(name="q_vs_g", explanation=pair)
    assert header(view).splitlines()[-1] == "rank 3: score 0.750 = 0.250 feature + 0.500 attention"
