"""Top-1..5 evaluation on measured patterns, the classical baselines, and the ``evaluate`` stage.

Measured patterns are put on the model grid exactly as for prediction
(:func:`preprocess`): read, converted to the grid's wavelength through d-spacing,
resampled, optionally FFT-denoised, and divided by their maximum. Against them:

* the CNN (probabilities ranked),
* search-match: cosine similarity of the background-subtracted, slightly smoothed
  measurement against every simulated profile, over the grid points the scan covers,
* five classical classifiers (naive Bayes, kNN, logistic regression, random forest,
  linear SVM) trained on the same augmented spectra, pooled to a coarser grid.

Examples
--------
>>> from xrdid.config import Grid
>>> grid = Grid(5, 50, 451)
>>> profiles = np.eye(3, 451, k=100) + np.eye(3, 451, k=200)[::-1]
>>> scores = search_match(profiles[[1]], np.ones((1, 451), bool), profiles, grid, smooth=0.0,
...                       subtract_background=False)
>>> int(scores.argmax())
1
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xrdid.config import Grid, load_params
from xrdid.data.library import material_groups, read_index
from xrdid.data.measured_set import MeasuredSet
from xrdid.data.patterns import PatternSet
from xrdid.data.splits import load_split
from xrdid.errors import InputError
from xrdid.identify.chemistry import ElementTable, entry_elements
from xrdid.identify.search import LibraryIndex, SearchSettings
from xrdid.learn.baselines import CLASSICAL, classical_scores, search_match
from xrdid.learn.inference import predict_logits, predict_proba
from xrdid.learn.metrics import TOP_K, topk_table, true_rank
from xrdid.learn.models import load_model
from xrdid.stages.options import add_params, add_progress, add_stage_inputs
from xrdid.xrd.denoise import fft_denoise

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- plots


def plot_topk(results: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Top-k accuracy curves, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, table in results.items():
        ax.plot(TOP_K, [table[f"top{k}"] for k in TOP_K], marker="o", label=method)
    ax.set(xlabel="k", ylabel="Top-k accuracy", xticks=TOP_K, ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_match(
    grid: Grid,
    measured: np.ndarray,
    covered: np.ndarray,
    candidates: list[tuple[str, float, np.ndarray]],
    path: str | Path,
    title: str,
    true_id: str | None = None,
) -> None:
    """A measured pattern over the simulated profiles of its best candidates (offset, labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = grid.values
    fig, ax = plt.subplots(figsize=(9, 3.2 + 0.5 * len(candidates)))
    ax.plot(x, np.where(covered, measured, np.nan), color="k", lw=0.8, label="measured")
    for i, (entry, score, profile) in enumerate(candidates, start=1):
        mark = " ✓" if entry == true_id else ""
        ax.plot(x, profile - 1.1 * i, lw=0.8, label=f"#{i} {entry} ({score:.2f}){mark}")
    ax.set(xlabel="2θ (°)", yticks=[], title=title, xlim=(grid.start, grid.stop))
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- the stage


def run(
    params: dict[str, Any],
    model_path: str | Path,
    patterns_dir: str | Path,
    augmented_dir: str | Path,
    metrics_path: str | Path,
    plots_dir: str | Path,
    progress: bool = True,
    library_dir: str | Path | None = None,
    index_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score the trained model and the baselines; write ``metrics.json`` and the plots.

    The validation split (synthetic) is always scored. The measured test set is scored when
    ``evaluate.measured.labels`` names a labels file that exists; a configured but absent one
    is logged and skipped, so the embedded default runs anywhere. With ``library_dir`` the
    measured set is also scored per material (``measured_material``): entries that
    :func:`xrdid.data.library.material_groups` joins count as one answer, and ``plots/materials.csv``
    lists them; ``cnn_elements`` is the CNN with the chemistry filter of each pattern's own
    entry's elements (:meth:`~xrdid.identify.identifier.Identifier.restrict`: a chemist who knows
    them). With ``index_dir`` (the ``index`` stage's output) the open-library search
    (:mod:`xrdid.identify.search`, ``match`` section) is scored beside them as ``open_library``.
    """

    settings = params.get("evaluate", {})
    patterns = PatternSet.load(patterns_dir)
    grid = patterns.grid
    model = load_model(model_path)
    X_train, y_train = load_split(augmented_dir, "train")
    X_val, y_val = load_split(augmented_dir, "val")
    n_classes = len(patterns)
    plots = Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)

    metrics: dict[str, Any] = {"n_library": n_classes}
    n_val = int(settings.get("baseline_val_samples", 2000))
    val_pick = np.sort(np.random.default_rng(0).permutation(len(y_val))[:n_val])
    X_val_sub, y_val_sub = np.asarray(X_val[val_pick], dtype=np.float32), y_val[val_pick]
    validation: dict[str, Any] = {"cnn": topk_table(predict_proba(model, X_val), y_val)}
    validation["search_match"] = topk_table(
        search_match(X_val_sub, np.ones(X_val_sub.shape, bool), patterns.profiles, grid,
                     smooth=float(settings.get("search_match_smooth", 0.05))), y_val_sub)
    metrics["validation"] = validation
    index = None
    if index_dir is not None:
        index = LibraryIndex.load(index_dir)
        if index.ids != list(patterns.ids):
            raise InputError(index_dir, "its entries differ from the simulated patterns: re-run the index stage")
        index.settings = SearchSettings.from_dict(params.get("match"))
        validation["open_library"] = topk_table(_open_scores(index, X_val_sub, None), y_val_sub)

    test = MeasuredSet.from_params(params, patterns.ids, grid, progress)
    classical = tuple(settings.get("classical", CLASSICAL) or ())
    if classical:  # trained once, scored on the validation subset and the measured set
        rows = X_val_sub if test is None else np.concatenate([X_val_sub, test.X])
        scores = classical_scores(X_train, y_train, rows, n_classes, pool=int(settings.get("classical_pool", 10)),
                                  max_train=int(settings.get("classical_max_train", 20000)), models=classical)
        for name, s in scores.items():
            validation[name] = topk_table(s[: len(val_pick)], y_val_sub)
    if test is not None:
        results: dict[str, Any] = {}
        cnn = predict_proba(model, test.X)
        results["cnn"] = topk_table(cnn, test.y, test.sources)
        denoise = params.get("denoise")
        if denoise:

            denoised = np.asarray(fft_denoise(test.X, **denoise).values, dtype=np.float32)
            results["cnn_denoised"] = topk_table(predict_proba(model, denoised), test.y, test.sources)
        cosine = search_match(test.X, test.covered, patterns.profiles, grid,
                              smooth=float(settings.get("search_match_smooth", 0.05)))
        results["search_match"] = topk_table(cosine, test.y, test.sources)
        if index is not None:
            opened = _open_scores(index, test.X, test.covered)
            results["open_library"] = topk_table(opened, test.y, test.sources)
            # entries outside the open search's candidates get its worst candidate's score
            floor = np.where(np.isfinite(opened), opened, np.inf).min(axis=1, keepdims=True)
            fused_open = np.log(np.maximum(cnn, 1e-12)) + float(settings.get("fusion_weight", 10.0)) * np.where(
                np.isfinite(opened), opened, floor)
            results["cnn_open_library"] = topk_table(fused_open, test.y, test.sources)
        # The two fail on different patterns: log-probability plus a weighted cosine.
        fused = np.log(np.maximum(cnn, 1e-12)) + float(settings.get("fusion_weight", 10.0)) * cosine
        results["cnn_search_match"] = topk_table(fused, test.y, test.sources)
        for name, s in (scores.items() if classical else ()):
            results[name] = topk_table(s[len(val_pick):], test.y, test.sources)
        if library_dir is not None:
            # on the logits: probabilities of the kept entries may be 0.0 beside a sure excluded look-alike
            kept = _own_elements(test, patterns, library_dir)
            results["cnn_elements"] = topk_table(np.where(kept, predict_logits(model, test.X), -np.inf), test.y,
                                                 test.sources)
        metrics["measured"] = results
        metrics["measured_failed"] = len(test.failed)
        ours = {"cnn": cnn, "search_match": cosine, "cnn_search_match": fused}
        if index is not None:
            ours.update(open_library=opened, cnn_open_library=fused_open)
        if library_dir is not None:
            scored = {**ours, **{name: s[len(val_pick):] for name, s in (scores.items() if classical else ())}}
            metrics.update(_material_tables(scored, test, patterns, library_dir, plots / "materials.csv"))
        _write_measured_plots(plots, grid, patterns, test, cnn, int(settings.get("n_match_plots", 0)))
        _write_predictions(plots / "predictions.csv", patterns.ids, test, ours)

    _write_topk_csv(plots / "topk.csv", metrics)
    plot_topk(metrics.get("measured") or metrics["validation"], plots / "topk.png",
              "measured patterns" if "measured" in metrics else "validation (synthetic)")
    Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _own_elements(test: MeasuredSet, patterns: PatternSet, library_dir: str | Path) -> np.ndarray:
    """(n, n_entries) mask: the entries made of the elements of each pattern's own entry (none known: all)."""
    rows = read_index(library_dir).set_index("id").loc[patterns.ids].reset_index().to_dict("records")
    table = ElementTable.from_rows(rows)
    masks = {y: table.mask(entry_elements(rows[y])) for y in set(test.y.tolist()) if y >= 0}
    return np.stack([masks.get(int(y), np.ones(len(rows), bool)) for y in test.y])


def _open_scores(index: LibraryIndex, X: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
    """The open-library search as a score matrix (n, n_entries): its candidates' scores, -inf elsewhere."""
    found = index.search(X, covered)
    scores = np.full((len(X), len(index)), -np.inf, np.float32)
    np.put_along_axis(scores, found.rows, found.score, axis=1)
    return scores


def _material_tables(scored: dict[str, np.ndarray], test: MeasuredSet, patterns: PatternSet,
                     library_dir: str | Path, path: Path) -> dict[str, Any]:
    """Top-1..5 when entries of one material count as one answer (each material scores its best entry)."""

    index = read_index(library_dir).set_index("id", drop=False)
    missing = sorted(set(patterns.ids) - set(index.index))
    if missing:
        raise InputError(Path(library_dir) / "index.csv",
                         f"{len(missing)} simulated patterns are not in this library (e.g. {missing[0]})")
    index = index.loc[patterns.ids].reset_index(drop=True)
    materials = material_groups(index, patterns.profiles)
    names, group, counts = np.unique(materials, return_inverse=True, return_counts=True)
    pd.DataFrame({"id": patterns.ids, "material": materials}).to_csv(path, index=False)
    log.info("evaluate: %d entries form %d materials; shared: %s", len(materials), len(names),
             ", ".join(names[counts > 1]) or "none")
    y = np.where(test.y >= 0, group[np.maximum(test.y, 0)], -1)
    tables = {}
    for method, s in scored.items():
        best = np.full((len(s), len(names)), -np.inf)
        np.maximum.at(best, (slice(None), group), s)
        tables[method] = topk_table(best, y, test.sources)
    return {"n_materials": len(names), "measured_material": tables}


TOPK_SETS = ("validation", "measured", "measured_material")


def _write_topk_csv(path: Path, metrics: dict[str, Any]) -> None:
    """Top-k accuracy in long format: one row per (set, method, k).

    Long rather than one column per method: the methods vary with ``params.yaml`` (classical
    baselines, denoise), and the ``topk`` DVC template (``.dvc/plots/topk.json``) draws one line
    per ``method`` and one panel per ``set`` from whatever rows there are.
    """
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "method", "k", "accuracy"])
        for dataset in TOPK_SETS:
            for method, table in (metrics.get(dataset) or {}).items():
                writer.writerows([dataset, method, k, round(table[f"top{k}"], 6)] for k in TOP_K)


def _write_predictions(path: Path, ids: list[str], test: MeasuredSet, scored: dict[str, np.ndarray]) -> None:
    """One row per measured pattern: its label, each method's rank of it and the CNN's best three."""

    known = test.y >= 0
    rows = {"pattern": [Path(f).name for f in test.files], "source": test.sources,
            "true": [ids[i] if i >= 0 else "" for i in test.y]}
    for method, s in scored.items():
        rows[f"{method}_rank"] = np.full(len(s), -1)
        rows[f"{method}_rank"][known] = true_rank(s[known], test.y[known])
    cnn = scored["cnn"]
    for k, column in enumerate(np.argsort(-cnn, axis=1, kind="stable")[:, :3].T, start=1):
        rows[f"cnn_{k}"] = [ids[j] for j in column]
        rows[f"cnn_{k}_p"] = np.round(cnn[np.arange(len(cnn)), column], 4)
    pd.DataFrame(rows).to_csv(path, index=False)


def _write_measured_plots(
    plots: Path, grid: Grid, patterns: Any, test: MeasuredSet, probs: np.ndarray, n_match_plots: int
) -> None:
    """Most confused pairs (CSV) and each measured pattern over its best candidates (PNG)."""
    predicted = probs.argmax(axis=1)
    pairs: dict[tuple[str, str], int] = {}
    for true, pred in zip(test.y, predicted):
        if true >= 0 and true != pred:
            key = (patterns.ids[true], patterns.ids[pred])
            pairs[key] = pairs.get(key, 0) + 1
    with open(plots / "confused_pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", "predicted", "count"])
        writer.writerows([t, p, c] for (t, p), c in sorted(pairs.items(), key=lambda kv: -kv[1]))
    folder = plots / "measured"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    order = np.argsort(-probs, axis=1)[:, :3]
    limit = len(test.files) if n_match_plots <= 0 else n_match_plots
    for i in range(min(limit, len(test.files))):
        true_id = patterns.ids[test.y[i]] if test.y[i] >= 0 else None
        candidates = [(patterns.ids[j], float(probs[i, j]), np.asarray(patterns.profiles[j])) for j in order[i]]
        name = Path(test.files[i]).stem
        plot_match(grid, test.X[i], test.covered[i], candidates, folder / f"{name}.png",
                   f"{name} (true: {true_id})", true_id)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "evaluate, denoise")
    parser.add_argument("--model", default="models/model.safetensors", help="trained model (safetensors)")
    add_stage_inputs(parser, "patterns", "augmented")
    parser.add_argument("--metrics", default="metrics.json", help="metrics output")
    parser.add_argument("--plots", default="plots", help="plots folder")
    parser.add_argument("--library", default=None,
                        help="library folder: also score the measured set per material (entries of one material joined)")
    parser.add_argument("--index", default=None, help="search index (`xrdid index`): score the open-library search beside")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    metrics = run(load_params(args.params), args.model, args.patterns, args.augmented,
                             args.metrics, args.plots, progress=args.progress, library_dir=args.library,
                             index_dir=args.index)
    for dataset in ("validation", "measured", "measured_material"):
        for method, table in (metrics.get(dataset) or {}).items():
            tops = "  ".join(f"top{k} {table[f'top{k}']:.3f}" for k in TOP_K)
            print(f"{dataset:17} {method:20} {tops}  (n={table['n']})")
    return 0
