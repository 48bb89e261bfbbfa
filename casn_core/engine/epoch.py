"""One training epoch of eq. 6, and the checkpoints it writes (at its end, and every ``--save-every`` steps).

The pairs of epoch ``e`` are drawn from ``(seed, e)`` and its augmentation and dropout from the global
random state seeded with ``seed * 1000 + e`` (:func:`run_epoch`). A checkpoint written inside an epoch
(:func:`save_partial`) holds the weights, the optimizer, the index of the next step, the random state
after the last step, the loss sums so far and the hard-negative table of the epoch, so ``--resume``
skips the pairs already trained on and draws the rest exactly as the uninterrupted run would
(``--workers 0``, one process; with worker processes each worker seeds itself when the loader starts,
so the remaining pairs are the same and their augmentation is drawn anew).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from casn_core.checkpoint import PARTIAL_EPOCH_KEY, save_checkpoint
from casn_core.engine.extraction import autocast_context, extract_tensors
from casn_core.engine.train_config import TrainConfig
from casn_core.engine.train_state import NonFiniteLossError, RunContext, TrainData, TrainState
from casn_core.models.casn import CASN

log = logging.getLogger("casn_core.train")

PARTIAL_KEY = PARTIAL_EPOCH_KEY
"""The checkpoint entry of an epoch stopped between two steps (absent after a completed epoch)."""


def epoch_payload(config: TrainConfig, state: TrainState, epoch: int) -> dict:
    """The checkpoint content after ``epoch`` (0-based; -1 before the first)."""
    return {
        "model": state.model.state_dict(), "model_config": state.model_config.to_dict(),
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "epoch": epoch, "train_config": asdict(config), "input_size": [config.height, config.width],
        "best_map": state.best_map, "scaler": state.scaler.state_dict() if state.scaler is not None else {},
    }


def _random_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_random_state(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["cpu"])
    if device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"], device)


def save_partial(config: TrainConfig, ctx: RunContext, state: TrainState, epoch: int, progress: dict) -> None:
    """Write ``last.pt`` between two steps of ``epoch``: the state after its last completed epoch's
    bookkeeping, the weights and optimizer as they are now, and ``progress`` (next step, loss sums,
    images, seconds, hard-negative table) with the random state to continue from."""
    payload = epoch_payload(config, state, epoch - 1)
    payload[PARTIAL_KEY] = {"epoch": epoch, **progress, "world": ctx.world,
                            "random_state": _random_state(ctx.device)}
    save_checkpoint(ctx.last_path, payload)


def mine_neighbours(model: CASN, records: list, config: TrainConfig, per_identity: int = 4) -> dict[int, list[int]]:
    """Hard-negative table (ours): each label's ``hard_negative_pool`` nearest other identities by the
    centroids of the current model's features of up to ``per_identity`` images each (no augmentation,
    the same images every epoch, so ``--resume`` redraws the same table)."""
    from casn_core.data.pairs import nearest_identities

    chosen, taken = [], {}
    for record in records:
        if taken.get(record.label, 0) < per_identity:
            taken[record.label] = taken.get(record.label, 0) + 1
            chosen.append(record)
    was_training = model.training
    feats = training_features(model, chosen, config).cpu()
    model.train(was_training)
    return nearest_identities(feats, [r.label for r in chosen], config.hard_negative_pool)


@torch.no_grad()
def training_features(model: CASN, records: list, config: TrainConfig) -> torch.Tensor:
    """Features ``f`` of ``records`` with the test transform, in eval mode."""
    from casn_core.data import ImageDataset, build_test_transform

    loader = DataLoader(ImageDataset(records, build_test_transform(config.height, config.width)),
                        batch_size=64, shuffle=False, num_workers=config.workers)
    model.eval()
    return torch.cat([extract_tensors(model, images, config.amp)[1] for images, *_ in loader])


def run_epoch(config: TrainConfig, ctx: RunContext, state: TrainState, step_module: nn.Module, data: TrainData,
              epoch: int, progress: bool) -> dict:
    """One epoch of eq. 6 over this epoch's pairs (from ``state.partial``'s step when the run stopped
    inside this epoch); returns the epoch's metrics record."""
    partial = state.partial if state.partial and state.partial["epoch"] == epoch else None
    state.partial = None
    if partial is not None:
        neighbours = partial["neighbours"]
    else:
        neighbours = mine_neighbours(state.model, data.records, config) if config.hard_negatives else None
    torch.manual_seed(config.seed * 1000 + epoch)  # augmentation and dropout of this epoch
    pairs = data.pairs
    pairs.set_epoch(epoch, neighbours)
    first = int(partial["step"]) if partial is not None else 0
    dataset = Subset(pairs, range(first * config.batch_size, len(pairs))) if first else pairs
    sampler = DistributedSampler(dataset, ctx.world, ctx.rank, shuffle=False) if ctx.world > 1 else None
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, shuffle=False,
                        num_workers=config.workers, pin_memory=ctx.device.type == "cuda", drop_last=True,
                        persistent_workers=False)
    total = first + len(loader)
    if total == 0:
        raise ValueError(f"{len(pairs)} pairs per rank cannot fill one batch of {config.batch_size}")
    if config.max_steps_per_epoch is not None:
        total = min(total, config.max_steps_per_epoch)
    batches = iter(loader)  # draws the loader's base seed: before the saved random state is put back
    if partial is not None:
        _restore_random_state(partial["random_state"], ctx.device)
        log.info("continuing epoch %d at step %d of %d", epoch + 1, first + 1, total)
    save_every = config.save_every if ctx.world == 1 else 0  # each rank's random state would be needed
    step_module.train()
    sums: dict[str, float] = dict(partial["sums"]) if partial is not None else {}
    steps = int(partial["steps"]) if partial is not None else 0
    images_seen = int(partial["images_seen"]) if partial is not None else 0
    started = time.perf_counter() - (float(partial["seconds"]) if partial is not None else 0.0)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and ctx.is_main),
               unit="step", initial=first, total=total)
    for step, (images1, images2, labels1, labels2, same) in enumerate(bar, start=first):
        if step >= total:
            break
        values = _train_step(config, ctx, state, step_module, (images1, images2, labels1, labels2, same),
                             epoch, step)
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        images_seen += 2 * images1.shape[0] * ctx.world
        bar.set_postfix(loss=f"{values['total']:.3f}")
        if save_every and (step + 1) % save_every == 0 and step + 1 < total:
            save_partial(config, ctx, state, epoch, {
                "step": step + 1, "sums": sums, "steps": steps, "images_seen": images_seen,
                "seconds": time.perf_counter() - started, "neighbours": neighbours})
    bar.close()
    elapsed = time.perf_counter() - started
    lr = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step()
    return {"epoch": epoch + 1, "lr": lr, "steps": steps, "seconds": round(elapsed, 3),
            "images_per_s": round(images_seen / max(elapsed, 1e-9), 2),
            **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()}}


def _train_step(config: TrainConfig, ctx: RunContext, state: TrainState, step_module: nn.Module, batch: tuple,
                epoch: int, step: int) -> dict[str, float]:
    """One SGD step on one batch of pairs; the loss terms as floats."""
    batch = [t.to(ctx.device, non_blocking=True) for t in batch]
    if config.channels_last:
        batch[0] = batch[0].contiguous(memory_format=torch.channels_last)
        batch[1] = batch[1].contiguous(memory_format=torch.channels_last)
    with autocast_context(ctx.device, config.amp):
        terms = step_module(*batch)
    if not torch.isfinite(terms.total):
        raise NonFiniteLossError(
            f"loss is {float(terms.total.detach())} at epoch {epoch + 1}, step {step + 1} "
            f"(terms {terms.as_floats()}); stopped, {ctx.last_path} keeps the last good state"
        )
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(terms.total).backward()
    state.scaler.step(state.optimizer)  # fp16: skipped when the scaled gradients overflowed
    state.scaler.update()
    return terms.as_floats()
