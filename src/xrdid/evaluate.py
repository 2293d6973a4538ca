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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from xrdid.config import Grid, load_params
from xrdid.errors import InputError

if TYPE_CHECKING:
    import argparse

    from xrdid.diffraction import PatternSet

log = logging.getLogger(__name__)

TOP_K = (1, 2, 3, 4, 5)


@dataclass
class MeasuredSet:
    """Measured patterns on the model grid with their library labels.

    Attributes
    ----------
    files : pattern paths, relative to the folder.
    X : float32 (n, n_points), each row divided by its maximum over the covered points.
    covered : bool (n, n_points), grid points the scan measured.
    y : int (n,), index of the true entry in ``ids``; -1 when it is not in the library.
    sources : group of each pattern (e.g. RRUFF or opXRD) for per-source figures.
    failed : (file, problem) of the patterns that could not be read; they are left out.
    """

    files: list[str]
    X: np.ndarray
    covered: np.ndarray
    y: np.ndarray
    sources: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        labels: str | Path,
        ids: list[str],
        grid: Grid,
        wavelength: str | float,
        default_wavelength: str | float | None = "CuKa",
        denoise: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> MeasuredSet:
        """Read every pattern listed in ``labels`` (columns ``pattern``, ``cif``, optional ``source``).

        ``pattern`` is relative to the labels file's folder or to ``folder``; ``cif``'s stem is
        the library id. ``denoise`` (the ``measured.denoise`` params) applies the FFT rule.
        """
        labels = Path(labels)
        if not labels.is_file():
            raise InputError(labels, "labels file not found")
        with open(labels, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"pattern", "cif"} <= set(rows[0]):
            raise InputError(labels, "labels need the columns 'pattern' and 'cif'")
        index = {entry: i for i, entry in enumerate(ids)}
        files, X, covered, y, sources, failed = [], [], [], [], [], []
        for row in tqdm(rows, desc="measured", unit="pattern", disable=not progress):
            path = labels.parent / row["pattern"]
            if not path.is_file():
                path = Path(folder) / Path(row["pattern"]).name
            try:
                values, mask = preprocess(path, grid, wavelength, default_wavelength, denoise)
            except InputError as exc:
                failed.append((row["pattern"], exc.problem))
                log.warning("evaluate: %s", exc)
                continue
            files.append(row["pattern"])
            X.append(values)
            covered.append(mask)
            y.append(index.get(Path(row["cif"]).stem, -1))
            sources.append(row.get("source", ""))
        if not files:
            raise InputError(labels, "no measured pattern could be read")
        return cls(files, np.array(X, np.float32), np.array(covered), np.array(y), sources, failed)

    def subset(self, keep: np.ndarray) -> MeasuredSet:
        keep = np.asarray(keep, bool)
        pick = np.flatnonzero(keep)
        return MeasuredSet([self.files[i] for i in pick], self.X[keep], self.covered[keep], self.y[keep],
                           [self.sources[i] for i in pick], self.failed)


def preprocess(
    path: str | Path,
    grid: Grid,
    wavelength: str | float,
    default_wavelength: str | float | None = "CuKa",
    denoise: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One measured file → (values on the grid divided by their covered maximum, covered mask).

    The same steps serve evaluation and prediction, so a model sees measurements the same way.
    """
    from xrdid.measured import Pattern

    pattern = Pattern.read(path, default_wavelength)
    values, mask = pattern.to_grid(grid, wavelength)
    if denoise:
        from xrdid.denoise import fft_denoise

        values = np.asarray(fft_denoise(values, **denoise).values, dtype=float)
    values = values - values[mask].min()  # counts have an arbitrary offset; the model sees shape
    peak = values[mask].max()
    if not peak > 0:
        raise InputError(path, "flat pattern on the grid (no signal)")
    return (values / peak).astype(np.float32), mask


def search_match(
    X: np.ndarray,
    covered: np.ndarray,
    profiles: np.ndarray,
    grid: Grid,
    smooth: float = 0.05,
    subtract_background: bool = True,
) -> np.ndarray:
    """Cosine similarity (n, n_entries) of measured rows against simulated profiles.

    Parameters
    ----------
    X, covered : measured rows on the grid and the points their scans cover.
    profiles : (n_entries, n_points) simulated profiles.
    grid : the grid (for the smoothing width).
    smooth : Gaussian σ in degrees applied to both sides, so that small peak shifts still overlap.
    subtract_background : remove a rolling-ball background (measured rows only).
    """
    X = np.asarray(X, dtype=np.float64)
    if subtract_background:
        X = np.stack([_subtract_background(row, grid) for row in X])
    sigma = smooth / grid.step
    P = np.asarray(profiles, dtype=np.float64)
    if sigma > 0:
        X = ndimage.gaussian_filter1d(X, sigma, axis=1, mode="constant")
        P = ndimage.gaussian_filter1d(P, sigma, axis=1, mode="constant")
    X = X * covered
    # Only the covered points count: the profile's norm is taken over each row's coverage.
    dots = X @ P.T
    norms = np.sqrt(covered.astype(np.float64) @ (P**2).T) * np.linalg.norm(X, axis=1, keepdims=True)
    return dots / np.maximum(norms, 1e-12)


def _subtract_background(row: np.ndarray, grid: Grid, width: float = 1.5) -> np.ndarray:
    """Rolling-ball-like background: grey opening of the smoothed row, then smoothing."""
    size = max(3, int(round(width / grid.step)))
    smooth = ndimage.gaussian_filter1d(row, 2.0)
    background = ndimage.uniform_filter1d(ndimage.grey_opening(smooth, size=size), size)
    return np.clip(row - background, 0, None)


# --------------------------------------------------------------------------- classical baselines

CLASSICAL = ("naive_bayes", "knn", "logistic_regression", "random_forest", "svm")


def pool_features(X: np.ndarray, factor: int) -> np.ndarray:
    """Mean-pool rows by ``factor`` points and divide by the row maximum (classical features)."""
    X = np.asarray(X, dtype=np.float32)
    n = X.shape[1] // factor * factor
    pooled = X[:, :n].reshape(len(X), -1, factor).mean(axis=2)
    return pooled / np.maximum(pooled.max(axis=1, keepdims=True), 1e-12)


def classical_scores(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    n_classes: int,
    pool: int = 10,
    max_train: int = 20000,
    seed: int = 0,
    models: tuple[str, ...] = CLASSICAL,
) -> dict[str, np.ndarray]:
    """Train each classical model on (pooled) augmented spectra and score the test rows.

    Returns a score matrix (n_test, n_classes) per model; higher ranks first. Naive Bayes,
    kNN, logistic regression and random forest give probabilities; the linear SVM gives
    one-vs-rest decision values (ranking by them is what Top-k needs; Platt scaling would
    add a five-fold refit for nothing).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)
    if len(y_train) > max_train:
        pick = np.sort(rng.choice(len(y_train), max_train, replace=False))
        X_train, y_train = X_train[pick], y_train[pick]
    F_train = pool_features(X_train, pool)
    F_test = pool_features(X_test, pool)
    factories = {
        "naive_bayes": lambda: GaussianNB(),
        "knn": lambda: KNeighborsClassifier(n_neighbors=5, weights="distance"),
        "logistic_regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0)),
        "random_forest": lambda: RandomForestClassifier(n_estimators=200, n_jobs=2, random_state=seed),
        "svm": lambda: make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=2000, random_state=seed)),
    }
    scores = {}
    for name in tqdm(models, desc="classical", unit="model"):
        start = time.perf_counter()
        model = factories[name]().fit(F_train, y_train)
        raw = model.decision_function(F_test) if name == "svm" else model.predict_proba(F_test)
        # Classes absent from the subsample get no column: put them last.
        full = np.full((len(F_test), n_classes), -np.inf)
        full[:, model.classes_] = raw
        scores[name] = full
        log.info("evaluate: %s trained in %.1f s", name, time.perf_counter() - start)
    return scores


def topk_table(scores: np.ndarray, y: np.ndarray, groups: list[str] | None = None) -> dict[str, Any]:
    """Top-1..5 of ``scores`` against ``y`` (rows with y = -1 excluded), overall and per group."""
    from xrdid.train import topk_accuracy

    y = np.asarray(y)
    known = y >= 0
    table: dict[str, Any] = {f"top{k}": v for k, v in topk_accuracy(scores[known], y[known], TOP_K).items()}
    table["n"] = int(known.sum())
    if groups is not None:
        labels = np.asarray(groups)
        for group in sorted(set(labels[known])):
            if group:
                rows = known & (labels == group)
                table[group] = {f"top{k}": v for k, v in topk_accuracy(scores[rows], y[rows], TOP_K).items()}
                table[group]["n"] = int(rows.sum())
    return table


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


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped (X, y) of an augmented split written by the ``augment`` stage."""
    folder = Path(folder) / split
    try:
        return np.load(folder / "X.npy", mmap_mode="r"), np.load(folder / "y.npy")
    except OSError as exc:
        raise InputError(folder, f"augmented split missing ({exc.strerror or exc}): run `xrdid augment`") from exc


def evaluate_stage(
    params: dict[str, Any],
    model_path: str | Path,
    patterns_dir: str | Path,
    augmented_dir: str | Path,
    metrics_path: str | Path,
    plots_dir: str | Path,
    progress: bool = True,
    library_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score the trained model and the baselines; write ``metrics.json`` and the plots.

    The validation split (synthetic) is always scored. The measured test set is scored when
    ``evaluate.measured.labels`` names a labels file that exists; a configured but absent one
    is logged and skipped, so the embedded default runs anywhere. With ``library_dir`` the
    measured set is also scored per material (``measured_material``): entries that
    :func:`xrdid.library.material_groups` joins count as one answer, and ``plots/materials.csv``
    lists them.
    """
    from xrdid.diffraction import PatternSet
    from xrdid.models import load_model
    from xrdid.train import predict_proba

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

    test = _measured_set(params, settings, patterns.ids, grid, progress)
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
        denoise = (params.get("measured") or {}).get("denoise")
        if denoise:
            from xrdid.denoise import fft_denoise

            denoised = np.asarray(fft_denoise(test.X, **denoise).values, dtype=np.float32)
            results["cnn_denoised"] = topk_table(predict_proba(model, denoised), test.y, test.sources)
        cosine = search_match(test.X, test.covered, patterns.profiles, grid,
                              smooth=float(settings.get("search_match_smooth", 0.05)))
        results["search_match"] = topk_table(cosine, test.y, test.sources)
        # The two fail on different patterns: log-probability plus a weighted cosine.
        fused = np.log(np.maximum(cnn, 1e-12)) + float(settings.get("fusion_weight", 10.0)) * cosine
        results["cnn_search_match"] = topk_table(fused, test.y, test.sources)
        for name, s in (scores.items() if classical else ()):
            results[name] = topk_table(s[len(val_pick):], test.y, test.sources)
        metrics["measured"] = results
        metrics["measured_failed"] = len(test.failed)
        ours = {"cnn": cnn, "search_match": cosine, "cnn_search_match": fused}
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


def _material_tables(scored: dict[str, np.ndarray], test: MeasuredSet, patterns: PatternSet,
                     library_dir: str | Path, path: Path) -> dict[str, Any]:
    """Top-1..5 when entries of one material count as one answer (each material scores its best entry)."""
    from xrdid.library import material_groups, read_index

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


def _measured_set(params: dict[str, Any], settings: dict[str, Any], ids: list[str], grid: Grid,
                  progress: bool) -> MeasuredSet | None:
    """The configured measured test set, or None (logged) when none is configured or found."""
    measured = settings.get("measured") or {}
    labels = measured.get("labels")
    if not labels:
        return None
    if not Path(labels).is_file():
        log.warning("evaluate: measured labels %s not found; scoring the validation split only", labels)
        return None
    return MeasuredSet.from_folder(measured.get("folder") or Path(labels).parent, labels, ids, grid,
                                   params["grid"].get("wavelength", "CuKa"),
                                   measured.get("default_wavelength", "CuKa"), progress=progress)


def _write_topk_csv(path: Path, metrics: dict[str, Any]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "method", "k", "accuracy"])
        for dataset in ("validation", "measured"):
            for method, table in (metrics.get(dataset) or {}).items():
                writer.writerows([dataset, method, k, round(table[f"top{k}"], 6)] for k in TOP_K)


def _write_predictions(path: Path, ids: list[str], test: MeasuredSet, scored: dict[str, np.ndarray]) -> None:
    """One row per measured pattern: its label, each method's rank of it and the CNN's best three."""
    from xrdid.train import true_rank

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


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="stage: Top-1..5 of the model and the baselines; metrics.json, plots")
    p.add_argument("--params", default="params.yaml", help="parameter file (sections grid, evaluate, measured)")
    p.add_argument("--model", default="models/model.safetensors", help="trained model (safetensors)")
    p.add_argument("--patterns", default="data/patterns", help="simulated patterns (the library's order)")
    p.add_argument("--augmented", default="data/augmented", help="augmented splits")
    p.add_argument("--metrics", default="metrics.json", help="metrics output")
    p.add_argument("--plots", default="plots", help="plots folder")
    p.add_argument("--library", default=None,
                   help="library folder: also score the measured set per material (entries of one material joined)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_stage(load_params(args.params), args.model, args.patterns, args.augmented,
                             args.metrics, args.plots, progress=not args.no_progress, library_dir=args.library)
    for dataset in ("validation", "measured", "measured_material"):
        for method, table in (metrics.get(dataset) or {}).items():
            tops = "  ".join(f"top{k} {table[f'top{k}']:.3f}" for k in TOP_K)
            print(f"{dataset:17} {method:20} {tops}  (n={table['n']})")
    return 0
