"""How often an "ok" answer is right, before and after the peak-evidence check (issue 18).

"ok" is ``in_library`` True: the not-in-library rule does not flag the answer. *Before* is that
rule alone (the calibrated probability and the search-match cosines); *after* adds
:class:`xrdid.identify.evidence.PeakRule`: the measured strongest peaks must be explained by the
top candidate's reflections. Two sets:

a. the 118 measured RRUFF-236 patterns against ``models:/xrdid-rruff236@champion``; an answer is
   right when its rank-1 id is the pattern's CIF stem (``labels.csv``);
b. the 7 blank scans of ``noise/blanks`` and 20 RRUFF-236 minerals (the borate
   ``Ca(BO4)3_14`` of the issue and 19 evenly spaced others; ``--minerals 118``: all) against the CoRE MOF model
   ``models:/xrdid-default@champion``: none is in that library, so every "ok" is wrong.

Each prints a table ok-and-right / ok-and-wrong / flagged-and-right / flagged-and-wrong, before
and after, and the patterns whose verdict changed with the reason. Usage (from the repository;
skips cleanly without ``../shared``)::

    OMP_NUM_THREADS=1 MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db python benchmarks/ok_evidence.py \\
        [--strain 0.01] [--k-fwhm 0.5] [--min-ratio 0.1] [--n-peaks 5] [--min-height 10] [--minerals 20] [--quiet]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDID_SHARED_DATA", REPO.parent / "shared" / "data"))


def _rows(ident: Any, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The files on the model grid, as prediction reads them."""
    prepared = [ident.prepare(f) for f in files]
    return np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])


def _table(title: str, right: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
    """ok/flagged × right/wrong counts before and after (``before``/``after``: True = ok)."""
    print(f"\n{title}\n")
    print("| | ok & right | ok & wrong | flagged & right | flagged & wrong | ok precision |")
    print("|---|---|---|---|---|---|")
    for label, ok in (("before (novelty rule)", before), ("after (+ peak evidence)", after)):
        counts = [int((ok & right).sum()), int((ok & ~right).sum()), int((~ok & right).sum()),
                  int((~ok & ~right).sum())]
        precision = f"{counts[0] / ok.sum():.3f}" if ok.any() else "n/a"
        print(f"| {label} | " + " | ".join(map(str, counts)) + f" | {precision} |")


def _alone(results: list[dict], right: np.ndarray) -> None:
    """How often the peak check by itself (whatever the novelty rule says) fails right and wrong answers."""
    failed = np.array([r.get("evidence", {}).get("explained") is False for r in results])
    print(f"  peak evidence alone: unexplained {int((failed & right).sum())} of {int(right.sum())} right, "
          f"{int((failed & ~right).sum())} of {int((~right).sum())} wrong answers")


def _changes(names: list[str], right: np.ndarray, before: list[dict], after: list[dict]) -> None:
    """The patterns whose verdict the peak check changed, with its reason."""
    for name, r, b, a in zip(names, right, before, after):
        if b["in_library"] is not False and a["in_library"] is False:
            reason = a["warnings"][-1] if a["warnings"] else ""
            print(f"  ok -> flagged ({'right' if r else 'wrong'}) {name}: {a['candidates'][0]['id']}: {reason}")


def _run(ident: Any, files: list[Path], rule: Any) -> tuple[list[dict], list[dict]]:
    """Results without and with the peak check (same network pass inputs)."""
    X, M = _rows(ident, files)
    ident.peak_rule = None
    before = ident.identify(X, M, top=5)
    ident.peak_rule = rule
    after = ident.identify(X, M, top=5)
    return before, after


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strain", type=float, default=None, help="PeakRule.strain (default: the rule's)")
    ap.add_argument("--k-fwhm", type=float, default=None)
    ap.add_argument("--min-ratio", type=float, default=None)
    ap.add_argument("--n-peaks", type=int, default=None)
    ap.add_argument("--min-height", type=float, default=None)
    ap.add_argument("--minerals", type=int, default=20, help="RRUFF-236 patterns in set (b), at most 118")
    ap.add_argument("--quiet", action="store_true", help="tables only, not the changed patterns")
    args = ap.parse_args()
    rruff = SHARED_DATA / "rruff236"
    blanks = SHARED_DATA / "noise" / "blanks"
    if not (rruff / "labels.csv").is_file() or not blanks.is_dir():
        print(f"skipped: {rruff} or {blanks} is absent (set XRDID_SHARED_DATA)")
        return 0
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}")

    from xrdid.identify.evidence import PeakRule
    from xrdid.ops.registry import load_identifier

    given = {"strain": args.strain, "k_fwhm": args.k_fwhm, "min_ratio": args.min_ratio,
             "n_peaks": args.n_peaks, "min_height": args.min_height}
    rule = PeakRule(**{k: v for k, v in given.items() if v is not None})
    print(f"peak rule: {rule}")
    start = time.perf_counter()

    with open(rruff / "labels.csv", newline="") as handle:
        labels = sorted(csv.DictReader(handle), key=lambda row: row["pattern"])
    files = [rruff / row["pattern"] for row in labels]
    truth = [Path(row["cif"]).stem for row in labels]
    ident = load_identifier("models:/xrdid-rruff236@champion")
    before, after = _run(ident, files, rule)
    right = np.array([r["candidates"][0]["id"] == t for r, t in zip(after, truth)])
    ok_before = np.array([r["in_library"] is not False for r in before])
    ok_after = np.array([r["in_library"] is not False for r in after])
    _table(f"(a) {len(files)} RRUFF-236 patterns, models:/xrdid-rruff236@champion "
           f"(Top-1 {right.mean():.3f})", right, ok_before, ok_after)
    _alone(after, right)
    if not args.quiet:
        _changes([f.stem for f in files], right, before, after)

    borate = [i for i, f in enumerate(files) if f.stem == "Ca(BO4)3_14"]
    others = [i for i in range(len(files)) if i not in borate]
    picked = borate + [others[int(j)] for j in np.linspace(0, len(others) - 1, args.minerals - len(borate))]
    negatives = sorted(p for p in blanks.iterdir() if p.is_file()) + [files[i] for i in picked]
    ident = load_identifier("models:/xrdid-default@champion")
    before, after = _run(ident, negatives, rule)
    wrong = np.zeros(len(negatives), bool)  # nothing here is in the MOF library
    ok_before = np.array([r["in_library"] is not False for r in before])
    ok_after = np.array([r["in_library"] is not False for r in after])
    n_blank = len(negatives) - len(picked)
    _table(f"(b) {n_blank} blanks + {len(picked)} RRUFF-236 minerals, models:/xrdid-default@champion "
           "(all not in the library)", wrong, ok_before, ok_after)
    for label, part in (("blanks", slice(0, n_blank)), ("minerals", slice(n_blank, None))):
        print(f"  {label}: ok before {int(ok_before[part].sum())}, after {int(ok_after[part].sum())} "
              f"of {len(ok_before[part])}")
    _alone(after, wrong)
    if not args.quiet:
        _changes([p.name for p in negatives], wrong, before, after)
    print(f"\n{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
