"""Shared test fixtures and options.

Real re-id samples live in ``../shared/data`` beside the checkout (never in the repository).
Tests that need them use the ``shared_data`` fixture, which skips with a clear message when the
folder is absent (a user's fresh clone has no ``../shared``).

Tests marked ``slow`` (end-to-end training, browser, subprocess kills) are deselected by a plain
``python -m pytest`` (the quick run, under two minutes on two cores); ``python -m pytest --slow``
runs everything (the README's test command and CI).
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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (the README's test command and CI do)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or config.getoption("-m"):
        return  # --slow, or an explicit -m expression, decides on its own
    kept = [item for item in items if "slow" not in item.keywords]
    deselected = [item for item in items if "slow" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real re-id samples not found at {SHARED_DATA} (only present beside the dev checkout)")
    return SHARED_DATA
