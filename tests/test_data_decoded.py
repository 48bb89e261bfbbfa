"""Training images decoded once (casn_core.data.decoded): the same augmented tensors as the PIL path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from casn_core.data import SynthSpec, build_train_transform, generate_dataset, load_market
from casn_core.data.decoded import DecodedImages, build_uint8_train_transform
from casn_core.data.pairs import PairDataset, PairSampling


def _records(tmp_path):
    root = tmp_path / "synth"
    generate_dataset(root, SynthSpec(num_ids=4, num_cameras=2, images_per_id=3, seed=5, height=64, width=32))
    return list(load_market(root, splits=("train",)).train)


@pytest.mark.parametrize("erasing", [False, True])
def test_decoded_pairs_equal_the_pil_pipeline_draw_for_draw(tmp_path, erasing):
    records = _records(tmp_path)
    images = DecodedImages(records, 40, 20, tmp_path / "cache", progress=False)
    pil = PairDataset(records, build_train_transform(40, 20, pad=4, random_erasing=erasing), PairSampling(seed=3))
    fast = PairDataset(records, build_uint8_train_transform(40, 20, pad=4, random_erasing=erasing),
                       PairSampling(seed=3), images=images)
    erased = 0
    for index in range(len(pil)):
        torch.manual_seed(index)
        expected = pil[index]
        torch.manual_seed(index)
        got = fast[index]
        # the same random draws and the same arithmetic on the same uint8 pixels: equal to float rounding
        assert torch.allclose(got[0], expected[0], atol=1e-6) and torch.allclose(got[1], expected[1], atol=1e-6)
        assert got[2:] == expected[2:]
        erased += int((got[0] == 0).all(dim=0).sum() > 20)  # an erased patch: zeros in all three channels
    assert (erased > 0) == erasing


def test_decoded_file_is_reused_and_rebuilt_when_it_does_not_match(tmp_path):
    records = _records(tmp_path)
    first = DecodedImages(records, 40, 20, tmp_path / "cache", progress=False)
    stamp = first.path.stat().st_mtime_ns
    again = DecodedImages(records, 40, 20, tmp_path / "cache", progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp  # reused, not rewritten
    np.save(first.path, np.zeros((2, 40, 20, 3), dtype=np.uint8))  # a file of the wrong shape under its name
    rebuilt = DecodedImages(records, 40, 20, tmp_path / "cache", progress=False)
    assert rebuilt.array.shape == (len(records), 40, 20, 3) and rebuilt.array.any()
    other = DecodedImages(records[:-1], 40, 20, tmp_path / "cache", progress=False)
    assert other.path != first.path  # another image list, another key
    assert not list((tmp_path / "cache").glob(".*.tmp"))
