"""Mixtures (issue 16): every phase of a measured multi-phase scan, scored against its labels.

1. Dara mixtures. The 297-entry candidate library (``dara_mixtures/library_ids.txt``, CIFs from
   ``mp/cif``) is built and simulated on 10–100° 2θ at 0.02° (4501 points, Cu Kα): the 12-minute
   scans cover 10–100° at 0.011°, the 2-minute ones 10–140° at 0.043° (read with ``xrdid read
   FILE --json``), so the grid holds all of the first and 10–100° of the second. Each of the 100
   scans is read as ``xrdid predict`` reads it and its phases found by
   :class:`xrdid.identify.mixture.MixtureSearch` (weight fractions from the structures). Scores by
   reduced formula against ``labels.csv`` (a phase in ``phases_not_in_library`` is not expected):
   exact-set rate, phase recall and precision, for the 12- and 2-minute scans apart.
   The reference in the same run is the classical NNLS fit the issue names: non-negative least
   squares of the background-subtracted scan on all 297 profiles, both smoothed with σ 0.1°,
   keeping the formulas that hold ≥ 5 % of the fitted weight.
2. Single-phase RRUFF. The 118 measured RRUFF patterns against the 236 RRUFF CIFs (grid 5–89.96°,
   2125 points): the share answered with exactly one phase, and with the right one first (its CIF
   or the same reduced formula).

Each part runs with the mixture settings of its DVC profile (``pipelines/dara``, ``pipelines/rruff236``).

Usage::

    python benchmarks/mixtures.py [--folder DIR] [--max-phases 4] [--workers 1] [--skip-rruff]
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

from xrdid.config import Grid, load_params
from xrdid.data.library import Library, build_library, read_index
from xrdid.data.patterns import PatternSet, simulate_library
from xrdid.identify.mixture import MixtureSearch, MixtureSettings
from xrdid.xrd.diffraction import SimulationSettings
from xrdid.xrd.preprocess import preprocess, rolling_background

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DARA_GRID = Grid(10.0, 100.0, 4501)
RRUFF_GRID = Grid(5.0, 89.96, 2125)


def build(folder: Path, cifs: Path, grid: Grid, workers: int, select: list[str] | str = "all") -> PatternSet:
    """Library and simulated patterns in ``folder`` (re-used when already there with the same settings)."""
    build_library({"source": "folder", "folder": str(cifs), "select": select, "workers": workers},
                  folder / "library", progress=False)
    return simulate_library(folder / "library", folder / "patterns", SimulationSettings(grid), workers=workers,
                            progress=False)


def timed_fit(search: MixtureSearch, X: np.ndarray, covered: np.ndarray) -> tuple[list[dict], list[float]]:
    """Each row's answer and the seconds it took (timed one by one: the 2-minute scans' broad peaks cost more)."""
    results, seconds = [], []
    for x, c in zip(X, covered):
        start = time.perf_counter()
        results += search.fit(x, c)
        seconds.append(time.perf_counter() - start)
    return results, seconds


def read(paths: list[Path], grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    rows = [preprocess(p, grid, "CuKa") for p in paths]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def nnls_baseline(X: np.ndarray, covered: np.ndarray, patterns: PatternSet, formulas: np.ndarray,
                  sigma: float = 0.1, keep: float = 0.05) -> list[set[str]]:
    """The issue's reference: NNLS on every profile (both smoothed σ 0.1°), formulas with ≥ 5 % of the weight."""
    step = patterns.grid.step
    profiles = ndimage.gaussian_filter1d(np.asarray(patterns.profiles, np.float64), sigma / step, axis=1)
    signal = ndimage.gaussian_filter1d(np.clip(X - rolling_background(X, step), 0, None) * covered, sigma / step, axis=1)
    names, group = np.unique(formulas, return_inverse=True)
    found = []
    for y, c in zip(signal, covered):
        weights = nnls((profiles * c).T, y)[0]
        per_formula = np.bincount(group, weights, len(names))
        found.append(set(names[per_formula >= keep * max(per_formula.sum(), 1e-12)]))
    return found


def scores(found: list[set[str]], truth: list[set[str]]) -> str:
    exact = np.mean([f == t for f, t in zip(found, truth)])
    hits = sum(len(f & t) for f, t in zip(found, truth))
    recall = hits / sum(len(t) for t in truth)
    precision = hits / max(sum(len(f) for f in found), 1)
    return f"exact set {exact:.0%} ({sum(f == t for f, t in zip(found, truth))}/{len(truth)}), " \
           f"recall {recall:.3f}, precision {precision:.3f}"


def dara(folder: Path, settings: MixtureSettings, workers: int) -> None:
    data = SHARED / "dara_mixtures"
    ids = (data / "library_ids.txt").read_text().split()
    start = time.perf_counter()
    patterns = build(folder / "dara", SHARED / "mp" / "cif", DARA_GRID, workers, ids)
    library = read_index(folder / "dara" / "library")
    print(f"dara library: {len(patterns)} entries built and simulated in {time.perf_counter() - start:.1f} s")
    with open(data / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    X, covered = read([data / row["pattern"] for row in labels], DARA_GRID)
    truth = [set(row["phases"].split(";")) - {""} for row in labels]
    scans = [row["scan"] for row in labels]

    start = time.perf_counter()
    search = MixtureSearch(patterns, library, settings, Library.load(folder / "dara" / "library").crystals(patterns.ids))
    ready = time.perf_counter() - start
    results, per_pattern = timed_fit(search, X, covered)
    seconds = float(np.mean(per_pattern))
    found = [{p["formula"] for p in r["phases"]} for r in results]
    formulas = library.set_index("id").loc[patterns.ids, "reduced_formula"].to_numpy()
    start = time.perf_counter()
    baseline = nnls_baseline(X, covered, patterns, formulas)
    baseline_seconds = (time.perf_counter() - start) / len(X)

    print(f"mixture search: {seconds:.2f} s per pattern (set-up {ready:.1f} s); "
          f"NNLS baseline {baseline_seconds:.3f} s per pattern; ratio {seconds / baseline_seconds:.1f}")
    for scan in sorted(set(scans)):
        pick = [i for i, s in enumerate(scans) if s == scan]
        print(f"  {scan} scans: {np.mean([per_pattern[i] for i in pick]):.2f} s per pattern")
    for scan in sorted(set(scans), key=lambda s: -float(s.split()[0])):
        pick = [i for i, s in enumerate(scans) if s == scan]
        print(f"  {scan} scans ({len(pick)}):")
        print(f"    mixture search  {scores([found[i] for i in pick], [truth[i] for i in pick])}")
        print(f"    NNLS baseline   {scores([baseline[i] for i in pick], [truth[i] for i in pick])}")
    confidence = np.array([p["confidence"] for r in results for p in r["phases"]])
    right = np.array([p["formula"] in t for r, t in zip(results, truth) for p in r["phases"]])
    bins = [(0.0, 0.5), (0.5, 0.75), (0.75, 1.01)]
    print("  precision by confidence: " + ", ".join(
        f"[{lo:.2f}, {min(hi, 1):.2f}) {right[(confidence >= lo) & (confidence < hi)].mean():.2f} "
        f"({((confidence >= lo) & (confidence < hi)).sum()} phases)" for lo, hi in bins))
    absent = [i for i, row in enumerate(labels) if row["phases_not_in_library"]]
    print(f"  scans with a phase absent from the library ({len(absent)}): mean residual share "
          f"{np.mean([results[i]['residual_share'] for i in absent]):.2f} (others "
          f"{np.mean([r['residual_share'] for i, r in enumerate(results) if i not in absent]):.2f}); "
          f"{scores([found[i] for i in absent], [truth[i] for i in absent])}")


def rruff(folder: Path, settings: MixtureSettings, workers: int) -> None:
    data = SHARED / "rruff236"
    patterns = build(folder / "rruff", data / "cif", RRUFF_GRID, workers)
    library = read_index(folder / "rruff" / "library")
    with open(data / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    X, covered = read([data / row["pattern"] for row in labels], RRUFF_GRID)
    search = MixtureSearch(patterns, library, settings, Library.load(folder / "rruff" / "library").crystals(patterns.ids))
    results, per_pattern = timed_fit(search, X, covered)
    seconds = float(np.mean(per_pattern))
    reduced = dict(zip(library["id"].astype(str), library["reduced_formula"]))
    one = np.mean([len(r["phases"]) == 1 for r in results])
    first = [r["phases"][0] if r["phases"] else {} for r in results]
    right = np.mean([f.get("id") == Path(row["cif"]).stem or f.get("formula") == reduced.get(Path(row["cif"]).stem)
                     for f, row in zip(first, labels)])
    counts = np.bincount([len(r["phases"]) for r in results])
    print(f"rruff single-phase ({len(results)} patterns, {len(patterns)} CIFs): exactly one phase "
          f"{one:.0%}; right phase first {right:.0%}; phases per pattern {dict(enumerate(counts.tolist()))}; "
          f"{seconds:.2f} s per pattern")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where libraries and patterns go (default: a temporary folder)")
    parser.add_argument("--max-phases", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-rruff", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        dara(folder, profile_settings("dara", args.max_phases), args.workers)
        if not args.skip_rruff:
            rruff(folder, profile_settings("rruff236", args.max_phases), args.workers)


def profile_settings(profile: str, max_phases: int) -> MixtureSettings:
    """The mixture settings of a DVC profile (``pipelines/PROFILE/params.yaml``), what ``make PROFILE`` scores."""
    settings = load_params(ROOT / "pipelines" / profile / "params.yaml")["mixture"]["settings"]
    return MixtureSettings.from_dict({**settings, "max_phases": max_phases})


if __name__ == "__main__":
    main()
