"""The ``mixture`` stage: calibrate the per-phase confidence of the mixture search and score it.

Reads the ``mixture`` section. The search (:class:`xrdid.identify.mixture.MixtureSearch`) fits
nothing per entry; what is learnt here is what its confidence means. The augmented mixtures of
the ``augment`` stage (``augment.mixtures``: 2–4 entries at known weight fractions, each phase
strained, textured and broadened on its own, on a measured background) are split: on the first
``calibration_share`` an isotonic regression maps each found phase's margin over its best
substitute to the probability that its formula is right; the rest score the search (exact phase
set, recall, precision by formula; weight-fraction error of the right phases) and the calibration
(expected calibration error before and after). Measured mixtures (``mixture.measured.labels``:
``pattern``, ``phases`` joined by ``;``, optional ``phases_not_in_library`` and ``scan``) are scored
the same way, per ``scan`` group, and again (``<scan>_matchable``) with the ``measured.unmatched``
formulas counted as absent (the library holds them only as other polymorphs); a file that cannot be
read is reported and skipped. The ``<scan>_elements`` groups score the search again with the chemistry
filter a chemist who knows the precursors sets (``xrdid predict --elements``): only entries made of the
elements of the row's phases (those not in the library too; a single-phase row: its CIF's) are searched.

Writes ``--out/mixture.json`` (the settings, the calibration and every entry's scattering power per
unit mass: what ``register_open`` puts in the identifier folder, so that a served model answers
phases with structure-based weight fractions), ``--metrics`` (JSON) and ``--plots``
(``reliability.csv``, and ``phases.png`` for the first measured mixture).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.config import Grid, MixtureSection, load_params
from xrdid.data.library import Library
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.identify.chemistry import entry_elements
from xrdid.identify.explain import plot_mixture
from xrdid.identify.mixture import MIXTURE_FILE, MixtureSearch, MixtureSettings
from xrdid.outputs import atomic_dir
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs
from xrdid.xrd.preprocess import preprocess

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)


def run(params: Mapping[str, Any], library_dir: str | Path, patterns_dir: str | Path, augmented_dir: str | Path,
        out: str | Path, metrics_path: str | Path, plots_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Calibrate and score the mixture search (see the module notes); returns the metrics."""
    start = time.perf_counter()
    section = MixtureSection.from_dict(params.get("mixture"), "mixture")
    settings = MixtureSettings.from_dict({**section.settings, "max_phases": section.max_phases})
    patterns = PatternSet.load(patterns_dir)
    library = Library.load(library_dir)
    search = MixtureSearch(patterns, library.index, settings, library.crystals(patterns.ids))
    formulas = search.formulas

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"n_entries": len(patterns), "settings": asdict(settings)}
    calibration = None
    synthetic = _augmented_mixtures(augmented_dir, patterns.ids)
    if synthetic is not None:
        X, entries, fractions = synthetic
        n_fit = int(round(section.calibration_share * len(X)))
        results = _fit(search, X, None, progress, "mixtures (augmented)")
        truth = [_truth(formulas, e, f) for e, f in zip(entries, fractions)]
        margins, right = _phase_outcomes(results[:n_fit], [set(t) for t in truth[:n_fit]])
        calibration = _isotonic(margins, right)
        held = results[n_fit:]
        if calibration is not None:  # None: every phase right (or none) in the calibration share, nothing to fit
            search.calibration = (np.asarray(calibration["margin"]), np.asarray(calibration["probability"]))
        metrics["synthetic"] = {**_scores(held, [set(t) for t in truth[n_fit:]]),
                                "weight_fraction_mae": _fraction_error(held, truth[n_fit:]),
                                "calibration_samples": n_fit}
        raw, ok = _phase_outcomes(held, [set(t) for t in truth[n_fit:]])
        metrics["synthetic"]["ece_raw"] = _ece(raw / (raw + 0.01), ok)
        metrics["synthetic"]["ece"] = _ece(search.confidence(raw), ok)
        _write_reliability(Path(plots_dir), raw, ok, calibration)

    measured = section.measured
    if measured.labels:
        metrics["measured"] = _score_measured(search, measured, patterns.grid, patterns.meta.get("wavelength", "CuKa"),
                                              Path(plots_dir), progress)
    metrics["seconds"] = round(time.perf_counter() - start, 1)

    spec = {"format": 1, "settings": asdict(settings), "calibration": calibration,
            "intensity_per_mass": dict(zip(search.ids, search.mass_intensity.tolist())),
            "library_sha256": patterns.meta.get("library_sha256", "")}
    with atomic_dir(out) as tmp:
        (tmp / MIXTURE_FILE).write_text(json.dumps(spec) + "\n")
    Path(metrics_path).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def _augmented_mixtures(folder: str | Path, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ``augment`` stage's mixtures (None when it wrote none); their entries must be these patterns'."""
    folder = Path(folder)
    if not (folder / "mixtures" / "X.npy").is_file():
        log.info("mixture: %s holds no augmented mixtures (augment.mixtures.count: 0); no calibration", folder)
        return None
    meta = json.loads((folder / "meta.json").read_text())
    if list(meta.get("ids", [])) != list(ids):
        raise InputError(folder, "its entries differ from the simulated patterns: re-run the augment stage")
    return (np.load(folder / "mixtures" / "X.npy").astype(np.float32), np.load(folder / "mixtures" / "entries.npy"),
            np.load(folder / "mixtures" / "fractions.npy"))


def _truth(formulas: np.ndarray, entries: np.ndarray, fractions: np.ndarray) -> dict[str, float]:
    """A row's formulas with their weight fractions (polymorphs of one formula add up)."""
    out: dict[str, float] = {}
    for e, f in zip(entries, fractions):
        if e >= 0:
            out[str(formulas[e])] = out.get(str(formulas[e]), 0.0) + float(f)
    return out


def _fit(search: MixtureSearch, X: np.ndarray, covered: np.ndarray | None, progress: bool, desc: str,
         drawn: int | None = None, elements: Sequence[frozenset[str]] | None = None) -> list[dict[str, Any]]:
    """Each row's answer, with a progress bar; row ``drawn`` also with its phases' profiles (for the plot);
    ``elements``: each row searched among the entries made of its elements only (:meth:`MixtureSearch.restrict`)."""
    from tqdm import tqdm

    cov = np.ones(np.shape(X), bool) if covered is None else covered
    rows = tqdm(zip(X, cov), total=len(X), desc=desc, disable=not progress)
    return [(search if elements is None else search.restrict(elements[i])).fit(x, c, profiles=i == drawn)[0]
            for i, (x, c) in enumerate(rows)]


def _phase_outcomes(results: Sequence[Mapping[str, Any]], truth: Sequence[set[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Every found phase's margin over its best substitute and whether its formula is right."""
    margins = [p["margin"] for r in results for p in r["phases"]]
    right = [p["formula"] in t for r, t in zip(results, truth) for p in r["phases"]]
    return np.asarray(margins, np.float64), np.asarray(right, bool)


def _isotonic(margins: np.ndarray, right: np.ndarray) -> dict[str, list[float]] | None:
    """Increasing margin → probability-right table (sklearn's isotonic regression); None without both outcomes."""
    from sklearn.isotonic import IsotonicRegression

    if len(np.unique(right)) < 2:
        return None
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(margins, right.astype(float))
    return {"margin": [float(v) for v in iso.X_thresholds_], "probability": [float(v) for v in iso.y_thresholds_],
            "phases": len(right)}


def _ece(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> float | None:
    """Expected calibration error of per-phase confidences (equal-width bins)."""
    if not len(confidence):
        return None
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(confidence[which == b].mean() - right[which == b].mean()) * (which == b).mean()
            for b in range(bins) if (which == b).any()]
    return round(float(np.sum(gaps)), 4)


def _scores(results: Sequence[Mapping[str, Any]], truth: Sequence[set[str]]) -> dict[str, Any]:
    """Exact phase set, recall and precision by formula, and the mean residual share."""
    found = [{p["formula"] for p in r["phases"]} for r in results]
    hits = sum(len(f & t) for f, t in zip(found, truth))
    counts = np.bincount([len(f) for f in found], minlength=1)
    return {"exact_set": round(float(np.mean([f == t for f, t in zip(found, truth)])), 4) if truth else None,
            "phases_per_pattern": {str(k): int(c) for k, c in enumerate(counts) if c},
            "recall": round(hits / max(sum(len(t) for t in truth), 1), 4),
            "precision": round(hits / max(sum(len(f) for f in found), 1), 4),
            "residual_share": round(float(np.mean([r["residual_share"] for r in results])), 4) if results else None,
            "n": len(truth)}


def _fraction_error(results: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, float]]) -> float | None:
    """Mean absolute weight-fraction error per formula, over the rows whose formulas were found exactly."""
    errors = []
    for r, t in zip(results, truth):
        found: dict[str, float] = {}
        for p in r["phases"]:  # polymorphs of one formula add up, as in the truth
            found[p["formula"]] = found.get(p["formula"], 0.0) + p["weight_fraction"]
        if set(found) == set(t):
            errors += [abs(found[f] - t[f]) for f in t]
    return round(float(np.mean(errors)), 4) if errors else None


def _score_measured(search: MixtureSearch, measured: Any, grid: Grid, wavelength: str | float, plots: Path,
                    progress: bool) -> dict[str, Any]:
    """Scores on the measured mixtures (read at the library's ``wavelength``), per ``scan`` group, with the
    files that could not be read."""
    labels = Path(measured.labels)
    try:
        with open(labels, newline="") as handle:
            table = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(labels, f"cannot read the measured mixtures' labels: {exc.strerror or exc}") from exc
    if not table or "pattern" not in table[0] or not {"phases", "cif"} & set(table[0]):
        raise InputError(labels, "expected columns pattern and phases (formulas joined by ';') or cif (single phase)")
    formula_of = dict(zip(search.ids, search.formulas))
    folder = Path(measured.folder) if measured.folder else labels.parent
    rows, X, covered, errors = [], [], [], []
    for row in table:
        try:
            x, c = preprocess(folder / row["pattern"], grid, wavelength, measured.default_wavelength)
        except InputError as exc:
            errors.append(f"{row['pattern']}: {exc.problem}")
            continue
        rows.append(row)
        X.append(x)
        covered.append(c)
    if not rows:
        raise InputError(labels, "none of its patterns could be read")
    results = _fit(search, np.array(X), np.array(covered), progress, "mixtures (measured)", drawn=0)
    known = _fit(search, np.array(X), np.array(covered), progress, "mixtures (elements known)",
                 elements=[_elements(row, search) for row in rows])
    truth = [_expected(row, formula_of) for row in rows]
    out: dict[str, Any] = {"unreadable": errors}
    groups = sorted({row.get("scan") or "all" for row in rows})
    # formulas the library holds only as other polymorphs: their peaks should stay unexplained too
    matchable = [t - set(measured.unmatched) for t in truth]
    for group in groups:
        pick = [i for i, row in enumerate(rows) if (row.get("scan") or "all") == group]
        key = group.replace(" ", "_")
        for suffix, answers in (("", results), ("_elements", known)):
            out[key + suffix] = _scores([answers[i] for i in pick], [truth[i] for i in pick])
            if measured.unmatched:
                out[f"{key}{suffix}_matchable"] = _scores([answers[i] for i in pick], [matchable[i] for i in pick])
    absent = [i for i, row in enumerate(rows) if row.get("phases_not_in_library")]
    if absent:
        out["with_phase_not_in_library"] = _scores([results[i] for i in absent], [truth[i] for i in absent])
    margins, right = _phase_outcomes(results, truth)
    confidence = np.array([p["confidence"] for r in results for p in r["phases"]])
    out["ece_raw"] = _ece(margins / (margins + 0.01), right)  # the uncalibrated m / (m + 0.01)
    out["ece"] = _ece(confidence, right)
    first = results[0]
    plot_mixture(grid, first["signal"], covered[0], first["phases"], first["profiles"], plots / "phases.png",
                 f"{Path(rows[0]['pattern']).name}: {', '.join(sorted(truth[0]))} expected")
    return out


def _elements(row: Mapping[str, str], search: MixtureSearch) -> frozenset[str]:
    """The elements a chemist knows a measured row holds: those of its ``phases`` (in the library or not),
    or those of its single ``cif``'s entry."""
    if row.get("phases") is not None:
        return entry_elements({"formula": f"{row['phases']};{row.get('phases_not_in_library') or ''}"})
    stem = Path(row["cif"]).stem
    return entry_elements(search.rows[search.ids.index(stem)] if stem in search.ids else {})


def _expected(row: Mapping[str, str], formula_of: Mapping[str, str]) -> set[str]:
    """The formulas a measured row should be answered with: its ``phases`` less those not in the library,
    or the formula of its single ``cif`` (a single-phase test set, e.g. RRUFF's labels)."""
    if row.get("phases") is not None:
        absent = set(filter(None, (row.get("phases_not_in_library") or "").split(";")))
        return set(filter(None, row["phases"].split(";"))) - absent
    stem = Path(row["cif"]).stem
    return {str(formula_of.get(stem, stem))}


def _write_reliability(folder: Path, margins: np.ndarray, right: np.ndarray, calibration: Mapping[str, Any] | None,
                       bins: int = 10) -> None:
    """``reliability.csv`` (``confidence,right,phases,kind``): per bin, mean confidence and share right."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {"margin m/(m+0.01)": margins / (margins + 0.01)}
    if calibration:
        kinds["calibrated"] = np.interp(margins, calibration["margin"], calibration["probability"])
    with open(folder / "reliability.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["confidence", "right", "phases", "kind"])
        for kind, conf in kinds.items():
            which = np.minimum((conf * bins).astype(int), bins - 1)
            for b in range(bins):
                if (which == b).any():
                    writer.writerow([round(float(conf[which == b].mean()), 4), round(float(right[which == b].mean()), 4),
                                     int((which == b).sum()), kind])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Calibrate the per-phase confidence of the mixture search on the augmented mixtures and "
                          "score it on them and on measured mixtures (mixture.measured).")
    add_params(parser, "mixture")
    add_stage_inputs(parser, "library", "patterns", "augmented")
    add_out(parser, "data/mixture", "folder of mixture.json (settings, calibration, scattering powers)")
    parser.add_argument("--metrics", default="metrics_mixture.json", help="metrics (JSON)")
    parser.add_argument("--plots", default="plots_mixture", help="plots folder (reliability.csv, phases.png)")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    metrics = run(load_params(args.params), args.library, args.patterns, args.augmented, args.out, args.metrics,
                  args.plots, progress=args.progress)
    parts = []
    for name, scores in [("augmented", metrics.get("synthetic"))] + [
            (f"measured {k}", v) for k, v in (metrics.get("measured") or {}).items() if isinstance(v, dict)]:
        if scores:
            parts.append(f"{name}: exact {scores['exact_set']:.2f} recall {scores['recall']:.2f} "
                         f"precision {scores['precision']:.2f} (n {scores['n']})")
    print("mixture search — " + ("; ".join(parts) or "nothing to score") + f" -> {args.out}")
    return 0
