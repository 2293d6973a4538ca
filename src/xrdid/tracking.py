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

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xrdid.errors import InputError

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


# --------------------------------------------------------------------------- models and the registry

CHAMPION = "champion"


def log_identifier(
    model: Any,
    ids: list[str],
    library_dir: str | Path,
    params: Mapping[str, Any],
    *,
    patterns_dir: str | Path | None = None,
    temperature: float = 1.0,
    novelty: Mapping[str, Any] | None = None,
    input_example: np.ndarray | None = None,
    name: str = "model",
) -> str:
    """Log ``model`` as an MLflow pyfunc identifier in the active run; returns its model URI.

    The model is stored as safetensors plus its config (no pickle) with the library index in
    class order, the preprocessing and, when ``patterns_dir`` is given, the simulated patterns.
    Its signature takes ``(n, n_points)`` float32 patterns on the grid and a ``top`` parameter.
    """
    import mlflow
    import xrdid
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    from xrdid.config import Grid
    from xrdid.models import save_model
    from xrdid.predict import Identifier

    grid = Grid.from_params(params["grid"])
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="xrdid-log-") as tmp:
        weights = Path(tmp) / "weights.safetensors"
        save_model(model, weights, {"ids": json.dumps(list(ids)), "grid": json.dumps(grid.to_dict())})
        provenance = {"run_id": run.info.run_id if run else "", "git_commit": git_commit()}
        folder = Identifier.build(Path(tmp) / "identifier", weights, library_dir, patterns_dir, params,
                                  temperature=temperature, novelty=novelty, provenance=provenance)
        identifier = Identifier.from_folder(folder)
        identifier.write_provenance(library_sha256=json.loads((folder / "identifier.json").read_text())["library_sha256"])
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, grid.n_points))]),
            params=ParamSchema([ParamSpec("top", "long", 5)]),
        )
        example = np.zeros((1, grid.n_points), np.float32) if input_example is None else input_example
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"identifier": str(folder)},
            code_paths=[str(Path(xrdid.__file__).parent)],
            signature=signature,
            input_example=np.asarray(example, np.float32)[:1],
            pip_requirements=_requirements(),
        )
    return info.model_uri


def _requirements() -> list[str]:
    """The serving environment: the packages the identifier imports, at the installed versions."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "numpy", "pandas", "scipy", "safetensors", "tqdm")]


def champion(name: str) -> Any | None:
    """The version holding the ``champion`` alias of registered model ``name``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _score(version: Any) -> tuple[float, float]:
    return float(version.tags.get("top1", "nan")), float(version.tags.get("top5", "nan"))


def register(model_uri: str, name: str, test_set: str, scores: Mapping[str, float]) -> tuple[Any, bool]:
    """Add a version of ``name``; move ``champion`` to it only if it beats the current one.

    The version records ``test_set`` (what the scores were measured on) and ``top1``..``top5``.
    It beats the champion when both were scored on the same test set and its Top-1 is higher
    (ties broken by Top-5); a champion scored on another test set is kept (``xrdid promote``
    moves the alias by hand). Without a champion the new version becomes one.
    """
    import mlflow
    from mlflow import MlflowClient

    tags = {"test_set": test_set, **{k: f"{float(v):.6f}" for k, v in scores.items()}}
    version = mlflow.register_model(model_uri, name, tags=tags)
    current = champion(name)
    new = (float(scores["top1"]), float(scores.get("top5", scores["top1"])))
    if current is None:
        promote, why = True, "no champion yet"
    elif current.tags.get("test_set") != test_set:
        promote, why = False, f"champion v{current.version} was scored on another test set"
    elif new > _score(current):
        promote, why = True, f"beats champion v{current.version} {_score(current)}"
    else:
        promote, why = False, f"does not beat champion v{current.version} {_score(current)}"
    client = MlflowClient()
    client.set_model_version_tag(name, version.version, "champion_decision", why)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    log.info("registered %s v%s (%s): %s", name, version.version, "champion" if promote else "kept", why)
    return version, promote


def promote(name: str, version: str | int) -> None:
    """Move the ``champion`` alias of ``name`` to ``version`` by hand."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.get_model_version(name, str(version))  # raises if it does not exist
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "champion_decision", "promoted by hand")


# --------------------------------------------------------------------------- the register stage


def test_set_of(params: Mapping[str, Any], metrics: Mapping[str, Any], library_dir: str | Path,
                augmented_dir: str | Path) -> tuple[str, dict[str, float]]:
    """What the pipeline's model is judged on, and its scores there.

    The measured test set when ``metrics.json`` has one (identified by the labels file's and the
    library's hashes), else the synthetic validation split (identified by its labels' hash). The
    library counts by its entries (ids and CIF hashes, in order), so columns that a later version
    adds to the index do not start a new comparison.
    """
    with open(Path(library_dir) / "index.csv", newline="") as handle:
        entries = "\n".join(f"{row['id']},{row['sha256']}" for row in csv.DictReader(handle))
    library = hashlib.sha256(entries.encode()).hexdigest()[:12]
    if "measured" in metrics:
        labels = Path(params["evaluate"]["measured"]["labels"])
        key = f"measured:{hashlib.sha256(labels.read_bytes()).hexdigest()[:12]}:library:{library}"
        table = metrics["measured"]["cnn"]
    else:
        val = hashlib.sha256(Path(augmented_dir, "val", "y.npy").read_bytes()).hexdigest()[:12]
        key = f"validation:{val}:library:{library}"
        table = metrics["validation"]["cnn"]
    return key, {f"top{k}": float(table[f"top{k}"]) for k in range(1, 6)}


def register_stage(
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

    from xrdid.models import load_model

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
        meta = json.loads(Path(augmented_dir, "meta.json").read_text())
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

    from xrdid.calibration import (NoveltyRule, expected_calibration_error, fit_temperature, novelty_evidence,
                                   predict_logits, reliability_plot, softmax)
    from xrdid.diffraction import PatternSet
    from xrdid.evaluate import load_split

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

    from xrdid.explain import nca_map

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nca.png"
        try:
            nca_map(params, models_dir / "model.safetensors", patterns_dir, augmented_dir, out, progress=False)
        except InputError as exc:  # too few measured patterns: the run goes on without the map
            log.warning("register: no NCA map (%s)", exc)
            return
        mlflow.log_artifact(str(out), artifact_path="plots")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("register", help="stage: log the run to MLflow, register the model, maybe move champion")
    p.add_argument("--params", default="params.yaml", help="parameter file (all sections; tracking for the store)")
    p.add_argument("--models", default="models", help="the train stage's folder")
    p.add_argument("--metrics", default="metrics.json", help="the evaluate stage's metrics")
    p.add_argument("--plots", default="plots", help="the evaluate stage's plots")
    p.add_argument("--library", default="data/library", help="library (its index goes with the model)")
    p.add_argument("--patterns", default="data/patterns", help="simulated patterns (go with the model)")
    p.add_argument("--augmented", default="data/augmented", help="augmented splits (validation example)")
    p.add_argument("--lock", default="dvc.lock", help="dvc.lock whose hashes the run records")
    p.add_argument("--out", default=None, help="write the registration (name, version, champion) as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide MLflow's upload progress bars")
    p.set_defaults(func=_cmd_register)

    p = subparsers.add_parser("promote", help="move the champion alias to a registered model version by hand")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="version number")
    p.add_argument("--tracking-uri", default=None, help="tracking store (default: MLFLOW_TRACKING_URI or mlruns/)")
    p.set_defaults(func=_cmd_promote)


def _cmd_register(args: argparse.Namespace) -> int:
    from xrdid.config import load_params

    if args.no_progress:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for path in (Path(args.models) / "model.safetensors", Path(args.metrics)):
        if not path.is_file():
            raise InputError(path, "missing: run the train and evaluate stages first")
    result = register_stage(load_params(args.params), args.models, args.metrics, args.plots, args.library,
                            args.patterns, args.augmented, args.lock)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    state = "champion" if result["champion"] else "not champion"
    print(f"registered {result['name']} v{result['version']} ({state}); top1 {result['top1']:.3f} on {result['test_set']}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    configure(args.tracking_uri)
    try:
        promote(args.name, args.version)
    except MlflowException as exc:
        raise InputError(f"{args.name} v{args.version}", str(exc).splitlines()[0]) from exc
    print(f"{args.name}: champion is now v{args.version}")
    return 0
