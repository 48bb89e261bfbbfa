"""Make the Upload tab's one-click example pairs: generated people unseen by the bundled checkpoint.

    .venv/bin/python scripts/example_pairs.py            # writes assets/examples/*.jpg

A small procedural set (``casn_core.data.synth``, seed 424242: neither the training seed 7, the
validation seed 99 nor the demo's 20190616) is generated in a temporary folder; the bundled checkpoint
picks three pairs from its test images: one person seen by two cameras, the two different people it
finds most alike (the lookalike the ranking can get wrong), and two clearly different people. The
six JPEGs (quality 92) are written to ``assets/examples/``.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "assets" / "examples"
SEED = 424242


def main() -> int:
    sys.path.insert(0, str(REPO))
    import torch
    from PIL import Image

    from casn_core import load_model
    from casn_core.checkpoint import checkpoint_info
    from casn_core.data import SynthSpec, build_test_transform, generate_dataset
    from casn_core.data.market import parse_market_name
    from casn_core.engine.inference import extract_tensors, feature_distance

    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "set", SynthSpec(num_ids=24, num_cameras=4, images_per_id=4, seed=SEED))
        files = sorted((Path(tmp) / "set" / "bounding_box_test").glob("*.jpg"))
        model, payload = load_model(REPO / "checkpoints" / "casn_mobilenetv2_synth.pt", "cpu")
        height, width = checkpoint_info(payload).input_size
        transform = build_test_transform(height, width)
        with torch.no_grad():
            _, features = extract_tensors(model, torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
        distances = feature_distance(features, features).numpy()
        labels = [parse_market_name(f.name) for f in files]
        pairs = {}
        same = [(distances[i, j], i, j) for i in range(len(files)) for j in range(len(files))
                if labels[i][0] == labels[j][0] and labels[i][1] != labels[j][1] and i < j]
        pairs["same_person_a.jpg", "same_person_b.jpg"] = sorted(same)[len(same) // 2][1:]
        other = sorted((distances[i, j], i, j) for i in range(len(files)) for j in range(i + 1, len(files))
                       if labels[i][0] != labels[j][0])
        pairs["lookalike_a.jpg", "lookalike_b.jpg"] = other[0][1:]
        pairs["different_a.jpg", "different_b.jpg"] = other[-1][1:]
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        for names, indices in pairs.items():
            for name, index in zip(names, indices):
                Image.open(files[index]).convert("RGB").save(OUT / name, quality=92)
                print(f"{OUT.relative_to(REPO) / name} <- {files[index].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
