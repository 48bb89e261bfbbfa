"""Plain helpers shared by tests (fixtures live in ``conftest.py``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    from casn_core.data import ImageDataset, build_test_transform, generate_dataset, load_market

    data = Path(root) / "data"
    generate_dataset(data, num_ids=16, num_cameras=2, images_per_id=4, seed=0, height=128, width=64)
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
