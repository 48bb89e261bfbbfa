"""Whether a checkpoint was trained on generated people, so explanations of real photos can say so.

The bundled checkpoint (checkpoints/README.md) and any checkpoint trained on a folder made by
:func:`casn_core.data.synth.generate_dataset` (its ``manifest.json`` names the generator) learned
from flat-coloured procedural pedestrians. Its features, attention maps and p(same) on photographs
are outside what it was trained on; the app says so next to explanations of uploads.
"""
from __future__ import annotations

import json
from pathlib import Path

from app.demo import DEFAULT_CHECKPOINT

GENERATOR = "casn_core.data.synth"


def _manifest_generator(folder: str | None) -> str | None:
    if not folder:
        return None
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("generator") if isinstance(manifest, dict) else None


def trained_on_generated_people(checkpoint: Path, payload: dict) -> str | None:
    """The evidence (a short phrase) that the checkpoint learned from generated people, else None."""
    try:
        if Path(checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve():
            return "the bundled demo checkpoint (checkpoints/README.md)"
    except OSError:
        pass
    data = (payload.get("train_config") or {}).get("data")
    if _manifest_generator(data) == GENERATOR:
        return f"its training folder `{Path(data).name}` was made by `{GENERATOR}`"
    return None


def domain_note(checkpoint: Path, payload: dict) -> str:
    """A sentence for explanations of user images ("" when the checkpoint is not known to be synthetic)."""
    evidence = trained_on_generated_people(checkpoint, payload)
    if evidence is None:
        return ""
    return (f"⚠ This model was trained on generated people ({evidence}), not on photographs: on real photos its "
            f"features, attention and p(same) are outside its training domain. Read the explanation as what this "
            f"model does, not as evidence about the people.")
