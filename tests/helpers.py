"""Plain helpers shared by tests (fixtures live in ``conftest.py``)."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """``CI=true`` (or ``1``/``yes``) in the environment: a missing test dependency is a failure there."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(message: str) -> NoReturn:
    """A test dependency is absent: skip the test (or the module, at module level), but fail under ``CI=true``,
    where a fully installed environment is expected and a silent skip would hide untested code.

    At module level a failure under CI is a collection error: pytest then reports it and runs nothing,
    which is the point (the CI install is broken)."""
    import inspect

    caller = next((f for f in inspect.stack()[1:] if Path(f.filename).resolve() != Path(__file__).resolve()), None)
    if caller is not None:  # pytest reports a skip at this file's line; name the test's
        message = f"{message} [{Path(caller.filename).name}:{caller.lineno}]"
    if in_ci():
        pytest.fail(f"CI=true, and a test dependency is missing: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str, why: str = "") -> ModuleType:
    """Import ``module`` for a test: skip without it, fail under ``CI=true`` (:func:`missing`).

    Use it instead of ``pytest.importorskip``, at module level or inside a test or fixture."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{module} is not importable ({exc})" + (f": {why}" if why else ""))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` torch CPU threads, and restore the caller's count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_bench(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as a module (bench scripts are not a package; no ``sys.path`` edits)."""
    path = REPO_ROOT / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def make_pinned_checkpoint_and_data(root: Path) -> tuple[Path, Path]:
    """The tiny checkpoint and dataset that ``tests/data/behaviour_pins.json`` was computed on.

    A random-init mobilenet_v2 (seed 0) gives feature maps of ~1e-8 (BatchNorm's running statistics
    are the identity), where any epsilon decides the numbers; so BatchNorm statistics are first
    estimated on the dataset's training images (a cumulative average, one pass in order), which
    brings the maps to a normal scale. Deterministic: same seeds, same images, same order.
    """
    import torch

    from casn_core import build_model
    from casn_core.checkpoint import model_payload, save_checkpoint
    from casn_core.data import ImageDataset, SynthSpec, build_test_transform, generate_dataset, load_market

    data = Path(root) / "data"
    generate_dataset(data, SynthSpec(num_ids=16, num_cameras=2, images_per_id=4, seed=0, height=128, width=64))
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=8, pretrained="none")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative moving average
    train = list(load_market(str(data), splits=("train",)).train)
    dataset = ImageDataset(train, build_test_transform(128, 64))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model.feature_map(images[start:start + 16])
    model.eval()
    checkpoint = save_checkpoint(Path(root) / "tiny.pt", model_payload(model, input_size=[128, 64],
                                                                       train_config={"threshold": 0.3}))
    return checkpoint, data


def assert_close_scaled(actual, expected, rtol: float, err_msg: str = "") -> None:
    """``max |actual - expected| <= rtol * max |expected|``: a tolerance relative to the array's own scale.

    For raw float32 values of any size (maps of ~1e-8, row sums of ~8): their rounding error scales with
    the largest values that were summed, not with each element (a small element of a map can carry the
    absolute error of its large neighbours' reduction), so an element-wise rtol would be too strict and an
    absolute one meaningless at 1e-8 or too strict at 10. All-zero ``expected`` needs ``actual`` all zero.
    """
    import numpy as np

    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    diff = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert np.isfinite(actual).all(), f"{err_msg}: non-finite values"
    assert diff <= rtol * scale, (f"{err_msg}: max abs difference {diff:.3g} > {rtol:g} x max |expected| "
                                  f"{scale:.3g} = {rtol * scale:.3g}")


def indicator_margins(model, query_features, gallery_features):
    """``(pre_margin, grad_margin)``, each (Q, G) float64: how far each pair's Siamese-attention indicator
    (eq. 4) is from switching, computed in float64 from the given features (independent of float32 kernels).

    The indicator is ``1[g > 0]`` with ``g = d z / d f- = W1^T (s * 1[pre > 0] * w2)``, a step function in
    two places. ``pre_margin = min |pre| / max |pre|``: a hidden unit of the BCE head this close to its
    switch can be turned by float32 rounding of the features (which depends on the thread count and the
    instruction set), and with it many channels of the indicator. ``grad_margin = min |g| / max |g|``: a
    channel this close to zero can flip by the rounding of the float32 product that computes ``g``
    (measured: up to 3.4e-7 of ``max |g|`` across kernels). Either way the pair's maps change by about
    one channel's share (1e-3), far beyond any rounding tolerance, so comparisons must avoid such pairs.
    """
    import torch

    def f64(t):
        return torch.as_tensor(t).detach().cpu().double()

    head = model.bce_head
    scale, shift = (f64(t) for t in head.eval_affine())
    weight = f64(head.fc1.weight)
    q = f64(query_features) @ (weight.t() * scale)
    g = f64(gallery_features) @ (weight.t() * scale)
    pre = q[:, None, :] - g[None, :, :] + (f64(head.fc1.bias) * scale + shift)
    grad = ((pre > 0) * (scale * f64(head.fc2.weight)[1])) @ weight
    def margin(x):
        return (x.abs().amin(dim=-1) / x.abs().amax(dim=-1).clamp_min(1e-300)).numpy()
    return margin(pre), margin(grad)


def indicator_decided(model, query_features, gallery_features, pre_margin: float, grad_margin: float = 3e-6):
    """(Q, G) bool: pairs whose indicator float32 rounding cannot switch (:func:`indicator_margins`).

    ``pre_margin``: ten times or more the float32 drift of ``pre / max |pre|`` where the features come from
    (2.7e-6 from given maps through the head; up to 6.6e-5 after a CNN forward pass across kernels);
    ``grad_margin`` defaults to about ten times the measured rounding of ``g``."""
    pre, grad = indicator_margins(model, query_features, gallery_features)
    return (pre >= pre_margin) & (grad >= grad_margin)
