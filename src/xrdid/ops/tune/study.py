"""A whole study: :func:`run_study` and what it does once the trials are done.

Every call is one MLflow parent run (tag ``optuna.study``). At the end the parent gets the
history and importance plots, the trials table and the best trial's model, which
``register`` adds to the model registry (``champion`` moves only if it wins).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.errors import InputError
from xrdid.ops.tracking import configure_from_params, git_commit
from xrdid.ops.tune.data import TuneData
from xrdid.ops.tune.objective import Objective, _fmt, _mark_mlflow_failed, _run_trials
from xrdid.ops.tune.space import TuneSettings, _bounds
from xrdid.ops.tune.storage import (
    DEFAULT_STORAGE,
    _ClaimLock,
    _safe_url,
    make_pruner,
    make_sampler,
    make_storage,
    storage_url,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("xrdid.tune")  # one logger for the whole package, as before the split


def run_study(
    params: Mapping[str, Any],
    study_name: str | None = None,
    n_trials: int | None = None,
    *,
    storage: str | None = None,
    augmented: str | Path = "data/augmented",
    out: str | Path | None = None,
    space: Mapping[str, Any] | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    use_mlflow: bool = True,
    register: bool | None = None,
    library: str | Path = "data/library",
    patterns: str | Path | None = "data/patterns",
    progress: bool = False,
    finish: Callable[[optuna.Study, Path], list[Path]] | None = None,
    run_tags: Mapping[str, str] | None = None,
    plots: bool = True,
) -> optuna.Study:
    """Create or resume ``study_name`` and run it until it holds ``n_trials`` finished trials.

    Parameters
    ----------
    params : the whole ``params.yaml`` (sections ``tune``, ``train``, ``model``, ``tracking``,
        ``evaluate``, ``grid``).
    study_name, n_trials, storage : default ``tune.study``, ``tune.n_trials``, and ``OPTUNA_STORAGE``
        (as the ``optuna`` CLI), else ``tune.storage``, else SQLite ``optuna.db`` in the working
        directory. ``n_trials`` counts the study's complete and pruned trials, whichever worker or
        earlier invocation ran them.
    augmented : the stored augmented set, generated at the largest ratio searched.
    out : local outputs (best model, plots, trials table); default ``tune.out/<study>``.
    space, sampler, seed, pruner : override the ``tune`` settings (``sampler="grid"`` runs the
        grid of ``space``'s lists).
    use_mlflow : one parent run per call, a nested run per trial (the tracking section's store).
    register : register the best trial's model (default ``tune.register``); needs ``library``.
    finish : ``finish(study, out) -> paths`` at the end; the paths are logged to the parent run.
    plots : draw the history, importance and intermediate-value plots at the end (a few seconds:
        extra workers of a study may skip them).

    Returns
    -------
    optuna.Study

    Examples
    --------
    >>> study = run_study(load_params("params.yaml"), "depth", 3)  # doctest: +SKIP
    >>> len(study.trials)  # doctest: +SKIP
    3
    """
    import optuna

    try:
        settings = TuneSettings.from_params(params.get("tune"))
    except (TypeError, ValueError) as exc:
        raise InputError("params tune section", str(exc)) from exc
    study_name = study_name or settings.study
    n_trials = int(settings.n_trials if n_trials is None else n_trials)
    url = storage_url(storage or os.environ.get("OPTUNA_STORAGE") or settings.storage or DEFAULT_STORAGE)
    space = dict(settings.space if space is None else space)
    out = Path(out) if out is not None else Path(settings.out) / study_name
    register = settings.register if register is None else register
    sampler_name = sampler or settings.sampler
    base_seed = settings.seed if seed is None else int(seed)

    if register and not (Path(library) / "index.csv").is_file():  # fail now, not after the study
        raise InputError(library, "library folder not found: --register needs it (the identifier's index)")
    if register and not use_mlflow:
        raise InputError("--register", "registering needs MLflow (drop --no-mlflow)")
    data = TuneData.load(augmented, params, measured=settings.objective == "measured", progress=progress)
    ratio_hi = _bounds(space["ratio"])[1] if "ratio" in space else data.max_ratio
    if ratio_hi > data.max_ratio:
        raise InputError(augmented, f"the space reaches ratio {ratio_hi:g} but the stored set has ratio "
                                    f"{data.max_ratio}: generate it at the largest ratio searched")
    if pruner is None:
        pruner = make_pruner("none" if sampler_name == "grid" else settings.pruner, settings.pruner_options,
                             _epochs_hi(space, params))
    grid = {k: v for k, v in space.items() if isinstance(v, (list, tuple))} if sampler_name == "grid" else None

    stale = _mark_mlflow_failed if use_mlflow else None
    rdb = make_storage(url, settings.heartbeat_interval, settings.grace_period, settings.max_retry, on_stale=stale)
    study = optuna.create_study(storage=rdb, study_name=study_name, direction="maximize",
                                sampler=make_sampler(sampler_name, base_seed, grid), pruner=pruner,
                                load_if_exists=True)
    lock = _ClaimLock(url, study_name)
    objective = Objective(data, params, settings, space=space, lock=lock, out=out, use_mlflow=use_mlflow,
                          progress=progress)
    poll = float(max(1, min(settings.heartbeat_interval or 2, 5)))

    def sampler_factory(k: int) -> optuna.samplers.BaseSampler:
        # a grid's order depends on its seed and must be the same for every trial and worker
        return make_sampler(sampler_name, base_seed if sampler_name == "grid" else base_seed + k, grid)

    run_ctx = _parent_run(params, study_name, url, settings, n_trials, space, run_tags) if use_mlflow else None
    try:
        _run_trials(study, objective, n_trials, sampler_factory, poll)
        _finish(study, data, params, out, use_mlflow, register, library, patterns, finish, plots)
    except BaseException:
        if run_ctx is not None:
            import mlflow

            mlflow.end_run("FAILED")
        raise
    if run_ctx is not None:
        import mlflow

        mlflow.end_run()
    return study


def _epochs_hi(space: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    if "epochs" in space:
        return int(_bounds(space["epochs"])[1])
    epochs = (params.get("train") or {}).get("epochs")
    return int(epochs) if epochs else None


def _parent_run(params: Mapping[str, Any], study_name: str, url: str, settings: TuneSettings, n_trials: int,
                space: Mapping[str, Any], tags: Mapping[str, str] | None) -> Any:
    """Start this invocation's parent MLflow run in the ``tracking`` section's store."""
    import mlflow

    configure_from_params(params)
    run = mlflow.start_run(run_name=f"tune-{study_name}", tags={
        "optuna.study": study_name, "optuna.storage": _safe_url(url), "stage": "tune", "git_commit": git_commit(),
        "host": os.uname().nodename, **(tags or {})})
    mlflow.log_params({"tune.n_trials": n_trials, "tune.sampler": settings.sampler, "tune.seed": settings.seed,
                       "tune.pruner": settings.pruner, "tune.objective": settings.objective,
                       "tune.tie_break": settings.tie_break, "tune.model": settings.model,
                       "tune.space": json.dumps(space)[:6000]})
    return run


def _finish(study: optuna.Study, data: TuneData, params: Mapping[str, Any], out: Path, use_mlflow: bool,
            register: bool, library: str | Path, patterns: str | Path | None,
            finish: Callable[[optuna.Study, Path], list[Path]] | None, plots: bool = True) -> None:
    """Summary, plots, trials table and the best model; logged to the parent run; registration."""
    from optuna.trial import TrialState

    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    count = Counter(t.state.name.lower() for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "trials": dict(count)}
    best = max(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           **{k: v for k, v in best.user_attrs.items() if k != "mlflow_run_id"}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    paths = [out / "summary.json", out / "trials.csv", *(_plots(study, out) if plots else [])]
    if finish is not None:
        paths += finish(study, out)
    best_path = _best_model(study, best, out, use_mlflow) if best is not None else None
    if best is not None:
        log.info("tune: %s: best trial %d, value %.4f, %s", study.study_name, best.number, best.value,
                 ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    if not use_mlflow:
        return
    import mlflow

    mlflow.set_tags({f"trials.{state}": n for state, n in count.items()})
    if best is not None:
        mlflow.log_metrics({f"best.{k}": float(v) for k, v in best.user_attrs.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_metric("best.value", float(best.value))
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        mlflow.set_tag("best_trial", str(best.number))
    for path in paths:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path="study")
    if best_path is not None:
        mlflow.log_artifact(str(best_path), artifact_path="best_model")
        if register:
            _register_best(best, best_path, data, params, library, patterns)
    elif register:
        log.warning("tune: no model of a complete trial to register")


def _plots(study: optuna.Study, out: Path) -> list[Path]:
    """History, importance and intermediate-value plots (PNG); those that cannot be drawn are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[], Any]]] = [("history", lambda: ovm.plot_optimization_history(study))]
    if len(complete) >= 2 and any(t.params for t in complete):  # importance needs two complete trials
        plots.append(("importance", lambda: ovm.plot_param_importances(study)))
    else:
        log.info("tune: %d complete trial(s): no importance plot (needs 2)", len(complete))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(("intermediate", lambda: ovm.plot_intermediate_values(study)))
    written = []
    for name, draw in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = draw()
            figure = np.ravel(ax)[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            path = out / f"{name}.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written.append(path)
        except Exception as exc:  # e.g. importance of constant params; plots never fail a study
            log.warning("tune: no %s plot: %s", name, exc)
    return written


def _best_model(study: optuna.Study, best: optuna.trial.FrozenTrial, out: Path, use_mlflow: bool) -> Path | None:
    """The best trial's model as ``out/best_model.safetensors``, from its MLflow run or a local file."""
    target = out / "best_model.safetensors"
    local = out / "trials" / f"trial-{best.number}.safetensors"
    run_id = best.user_attrs.get("mlflow_run_id")
    if use_mlflow and run_id:
        import mlflow

        try:
            with tempfile.TemporaryDirectory(prefix="xrdid-best-") as tmp:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/model.safetensors",
                                                           dst_path=tmp)
                shutil.copyfile(path, target)
            return target
        except Exception as exc:  # another store, or a run without the artifact
            log.warning("tune: best trial %d: model not found in MLflow run %s (%s)", best.number, run_id, exc)
    if local.is_file():
        shutil.copyfile(local, target)
        return target
    log.warning("tune: the best trial's (%d) model is not available here", best.number)
    return None


def _register_best(best: optuna.trial.FrozenTrial, path: Path, data: TuneData, params: Mapping[str, Any],
                   library: str | Path, patterns: str | Path | None) -> None:
    """Log the best model as an identifier in the parent run and add it to the registry."""
    import mlflow

    # both import torch: only when registering
    from xrdid.learn.models import load_model
    from xrdid.ops import registry

    attrs = best.user_attrs
    measured = all(f"measured.top{k}" in attrs for k in range(1, 6))
    scores = {f"top{k}": float(attrs[f"measured.top{k}" if measured else f"top{k}"]) for k in range(1, 6)}
    metrics = {"measured": {"cnn": scores}} if measured else {"validation": {"cnn": scores}}
    patterns_dir = patterns if patterns is not None and Path(patterns).is_dir() else None
    model_uri = registry.log_identifier(load_model(path), data.ids, library, params, patterns_dir=patterns_dir,
                                        input_example=np.asarray(data.X_val[:1], np.float32))
    test_set, scores = registry.test_set_of(params, metrics, library, data.folder)
    name = (params.get("tracking") or {}).get("model_name", "xrdid")
    version, promoted = registry.register(model_uri, name, test_set, scores)
    mlflow.set_tags({"registered_model": name, "registered_version": str(version.version),
                     "champion": str(bool(promoted)).lower()})
    log.info("tune: registered %s v%s from trial %d (%s)", name, version.version, best.number,
             "champion" if promoted else "not champion")
