"""The command line: ``casn {synth,train,eval,tune,explain,search,fit-head,app}`` (also ``python -m casn_core ...``)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from casn_core.data.synth import add_synth_arguments
    from casn_core.engine.evaluate import add_eval_arguments
    from casn_core.engine.explain import add_explain_arguments
    from casn_core.engine.fit_head import add_fit_head_arguments
    from casn_core.engine.train import add_train_arguments
    from casn_core.engine.tune import add_tune_arguments
    from casn_core.search import add_search_arguments

    parser = argparse.ArgumentParser(prog="casn", description="CASN person re-identification "
                                     "(Zheng et al., CVPR 2019): train, evaluate, explain, search, serve the app")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_synth_arguments(commands.add_parser("synth", help="generate a procedural pedestrian dataset (Market layout)"))
    add_train_arguments(commands.add_parser("train", help="train CASN (DDP under torchrun)"))
    add_eval_arguments(commands.add_parser("eval", help="CMC/mAP/mINP with feature and CASN ranking"))
    add_tune_arguments(commands.add_parser("tune", help="choose the attention weight w (and K) on a validation "
                                           "set (never the test split) and store it in the checkpoint"))
    add_explain_arguments(commands.add_parser("explain", help="explain one image pair (JSON and figure)"))
    add_search_arguments(commands.add_parser("search", help="search any folder of person crops with query images"))
    add_fit_head_arguments(commands.add_parser("fit-head", help="train CASN's BCE head (eq. 3) on a frozen torchreid "
                                               "model: its Siamese attention and CASN ranking"))
    commands.add_parser("app", help="the Gradio explainability app (same options as `python app.py`)",
                        add_help=False)
    return parser


def _run_app(argv: list[str]) -> int:
    import app.offline  # noqa: F401  (network switches before gradio is imported)
    from app.server import main as app_main

    return app_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "app":  # the app parses its own options (python app.py --help lists them)
        return _run_app(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from casn_core.data.synth import run_synth

        return run_synth(args)
    if args.command == "train":
        from casn_core.engine.train import run_train

        return run_train(args)
    if args.command == "eval":
        from casn_core.engine.evaluate import run_eval

        return run_eval(args)
    if args.command == "tune":
        from casn_core.engine.tune import run_tune

        return run_tune(args)
    if args.command == "search":
        from casn_core.search import run_search

        return run_search(args)
    if args.command == "fit-head":
        from casn_core.engine.fit_head import run_fit_head

        return run_fit_head(args)
    from casn_core.engine.explain import run_explain

    return run_explain(args)


if __name__ == "__main__":
    sys.exit(main())
