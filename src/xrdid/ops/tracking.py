"""MLflow tracking: where runs go, what every run records, and the model registry.

DVC owns the data versions; a run records which versions it used (the ``dvc.lock`` hashes of
the library, noise bank and augmented set), the git commit, its parameters, Top-1..5 and the
model. The tracking store defaults to SQLite in ``mlruns/`` with artifacts beside it (MLflow 3
refuses a plain file store); ``tracking.uri`` in ``params.yaml`` or ``MLFLOW_TRACKING_URI``
points elsewhere, e.g. at a tracking server shared by several machines.

Examples
--------
>>> import tempfile, os, mlflow
>>> root = tempfile.mkdtemp()
>>> experiment = configure(f"sqlite:///{root}/mlflow.db", "doc")
>>> with mlflow.start_run(experiment_id=experiment) as run:
...     mlflow.log_metric("top1", 0.9)
>>> mlflow.get_run(run.info.run_id).data.metrics["top1"]
0.9
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
_METRIC_CHARS = re.compile(r"[^\w\-. :/]")
DEFAULT_EXPERIMENT = "xrdid"


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: ``uri`` if given, else ``MLFLOW_TRACKING_URI``, else SQLite in ``mlruns/``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _artifact_root(uri: str) -> str | None:
    """``artifacts/`` beside a SQLite store; None (the server's default) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent.resolve() / "artifacts").as_uri()


def configure(uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``uri`` (see :func:`resolve_uri`), create ``experiment`` if needed; its id.

    With a SQLite store the folder is created and the experiment's artifacts go to
    ``artifacts/`` beside the database.
    """
    import mlflow

    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = mlflow.create_experiment(experiment, artifact_location=_artifact_root(uri))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def configure_from_params(params: Mapping[str, Any]) -> str:
    """:func:`configure` with the ``tracking`` section of ``params.yaml`` (``uri``, ``experiment``)."""
    section = params.get("tracking") or {}
    return configure(section.get("uri"), section.get("experiment", DEFAULT_EXPERIMENT))


def git_commit(cwd: str | Path = ".") -> str:
    """The checkout's commit (with ``-dirty`` when files differ), or ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True).stdout.strip()
        # the pipeline's own outputs (dvc.lock, metrics.json) change during a run: not "dirty" code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude,glob)**/dvc.lock", ":(exclude,glob)**/metrics.json"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics (as in ``metrics.json``) → ``{"measured.cnn.top1": 0.8, ...}``, numbers only.

    The keys are those ``dvc metrics show`` prints, so both tools show the same names.

    >>> flatten({"measured": {"cnn": {"top1": 0.5, "n": 4, "by_source": {"A": {"top1": 1.0}}}}})
    {'measured.cnn.top1': 0.5, 'measured.cnn.n': 4.0, 'measured.cnn.by_source.A.top1': 1.0}
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{_METRIC_CHARS.sub('_', str(key))}"  # MLflow's alphabet; our own keys need no change
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Every parameter as ``section.key`` → string (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flat_params(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def dvc_hashes(lock: str | Path = "dvc.lock") -> dict[str, str]:
    """``{output path: md5}`` of every stage output recorded in ``dvc.lock`` (empty without one).

    These are the versions a run used: DVC owns the data, the run only records which.
    """
    import yaml

    lock = Path(lock)
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: out.get("md5", "") for stage in stages.values() for out in stage.get("outs", [])}
