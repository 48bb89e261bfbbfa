"""Shared test fixtures and options.

Real re-id samples live in ``../shared/data`` beside the checkout (never in the repository).
Tests that need them use the ``shared_data`` fixture, which skips with a clear message when the
folder is absent (a user's fresh clone has no ``../shared``).

Tests marked ``slow`` (end-to-end training, browser, subprocess kills) are deselected by a plain
``python -m pytest`` (the quick run, under two minutes on two cores); ``python -m pytest --slow``
runs everything (the README's test command and CI). The README's command spreads the test files over one
worker process per core (pytest-xdist, ``-n auto``; ``--dist loadfile`` in ``pytest.ini`` keeps each
file's module fixtures in one process); most tests are single-threaded Python, so a serial run leaves
cores idle.

Tests marked ``numeric`` compare floats with pinned values, oracles or each other; ``.ci/run`` runs them
again at ``OMP_NUM_THREADS=3`` after the README's command has run them at one thread per worker, since
rounding depends on how many threads split a reduction. torch's thread count follows
``OMP_NUM_THREADS`` here (torch may cap it at the core count).

No test may leave global state changed: torch's thread count, the working directory, the environment,
torch's default dtype, grad mode or deterministic-algorithms flag left changed after a test is restored
and the test fails (``_no_leaked_global_state``); the random number generators (torch, numpy, ``random``)
are saved before each test, module fixtures included, and restored after it (seeding is how tests get
reproducible inputs, so it is allowed but never leaks into the next test).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    # torch can start with fewer threads than OMP_NUM_THREADS asks for (capped at the cores it sees); the
    # numeric runs of .ci/run need the asked-for count, or the 3-thread run would repeat the 2-thread one
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
elif os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit():
    # under pytest-xdist (``-n``) every worker is a process with torch's default of one thread per core;
    # share the cores out instead, since OpenMP threads that outnumber the cores spin against each other
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# variables that libraries write by themselves (on first import, or on every call) while a test runs
ENV_WRITTEN_BY_LIBRARIES = {
    "PYTEST_CURRENT_TEST",  # pytest's own
    "TORCHINDUCTOR_CACHE_DIR",  # torch sets it when its inductor configuration is first imported
    "HF_HUB_DISABLE_TELEMETRY",  # gradio.Blocks() sets it to "True" whenever analytics are off
    "MPLCONFIGDIR",  # matplotlib's import sets it to a temporary folder when ~/.config is not writable
    "LD_LIBRARY_PATH", "QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR",  # opencv's (cv2) first import
}


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


def _global_state() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_WRITTEN_BY_LIBRARIES}
    return {"torch threads": torch.get_num_threads(), "working directory": os.getcwd(), "environment": env,
            "torch default dtype": torch.get_default_dtype(), "grad mode": torch.is_grad_enabled(),
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled()}


BASELINE = _global_state()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The baseline is the state after collection: importing the test modules is not a test's doing."""
    BASELINE.update(_global_state())


def _restore(state: dict) -> None:
    torch.set_num_threads(state["torch threads"])
    os.chdir(state["working directory"])
    for key in set(os.environ) - set(state["environment"]) - ENV_WRITTEN_BY_LIBRARIES:
        del os.environ[key]
    os.environ.update(state["environment"])
    torch.set_default_dtype(state["torch default dtype"])
    torch.set_grad_enabled(state["grad mode"])
    torch.use_deterministic_algorithms(state["deterministic algorithms"])


def _differences(before: dict, after: dict) -> list[str]:
    changes = []
    for name, value in before.items():
        if name == "environment":
            keys = sorted(k for k in set(value) | set(after[name]) if value.get(k) != after[name].get(k))
            changes += [f"environment variable {k}: {value.get(k)!r} -> {after[name].get(k)!r}" for k in keys]
        elif after[name] != value:
            changes.append(f"{name}: {value!r} -> {after[name]!r}")
    return changes


@pytest.fixture(autouse=True)
def _no_leaked_global_state():
    """Fail a test (and its module's fixtures, on their first test) that leaves global state changed
    against the session's start; the state is restored first, so one leak fails one test, not the rest."""
    yield
    changes = _differences(BASELINE, _global_state())
    if changes:
        _restore(BASELINE)
        pytest.fail("the test left global state changed (restore it: monkeypatch, try/finally, "
                    "helpers.torch_threads): " + "; ".join(changes), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Save the random number generators before a test's setup (module fixtures included), restore them after."""
    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)  # never initialise CUDA here
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
