"""Training images decoded once: a uint8 array ``(N, H, W, 3)`` on disk, read by memory map.

Decoding a JPEG and resizing it costs about as much CPU per step as a small backbone's forward pass
on two cores, and it is the same work every epoch: the resize is the first step of the training
transform and is not random. So the images are decoded and resized once (PIL's bilinear resize,
what ``torchvision.transforms.Resize`` does to a PIL image) into one ``.npy`` file, and every epoch
runs only the random part of the augmentation on the uint8 tensors (:func:`build_uint8_train_transform`,
the same torchvision transforms drawing the same random numbers, so the tensors equal the PIL
path's).

The file is keyed by the image list (path, size and modification time of every file), the size and
a format version; it is written to a temporary name and renamed, so a killed build leaves no file
that could be taken for a complete one, and a file whose key or shape does not match is rebuilt,
never trusted.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from tqdm import tqdm

from casn_core.data.market import ImageRecord, read_image
from casn_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, random_erasing_step

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def decoded_key(records: Sequence[ImageRecord], height: int, width: int) -> str:
    """sha256 of the format version, the size and every file's path, byte size and mtime."""
    digest = hashlib.sha256(f"decoded-v{FORMAT_VERSION}:{int(height)}x{int(width)}\n".encode())
    for record in records:
        stat = os.stat(record.path)
        digest.update(f"{os.path.abspath(record.path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_resized(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """One image as uint8 ``(height, width, 3)``: RGB, resized bilinearly by PIL (as ``T.Resize`` on PIL)."""
    image = read_image(path)
    return np.asarray(image.resize((int(width), int(height)), Image.BILINEAR), dtype=np.uint8)


class DecodedImages:
    """The decoded images of ``records`` at ``height x width``, built into ``cache_dir`` when missing.

    ``images[i]`` is a uint8 tensor ``(3, H, W)`` (a copy; the file stays read-only).
    """

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, cache_dir: str | os.PathLike,
                 progress: bool = True) -> None:
        self.records = list(records)
        self.height, self.width = int(height), int(width)
        key = decoded_key(self.records, height, width)
        self.path = Path(cache_dir) / f"decoded_{self.height}x{self.width}_{len(self.records)}_{key[:20]}.npy"
        self.array = self._open() if self.path.is_file() else None
        if self.array is None:
            self._build(progress)
            self.array = self._open()
            if self.array is None:
                raise RuntimeError(f"{self.path}: the decoded images just written do not read back")

    def _open(self) -> np.ndarray | None:
        expected = (len(self.records), self.height, self.width, 3)
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); decoding again", self.path, exc)
            return None
        if array.shape != expected or array.dtype != np.uint8:
            log.warning("%s holds %s %s, not %s uint8; decoding again", self.path, array.shape, array.dtype, expected)
            return None
        return array

    def _build(self, progress: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        shape = (len(self.records), self.height, self.width, 3)
        log.info("decoding %d images once at %dx%d into %s", len(self.records), self.height, self.width, self.path)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for index, record in enumerate(tqdm(self.records, desc="decode", disable=not progress, unit="img")):
                out[index] = decode_resized(record.path, self.height, self.width)
            out.flush()
            del out
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[index])).permute(2, 0, 1)


def build_uint8_train_transform(height: int, width: int, flip: bool = True, pad: int = 10,
                                random_erasing: bool = False) -> T.Compose:
    """uint8 ``(3, H, W)`` tensor, already resized -> normalised float tensor, augmented.

    The steps of :func:`casn_core.data.transforms.build_train_transform` after its resize, on tensors:
    the same transforms draw the same random numbers, and zero padding and ``/255`` are what they are
    on PIL images, so the output equals the PIL path's for the same random state.
    """
    steps: list = []
    if flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    if pad:
        steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ConvertImageDtype(torch.float32), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if random_erasing:
        steps.append(random_erasing_step())
    return T.Compose(steps)
