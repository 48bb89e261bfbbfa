"""The ranking controls, the endpoints with a default ``gradio_client``, honest errors (issue: the app as a
re-id researcher uses it).

One app for the module: a tiny generated dataset (8 test identities x 2 cameras at 128x64) and a randomly
initialised MobileNetV2 CASN checkpoint (K = 10 at start, so the default ranking is the paper's w = 1 on
K = 10), launched in-process on a free 127.0.0.1 port.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

import app.offline  # noqa: F401  (before gradio)
from helpers import require

require("gradio_client", "the app's endpoint tests")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from app_helpers import make_checkpoint, make_dataset, running_app  # noqa: E402

RANKINGS = ((1.0, 10), (0.5, "all"), (2.0, 5), (0.0, 10), (0.0, "all"))
"""(w, K) pairs the per-query numbers are checked for against eval's rows."""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-controls")
    checkpoint = make_checkpoint(root / "tiny.pt", seed=4)
    data = make_dataset(root / "data", seed=6)
    with running_app(checkpoint, data, root / "cache", topk=10) as (url, service):
        client = Client(url, verbose=False)  # default settings: downloads whatever it takes for a file
        yield {"url": url, "service": service, "client": client, "data": data, "root": root}


def _png(path, size, colour=(120, 60, 30)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_every_endpoint_answers_a_default_client(served):
    """No answer carries a ``{"path": ...}`` object the client would try to download (``/search_upload`` did)."""
    client, service, data = served["client"], served["service"], served["data"]
    queries = sorted((data / "query").iterdir())
    ranking = client.predict(0, api_name="/rank_query")
    assert ranking["ranking_settings"]["name"] == "custom" and ranking["ranking_settings"]["topk"] == 10
    weighted = client.predict(0, 0.5, "all", api_name="/rank_query")
    assert weighted["ranking_settings"] == {"name": "custom", "attention_weight": 0.5, "topk": "all",
                                            "threshold": service.state.threshold,
                                            "topk_effective": len(service.state.gallery)}
    only_w = client.predict(0, attention_weight=1.0, api_name="/rank_query")
    assert only_w["ranking_settings"]["name"] == "paper"  # w alone: K is the paper's (all)
    g = ranking["ranking"][0]["gallery_index"]
    pair = client.predict(0, g, 1.0, "all", api_name="/explain_pair")
    assert pair["ranking_score"]["attention_weight"] == 1.0 and pair["ranking_score"]["topk"] == len(service.state.gallery)
    assert client.predict(0, 1.0, 10, api_name="/why_wrong")["ranking_settings"]["topk"] == 10
    listed = client.predict(True, "AP: worst first", 0.0, "all", api_name="/list_queries")
    assert all(q["first_true_rank"] > 1 for q in listed)
    summary = client.predict(0.5, 20, api_name="/dataset_summary")
    assert summary["ranking_settings"]["attention_weight"] == 0.5 and summary["topk_attention"] == 20
    assert client.predict(0, g, 3, 3, "query", api_name="/correspondence")["cell"] is not None
    upload = client.predict(handle_file(str(queries[0])), handle_file(str(queries[1])), api_name="/explain_upload")
    assert 0 <= upload["same_probability"] <= 1 and upload["warnings"] == []
    found = client.predict(handle_file(str(queries[0])), 5, api_name="/search_upload")
    assert len(found["results"]) == 5 and all("path" not in r and "/" in r["name"] for r in found["results"])
    explained = client.predict(handle_file(str(queries[0])), found["results"][0]["name"], api_name="/explain_search")
    assert explained["gallery"]["name"] == found["results"][0]["name"]


def test_rankings_of_any_w_and_k_are_evals_rows(served):
    """Every query's first true rank and AP under a chosen (w, K) are the metrics' on eval's matrix for that
    (w, K); the shown list is that row's order with the junk left out."""
    from casn_core.engine.inference import casn_distmat, feature_distance
    from casn_core.rankings import RankingSpec
    from casn_core.metrics import evaluate_rank_per_query, junk_mask

    client, service = served["client"], served["service"]
    state = service.state
    for weight, topk in RANKINGS:
        k = len(state.gallery) if topk == "all" else topk
        if weight == 0:  # eval scores w = 0 as the feature ranking itself
            dist = feature_distance(state.query.features, state.gallery.features)
        else:
            dist = casn_distmat(state.model, state.query, state.gallery, RankingSpec.custom(weight, k, state.threshold))
        reference = evaluate_rank_per_query(dist, state.query.pids, state.gallery.pids, state.query.camids,
                                            state.gallery.camids)
        listed = client.predict(False, "file order", weight, topk, api_name="/list_queries")
        for q in listed:
            i = q["index"]
            if reference.valid[i]:
                assert q["first_true_rank"] == int(reference.first_true_rank[i]), (weight, topk, i)
                assert q["ap"] == pytest.approx(float(reference.ap[i]), abs=1e-9), (weight, topk, i)
            else:
                assert q["first_true_rank"] is None
        for i in (0, len(state.query) // 2):
            ranking = service.ranking(i, service.spec(weight, topk))
            order = np.argsort(np.asarray(dist[i]), kind="stable")
            junk = junk_mask(state.query.pids[i], state.query.camids[i], state.gallery.pids, state.gallery.camids)
            assert list(ranking.order) == [int(g) for g in order if not junk[g]], (weight, topk, i)
        summary = client.predict(weight, topk, api_name="/dataset_summary")
        valid = reference.valid.astype(bool)
        assert summary["casn"]["mAP"] == pytest.approx(float(reference.ap[valid].mean()), abs=1e-9)


def test_requests_without_controls_are_the_default_ranking(served):
    """No w and no K: the app's default ranking through the code that served it before the controls; the same
    (w, K) asked for explicitly gives the same list."""
    client, service = served["client"], served["service"]
    for q in range(3):
        plain = client.predict(q, api_name="/rank_query")
        explicit = client.predict(q, service.state.attention_weight, service.state.topk, api_name="/rank_query")
        assert [e["gallery_index"] for e in plain["ranking"]] == [e["gallery_index"] for e in explicit["ranking"]]
        assert plain["first_true_rank"] == explicit["first_true_rank"]
        assert service.ranking(q) is service.ranking(q, service.spec(None, None))  # the memoised default path


def test_bad_ranking_settings_are_clear_errors(served):
    client = served["client"]
    for args, message in (((0, -1.0, 10), "between 0 and 100"), ((0, 1.0, "0"), "K"), ((0, 1.0, "ten"), "topk"),
                          ((0, 1e9, 10), "between 0 and 100")):
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/rank_query")
    assert client.predict(0, api_name="/rank_query")["query"]["index"] == 0  # still serving


def test_the_verdict_says_what_ranked_the_wrong_match_first(served):
    """The verdict's comparisons are the pair's own d_f and d_a, and its break-even w really is where the true
    match passes the wrong one on that K."""
    client, service = served["client"], served["service"]
    failures = client.predict(True, "AP: worst first", 1.0, 10, api_name="/list_queries")
    if not failures:
        pytest.skip("no query fails at rank 1 with this random checkpoint")
    checked = 0
    for failure in failures[:4]:
        answer = client.predict(failure["index"], 1.0, 10, api_name="/why_wrong")
        verdict = answer["verdict"]
        wrong, true = answer["rank1_wrong"], answer["best_true"]
        assert verdict["feature_distance"]["wrong"] == pytest.approx(wrong["feature_distance"], abs=1e-5)
        assert verdict["attention_distance"]["wrong"] == pytest.approx(wrong["attention_distance"], abs=1e-4)
        assert verdict["attention_distance"]["true"] == pytest.approx(true["attention_distance"], abs=1e-4)
        assert verdict["favours_wrong"]["feature_distance"] == (wrong["feature_distance"] < true["feature_distance"])
        assert verdict["tested_attention_weight"] == 1.0 and verdict["attention_puts_true_first"] is False
        assert "What ranked it first" in verdict["text"] and "favours" in verdict["text"]
        w_star = verdict["break_even_attention_weight"]
        if w_star is not None:
            q, w_g, t_g = failure["index"], wrong["gallery"]["index"], true["gallery"]["index"]
            above = service.ranking(q, service.spec(w_star * 1.01 + 1e-3, 10))
            below = service.ranking(q, service.spec(max(0.0, w_star * 0.99 - 1e-3), 10))
            assert above.position(t_g) < above.position(w_g)
            if w_star > 0.01:
                assert below.position(t_g) > below.position(w_g)
            checked += 1
    default = client.predict(failures[0]["index"], 0.0, 10, api_name="/why_wrong")
    if default["failed"]:
        assert default["verdict"]["tested_attention_weight"] == 1.0  # w = 0 shown: the paper's w is tried
        assert "d_f alone (w = 0)" in default["verdict"]["text"]


def test_the_strip_is_paged_with_one_score_label(served):
    service = served["service"]
    state = service.state
    q = next((i for i in range(len(state.query)) if (service.ranking(i).first_true_rank or 0) > 1), 0)
    spec = service.spec(1.0, 5)
    first = service.query_view(q, spec, 0)
    second = service.query_view(q, spec, 1)
    total = len(first.ranking.order)
    assert (first.page.start, first.page.stop) == (0, 10) and (second.page.start, second.page.stop) == (10, min(20, total))
    assert first.page.pages == -(-total // 10) and first.page.total == total
    labels = {caption.split()[2] for _, caption in first.strip + second.strip}
    assert labels == {"d"}  # one score for the whole list, re-ranked head and tail alike
    scores = [float(caption.split()[3]) for _, caption in first.strip + second.strip]
    assert scores == sorted(scores)
    assert "(faded) follow in d_f order" in first.page.note
    feature = service.query_view(q, service.spec(0.0, "all"), 0)
    assert {caption.split()[2] for _, caption in feature.strip} == {"d_f"}
    jumped = service.query_view(q, spec, "first true")
    rank = jumped.ranking.first_true_rank
    assert jumped.page.start < rank <= jumped.page.stop
    assert any(caption.startswith(f"★#{rank} ✓") for _, caption in jumped.strip)
    moved = service.query_view(q, spec, 0, (q, "feature (w = 0, K = all)", feature.ranking.first_true_rank))
    assert ("moved" in moved.moved or "still" in moved.moved) and "feature (w = 0, K = all)" in moved.moved


def test_a_dataset_summary_beyond_the_budget_is_refused_with_the_eval_command(served, monkeypatch):
    import app.summaries

    service = served["service"]
    monkeypatch.setattr(app.summaries, "MAX_DATASET_PAIRS", 10)
    with pytest.raises(ValueError, match="casn eval --attention-weight 1.5 --topk 15"):
        service.summaries.get(service.spec(1.5, 15))  # a K whose attention distances are not kept yet
    stats, note = service.stats(service.spec(1.5, 15))  # the pickers fall back to the default's numbers
    assert len(stats) == len(service.state.query) and "default ranking" in note


def test_uploads_too_small_are_refused_and_odd_shapes_warned(served, tmp_path):
    from app.domain import domain_note
    from app.uploads import UploadError, aspect_warning, read_upload

    tiny = _png(tmp_path / "dot.png", (1, 1))
    with pytest.raises(UploadError, match=r"dot.png\): the image is 1 x 1 pixels, too small to hold a person"):
        read_upload(str(tiny), "image 2")
    with pytest.raises(AppError, match="1 x 1 pixels"):
        served["client"].predict(handle_file(str(tiny)), handle_file(str(tiny)), api_name="/explain_upload")
    assert read_upload(str(_png(tmp_path / "edge.png", (16, 16))), "image 1").size == (16, 16)
    square = read_upload(str(_png(tmp_path / "square.png", (400, 400))), "image 1")
    text = aspect_warning(square, (128, 64), "`square.png`")
    assert "400 x 400" in text and "squashed" not in text and "stretched 2.0x" in text
    assert aspect_warning(read_upload(str(_png(tmp_path / "tall.png", (60, 130))), "i"), (128, 64), "t") == ""
    answer = served["client"].predict(handle_file(str(tmp_path / "square.png")), handle_file(str(tmp_path / "square.png")),
                                      api_name="/explain_upload")
    assert any("400 x 400" in w for w in answer["warnings"])
    # trained on generated people: said next to explanations of uploads
    from app.demo import DEFAULT_CHECKPOINT

    assert "generated people" in domain_note(DEFAULT_CHECKPOINT, {})
    assert domain_note(served["root"] / "tiny.pt", {}) == ""
    assert "generated people" in domain_note(served["root"] / "tiny.pt", {"train_config": {"data": str(served["data"])}})


def test_one_upload_limit_on_the_page_and_in_gradio(served):
    import httpx

    from app.server import launch_kwargs
    from app.uploads import limit_text

    service = served["service"]
    assert launch_kwargs(service)["max_file_size"] == service.max_upload_bytes
    config = httpx.get(f"{served['url']}config", timeout=10).text
    assert f"at most **{limit_text(service.max_upload_bytes)}**" in config


def test_the_default_no_match_threshold_comes_from_the_gallery(served):
    from app.search import SearchService, index_from_state, no_match_threshold

    service = served["service"]
    index = index_from_state(service.state)
    labelled = no_match_threshold(index)
    assert 0 < labelled.value < 2 and "equal-error point" in labelled.source
    import dataclasses

    unlabelled = no_match_threshold(dataclasses.replace(index, gallery=dataclasses.replace(
        index.gallery, images=[dataclasses.replace(image, pid=None, camid=None) for image in index.images])))
    assert 0 < unlabelled.value < 2 and "percentile" in unlabelled.source
    search = SearchService(index_from_state(service.state), service.state.cache_dir)
    view = search.search_view("gallery", index.images[0].relpath, 5, search.no_match.value)
    assert "default threshold" in view.markdown and view.query_preview is not None
    buffer = io.BytesIO()
    Image.fromarray(view.query_preview).save(buffer, format="PNG")  # a picture the page can show


def test_the_verdict_quotes_the_pair_panels_d_a_on_bf16_maps(served):
    """The "Why" page shows d_a twice, in the verdict and in the two pair panels: one value, also where the
    maps are stored in bfloat16 (the app's choice for a gallery the size of Market-1501's)."""
    import dataclasses

    from app import explain
    from app.verdict import _attention_distances
    from casn_core.maps import read_maps

    state = served["service"].state

    def in_bf16(cache):
        return dataclasses.replace(cache, maps=read_maps(cache.maps, np.arange(len(cache))).bfloat16())

    half = dataclasses.replace(state, query=in_bf16(state.query), gallery=in_bf16(state.gallery))
    for q, pair in ((0, (1, 5)), (2, (3, 7)), (4, (0, 9))):
        quoted = _attention_distances(half, q, *pair)
        panels = [explain.explain_cached(half, q, g).to_json()["attention_distance"] for g in pair]
        assert quoted == pytest.approx(panels, rel=1e-5, abs=1e-6), (q, pair)
