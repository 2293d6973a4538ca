"""Shared fixtures: locating ../shared/data and skipping cleanly without it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDID_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (set XRDID_SHARED_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Run a test on one torch thread: tiny tensors gain nothing from threads, and OpenMP
    spin-waits make a busy 2-core machine (parallel test workers) many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Send every test of the tiny pipeline to one xdist worker (``--dist loadgroup``), so the
    session fixture below builds it once per session, not once per worker."""
    for item in items:
        if "registered_pipeline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_pipeline"))


@pytest.fixture(scope="session")
def registered_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny pipeline run once through ``register``: its folder, params, store URI, registration.

    Tests read it and may register further models in its store; none may change its outputs."""
    import json

    from _pipeline import run_pipeline, tiny_params

    folder = tmp_path_factory.mktemp("registered")
    params = tiny_params(folder)
    metrics = run_pipeline(folder, params, register=True)
    return {"dir": folder, "params": params, "uri": f"sqlite:///{folder}/mlruns/mlflow.db", "metrics": metrics,
            "registered": json.loads((folder / "registered.json").read_text()),
            "registered_open": json.loads((folder / "registered_open.json").read_text())}


@pytest.fixture
def store(registered_pipeline: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``registered_pipeline`` with MLFLOW_TRACKING_URI pointing at its store (``models:/`` URIs resolve)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_pipeline["uri"])
    return registered_pipeline
