"""The ``register`` stage: log the pipeline run to MLflow, calibrate and register the model."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdid.config import load_params
from xrdid.data.patterns import PatternSet
from xrdid.data.splits import load_split, read_meta
from xrdid.errors import InputError
from xrdid.identify.explain import nca_map
from xrdid.learn.calibration import (
    NoveltyRule,
    expected_calibration_error,
    fit_temperature,
    novelty_evidence,
    reliability_plot,
    softmax,
)
from xrdid.learn.inference import predict_logits
from xrdid.learn.models import load_model
from xrdid.ops.registry import log_identifier, register, test_set_of
from xrdid.ops.tracking import (
    _flat_params,
    configure_from_params,
    dvc_hashes,
    flatten,
    git_commit,
)
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs, report_registration

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from typing import Any


log = logging.getLogger(__name__)
def run(
    params: Mapping[str, Any],
    models_dir: str | Path,
    metrics_path: str | Path,
    plots_dir: str | Path,
    library_dir: str | Path,
    patterns_dir: str | Path,
    augmented_dir: str | Path,
    lock: str | Path = "dvc.lock",
) -> dict[str, Any]:
    """Log the pipeline's training and evaluation as one MLflow run and register its model.

    The run holds every parameter, the git commit, the DVC hashes of the data it used, the
    training curves, all metrics of ``metrics.json`` (same names as ``dvc metrics show``), the
    plots and the model; the new registry version competes for ``champion`` (:func:`register`).
    """
    import mlflow

    section = params.get("tracking") or {}
    configure_from_params(params)
    models_dir = Path(models_dir)
    metrics = json.loads(Path(metrics_path).read_text())
    summary = json.loads((models_dir / "summary.json").read_text())
    history = json.loads((models_dir / "history.json").read_text())
    hashes = dvc_hashes(lock)
    name = section.get("model_name", "xrdid")
    with mlflow.start_run(run_name=f"{summary['model']['name']}-{name}") as run:
        mlflow.set_tags({"git_commit": git_commit(), "stage": "pipeline", "model": summary["model"]["name"],
                         **{f"dvc.{path}": md5 for path, md5 in hashes.items()}})
        mlflow.log_params({k: v for k, v in _flat_params(params).items() if not k.startswith("tune.")})
        mlflow.log_params({"model.parameters": summary["parameters"], "train.fresh_effective": summary["fresh"]})
        mlflow.log_metrics(flatten(metrics))
        mlflow.log_metrics({"train.seconds": summary["seconds"], "train.epochs": summary["epochs"],
                            "train.best_epoch": summary["best_epoch"]})
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            for epoch, value in enumerate(history.get(key, []), start=1):
                mlflow.log_metric(f"curve.{key}", float(value), step=epoch)
        mlflow.log_artifact(str(metrics_path))
        if Path(plots_dir).is_dir():
            mlflow.log_artifacts(str(plots_dir), artifact_path="plots")
        for extra in ("summary.json", "history.json"):
            mlflow.log_artifact(str(models_dir / extra), artifact_path="training")
        model = load_model(models_dir / "model.safetensors")
        meta = read_meta(augmented_dir)
        temperature, novelty, example = _calibrate(model, meta["ids"], params, augmented_dir, patterns_dir)
        if ((params.get("evaluate") or {}).get("measured") or {}).get("labels"):
            _log_nca(params, models_dir, patterns_dir, augmented_dir)
        model_uri = log_identifier(model, meta["ids"], library_dir, params, patterns_dir=patterns_dir,
                                   temperature=temperature, novelty=novelty, input_example=example)
        test_set, scores = test_set_of(params, metrics, library_dir, augmented_dir)
        version, promoted = register(model_uri, name, test_set, scores)
        mlflow.set_tags({"registered_model": name, "registered_version": version.version})
        result = {"run_id": run.info.run_id, "model_uri": model_uri, "name": name, "version": int(version.version),
                  "champion": promoted, "test_set": test_set, **scores}
    return result


def _calibrate(model: Any, ids: list[str], params: Mapping[str, Any], augmented_dir: str | Path,
               patterns_dir: str | Path) -> tuple[float, dict[str, Any], np.ndarray]:
    """Temperature and not-in-library rule fitted on validation spectra, logged to the active run.

    Returns (temperature, novelty rule as a dict, one validation spectrum as the input example).
    """
    import mlflow

    settings = params.get("register") or {}
    X_val, y_val = load_split(augmented_dir, "val")
    rng = np.random.default_rng(int(settings.get("seed", 0)))
    pick = np.sort(rng.permutation(len(y_val))[: int(settings.get("calibration_samples", 4000))])
    X, y = np.asarray(X_val[pick], np.float32), y_val[pick]
    logits = predict_logits(model, X)
    temperature = fit_temperature(logits, y)
    before, after = softmax(logits), softmax(logits, temperature)
    patterns = PatternSet.load(patterns_dir)
    profiles = np.asarray(patterns.profiles)[patterns.rows(ids)]
    n = int(settings.get("novelty_samples", 2000))  # search-match against the library: a few thousand suffice
    evidence = novelty_evidence(after[:n], X[:n], None, profiles, patterns.grid)
    rule = NoveltyRule.fit(evidence, float(settings.get("false_flag_rate", 0.1)),
                           float(settings.get("signal_rate", 0.01)))
    mlflow.log_metrics({"calibration.temperature": temperature,
                        "calibration.val_ece_before": expected_calibration_error(before, y),
                        "calibration.val_ece_after": expected_calibration_error(after, y)})
    mlflow.log_dict(rule.to_dict(), "calibration/novelty_rule.json")
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "reliability.png"
        reliability_plot({"raw": before, f"T = {temperature:.2f}": after}, y, plot, "validation (synthetic)")
        mlflow.log_artifact(str(plot), artifact_path="calibration")
    return temperature, rule.to_dict(), X[:1]


def _log_nca(params: Mapping[str, Any], models_dir: Path, patterns_dir: str | Path, augmented_dir: str | Path) -> None:
    """The NCA map of the measured test patterns, as an artifact of the run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nca.png"
        try:
            nca_map(params, models_dir / "model.safetensors", patterns_dir, augmented_dir, out, progress=False)
        except InputError as exc:  # too few measured patterns: the run goes on without the map
            log.warning("register: no NCA map (%s)", exc)
            return
        mlflow.log_artifact(str(out), artifact_path="plots")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "tracking, register, evaluate (and all, logged with the run)")
    parser.add_argument("--models", default="models", help="the train stage's folder")
    parser.add_argument("--metrics", default="metrics.json", help="the evaluate stage's metrics")
    parser.add_argument("--plots", default="plots", help="the evaluate stage's plots")
    add_stage_inputs(parser, "library", "patterns", "augmented", role=" (they go with the model)")
    parser.add_argument("--lock", default="dvc.lock", help="dvc.lock whose hashes the run records")
    add_out(parser, None, "write the registration (name, version, champion) as JSON here")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if not args.progress:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for path in (Path(args.models) / "model.safetensors", Path(args.metrics)):
        if not path.is_file():
            raise InputError(path, "missing: run the train and evaluate stages first")
    result = run(load_params(args.params), args.models, args.metrics, args.plots, args.library,
                            args.patterns, args.augmented, args.lock)
    return report_registration(result, args.out)
