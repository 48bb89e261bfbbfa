"""The app under load (smaller than ``bench/app_load.py``, same code).

8 concurrent ``gradio_client`` clients x 4 requests x 2 rounds, mixing ``/rank_query``,
``/explain_pair`` and ``/explain_upload``, against an app launched in this process on 127.0.0.1
with a tiny random MobileNetV2 checkpoint and a tiny generated dataset. Every request must be
answered, with no error, with the same content as the same request made alone (rankings entry by
entry: the right query, the same gallery order and scores); the number of live Python objects of
the server must not grow from one round to the next (memory in MiB is the bench's job, not a test's). Also: an upload larger than Gradio's own ``max_file_size`` is
refused by the server (HTTP 413) before the handler sees it, and the server keeps answering.
"""
from __future__ import annotations

import gc

import pytest

import app.offline  # noqa: F401  (before gradio)
from helpers import load_bench, require

require("gradio_client", "the load test's clients")

from app_helpers import make_checkpoint, make_dataset, running_app  # noqa: E402

UPLOAD_LIMIT = 2**20


def _bench_module():
    return load_bench("app_load")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-load")
    checkpoint = make_checkpoint(root / "ckpt" / "tiny.pt")
    data = make_dataset(root / "data")
    with running_app(checkpoint, data, root / "cache", topk=10, max_upload_bytes=UPLOAD_LIMIT,
                     ranking_cache=0) as (url, service):
        yield {"url": url, "service": service, "root": root, "data": data}


@pytest.mark.slow
def test_concurrent_clients_get_correct_answers_and_memory_is_stable(served):
    bench = _bench_module()
    state = served["service"].state

    def probe() -> dict:
        gc.collect()
        return {"python_objects": len(gc.get_objects())}  # the server runs in this process

    result = bench.run_load(served["url"], state.query.paths, state.gallery.paths, clients=8, requests=4,
                            workdir=served["root"] / "load", rounds=2, probe=probe)
    assert result["errors"] == 0, result["error_samples"]
    assert result["mismatches"] == 0, result["mismatch_samples"]
    assert result["answered"] == result["requests"] == 8 * 4 * 2
    for kind in ("rank", "explain", "upload"):
        assert result["latency"][kind]["n"] > 0, kind
    objects = [r["python_objects"] for r in result["server_after_each_round"]]
    assert abs(objects[1] - objects[0]) < 0.01 * objects[0], objects  # no Python objects pile up per request


def test_answer_checks_catch_wrong_answers():
    """The comparison the load test relies on does reject a different ranking or score."""
    bench = _bench_module()
    answer = {"query": {"index": 3}, "ranking": [{"gallery_index": 5, "score": 0.25}, {"gallery_index": 7, "score": 0.5}]}
    assert bench.check_answer(("rank", 3), answer, answer) is None
    assert bench.check_answer(("rank", 4), answer, answer) is not None
    swapped = {**answer, "ranking": answer["ranking"][::-1]}
    assert bench.check_answer(("rank", 3), answer, swapped) is not None
    nudged = {**answer, "ranking": [{"gallery_index": 5, "score": 0.2502}, answer["ranking"][1]]}
    assert bench.check_answer(("rank", 3), answer, nudged) is not None
    close = {**answer, "ranking": [{"gallery_index": 5, "score": 0.25 + 1e-7}, answer["ranking"][1]]}
    assert bench.check_answer(("rank", 3), answer, close) is None


def test_upload_over_gradio_limit_is_refused_by_the_server(served, tmp_path):
    """Above ``max_file_size`` (set from the app's upload limit) the server refuses the upload itself
    (HTTP 413 while streaming; ``gradio_client`` would refuse even earlier, so this posts directly)."""
    import httpx
    from gradio_client import Client

    from app.server import launch_kwargs

    limit = launch_kwargs(served["service"])["max_file_size"]
    assert limit < 2 * UPLOAD_LIMIT + 2**20
    good = sorted((served["data"] / "query").iterdir())[0].read_bytes()
    huge = good + b"\0" * (limit + 1024)
    response = httpx.post(f"{served['url']}gradio_api/upload", files={"files": ("huge.png", huge, "image/png")},
                          timeout=60)
    assert response.status_code == 413, (response.status_code, response.text[:300])
    assert "exceeded" in response.text
    small = httpx.post(f"{served['url']}gradio_api/upload", files={"files": ("small.png", good, "image/png")},
                       timeout=60)
    assert small.status_code == 200  # the control: an upload under the limit is stored
    client = Client(served["url"], verbose=False, download_files=False)
    assert client.predict(0, api_name="/rank_query")["query"]["index"] == 0  # still serving


def test_no_route_serves_files_outside_the_dataset_and_cache(served):
    """Beyond ``test_app_client.py::test_files_outside_data_and_cache_are_refused``
    (which goes through ``httpx``, which normalises ``../`` before sending): raw request paths, sent
    as written, on every route that serves files (``/gradio_api/file=``, the deprecated
    ``/gradio_api/file/``, ``/static/``, ``/assets/``, ``/svelte/``, ``/gradio_api/proxy=``), with
    plain, percent-encoded, double-encoded and backslash ``..``, and a symlink inside the dataset that
    points outside it."""
    import http.client
    import os
    from urllib.parse import urlparse

    root, data = served["root"], served["data"]
    cache = served["service"].state.cache_dir
    secret = root / "secret.txt"
    secret.write_text("TOP-SECRET-4711\n")
    link = data / "query" / "zz_link.jpg"
    os.symlink(secret, link)
    try:
        image = sorted((data / "query").glob("*_c*.jpg"))[0]
        up = "..%2f" * 8
        paths = [
            f"/gradio_api/file={data}/../secret.txt", f"/gradio_api/file={data}/..%2fsecret.txt",
            f"/gradio_api/file={data}/%2e%2e/secret.txt", f"/gradio_api/file={data}/%2e%2e%2fsecret.txt",
            f"/gradio_api/file={data}/%252e%252e/secret.txt", f"/gradio_api/file={data}/query/..\\..\\secret.txt",
            f"/gradio_api/file={data}/query/../../secret.txt", f"/gradio_api/file={data}//..//secret.txt",
            f"/gradio_api/file={data}%00/../secret.txt", f"/gradio_api/file={cache}/../secret.txt",
            f"/gradio_api/file={secret}", f"/gradio_api/file=%2F..{secret}", f"/gradio_api/file/{data}/../secret.txt",
            f"/file={data}/../secret.txt", "/gradio_api/file=../../../../../../etc/passwd",
            f"/gradio_api/file={data}/query/zz_link.jpg", f"/static/../../../../../..{secret}",
            f"/static/{up}{secret}", f"/assets/{up}{secret}", f"/svelte/{up}{secret}",
            f"/gradio_api/proxy=file://{secret}", f"/static/{up}etc/passwd",
        ]
        port = urlparse(served["url"]).port

        def get(path: str) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", path)  # sent as written: no normalisation of ".."
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        status, body = get(f"/gradio_api/file={image}")
        assert status == 200 and body == image.read_bytes()  # the control: the dataset itself is served
        for path in paths:
            status, body = get(path)
            assert status in (400, 403, 404), (path, status)
            assert b"TOP-SECRET" not in body and b"root:" not in body, path
    finally:
        link.unlink()
