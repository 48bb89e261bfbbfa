"""``casn eval``: CMC, mAP and mINP of the feature ranking and every named CASN ranking (docs/design.md, sec. 3)."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from casn_core.atomic import write_json_atomic
from casn_core.checkpoint import CheckpointError, checkpoint_info, load_model
from casn_core.commands import show_library_log
from casn_core.engine.evaluate import evaluate_model
from casn_core.dist import cpu_group, finish_distributed, init_distributed
from casn_core.engine.extraction import AMP_CHOICES, ExtractionConfig, resolve_device
from casn_core.engine.store_build import Shard
from casn_core.k_reciprocal import KReciprocalConfig
from casn_core.models.torchreid_adapter import add_arch_arguments
from casn_core.rankings import PAPER_WEIGHT, RankingSpec, paper_ranking, parse_topk
from casn_core.store import MAP_DTYPE_CHOICES


def format_table(results: dict, rankings: Sequence[RankingSpec] = ()) -> str:
    """A readable table of the evaluation results (percentages), one row per ranking named with its w and K."""
    rows = [("feature", results["feature"])] + [(spec.label(), results[spec.name]) for spec in rankings]
    if "feature_k_reciprocal" in results:
        kr = results["feature_k_reciprocal"]
        rows.insert(1, (f"feature + k-reciprocal (k1 {kr['k1']}, k2 {kr['k2']}, lambda {kr['lambda_value']:g})", kr))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"query {results['num_query']}  gallery {results['num_gallery']}",
             f"{'ranking':<{width}}{'R-1':>8}{'R-5':>8}{'R-10':>8}{'mAP':>8}{'mINP':>8}"]
    for name, r in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{100 * r[k]:>7.1f}%" for k in ("rank1", "rank5", "rank10", "mAP", "mINP")))
    if "casn" in results and "ranking" in results["casn"]:
        lines.append(f"default ranking (the app's and search's, JSON 'casn'): {results['casn']['ranking']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="dataset root with query/ and bounding_box_test/")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--attention-weight", type=float, default=None,
                        help="add a 'custom' ranking with this w in d = norm(d_f) + w norm(d_a) (with --topk; the "
                             "one not given is the paper's: w = 1, K = all). Every run also reports 'feature', "
                             "'paper' (w = 1, K = all) and, when the checkpoint stores one, 'tuned' (the validated "
                             "(w, K) of `casn tune` or `train --val-ids`)")
    parser.add_argument("--topk", default=None, help="K of the 'custom' ranking: an integer or 'all' (see --attention-weight)")
    parser.add_argument("--paper-topk", default="all",
                        help="bound the paper's ranking to the top K by feature distance (default all, the paper's: "
                             "one pair attention per query-gallery pair, 53.6 M for Market-1501; the row says the K)")
    parser.add_argument("--threshold", type=float, default=None, help="alignment threshold (default: the checkpoint's)")
    parser.add_argument("--k-reciprocal", action="store_true",
                        help="also score the feature ranking re-ranked by k-reciprocal encoding (Zhong et al., CVPR "
                             "2017; torchreid's --rerank), a row of its own: not part of CASN")
    parser.add_argument("--kr-k1", type=int, default=20, help="k1 of --k-reciprocal (the paper's 20)")
    parser.add_argument("--kr-k2", type=int, default=6, help="k2 of --k-reciprocal (the paper's 6)")
    parser.add_argument("--kr-lambda", type=float, default=0.3, help="lambda of --k-reciprocal (the paper's 0.3)")
    parser.add_argument("--no-pair-signals", action="store_true",
                        help="skip the pair signals (AUCs of d_f, d_a and p(same); sampled on large sets)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none")
    parser.add_argument("--store-dir", default=str(Path(".cache") / "store"),
                        help="map stores on disk (one per split; reused while checkpoint, files, size and dtype "
                             "match; shared with the app); default .cache/store under the working directory")
    parser.add_argument("--map-dtype", choices=MAP_DTYPE_CHOICES, default="auto",
                        help="dtype of the stored maps; auto = float32 while the gallery's float32 maps take "
                             "<= 4 GiB, else bfloat16 (same rule on CPU and CUDA; logged when it picks bfloat16). "
                             "float32 reproduces the in-memory numbers exactly")
    parser.add_argument("--in-memory", action="store_true", help="keep all maps in RAM instead of a store")
    add_arch_arguments(parser)


def eval_rankings(args: argparse.Namespace, info) -> tuple[list[RankingSpec], RankingSpec]:
    """The CASN rankings ``casn eval`` scores (paper, tuned when stored, custom when asked) and the default one."""
    threshold = info.threshold if args.threshold is None else args.threshold
    # without a trained BCE head (a torchreid checkpoint before fit-head) only its stored w = 0 ranking is scored
    rankings = [paper_ranking(threshold, parse_topk(args.paper_topk))] if info.has_bce_head else []
    default = rankings[0] if rankings else None
    if info.tuned is not None:
        default = replace(info.tuned, threshold=threshold)
        rankings.append(default)
    if args.attention_weight is not None or args.topk is not None:
        weight = PAPER_WEIGHT if args.attention_weight is None else args.attention_weight
        default = RankingSpec("custom", weight, parse_topk(args.topk), threshold)
        rankings.append(default)
    return rankings, default


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m casn_core eval`` (and ``torchrun -m casn_core eval``: sharded extraction)."""
    show_library_log()  # the pair-attention estimate and store messages reach stderr
    library = logging.getLogger("casn_core")
    level_before = library.level
    launch = None
    try:
        launch = init_distributed(resolve_device(args.device))
        if not launch.is_main:  # under torchrun one process speaks
            library.setLevel(logging.WARNING)
        model, payload = load_model(args.checkpoint, launch.device, arch=args.arch, input_size=args.input_size)
        info = checkpoint_info(payload)
        height, width = info.input_size
        rankings, default = eval_rankings(args, info)
        store_dir = None if args.in_memory else args.store_dir
        if store_dir is None and launch.world_size > 1:
            raise ValueError("--in-memory cannot be sharded across processes; drop it to use the map store")
        log = (lambda message: print(message, file=sys.stderr)) if launch.is_main else (lambda message: None)
        for spec in rankings:
            log(f"ranking {spec.label()}: d = norm(d_f) + w norm(d_a) on the top K by d_f"
                + (" (the default)" if spec is default else ""))
        extraction = ExtractionConfig((height, width), args.batch_size, args.workers, args.amp,
                                      map_dtype=args.map_dtype, store_dir=store_dir, progress=launch.is_main)
        shard = Shard(launch.rank, launch.world_size, cpu_group(launch))
        k_reciprocal = (KReciprocalConfig(args.kr_k1, args.kr_k2, args.kr_lambda) if args.k_reciprocal else None)
        results = evaluate_model(model, args.data, extraction, rankings, checkpoint=args.checkpoint, shard=shard,
                                 signals=not args.no_pair_signals and info.has_bce_head, k_reciprocal=k_reciprocal)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        library.setLevel(level_before)
        if launch is not None:
            finish_distributed(launch)
    if results is None:
        return 0
    results["casn"] = {**results[default.name], "ranking": default.name}
    print(format_table(results, rankings))
    if args.json:
        write_json_atomic(args.json, results, indent=2)
    return 0
