"""Losses of eq. 1-6: gradient paths, ablation switches, and a tiny model overfitting a tiny batch."""
from __future__ import annotations

import copy

import pytest
import torch

from casn_core.losses import (
    LOSS_CHOICES, LossConfig, SiameseLossConfig, casn_loss, identification_attention_loss, siamese_attention_loss,
    triplet_loss,
)
from casn_core.models import build_model


def _pair_batch(seed: int = 0, size: tuple[int, int] = (64, 32)):
    gen = torch.Generator().manual_seed(seed)
    images1 = torch.randn(4, 3, *size, generator=gen)
    images2 = torch.randn(4, 3, *size, generator=gen)
    labels1 = torch.tensor([0, 1, 2, 3])
    labels2 = torch.tensor([0, 1, 3, 2])
    same = (labels1 == labels2).float()
    return images1, images2, labels1, labels2, same


def test_loss_names_parse():
    assert LossConfig.from_names("ide").names == "ide"
    assert LossConfig.from_names("ide,ia,sa").use_ia and LossConfig.from_names("ide, sa").use_sa
    for bad in ("ia", "ide,xx", ""):
        with pytest.raises(ValueError, match="--losses"):
            LossConfig.from_names(bad)


def _model_maps_and_labels():
    """A resnet18 in training mode and the maps, features and same-person labels of one pair batch."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).train()
    images1, images2, *_, same = _pair_batch()
    out = model(torch.cat([images1, images2]))
    return model, out.feature_map, out.features, same


def test_siamese_loss_reaches_backbone_through_maps_not_indicator():
    model, maps, feats, same = _model_maps_and_labels()
    _, _, consistency, attention, hinge = siamese_attention_loss(model, maps[:4], maps[4:], feats[:4], feats[4:], same)
    assert hinge is None  # the paper's loss: positives only
    assert consistency > 0
    assert not attention.indicator.requires_grad
    # the consistency term reaches the backbone ...
    backbone_grads = torch.autograd.grad(consistency, list(model.backbone.parameters()), retain_graph=True, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in backbone_grads if g is not None) > 0
    # ... but nothing flows through the indicator into the BCE head that produced it
    head_grads = torch.autograd.grad(consistency, list(model.bce_head.parameters()), allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in head_grads)


def test_identification_attention_loss_reaches_parameters_through_the_map():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, dropout=0.0).train()  # no dropout: forwards repeat exactly
    images1, _, labels1, *_ = _pair_batch()
    out = model(images1)
    loss, cam = identification_attention_loss(model, images1, out.feature_map, out.logits, labels1)
    assert 0 <= float(loss.detach()) <= 1
    assert cam.shape == out.feature_map.shape[:1] + out.feature_map.shape[2:]
    assert cam.requires_grad  # built with create_graph=True
    grads = torch.autograd.grad(loss, list(model.backbone.parameters()), allow_unused=True, retain_graph=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # the map itself is a function of the IDE head's last layer (Grad-CAM weights = its gradient)
    assert torch.autograd.grad(cam.sum(), model.ide_head.fc2.weight, retain_graph=True)[0].abs().sum() > 0
    # and L_ia's gradient differs from what it would be with the map treated as a constant
    from casn_core.attention import mask_images

    frozen = mask_images(images1, cam.detach())
    frozen_loss = torch.softmax(model(frozen).logits, 1).gather(1, labels1[:, None]).mean()
    g_live = torch.autograd.grad(loss, model.ide_head.fc1.weight, retain_graph=True)[0]
    g_frozen = torch.autograd.grad(frozen_loss, model.ide_head.fc1.weight)[0]
    assert (g_live - g_frozen).abs().max() > 1e-6 * g_live.abs().max()


@pytest.mark.parametrize("names", LOSS_CHOICES)
def test_each_ablation_gives_finite_loss_and_only_its_terms(names):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).train()
    terms = casn_loss(model, *_pair_batch(), LossConfig.from_names(names))
    values = terms.as_floats()
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert (values["ia"] != 0) == ("ia" in names)
    assert (values["sa"] != 0) == ("sa" in names)
    terms.total.backward()


def test_tiny_model_overfits_tiny_batch():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, dropout=0.0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = _pair_batch(1)
    config = LossConfig.from_names("ide,ia,sa")
    losses = []
    for _ in range(15):  # seed 0: a fifth of its first loss by step 10, a thirtieth by step 15
        terms = casn_loss(model, *batch, config)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert min(losses[-5:]) < 0.2 * losses[0], losses


def _terms(config: LossConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=4, dropout=0.0).train()
    return casn_loss(model, *_pair_batch(), config)


def test_default_is_the_papers_eq6_and_bce_weight_takes_bce_out_of_lambda2():
    paper = _terms(LossConfig.from_names("ide,ia,sa"))
    expected = paper.ide + 0.5 * paper.ia + 0.05 * (paper.bce + 0.2 * paper.consistency)
    assert torch.allclose(paper.total, expected)
    ours = _terms(LossConfig.from_names("ide,ia,sa", bce_weight=1.0, lambda2=1.0))
    # same model, same batch: the terms agree, only their weights differ
    assert torch.allclose(ours.bce, paper.bce) and torch.allclose(ours.consistency, paper.consistency)
    assert torch.allclose(ours.total, ours.ide + 0.5 * ours.ia + 1.0 * ours.bce + 1.0 * 0.2 * ours.consistency)


def test_label_smoothing_changes_only_l_ide_to_the_smoothed_cross_entropy():
    eps = 0.1
    plain = _terms(LossConfig.from_names("ide,ia,sa"))
    smooth = _terms(LossConfig.from_names("ide,ia,sa", label_smoothing=eps))
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, dropout=0.0).train()
    images1, images2, labels1, labels2, _ = _pair_batch()
    log_p = torch.log_softmax(model(torch.cat([images1, images2])).logits.float(), dim=1)
    labels = torch.cat([labels1, labels2])
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    expected = ((1 - eps) * nll - eps * log_p.mean(dim=1)).mean()  # 1 - eps on the identity, eps spread over all
    assert torch.allclose(plain.ide, nll.mean(), rtol=1e-5) and torch.allclose(smooth.ide, expected, rtol=1e-5)
    assert float(smooth.ide.detach()) > float(plain.ide.detach())
    for name in ("ia", "bce", "consistency", "sa"):  # the attention terms do not see it
        assert torch.allclose(getattr(smooth, name), getattr(plain, name), rtol=1e-5, atol=1e-7)


def test_consistency_margin_adds_a_hinge_on_negative_pairs_that_reaches_the_backbone():
    model, maps, feats, same = _model_maps_and_labels()
    margin = 10.0  # above any distance of vectors in [0, 1]^H with H <= 100: every negative is inside
    sa, bce, consistency, attention, hinge = siamese_attention_loss(
        model, maps[:4], maps[4:], feats[:4], feats[4:], same, SiameseLossConfig(alpha=0.2, margin=margin))
    negatives = attention.distance[same < 0.5]
    assert attention.distance.shape == (4,)  # with a margin every pair gets its attention
    assert torch.allclose(hinge, (margin - negatives).mean())
    assert torch.allclose(sa, bce + 0.2 * (consistency + hinge))
    grads = torch.autograd.grad(hinge, list(model.backbone.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    terms = casn_loss(model, *_pair_batch()[:4], same,
                      LossConfig.from_names("ide,sa", consistency_margin=margin))
    assert "negative_consistency" in terms.as_floats()


def _indicator_in_training(model, feats1, feats2, same):
    """The indicators the training loss uses for every pair of a batch (the margin makes every pair used)."""
    maps1 = torch.zeros(feats1.shape[0], feats1.shape[1], 4, 2)  # maps do not enter eq. 4
    maps2 = torch.zeros_like(maps1)
    *_, attention, _ = siamese_attention_loss(model, maps1, maps2, feats1, feats2, same, SiameseLossConfig(margin=1.0))
    return attention.indicator


def test_training_indicator_is_per_pair_and_equals_the_test_time_one():
    """Eq. 4 is a property of one pair: in a training batch (train-mode head with BatchNorm and dropout)
    a pair's indicator does not change with its batch partners, and equals the indicator ranking and
    explanations compute for the same features (closed form and the explain path's autograd)."""
    from casn_core.attention.siamese import indicator_closed_form, pair_attention
    from casn_core.models.casn import randomise_bce_head

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4)
    randomise_bce_head(model, seed=3)  # running statistics as after training, so units differ per pair
    model.train()
    gen = torch.Generator().manual_seed(1)
    dim = model.feature_dim
    f1, f2 = torch.rand(8, dim, generator=gen), torch.rand(8, dim, generator=gen)
    g1, g2 = torch.rand(8, dim, generator=gen), torch.rand(8, dim, generator=gen)
    same = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    mixed1, mixed2 = torch.cat([f1[:1], g1[1:]]), torch.cat([f2[:1], g2[1:]])  # pair 0 with 7 new partners

    # each call from the same model state (a train-mode forward moves BatchNorm's running statistics)
    a = _indicator_in_training(copy.deepcopy(model), f1, f2, same)[0]
    b = _indicator_in_training(copy.deepcopy(model), mixed1, mixed2, same)[0]
    assert int((a != b).sum()) == 0
    trained = copy.deepcopy(model)
    _indicator_in_training(trained, f1, f2, same)
    assert trained.training and trained.bce_head.training  # the head's mode is restored

    model.eval()
    closed, _ = indicator_closed_form(model.bce_head, f1[:1], f2[:1])
    assert int((a != closed[0, 0]).sum()) == 0
    fmap1 = f1[:1, :, None, None].expand(1, dim, 4, 2)  # GAP of a constant map is the feature itself
    fmap2 = f2[:1, :, None, None].expand(1, dim, 4, 2)
    assert int((a != pair_attention(model, fmap1, fmap2).indicator[0]).sum()) == 0

    # The literal train-mode d(sum_p z1_p)/d f- this replaces does depend on the partners.
    model.train()
    def train_mode_indicator(x1, x2):
        diff = (x1 - x2).requires_grad_(True)
        (grad,) = torch.autograd.grad(model.bce_head(diff)[:, 1].sum(), diff)
        return (grad[0] > 0).float()
    torch.manual_seed(0)
    assert int((train_mode_indicator(f1, f2) != train_mode_indicator(mixed1, mixed2)).sum()) > 0.1 * dim


def test_triplet_loss_is_the_batch_hard_hinge_of_hermans_et_al():
    torch.manual_seed(0)
    features = torch.randn(8, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4])  # ids 2 and 4 have no positive: not anchors
    margin = 0.3
    normed = features / features.norm(dim=1, keepdim=True)
    expected = []
    for a in range(8):
        pos = [float((normed[a] - normed[p]).norm()) for p in range(8) if p != a and labels[p] == labels[a]]
        neg = [float((normed[a] - normed[n]).norm()) for n in range(8) if labels[n] != labels[a]]
        if pos:
            expected.append(max(0.0, margin + max(pos) - min(neg)))
    got = triplet_loss(features, labels, margin)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert triplet_loss(features * 3.0, labels, margin).item() == pytest.approx(got.item(), rel=1e-5)  # normalised
    # no anchor with a positive: zero, and backward still works
    lonely = torch.randn(4, 5, requires_grad=True)
    zero = triplet_loss(lonely, torch.arange(4), margin)
    zero.backward()
    assert zero.item() == 0.0 and torch.all(lonely.grad == 0)


def test_triplet_weight_adds_the_triplet_term_on_the_features_and_reaches_the_backbone():
    plain = _terms(LossConfig.from_names("ide,ia,sa"))
    ours = _terms(LossConfig.from_names("ide,ia,sa", triplet_weight=1.0, triplet_margin=0.3))
    assert plain.triplet is None and ours.triplet is not None
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, dropout=0.0).train()
    images1, images2, labels1, labels2, _ = _pair_batch()
    features = model(torch.cat([images1, images2])).features
    expected = triplet_loss(features, torch.cat([labels1, labels2]), 0.3)
    assert torch.allclose(ours.triplet, expected, rtol=1e-5)
    assert torch.allclose(ours.total, plain.total + ours.triplet, rtol=1e-5)
    assert float(ours.triplet.detach()) > 0  # a random network leaves some anchor inside the margin
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, dropout=0.0).train()
    loss = triplet_loss(model(torch.cat([images1, images2])).features, torch.cat([labels1, labels2]), 0.3)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
