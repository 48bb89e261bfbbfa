"""The usual re-id image transforms (torchvision).

Training: resize, random horizontal flip, pad-and-random-crop, ImageNet normalisation and optional
random erasing. The augmentation is ours: the paper (sec. 4, "Implementation Details") states only the
resize, so we use the standard re-id augmentation of the IDE and PCB baselines' public code (flip and
pad-crop; random erasing, ``casn train --random-erasing``, off by default). Test: resize and normalise.
"""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_train_transform(height: int, width: int, flip: bool = True, pad: int = 10,
                          random_erasing: bool = False) -> T.Compose:
    """PIL RGB image -> normalised (3, height, width) float tensor, augmented.

    ``pad`` pixels of zero padding then a random crop back to ``height x width`` (0 disables it);
    random erasing (p=0.5) fills with zeros after normalisation, i.e. with the ImageNet mean.
    """
    _check_size(height, width)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    steps: list = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    if pad:
        steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if random_erasing:
        steps.append(random_erasing_step())
    return T.Compose(steps)


def random_erasing_step() -> T.RandomErasing:
    """Random erasing (Zhong et al., AAAI 2020), with the re-id settings of its authors' code and of
    torchreid and fast-reid: p 0.5, area 2-40% of the image, aspect 0.3-3.3. It fills with zeros after
    normalisation, i.e. with the ImageNet mean colour (their code fills with the mean too)."""
    return T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0)


def build_test_transform(height: int, width: int) -> T.Compose:
    """PIL RGB image -> normalised (3, height, width) float tensor."""
    _check_size(height, width)
    return T.Compose([
        T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
