"""Failure cases of a running app, as its explanation views describe them: one JSON object per line.

Asks a running ``python app.py`` (``--url``) through ``gradio_client`` for the queries whose rank-1
match is wrong under a ranking (``/list_queries``), takes ``--cases`` of them spread evenly over the
list sorted by AP (worst first), and for each reports what the "Why" view shows (``/why_wrong``): the
rank-1 wrong match and the best true match with their feature distance d_f, attention distance d_a
(eq. 5) and the BCE head's p(same) (eq. 3), the ranking-score parts, the first true rank, and the
verdict line the page prints.

    python app.py --checkpoint CKPT --data /path/to/Market-1501 --port 7870 &
    python bench/app_failures.py --url http://127.0.0.1:7870 --cases 3 [--attention-weight W --topk K]

Without ``--attention-weight``/``--topk`` the app's default ranking is used (the checkpoint's stored
(w, K), else the paper's).
"""
from __future__ import annotations

import argparse
import json
import time


def _pair(explanation: dict | None) -> dict | None:
    if explanation is None:
        return None
    return {"gallery": explanation["gallery"], "d_f": round(explanation["feature_distance"], 4),
            "d_a": round(explanation["attention_distance"], 4),
            "p_same": round(explanation["same_probability"], 4), "score": explanation["ranking_score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:7870")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--attention-weight", type=float, default=None)
    parser.add_argument("--topk", default=None, help="an integer or 'all'")
    args = parser.parse_args()
    from gradio_client import Client

    client = Client(args.url, verbose=False)
    started = time.perf_counter()
    failures = client.predict(True, "AP: worst first", args.attention_weight, args.topk, api_name="/list_queries")
    listed = time.perf_counter() - started
    if not failures:
        print(json.dumps({"failures": 0, "list_seconds": round(listed, 2)}))
        return
    step = max(1, len(failures) // max(1, args.cases))
    for entry in failures[::step][:args.cases]:
        started = time.perf_counter()
        why = client.predict(entry["index"], args.attention_weight, args.topk, api_name="/why_wrong")
        print(json.dumps({
            "failures": len(failures), "query": entry["name"], "query_pid": entry["pid"], "ap": round(entry["ap"], 4),
            "first_true_rank": why["first_true_rank"], "ranking": why["ranking_settings"],
            "rank1_wrong": _pair(why["rank1_wrong"]), "best_true": _pair(why["best_true"]),
            "verdict": (why["verdict"] or {}).get("text"), "list_seconds": round(listed, 2),
            "why_seconds": round(time.perf_counter() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
