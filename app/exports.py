"""Export of a pair explanation as PNG and JSON files, written only when the user asks for them.

Files go to ``<cache-dir>/exports/<time>-<id>/`` (a folder the server may serve), each written to a
temporary name and renamed when complete; only the newest :data:`KEEP_EXPORTS` folders are kept.
"""
from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

from app import figures
from app.core import write_bytes_atomic, write_json_atomic
from app.explain import PairView
from app.state import AppState

KEEP_EXPORTS = 200
"""Export folders kept under ``<cache-dir>/exports`` (older ones are removed)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60].strip("_") or "pair"


def _export_dir(state: AppState) -> Path:
    root = state.cache_dir / "exports"
    root.mkdir(parents=True, exist_ok=True)
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[:-KEEP_EXPORTS]:
        shutil.rmtree(old, ignore_errors=True)
    out = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    return out


def header(view: PairView) -> str:
    """The text printed above the exported picture."""
    e = view.explanation.explanation
    text = (f"CASN pair explanation: {view.name}\nsame-person probability {e.same_probability:.3f} | "
            f"feature distance {e.feature_distance:.4f} | attention distance {e.attention_distance:.4f} | "
            f"threshold {e.threshold:.2f}")
    score = view.explanation.ranking_score
    if score is not None and score.reranked_with_attention:
        text += (f"\nrank {score.rank}: score {score.total:.3f} = {score.feature_part:.3f} feature + "
                 f"{score.attention_part:.3f} attention")
    return text


def export_view(state: AppState, view: PairView) -> tuple[Path, Path]:
    """Write the view's PNG (header, overlays, vector plots) and JSON (explanation + model); their paths."""
    out = _export_dir(state)
    stem = f"casn_explanation_{_slug(view.name)}"
    png_path, json_path = out / f"{stem}.png", out / f"{stem}.json"
    write_bytes_atomic(png_path, figures.export_png([view.overlays, *view.extra_images, view.vectors], header(view)))
    payload = {"checkpoint": state.checkpoint_path.name, "backbone": state.backbone,
               "input_size": list(state.input_size), **view.explanation.to_json()}
    write_json_atomic(json_path, payload, indent=1)
    return png_path, json_path
