"""The whole pipeline through the CLI on a tiny configuration: library → … → evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _pipeline import run_pipeline, tiny_params


def test_embedded_default_pipeline(registered_pipeline: dict) -> None:
    folder, metrics = registered_pipeline["dir"], registered_pipeline["metrics"]
    assert metrics["n_library"] == 4
    for method in ("cnn", "search_match", "naive_bayes", "knn"):
        table = metrics["validation"][method]
        assert 0 <= table["top1"] <= table["top5"] <= 1
    assert "measured" not in metrics  # no measured set in the embedded default
    summary = json.loads((folder / "models" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["model"]["n_points"] == 876
    assert (folder / "plots" / "topk.png").stat().st_size > 1000
    with open(folder / "plots" / "topk.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} >= {"cnn", "search_match"} and {r["k"] for r in rows} == {"1", "2", "3", "4", "5"}


@pytest.mark.slow
def test_ensemble_is_trained_registered_and_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xrdid.learn.models import Ensemble, load_model
    from xrdid.ops.registry import load_identifier

    metrics = run_pipeline(tmp_path, tiny_params(tmp_path, train={"ensemble": 2, "seed": 3}), register=True)
    model = load_model(tmp_path / "models" / "model.safetensors")
    assert isinstance(model, Ensemble) and len(model.members) == 2
    summary = json.loads((tmp_path / "models" / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [3, 4] and summary["epochs"] == 4
    assert summary["val_top"]["top1"] == metrics["validation"]["cnn"]["top1"]
    assert (tmp_path / "models" / "seed-4" / "model.safetensors").is_file()  # each member stays beside it
    registered = json.loads((tmp_path / "registered.json").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    identifier = load_identifier(f"models:/{registered['name']}/{registered['version']}")
    assert isinstance(identifier.model, Ensemble)
    ranked = identifier.rank(np.ones((1, identifier.grid.n_points), np.float32), top=3)[0]
    assert len(ranked) == 3 and sum(c["probability"] for c in ranked) <= 1 + 1e-6


@pytest.mark.slow
def test_same_seed_same_model(tmp_path: Path, registered_pipeline: dict) -> None:
    first, first_dir = registered_pipeline["metrics"], registered_pipeline["dir"]
    second = run_pipeline(tmp_path, tiny_params(tmp_path))  # same params, another folder and store
    assert first["validation"]["cnn"] == second["validation"]["cnn"]
    a = np.load(first_dir / "augmented" / "train" / "X.npy")
    b = np.load(tmp_path / "augmented" / "train" / "X.npy")
    assert a.tobytes() == b.tobytes()


@pytest.mark.slow
def test_rruff_subset_with_measured_patterns(tmp_path: Path, shared_data: Path) -> None:
    rruff = shared_data / "rruff236"
    with open(rruff / "labels.csv") as handle:
        every = list(csv.DictReader(handle))
    # 8 measured patterns, plus chrysoberyl (BeAl2O4_62) and its Materials Project structure
    # (mp-3081, one of its mp_matches, no pattern here; DFT cell within 0.2 %): one material in two entries
    rows = every[::15] + [r for r in every if r["cif"].endswith("/BeAl2O4_62.cif")]
    cif_dir = tmp_path / "cif"
    cif_dir.mkdir()
    for cif in [rruff / row["cif"] for row in rows] + [shared_data / "mp" / "cif" / "mp-3081.cif"]:
        (cif_dir / cif.name).write_bytes(cif.read_bytes())
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "pattern": str(rruff / r["pattern"])} for r in rows)
    params = tiny_params(
        tmp_path,
        grid={"two_theta_min": 5.0, "two_theta_max": 60.0, "n_points": 1101},
        library={"source": "folder", "folder": str(cif_dir), "select": "all"},
        noise={"folder": str(shared_data / "noise" / "d8")},
        evaluate={"measured": {"labels": str(labels), "folder": None, "default_wavelength": "CuKa"}},
    )
    metrics = run_pipeline(tmp_path, params)
    measured = metrics["measured"]
    assert measured["cnn"]["n"] == len(rows) and metrics["measured_failed"] == 0
    for method in ("cnn", "cnn_denoised", "search_match", "cnn_search_match", "naive_bayes", "knn"):
        assert 0 <= measured[method]["top1"] <= measured[method]["top5"] <= 1, method
    # search-match on the real patterns of 9 well-separated minerals finds most of them
    assert measured["search_match"]["top1"] >= 0.5
    # per material the two chrysoberyl entries are one answer; nothing else is joined
    assert metrics["n_materials"] == metrics["n_library"] - 1
    materials = (tmp_path / "plots" / "materials.csv").read_text()
    assert "mp-3081,BeAl2O4_62" in materials or "BeAl2O4_62,mp-3081" in materials
    for method, table in metrics["measured_material"].items():
        assert table["top1"] >= measured[method]["top1"] and table["n"] == measured[method]["n"], method
    assert len(list((tmp_path / "plots" / "measured").glob("*.png"))) == 2
    # one row per pattern; its ranks agree with the Top-k tables
    import pandas as pd

    predictions = pd.read_csv(tmp_path / "plots" / "predictions.csv")
    assert len(predictions) == len(rows) and set(predictions["source"]) == {"RRUFF"}
    for method in ("cnn", "search_match", "cnn_search_match"):
        for k in (1, 5):
            assert (predictions[f"{method}_rank"] <= k).mean() == pytest.approx(measured[method][f"top{k}"])
    assert ((predictions["cnn_1"] == predictions["true"]) == (predictions["cnn_rank"] == 1)).all()
    # complete structures: the library finds no overlapping atoms in either chrysoberyl entry
    index = pd.read_csv(tmp_path / "library" / "index.csv").set_index("id")
    assert index.loc["mp-3081", "overlaps"] == 0 and index.loc["BeAl2O4_62", "overlaps"] == 0
