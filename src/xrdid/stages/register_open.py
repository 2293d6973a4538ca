"""The ``register_open`` stage: log the open-library identifier to MLflow and register it.

Its run holds the parameters, the git commit, the DVC hashes and every metric of the ``match``
stage (and of the ``mixture`` stage, prefixed ``mixture.``); the identifier folder, with the
``mixture`` stage's ``mixture.json`` (settings, per-phase confidence calibration, scattering
powers) when given, becomes a version of ``match.model_name`` (default: the tracking section's
``model_name`` plus ``-open``), which competes for ``champion`` like the classifier.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from xrdid.config import Grid, load_params
from xrdid.errors import InputError
from xrdid.identify.mixture import MIXTURE_FILE
from xrdid.ops.registry import log_identifier_folder, register
from xrdid.ops.tracking import _flat_params, configure_from_params, dvc_hashes, flatten, git_commit
from xrdid.stages.options import add_out, add_params, add_progress, report_registration

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from typing import Any


def model_name(params: Mapping[str, Any]) -> str:
    """The registered name of the open-library identifier."""
    match = params.get("match") or {}
    return str(match.get("model_name") or f"{(params.get('tracking') or {}).get('model_name', 'xrdid')}-open")


def run(params: Mapping[str, Any], model_dir: str | Path, metrics_path: str | Path, plots_dir: str | Path,
        lock: str | Path = "dvc.lock", mixture_dir: str | Path | None = None,
        mixture_metrics: str | Path | None = None) -> dict[str, Any]:
    """Log the ``match`` stage's identifier and metrics as one MLflow run and register the identifier."""
    import mlflow

    configure_from_params(params)
    metrics = json.loads(Path(metrics_path).read_text())
    if mixture_metrics and Path(mixture_metrics).is_file():
        metrics["mixture"] = json.loads(Path(mixture_metrics).read_text())
    spec = json.loads(Path(model_dir, "identifier.json").read_text())
    name = model_name(params)
    with tempfile.TemporaryDirectory(prefix="xrdid-open-") as staged, mlflow.start_run(run_name=f"open-{name}") as run:
        if mixture_dir and (Path(mixture_dir) / MIXTURE_FILE).is_file():
            shutil.copytree(model_dir, staged, dirs_exist_ok=True)  # the match stage's output stays as DVC wrote it
            shutil.copy2(Path(mixture_dir) / MIXTURE_FILE, Path(staged) / MIXTURE_FILE)
            model_dir = staged
        mlflow.set_tags({"git_commit": git_commit(), "stage": "register_open", "model": "open-library",
                         **{f"dvc.{path}": md5 for path, md5 in dvc_hashes(lock).items()}})
        mlflow.log_params({k: v for k, v in _flat_params(params).items() if not k.startswith("tune.")})
        mlflow.log_metrics({k: v for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and v == v})
        mlflow.log_artifact(str(metrics_path))
        if "mixture" in metrics:
            mlflow.log_artifact(str(mixture_metrics))
        if Path(plots_dir).is_dir():
            mlflow.log_artifacts(str(plots_dir), artifact_path="plots")
        model_uri = log_identifier_folder(model_dir, Grid.from_params(spec["grid"]))
        test_set, scores = _test_set(params, metrics, spec["provenance"].get("library_sha256", ""))
        version, promoted = register(model_uri, name, test_set, scores)
        mlflow.set_tags({"registered_model": name, "registered_version": version.version})
    return {"run_id": run.info.run_id, "model_uri": model_uri, "name": name, "version": int(version.version),
            "champion": promoted, "test_set": test_set, **scores}


def _test_set(params: Mapping[str, Any], metrics: Mapping[str, Any],
              library_sha256: str) -> tuple[str, dict[str, float]]:
    """The measured patterns when scored (labels file and library hashes), else synthetic spectra of seen entries."""
    measured = (metrics.get("measured") or {}).get("open")
    library = f"library:{library_sha256[:12]}"
    if measured:
        labels = Path(((params.get("evaluate") or {}).get("measured") or {})["labels"])
        where, table = f"measured:{hashlib.sha256(labels.read_bytes()).hexdigest()[:12]}:{library}", measured
    else:
        where, table = f"synthetic:{library}", metrics["synthetic"]["seen"]
    return where, {f"top{k}": float(table[f"top{k}"]) for k in range(1, 6)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "tracking, match (and all, logged with the run)")
    parser.add_argument("--model", default="models_open", help="the match stage's identifier folder")
    parser.add_argument("--metrics", default="metrics_open.json", help="the match stage's metrics")
    parser.add_argument("--plots", default="plots_open", help="the match stage's plots")
    parser.add_argument("--lock", default="dvc.lock", help="dvc.lock whose hashes the run records")
    parser.add_argument("--mixture", default=None, help="the mixture stage's folder (its mixture.json goes with the model)")
    parser.add_argument("--mixture-metrics", default=None, help="the mixture stage's metrics, logged with the run")
    add_out(parser, None, "write the registration (name, version, champion) as JSON here")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if not args.progress:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for path in (Path(args.model) / "identifier.json", Path(args.metrics)):
        if not path.is_file():
            raise InputError(path, "missing: run the index and match stages first")
    result = run(load_params(args.params), args.model, args.metrics, args.plots, args.lock, args.mixture,
                 args.mixture_metrics)
    return report_registration(result, args.out)
