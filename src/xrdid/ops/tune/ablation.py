"""One-parameter ablations (``xrdid tune ablation``): a grid study, a CSV and a plot.

An ablation is an ordinary study in the same storage, run by :func:`run_study` with a
``GridSampler``: resumable, visible in the dashboard. Its name hashes the grid, the fixed
values and the data, so a new grid is a new study.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.errors import InputError
from xrdid.ops.tune.space import TuneSettings
from xrdid.ops.tune.study import run_study

if TYPE_CHECKING:
    import optuna

ABLATION_PARAMS = ("ratio", "epochs", "conv_layers")
"""The parameters ``xrdid tune ablation --param`` accepts."""


def ablation_study_name(prefix: str, param: str, space: Mapping[str, Any], augmented: str | Path) -> str:
    """A study name that changes with the grid, the fixed values and the data (a new grid = a new study).

    Examples
    --------
    >>> ablation_study_name("xrdid", "epochs", {"epochs": [5, 10]}, "data/augmented")[:21]
    'xrdid-ablation-epochs'
    """
    key = json.dumps({"space": space, "data": str(Path(augmented).resolve())}, sort_keys=True, default=str)
    return f"{prefix}-ablation-{param}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def run_ablation(
    params: Mapping[str, Any],
    param: str,
    values: Sequence[Any] | None = None,
    seeds: Sequence[int] = (0,),
    *,
    study_name: str | None = None,
    base: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Sweep one parameter on a grid (Optuna ``GridSampler``), the others fixed; CSV and PNG.

    Each value is trained once per seed (the ``train.seed`` of the trial). The other settings
    are ``tune.ablation.base`` (``base`` overrides). Writes ``<out>/<param>.csv`` (one row per
    trial), ``<out>/<param>_summary.csv`` (mean and sample std per value) and ``<out>/<param>.png``
    (Top-1..5 against the value). The sweep is an ordinary study in the same storage:
    resumable, visible in the dashboard. ``kwargs`` go to :func:`run_study`.

    Returns
    -------
    The summary rows: ``{"value", "n", "top1", "top1_std", ..., "epochs_run"}``.

    Examples
    --------
    >>> rows = run_ablation(load_params("params.yaml"), "conv_layers", [1, 4, 7])  # doctest: +SKIP
    >>> [r["value"] for r in rows]  # doctest: +SKIP
    [1, 4, 7]
    """
    settings = TuneSettings.from_params(params.get("tune"))
    section = dict(settings.ablation or {})
    if values is None:
        values = (section.get("values") or {}).get(param)
    if not values:
        raise InputError("tune.ablation.values", f"no values to sweep for {param}")
    fixed = {**(section.get("base") or {}), **(base or {})}
    fixed.pop(param, None)
    fixed.pop("seed", None)
    space: dict[str, Any] = {**fixed, param: list(values), "seed": [int(s) for s in seeds]}
    augmented = kwargs.get("augmented", "data/augmented")
    study_name = study_name or ablation_study_name(settings.study, param, space, augmented)
    out = Path(out) if out is not None else Path(settings.out) / "ablation"
    n = len(values) * len(seeds)

    def write(study: optuna.Study, _: Path) -> list[Path]:
        return _write_ablation(study, param, out)

    kwargs.setdefault("register", False)
    run_study(params, study_name, n, space=space, sampler="grid", out=out / study_name, finish=write,
              run_tags={"ablation": param}, **kwargs)
    with open(out / f"{param}_summary.csv", newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def _write_ablation(study: optuna.Study, param: str, out: Path) -> list[Path]:
    """The per-trial and per-value CSVs and the accuracy-against-value plot of an ablation study."""
    from optuna.trial import TrialState

    out.mkdir(parents=True, exist_ok=True)
    keys = ["top1", "top2", "top3", "top4", "top5", "objective", "epochs_run", "best_epoch", "seconds"]
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: (t.params[param], t.params.get("seed", 0)))
    rows = [{param: t.params[param], "seed": t.params.get("seed", 0), "trial": t.number,
             **{k: t.user_attrs.get(k) for k in keys}} for t in trials]
    per_trial = out / f"{param}.csv"
    with open(per_trial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[param, "seed", "trial", *keys])
        writer.writeheader()
        writer.writerows(rows)
    summary = []
    for value in sorted({r[param] for r in rows}):
        group = [r for r in rows if r[param] == value]
        entry: dict[str, Any] = {"value": value, "n": len(group)}
        for k in ("top1", "top2", "top3", "top4", "top5"):
            a = np.array([r[k] for r in group], float)
            entry[k] = round(float(a.mean()), 4)
            entry[f"{k}_std"] = round(float(a.std(ddof=1)), 4) if len(a) > 1 else 0.0
        entry["epochs_run"] = float(np.mean([r["epochs_run"] for r in group]))
        entry["seconds"] = round(float(np.mean([r["seconds"] for r in group])), 1)
        summary.append(entry)
    summary_path = out / f"{param}_summary.csv"
    with open(summary_path, "w", newline="") as handle:
        names = ["value", "n", *[f"top{k}{s}" for k in range(1, 6) for s in ("", "_std")], "epochs_run", "seconds"]
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(summary)
    plot = out / f"{param}.png"
    _plot_ablation(summary, param, plot, study.study_name)
    return [per_trial, summary_path, plot]


def _plot_ablation(summary: list[dict[str, Any]], param: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["value"] for r in summary]
    for k in (1, 3, 5):
        ax.errorbar(x, [r[f"top{k}"] for r in summary], yerr=[r[f"top{k}_std"] for r in summary], marker="o",
                    capsize=3, label=f"Top-{k}")
    ax.set(xlabel=param, ylabel="validation accuracy", title=title, xticks=x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
