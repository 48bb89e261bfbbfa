"""Shared test fixtures.

Real re-id samples live in ``../shared/data`` beside the checkout (never in the repository).
Tests that need them use the ``shared_data`` fixture, which skips with a clear message when the
folder is absent (a user's fresh clone has no ``../shared``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real re-id samples not found at {SHARED_DATA} (only present beside the dev checkout)")
    return SHARED_DATA
