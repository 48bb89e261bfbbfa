"""torchreid models explained: features equal torchreid's own, exact similarity maps, the Siamese fast path
against its autograd oracle, and clear errors (casn_core.models.torchreid_adapter, casn_core.models.foreign).

Models are random-initialised by torchreid (no download) and saved in its checkpoint format; inputs are
128 x 64 so that the whole module runs in seconds.
"""
from __future__ import annotations

import copy
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_close_scaled, indicator_decided, require

with warnings.catch_warnings():  # torchreid warns at import that its Cython ranking is unavailable (unused here)
    warnings.simplefilter("ignore", UserWarning)
    require("torchreid", "the optional extra: pip install -e '.[torchreid]' (requirements-torchreid.txt)")

from casn_core.attention import oracle_pair_attention, pair_attention_grid  # noqa: E402
from casn_core.attention.similarity import contrastive_map, correspondence, similarity_grid  # noqa: E402
from casn_core.checkpoint import CheckpointError, checkpoint_info, load_model  # noqa: E402
from casn_core.models.casn import randomise_bce_head  # noqa: E402
from casn_core.models.foreign import ForeignConfig, TorchreidCASN, fold_head, require_explainable  # noqa: E402
from casn_core.models.torchreid_adapter import (  # noqa: E402
    TorchreidError, build_net, read_payload, save_torchreid_checkpoint,
)

ARCHS = ["resnet50", "resnet50_fc512", "osnet_x0_25", "mobilenetv2_x1_0"]
SIZE = (128, 64)
FEATURE_RTOL = 1e-5
"""max |f_ours - f_torchreid| relative to max |f_torchreid|: features of random-init models span 1e-8
(MobileNetV2, identity BatchNorm statistics) to 90 (ResNet-50), so the tolerance is relative to their scale."""
SUM_TOL = 1e-5
"""Similarity maps sum to the cosine (a number <= 1) to this absolute tolerance."""


def _images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a vertical profile per image, as a person occupies some rows: rows then differ, and the Siamese
    # attention's min-max row normalisation is not dominated by rounding
    profile = torch.rand(n, 1, SIZE[0], 1, generator=generator) + 0.5
    return torch.randn(n, 3, *SIZE, generator=generator) * profile


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tmp_path_factory):
    """``(arch, torchreid net, our model from the plain file, our model from the module.-prefixed file)``."""
    arch = request.param
    torch.manual_seed(0)
    net = build_net(arch, num_classes=8)
    folder = tmp_path_factory.mktemp(arch)
    plain = save_torchreid_checkpoint(net, folder / "plain.pth.tar")
    prefixed = save_torchreid_checkpoint(net, folder / "prefixed.pth.tar", prefix="module.")
    model, _ = load_model(plain, arch=arch, input_size=SIZE)
    model_prefixed, _ = load_model(prefixed, arch=arch, input_size=SIZE)
    return arch, net, model, model_prefixed


@pytest.mark.numeric
def test_features_equal_torchreids_forward(loaded, record_property):
    arch, net, model, model_prefixed = loaded
    images = _images(4, 1)
    with torch.no_grad():
        reference = net.eval()(images)
        ours = model.features(model.feature_map(images))
        prefixed = model_prefixed.features(model_prefixed.feature_map(images))
    assert model.explain_refusal is None
    assert torch.equal(ours, prefixed)  # the same weights through both file layouts
    scale = float(reference.abs().max())
    diff = float((ours - reference).abs().max())
    record_property("feature_max_abs_diff", diff)
    record_property("feature_max_rel_diff", diff / scale)
    assert_close_scaled(ours.numpy(), reference.numpy(), FEATURE_RTOL, f"{arch} features")


@pytest.mark.numeric
def test_similarity_maps_sum_to_the_cosine_of_torchreids_features(loaded):
    arch, net, model, _ = loaded
    images = _images(3, 2)
    with torch.no_grad():
        reference = F.normalize(net(images), dim=1)
        maps = model.feature_map(images)
        explained = similarity_grid(model, maps, maps)
    cosine = reference @ reference.t()
    for name in ("map1", "map2"):
        total = getattr(explained, name).sum(dim=(-2, -1))
        assert float((total - cosine).abs().max()) < SUM_TOL, f"{arch} {name}"
    # point correspondence: a query location's row sums to that location's share of the similarity
    row = correspondence(maps[0], maps[1], (1, 1), model.pool)
    assert abs(float(row.sum() - explained.map1[0, 1, 1, 1])) < SUM_TOL
    # "why wrong": the contrastive map sums to s(q, wrong) - s(q, true)
    gap = contrastive_map(maps[0], maps[1], maps[2], model.pool)
    assert abs(float(gap.sum() - (cosine[0, 1] - cosine[0, 2]))) < SUM_TOL


def _oracle64(model: TorchreidCASN, map1: torch.Tensor, map2: torch.Tensor) -> dict:
    head = copy.deepcopy(model.bce_head).double()
    shim = nn.Module()
    shim.pool, shim.bce_head = model.pool, head
    out = oracle_pair_attention(shim, map1.double(), map2.double())
    return {k: (v.detach().float() if torch.is_tensor(v) else v) for k, v in out.items()}


@pytest.mark.numeric
def test_siamese_fast_path_equals_its_autograd_oracle(loaded):
    arch, _, model, _ = loaded
    model = copy.deepcopy(model)
    randomise_bce_head(model, 0)
    with torch.no_grad():
        maps = model.feature_map(_images(4, 3))
        feats = model.features(maps)
    scale = feats.abs().max()
    maps, feats = maps / scale, feats / scale  # any positive scale: the same indicator, maps scaled alike
    query, gallery = maps[:2], maps[2:]
    decided = indicator_decided(model, feats[:2], feats[2:], pre_margin=1e-4)
    grid = pair_attention_grid(model, query, gallery)
    checked = 0
    for i in range(2):
        for j in range(2):
            if not decided[i, j]:
                continue  # float32 rounding could switch this pair's indicator (helpers.indicator_margins)
            oracle = _oracle64(model, query[i], gallery[j])
            assert torch.equal(grid.indicator[i, j], oracle["indicator"])
            for name in ("maps1", "maps2", "rows1", "rows2"):
                assert_close_scaled(getattr(grid, name)[i, j].numpy(), oracle[name.replace("maps", "map")].numpy(),
                                    2e-6, f"{arch} {name}")
            assert abs(float(grid.distance[i, j]) - float(oracle["distance"])) < 1e-5
            assert abs(float(grid.same_probability[i, j]) - float(oracle["same_probability"])) < 1e-5
            checked += 1
    assert checked >= 2, f"{arch}: only {checked} pairs far enough from an indicator switch"


@pytest.mark.numeric
@pytest.mark.parametrize("arch", ["resnet50_fc512", "osnet_x0_25"])
def test_channel_weights_at_the_backbone_map_are_jacobian_transpose(arch):
    """Through torchreid's own modules by autograd: Grad-CAM of s = <a, f> at A has the weights J^T a / HW,
    and the fast path's pre-ReLU map at A' differs from it by a constant per image and sums to s."""
    torch.manual_seed(0)
    model = TorchreidCASN(build_net(arch, 4), ForeignConfig(arch))
    randomise_bce_head(model, 1)
    model.eval()
    backbone, net = model.backbone, model.backbone.net
    with torch.no_grad():
        conv = backbone.conv_map(_images(2, 4))
    conv = conv.double().requires_grad_(True)
    net64 = copy.deepcopy(net).double()
    feats = net64.fc(net64.global_avgpool(conv).flatten(1))  # torchreid's forward after featuremaps
    logits = copy.deepcopy(model.bce_head).double()(feats[:1] - feats[1:])
    (grad_diff,) = torch.autograd.grad(logits[0, 1], feats, retain_graph=True)
    indicator = (grad_diff[0] > 0).double()  # d z1 / d f- = d z1 / d f1 (eq. 4)
    height, width = conv.shape[-2:]
    with torch.no_grad():
        folded = fold_head(list(net64.fc), net64.global_avgpool(conv).flatten(1), conv)
    for j in range(2):
        score = (indicator * feats[j]).sum()
        (grad,) = torch.autograd.grad(score, conv, retain_graph=True)
        weights = grad[j].mean(dim=(1, 2))
        assert float((grad[j] - weights[:, None, None]).abs().max()) < 1e-12  # constant over locations
        scale_relu = [m for m in net64.fc if isinstance(m, nn.BatchNorm1d)][0]
        bn_scale = scale_relu.weight / torch.sqrt(scale_relu.running_var + scale_relu.eps)
        active = (F.batch_norm(net64.fc[0](net64.global_avgpool(conv).flatten(1)), scale_relu.running_mean,
                               scale_relu.running_var, scale_relu.weight, scale_relu.bias, eps=scale_relu.eps) > 0)[j]
        jacobian = (active * bn_scale)[:, None] * net64.fc[0].weight  # J = diag(m s) W
        assert float((weights - jacobian.t() @ indicator / (height * width)).detach().abs().max()) < 1e-12
        at_conv = torch.einsum("k,khw->hw", weights, conv[j].detach())
        at_folded = torch.einsum("k,khw->hw", indicator / (height * width), folded[j])
        offset = at_folded - at_conv
        assert float(offset.max() - offset.min()) < 1e-9
        assert abs(float(at_folded.sum() - score.detach())) < 1e-9


def test_a_state_dict_of_another_architecture_names_the_keys(tmp_path):
    torch.manual_seed(0)
    path = save_torchreid_checkpoint(build_net("osnet_x0_25", 8), tmp_path / "osnet.pth")
    with pytest.raises(TorchreidError, match=r"does not fit torchreid's osnet_x0_5: .*other shape.*conv1\.conv\.weight"):
        load_model(path, arch="osnet_x0_5")
    with pytest.raises(TorchreidError, match=r"missing \(\d+\): .*unexpected \(\d+\): .*--arch"):
        load_model(path, arch="mobilenetv2_x1_0")


def test_an_unknown_architecture_is_named():
    with pytest.raises(TorchreidError, match=r"no architecture 'resnet51'; known: .*osnet_x1_0"):
        build_net("resnet51", 8)


class Callback:
    """An object an optimizer entry could hold; unpickling it must never run its code."""

    constructed = False

    def __setstate__(self, state):
        Callback.constructed = True


def test_non_tensor_entries_are_skipped_without_running_them(tmp_path):
    torch.manual_seed(0)
    net = build_net("osnet_x0_25", 8)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "hook": Callback()}]}
    path = save_torchreid_checkpoint(net, tmp_path / "ckpt.pth", optimizer=optimizer, rank1=np.float64(0.9))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # a plain weights-only load refuses the file
    payload = read_payload(path)
    assert "skipped" in repr(payload["optimizer"]["param_groups"][0]["hook"])
    assert not Callback.constructed
    model, _ = load_model(path, arch="osnet_x0_25", input_size=SIZE)
    assert model.explain_refusal is None


def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing.pth", arch="osnet_x0_25")


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): an average only at p = 1."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([p]))

    def forward(self, x):
        return F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(self.p), 1).pow(1.0 / self.p)


@pytest.mark.parametrize("replace, message", [
    (("global_avgpool", GeM(3.0)), r"pooling layer 'global_avgpool' \(GeM, p=3\) is not a global average"),
    (("global_avgpool", nn.AdaptiveMaxPool2d(1)), r"'global_avgpool' \(AdaptiveMaxPool2d\)"),
    (("fc.2", nn.Tanh()), r"head layer 'fc\.2' \(Tanh\)"),
])
def test_a_head_that_cannot_be_folded_is_refused_by_name_and_features_still_rank(replace, message):
    torch.manual_seed(0)
    net = build_net("osnet_x0_25", 4)
    name, module = replace
    if name == "fc.2":
        net.fc[2] = module
    else:
        setattr(net, name, module)
    model = TorchreidCASN(net.eval(), ForeignConfig("osnet_x0_25"))
    assert model.explain_refusal is not None
    assert re.search(message, model.explain_refusal), model.explain_refusal
    with pytest.raises(CheckpointError, match="the feature ranking .* still works"):
        require_explainable(model)  # what casn explain, fit-head and the app call
    images = _images(2, 5)
    with torch.no_grad():
        maps = model.feature_map(images)
        assert maps.shape[-2:] == (1, 1)  # f itself: extraction, stores and the feature ranking work unchanged
        assert torch.equal(model.features(maps), net(images))


def test_checkpoint_info_of_a_plain_torchreid_checkpoint(loaded, tmp_path):
    arch, _, model, _ = loaded
    path = save_torchreid_checkpoint(model.backbone.net, tmp_path / "ckpt.pth")
    _, payload = load_model(path, arch=arch, input_size=(256, 128))
    info = checkpoint_info(payload)
    assert info.backbone == f"torchreid:{arch}"
    assert info.input_size == (256, 128)
    assert info.default_ranking().attention_weight == 0  # no trained BCE head: the feature ranking
