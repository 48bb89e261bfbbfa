"""casn_core.numeric: every 0/0 of the project has one stated value."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from casn_core.numeric import roc_auc, safe_divide, share, unit_range


def test_safe_divide_torch_numpy_and_float():
    num = torch.tensor([1.0, 2.0, 0.0])
    den = torch.tensor([2.0, 0.0, 0.0])
    assert torch.equal(safe_divide(num, den, empty=-1.0), torch.tensor([0.5, -1.0, -1.0]))
    assert np.array_equal(safe_divide(np.array([1.0, 3.0]), np.array([4.0, 0.0])), np.array([0.25, 0.0]))
    assert safe_divide(1.0, 0.0, empty=7.0) == 7.0 and safe_divide(3.0, 2.0) == 1.5


def test_safe_divide_gradient_has_no_nan():
    num = torch.tensor([1.0, 2.0], requires_grad=True)
    den = torch.tensor([0.0, 4.0], requires_grad=True)
    safe_divide(num, den).sum().backward()
    assert torch.isfinite(num.grad).all() and torch.isfinite(den.grad).all()
    assert num.grad.tolist() == [0.0, 0.25]


def test_unit_range_flat_is_zero_and_range_is_unit():
    x = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    out = unit_range(x)
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    maps = torch.rand(2, 3, 4, 5)
    out = unit_range(maps, dim=(2, 3))
    assert torch.allclose(out.amax(dim=(2, 3)), torch.ones(2, 3)) and torch.allclose(out.amin(dim=(2, 3)), torch.zeros(2, 3))
    assert np.array_equal(unit_range(np.zeros((2, 2)), dim=None), np.zeros((2, 2)))
    assert unit_range(np.array([2.0, 4.0]), dim=None).tolist() == [0.0, 1.0]


def test_share_of_empty_mass_is_the_given_value():
    assert torch.equal(share(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 4.0]), empty=torch.tensor([0.3, 0.3])),
                       torch.tensor([0.3, 0.25]))


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 30).astype(float)
    neg = rng.integers(0, 5, 40).astype(float)
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert math.isclose(roc_auc(pos, neg), pairwise, rel_tol=0, abs_tol=1e-12)
    assert roc_auc([2.0], [1.0]) == 1.0 and roc_auc([1.0], [2.0]) == 0.0 and roc_auc([1.0], [1.0]) == 0.5


def test_roc_auc_refuses_an_empty_class_and_nan():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([float("nan")], [1.0])
