"""The whole pipeline through the CLI on a tiny configuration, for the tests that need its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from xrdid.cli import main

ROOT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def tiny_params(tmp_path: Path, **sections: dict) -> Path:
    """The root params.yaml shrunk to 4 entries, 876 points and 2 epochs, written to ``tmp_path``."""
    params = yaml.safe_load(ROOT_PARAMS.read_text())
    params["grid"].update({"two_theta_min": 5.0, "two_theta_max": 40.0, "n_points": 876})
    params["library"].update({"select": 4, "workers": 1})
    params["noise"]["physical"]["n_entries"] = 16
    params["augment"].update({"ratio": 10, "workers": 1, "mixtures": {"count": 6, "phases": [2, 3], "min_fraction": 0.1}})
    params["train"].update({"epochs": 2, "batch_size": 16})
    params["evaluate"].update({"classical": ["naive_bayes", "knn"], "baseline_val_samples": 20, "n_match_plots": 2})
    params["match"].update({"calibration_samples": 200, "test_samples": 50})
    params["tracking"]["uri"] = f"sqlite:///{tmp_path}/mlruns/mlflow.db"  # never the checkout's store
    for name, values in sections.items():
        params[name].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_pipeline(tmp_path: Path, params: Path, register: bool = False) -> dict:
    """Every stage through the CLI in ``tmp_path``; the metrics. ``register`` adds the MLflow stage."""
    d = tmp_path
    steps = [
        ["library", "--out", f"{d}/library"],
        ["simulate", "--library", f"{d}/library", "--out", f"{d}/patterns"],
        ["index", "--library", f"{d}/library", "--patterns", f"{d}/patterns", "--out", f"{d}/index"],
        ["noise", "--out", f"{d}/noise_bank"],
        ["augment", "--patterns", f"{d}/patterns", "--noise", f"{d}/noise_bank", "--library", f"{d}/library",
         "--out", f"{d}/augmented"],
        ["train", "--augmented", f"{d}/augmented", "--out", f"{d}/models"],
        ["evaluate", "--model", f"{d}/models/model.safetensors", "--patterns", f"{d}/patterns",
         "--augmented", f"{d}/augmented", "--library", f"{d}/library", "--index", f"{d}/index",
         "--metrics", f"{d}/metrics.json", "--plots", f"{d}/plots"],
        ["match", "--library", f"{d}/library", "--patterns", f"{d}/patterns", "--noise", f"{d}/noise_bank",
         "--index", f"{d}/index", "--out", f"{d}/models_open", "--metrics", f"{d}/metrics_open.json",
         "--plots", f"{d}/plots_open"],
        ["mixture", "--library", f"{d}/library", "--patterns", f"{d}/patterns", "--augmented", f"{d}/augmented",
         "--out", f"{d}/mixture", "--metrics", f"{d}/metrics_mixture.json", "--plots", f"{d}/plots_mixture"],
    ]
    if register:
        steps.append(["register", "--models", f"{d}/models", "--metrics", f"{d}/metrics.json", "--plots", f"{d}/plots",
                      "--library", f"{d}/library", "--patterns", f"{d}/patterns", "--augmented", f"{d}/augmented",
                      "--lock", f"{d}/dvc.lock", "--out", f"{d}/registered.json"])
        steps.append(["register_open", "--model", f"{d}/models_open", "--metrics", f"{d}/metrics_open.json",
                      "--plots", f"{d}/plots_open", "--mixture", f"{d}/mixture", "--mixture-metrics",
                      f"{d}/metrics_mixture.json", "--lock", f"{d}/dvc.lock", "--out", f"{d}/registered_open.json"])
    for step in steps:
        assert main([step[0], "--params", str(params), "--no-progress", *step[1:]]) == 0, step[0]
    return json.loads((d / "metrics.json").read_text())


def scan_of(folder: Path, store: dict, entry: int = 0) -> Path:
    """A two-column scan of library entry ``entry`` of the tiny pipeline: its simulated profile with counts
    and a background, written to ``folder/scan{entry}.xy``."""
    import numpy as np

    from xrdid.data.patterns import PatternSet

    patterns = PatternSet.load(store["dir"] / "patterns")
    counts = np.random.default_rng(entry).poisson(1000 * np.asarray(patterns.profiles[entry]) + 50)
    path = folder / f"scan{entry}.xy"
    np.savetxt(path, np.column_stack([patterns.grid.values, counts]))
    return path
