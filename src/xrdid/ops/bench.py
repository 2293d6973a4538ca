"""The universal synthetic spectra benchmark (Schuetzke et al. 2023), run over the model zoo.

For one class config (``dataset500.json``, ``challenge27.json`` or any made with
:func:`xrdid.data.synthetic.make_config`) the train / validation / test spectra are generated once
(:func:`xrdid.data.synthetic.generate`) and every requested model is trained on them once per seed
with the published settings (:class:`xrdid.learn.train.TrainConfig` defaults: Adam 3e-4, batch 128,
early stopping on the validation loss with patience 25 and min_delta 1e-4 restoring the best
weights, learning rate × 0.1 after 10 epochs without improvement, at most 500 epochs). The
score is the published one: misclassified test spectra out of the test set (4500 for the
500-class set), reported as mean ± sample std over seeds, with epochs and wall time.

Results go to a printed table, ``OUT/results.csv`` (one row per model and seed, rewritten
after every run so an interrupted benchmark keeps what it finished), ``OUT/summary.json``,
``OUT/results.md`` and MLflow: one parent run per invocation and one nested child run per
(model, seed) with its loss curves.

Examples
--------
>>> from xrdid.data.synthetic import make_config
>>> rows = run_benchmark(make_config(3, 400, boundary=60), ["xrdnet"], "0", epochs=1,
...                      progress=False, tracking=False)  # doctest: +SKIP
>>> rows[0]["model"], rows[0]["n_test"]  # doctest: +SKIP
('xrdnet', 27)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xrdid.data.synthetic import (
    DATASET500_FINGERPRINT,
    Procedure,
    SyntheticConfig,
    generate,
    procedure_for,
)
from xrdid.errors import InputError
from xrdid.learn.datasets import ArrayDataset
from xrdid.learn.inference import predict_proba
from xrdid.learn.metrics import summarize
from xrdid.learn.models import MODELS, build_model, count_parameters
from xrdid.learn.train import (
    History,
    TrainConfig,
    _pick_device,
    fit,
    parse_seeds,
    seed_everything,
)
from xrdid.ops import tracking

log = logging.getLogger(__name__)

PUBLISHED_MODELS = ("cnn2", "cnn3", "cnn6", "cnn_bn", "vgg", "resnet", "inc3", "inc6")
DEFAULT_MODELS = (*PUBLISHED_MODELS, "xrdnet")
PUBLISHED_EPOCHS = 500  # the paper's maximum; early stopping ends most runs far earlier
DEFAULT_EXPERIMENT = "bench-synthetic"

# Published per-model mean misclassifications on dataset500 (5 seeds, out of 4500).
PUBLISHED_MEANS = {"cnn6": 8.4, "inc6": 11.4, "inc3": 17.2, "resnet": 21.2, "vgg": 21.6, "cnn3": 28.4,
                   "cnn2": 38.0, "cnn_bn": 44.2}

_CSV_FIELDS = ("model", "seed", "misclassified", "n_test", "test_accuracy", "epochs", "best_epoch",
               "stopped_early", "seconds", "seconds_per_epoch", "parameters", "run_id")


def run_benchmark(
    config: SyntheticConfig | str | Path,
    models: Sequence[str] | str,
    seeds: Sequence[int] | str | int,
    *,
    epochs: int | None = None,
    n_classes: int | None = None,
    data_seed: int = 0,
    model_options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> list[dict[str, Any]]:
    """Train every model of ``models`` once per seed on the synthetic benchmark; one row per run.

    Parameters
    ----------
    config : a :class:`~xrdid.data.synthetic.SyntheticConfig` or the path of its JSON file.
    models : model names of :data:`xrdid.learn.models.registry.MODELS` (a list or ``"cnn6,xrdnet"``).
    seeds : seeds of the weight initialisation and batch order (a list, ``"0-4"`` or an int).
    epochs : maximum epochs per run (default: the published 500); early stopping always applies.
    n_classes : keep only the first ``n_classes`` classes (reduced runs); the published
        special cases of the kept classes still apply.
    data_seed : seed of the train/validation draws (one data set for all models and seeds).
    model_options : constructor options per model name, e.g. ``{"xrdnet": {"bins": 150}}``.
    device : ``"cpu"``, ``"cuda"``, ...; None picks CUDA when available.
    out : folder for ``results.csv``, ``summary.json``, ``results.md`` and ``runs/*.json``
        (the per-epoch histories); None writes nothing.
    progress : a tqdm bar over the runs (epoch and validation loss in its postfix).
    tracking : log to MLflow: a parent run for the invocation, a nested run per (model, seed).
    tracking_uri, experiment : MLflow store (see :func:`xrdid.ops.tracking.configure`) and experiment.

    Returns
    -------
    list of dict
        Per run: ``model``, ``seed``, ``misclassified``, ``n_test``, ``test_accuracy``,
        ``epochs``, ``best_epoch``, ``stopped_early``, ``seconds`` (training wall time),
        ``seconds_per_epoch``, ``parameters`` and ``run_id`` (MLflow child run, or "").

    Raises
    ------
    InputError
        Missing or malformed config, unknown model or option, bad seeds, ``n_classes`` or
        ``epochs``; raised before anything is trained.

    Examples
    --------
    >>> from xrdid.data.synthetic import make_config
    >>> rows = run_benchmark(make_config(3, 400, boundary=60), "xrdnet", [0], epochs=1,
    ...                      progress=False, tracking=False)  # doctest: +SKIP
    >>> [(r["model"], r["seed"], r["n_test"]) for r in rows]  # doctest: +SKIP
    [('xrdnet', 0, 27)]
    """
    source = None if isinstance(config, SyntheticConfig) else str(config)
    config = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_json(config)
    names = _parse_models(models)
    options = _check_options(names, model_options or {})
    seed_list = _parse_seed_list(seeds)
    max_epochs = PUBLISHED_EPOCHS if epochs is None else epochs
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise InputError("--epochs", f"must be a positive integer, not {epochs!r}")
    if not isinstance(data_seed, int) or data_seed < 0:
        raise InputError("--data-seed", f"must be an integer ≥ 0, not {data_seed!r}")
    config, procedure = _subset(config, n_classes)

    import torch

    used_device = str(_pick_device(device))
    t0 = time.perf_counter()
    data = {split: generate(config, split, data_seed, procedure=procedure) for split in ("train", "val", "test")}
    log.info("generated %s spectra in %.1f s", {s: len(y) for s, (_, y) in data.items()}, time.perf_counter() - t0)
    n_test = len(data["test"][1])
    info = {
        "config": source, "config_fingerprint": config.fingerprint, "n_classes": config.n_classes,
        "n_points": config.n_points, "n_train": len(data["train"][1]), "n_val": len(data["val"][1]),
        "n_test": n_test, "data_seed": data_seed, "models": names, "seeds": seed_list, "max_epochs": max_epochs,
        "device": used_device, "torch_threads": torch.get_num_threads(), "model_options": options,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }  # fmt: skip
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)

    parent = _start_parent(info, tracking_uri, experiment) if tracking else None
    rows: list[dict[str, Any]] = []
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * len(seed_list), desc="runs", unit="run", disable=not progress)
        for name in names:
            for seed in seed_list:
                bar.set_description(f"{name} seed {seed}")
                row, history = _one_run(name, seed, options.get(name, {}), data, max_epochs, device, bar,
                                        tracking=parent is not None)
                rows.append(row)
                bar.update(1)
                if out_dir is not None:
                    (out_dir / "runs" / f"{name}-seed-{seed}.json").write_text(
                        json.dumps({**row, "history": history}, indent=1) + "\n")
                    _write_csv(out_dir / "results.csv", rows)
        bar.close()
        summary = summarize_rows(rows)
        if out_dir is not None:
            _write_outputs(out_dir, info, summary, rows)
        if parent is not None:
            _finish_parent(summary, out_dir)
    except BaseException:
        if parent is not None:
            import mlflow

            mlflow.end_run(status="KILLED")
        raise
    if parent is not None:
        import mlflow

        mlflow.end_run()
    return rows


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model (in first-seen order): mean ± std of misclassifications, epochs and seconds.

    Examples
    --------
    >>> rows = [{"model": "a", "misclassified": m, "n_test": 9, "test_accuracy": 1 - m / 9, "epochs": 3,
    ...          "seconds": 2.0, "seconds_per_epoch": 0.5, "parameters": 10} for m in (1, 3)]
    >>> s = summarize_rows(rows)["a"]
    >>> s["misclassified_mean"], round(s["misclassified_std"], 3), s["runs"]
    (2.0, 1.414, 2)
    """

    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        entry: dict[str, Any] = {"runs": len(mine), "n_test": mine[0]["n_test"], "parameters": mine[0]["parameters"]}
        for key in ("misclassified", "test_accuracy", "epochs", "seconds", "seconds_per_epoch"):
            mean, std = summarize([float(r[key]) for r in mine])
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean, std
        entry["misclassified_min"] = min(int(r["misclassified"]) for r in mine)
        entry["misclassified_max"] = max(int(r["misclassified"]) for r in mine)
        out[name] = entry
    return out


def format_table(
    summary: Mapping[str, Mapping[str, Any]], markdown: bool = False, reference: Mapping[str, float] | None = None
) -> str:
    """The per-model table: misclassified mean ± std (min–max) of N, epochs, wall time.

    ``reference`` adds a column of published means (:data:`PUBLISHED_MEANS`; they are out of
    4500, so pass them only for the full published ``dataset500.json``).

    Examples
    --------
    >>> s = {"cnn6": {"runs": 2, "n_test": 4500, "parameters": 10, "misclassified_mean": 8.0,
    ...      "misclassified_std": 1.0, "misclassified_min": 7, "misclassified_max": 9, "epochs_mean": 80.0,
    ...      "epochs_std": 5.0, "seconds_mean": 160.0, "seconds_std": 2.0, "seconds_per_epoch_mean": 2.0}}
    >>> print(format_table(s, markdown=True, reference=PUBLISHED_MEANS).splitlines()[2])
    | cnn6 | 10 | 8.0 ± 1.0 (7–9) of 4500 | 8.4 | 80 ± 5 | 160 ± 2 | 2.00 | 2 |
    """
    header = ["model", "params", "misclassified", "epochs", "wall s", "s/epoch", "seeds"]
    if reference is not None:
        header.insert(3, "published")
    lines = []
    for name, s in summary.items():
        digits = 1 if s["seconds_mean"] < 100 else 0  # one decimal for short runs only
        line = [
            name, f"{s['parameters']:,}",
            f"{s['misclassified_mean']:.1f} ± {s['misclassified_std']:.1f} "
            f"({s['misclassified_min']}–{s['misclassified_max']}) of {s['n_test']}",
            f"{s['epochs_mean']:.0f} ± {s['epochs_std']:.0f}",
            f"{s['seconds_mean']:.{digits}f} ± {s['seconds_std']:.{digits}f}",
            f"{s['seconds_per_epoch_mean']:.2f}",
            str(s["runs"]),
        ]  # fmt: skip
        if reference is not None:
            line.insert(3, f"{reference[name]:.1f}" if name in reference else "")
        lines.append(line)
    if markdown:
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(rows + ["| " + " | ".join(r) + " |" for r in lines])
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in lines)])


def reference_for(fingerprint: str) -> dict[str, float] | None:
    """The published means when ``fingerprint`` is the full published ``dataset500.json``'s.

    Examples
    --------
    >>> reference_for(DATASET500_FINGERPRINT)["cnn6"], reference_for("0" * 64)
    (8.4, None)
    """
    return dict(PUBLISHED_MEANS) if fingerprint == DATASET500_FINGERPRINT else None


# --------------------------------------------------------------------------- one run


def _one_run(
    name: str,
    seed: int,
    options: Mapping[str, Any],
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    max_epochs: int,
    device: str | None,
    bar: Any,
    *,
    tracking: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``name`` with ``seed``, score it on the test split, log a nested MLflow run."""

    X_train, y_train = data["train"]
    X_test, y_test = data["test"]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    cfg = TrainConfig(epochs=max_epochs, seed=seed, device=device)
    seed_everything(seed)  # before building: the initial weights depend on the seed too
    try:
        model = build_model(name, X_train.shape[1], n_classes, options=options)
    except ValueError as exc:  # e.g. too few points for the architecture's pooling
        raise InputError("--models", str(exc)) from None

    def show(epoch: int, history: History) -> None:
        bar.set_postfix(epoch=epoch, val_loss=f"{history.val_loss[-1]:.4f}", best=history.best_epoch, refresh=True)

    start = time.perf_counter()
    history = fit(model, ArrayDataset(*data["train"]), ArrayDataset(*data["val"]), cfg, progress=False, callback=show)
    seconds = time.perf_counter() - start
    predicted = predict_proba(model, X_test).argmax(axis=1)
    wrong = int((predicted != y_test).sum())
    row: dict[str, Any] = {
        "model": name, "seed": seed, "misclassified": wrong, "n_test": len(y_test),
        "test_accuracy": 1.0 - wrong / len(y_test), "epochs": history.epochs, "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early, "seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / max(history.epochs, 1), 3), "parameters": count_parameters(model),
        "run_id": "",
    }  # fmt: skip
    confused = Counter(f"{t}->{p}" for t, p in zip(y_test.tolist(), predicted.tolist()) if t != p)
    if tracking:
        row["run_id"] = _log_child(row, history, model.config, cfg)
    log.info("%s seed %d: %d of %d misclassified, %d epochs, %.0f s", name, seed, wrong, len(y_test),
             history.epochs, seconds)
    return row, {**history.to_dict(), "confusions": dict(confused), "model_config": model.config}


# --------------------------------------------------------------------------- input checks


def _parse_models(models: Sequence[str] | str) -> list[str]:

    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else [str(m).strip() for m in models]
    if not names or any(not n for n in names):
        raise InputError("--models", f"empty model name in {models!r}")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise InputError("--models", f"unknown model {unknown[0]!r}; choose from {', '.join(sorted(MODELS))}")
    if len(set(names)) != len(names):
        raise InputError("--models", f"a model is listed twice in {models!r}")
    return names


def _check_options(names: Sequence[str], options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``{model: {option: value}}`` against the constructors without building anything
    (the published heads hold up to 190 M parameters)."""

    if not isinstance(options, Mapping):
        raise InputError("--model-options", "must be a JSON object {model: {option: value}}")
    checked: dict[str, dict[str, Any]] = {}
    for name, opts in options.items():
        if name not in names:
            raise InputError("--model-options", f"options for {name!r}, which is not among the models")
        if not isinstance(opts, Mapping):
            raise InputError("--model-options", f"options of {name!r} must be a JSON object")
        try:
            inspect.signature(MODELS[name].__init__).bind(None, 1, 1, **opts)
        except TypeError as exc:
            raise InputError("--model-options", f"{name}: {exc}") from None
        checked[name] = dict(opts)
    return checked


def _parse_seed_list(seeds: Sequence[int] | str | int) -> list[int]:

    try:
        result = parse_seeds(seeds if isinstance(seeds, (str, int)) else ",".join(str(int(s)) for s in seeds))
    except (TypeError, ValueError) as exc:
        raise InputError("--seeds", str(exc)) from None
    if not result or min(result) < 0:
        raise InputError("--seeds", f"need one or more seeds ≥ 0, not {seeds!r}")
    return result


def _subset(config: SyntheticConfig, n_classes: int | None) -> tuple[SyntheticConfig, Procedure]:
    """The first ``n_classes`` classes and the published procedure restricted to them.

    The procedure is looked up on the full config: a subset's fingerprint is not the published
    one, but its classes keep their published special cases (e.g. dataset500's class 8).
    """
    procedure = procedure_for(config)
    if n_classes is None or n_classes == config.n_classes:
        return config, procedure
    if not isinstance(n_classes, int) or not 1 <= n_classes <= config.n_classes:
        raise InputError("--classes", f"must be within 1..{config.n_classes}, not {n_classes!r}")
    subset = dataclasses.replace(config, positions=config.positions[:n_classes], heights=config.heights[:n_classes])
    keep = {
        key: {c: v for c, v in getattr(procedure, key).items() if c < n_classes}
        for key in ("class_shift", "class_height", "class_grid")
    }
    return subset, dataclasses.replace(procedure, **keep)


# --------------------------------------------------------------------------- outputs and MLflow


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)  # a reader never sees a half-written table


def _write_outputs(
    out: Path, info: Mapping[str, Any], summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> None:
    _write_csv(out / "results.csv", rows)
    (out / "summary.json").write_text(json.dumps({**info, "summary": summary, "runs": list(rows)}, indent=1) + "\n")
    title = f"{info['n_classes']} classes × {info['n_points']} points, {info['n_test']} test spectra, " \
            f"seeds {_seed_text(info['seeds'])}, at most {info['max_epochs']} epochs, {info['device']}"
    table = format_table(summary, markdown=True, reference=reference_for(info["config_fingerprint"]))
    (out / "results.md").write_text(f"{title}\n\n{table}\n")


def _seed_text(seeds: Sequence[int]) -> str:
    contiguous = len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous else ",".join(map(str, seeds))


@functools.lru_cache(maxsize=1)
def _commit() -> str:
    """The code's commit, whatever folder the benchmark runs in (git finds the checkout from here)."""

    return tracking.git_commit(Path(__file__).resolve().parent)


def _start_parent(info: Mapping[str, Any], uri: str | None, experiment: str) -> Any:
    import mlflow

    experiment_id = tracking.configure(uri, experiment)
    name = f"synthetic-{info['n_classes']}c-{info['config_fingerprint'][:8]}"
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=mlflow.active_run() is not None)
    mlflow.set_tags({"git_commit": _commit(), "benchmark": "synthetic", "role": "parent"})
    params = {k: v for k, v in info.items() if k != "model_options"}
    params["models"] = ",".join(info["models"])
    params["seeds"] = _seed_text(info["seeds"])
    params["model_options"] = json.dumps(info["model_options"], sort_keys=True)
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
    return run


def _log_child(row: Mapping[str, Any], history: Any, model_config: Mapping[str, Any], cfg: Any) -> str:
    """A nested run with the run's parameters, scores and per-epoch curves; its id."""
    import mlflow
    from mlflow.entities import Metric

    with mlflow.start_run(run_name=f"{row['model']}-seed-{row['seed']}", nested=True) as child:
        mlflow.set_tags({"git_commit": _commit(), "benchmark": "synthetic", "model": row["model"]})
        mlflow.log_params({"model": row["model"], "seed": row["seed"], "parameters": row["parameters"],
                           "model.options": json.dumps(model_config["options"], sort_keys=True)[:6000],
                           **{f"train.{k}": v for k, v in cfg.to_dict().items()}})
        mlflow.log_metrics({k: float(row[k]) for k in ("misclassified", "test_accuracy", "epochs", "best_epoch",
                                                        "seconds", "seconds_per_epoch")})
        # the curves in one batch: a SQLite store commits each log_metric call separately
        now = int(time.time() * 1000)
        curves = [Metric(key, float(value), now, step)
                  for key in ("train_loss", "val_loss", "train_acc", "val_acc", "lr")
                  for step, value in enumerate(getattr(history, key), start=1) if math.isfinite(value)]
        client = mlflow.MlflowClient()
        for start in range(0, len(curves), 1000):  # MLflow caps a batch at 1000 metrics
            client.log_batch(child.info.run_id, metrics=curves[start : start + 1000])
    return child.info.run_id


def _finish_parent(summary: Mapping[str, Mapping[str, Any]], out: Path | None) -> None:
    import mlflow

    metrics = {f"{name}.{key}": float(value) for name, s in summary.items() for key, value in s.items()
               if key.endswith(("_mean", "_std", "_min", "_max"))}
    mlflow.log_metrics(metrics)
    if out is not None:
        for artifact in ("results.csv", "summary.json", "results.md"):
            mlflow.log_artifact(str(out / artifact))
