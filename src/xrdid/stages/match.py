"""The ``match`` stage: calibrate the open-library identifier and score it beside the baselines.

Reads the ``match`` section (with ``augment`` for the synthetic spectra, ``evaluate`` for the
measured test set and the cosine baseline). A seeded ``holdout`` share of the library is unseen:
the calibration — the softmax temperature over the candidates' scores and the ``min_score`` below
which a pattern is "not in library" — is fitted on augmented spectra of the other entries only,
and Top-1..5 is reported on fresh spectra of seen and unseen entries side by side. Measured
patterns are scored at the material level (their CIF or any id of a ``mp_matches`` column), by
the open-library identifier, the cosine search-match (smoothing ``baseline_smooth``, 0.3°: the
best on the development patterns) and, with ``--classifier``, the CNN; with
``match.alone_source`` also against the entries of that source alone, where patterns whose
material has no entry there must be flagged "not in library". The row ``open_elements`` is the
open-library identifier with the chemistry filter a chemist who knows the sample's elements sets
(``xrdid predict --elements``): only entries made of the elements of the pattern's CIF are ranked;
``open_element_set`` also requires all of them (``--require-elements`` with the same list).

Writes the identifier folder (``--out``), ``--metrics`` (JSON) and ``--plots`` (``topk.csv``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.config import load_params
from xrdid.data.augment import Augmenter, load_noise_bank
from xrdid.data.library import Library
from xrdid.data.measured_set import MeasuredSet
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.identify.chemistry import ElementTable, entry_elements
from xrdid.identify.open import OpenIdentifier
from xrdid.identify.search import LibraryIndex, SearchSettings, matches_truth
from xrdid.learn.baselines import search_match
from xrdid.learn.calibration import fit_temperature
from xrdid.outputs import atomic_dir
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)

KS = (1, 2, 3, 4, 5)


def run(params: Mapping[str, Any], library_dir: str | Path, patterns_dir: str | Path, noise_dir: str | Path | None,
        index_dir: str | Path, out: str | Path, metrics_path: str | Path, plots_dir: str | Path,
        classifier: str | Path | None = None) -> dict[str, Any]:
    """Calibrate, score and write the open-library identifier (see the module notes)."""
    start = time.perf_counter()
    m = params.get("match") or {}
    patterns = PatternSet.load(patterns_dir)
    index = LibraryIndex.load(index_dir)
    if index.ids != list(patterns.ids):
        raise InputError(index_dir, "its entries differ from the simulated patterns: re-run the index stage")
    index.settings = SearchSettings.from_dict(m)  # query-time keys may differ from the build's
    noise = load_noise_bank(noise_dir, patterns.grid) if noise_dir else None
    aug = Augmenter.from_params(patterns, noise, Library.load(library_dir), params.get("augment"))
    rng = np.random.default_rng(int(m.get("seed", 0)))
    n = len(index)
    unseen = np.zeros(n, bool)
    unseen[rng.permutation(n)[: int(round(float(m.get("holdout", 0.3333)) * n))]] = True
    materials = np.unique([row["material"] for row in index.rows], return_inverse=True)[1]

    # calibration on seen entries only
    seen_rows = np.flatnonzero(~unseen) if (~unseen).any() else np.arange(n)
    labels = rng.choice(seen_rows, int(m.get("calibration_samples", 2000)))
    X, _ = aug.sample(rng, labels)
    found = index.search(X)
    hit = materials[found.rows] == materials[labels][:, None]
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    keep = first >= 0
    temperature = fit_temperature(found.score[keep], first[keep]) if keep.sum() > 1 else 1.0
    min_score = float(np.quantile(found.score[:, 0], float(m.get("false_flag_rate", 0.05))))
    calibration = {"temperature": float(temperature), "min_score": min_score, "samples": len(labels),
                   "found_among_candidates": float(keep.mean())}

    metrics: dict[str, Any] = {"n_entries": n, "n_materials": int(materials.max()) + 1, "calibration": calibration}
    metrics["synthetic"] = {}
    for name, pool in (("seen", np.flatnonzero(~unseen)), ("unseen", np.flatnonzero(unseen))):
        if not len(pool):
            continue
        labels = rng.choice(pool, int(m.get("test_samples", 1000)))
        X, _ = aug.sample(rng, labels)
        rows = index.search(X, top=max(KS)).rows
        truth = [{int(t)} for t in materials[labels]]
        metrics["synthetic"][name] = _topk(materials[rows], truth)

    test = _measured(params, index)
    if test is not None:
        metrics.update(_score_measured(params, index, patterns, *test, unseen=unseen, classifier=classifier,
                                       temperature=temperature, min_score=min_score))
    metrics["seconds"] = round(time.perf_counter() - start, 1)

    novelty = {"min_score": min_score, "false_flag_rate": float(m.get("false_flag_rate", 0.05))}
    with atomic_dir(out) as tmp:
        OpenIdentifier.build(tmp, index, patterns_dir, params, temperature=temperature, novelty=novelty)
    Path(metrics_path).write_text(json.dumps(metrics, indent=1) + "\n")
    _write_topk_csv(Path(plots_dir), metrics)
    return metrics


def _topk(found: np.ndarray, truth: Sequence[set[int]]) -> dict[str, float]:
    """Top-1..5 of rows of candidate labels against each row's set of right labels."""
    return {f"top{k}": round(float(matches_truth(found, truth, k).mean()), 4) for k in KS} | {"n": len(truth)}


def _measured(params: Mapping[str, Any], index: LibraryIndex
              ) -> tuple[MeasuredSet, list[set[int]], list[str], list[frozenset[str]]] | None:
    """The measured test set with each pattern's right rows (its CIF and its ``mp_matches``), the library's
    sources and each pattern's elements (those of its CIF's entry, else of the labels' ``formula``)."""
    test = MeasuredSet.from_params(params, index.ids, index.grid, progress=False)
    if test is None:
        return None
    labels = Path(params["evaluate"]["measured"]["labels"])
    with open(labels, newline="") as handle:
        rows = {row["pattern"]: row for row in csv.DictReader(handle)}
    pos = {entry: i for i, entry in enumerate(index.ids)}
    truths, elements = [], []
    for file in test.files:
        row = rows[file]
        names = [Path(row["cif"]).stem, *re.split(r"[;,\s]+", (row.get("mp_matches") or "").strip())]
        truths.append({pos[name] for name in names if name in pos})
        own = pos.get(Path(row["cif"]).stem)
        elements.append(entry_elements(index.rows[own] if own is not None else row))
    return test, truths, [row.get("source", "") for row in index.rows], elements


def _score_measured(params: Mapping[str, Any], index: LibraryIndex, patterns: PatternSet, test: MeasuredSet,
                    truths: list[set[int]], sources: list[str], elements: list[frozenset[str]], *,
                    unseen: np.ndarray, classifier: str | Path | None, temperature: float,
                    min_score: float) -> dict[str, Any]:
    """Top-1..5 on the measured patterns: open identifier (also with the chemistry filter), cosine
    search-match, CNN; seen/unseen; alone."""
    smooth = float((params.get("match") or {}).get("baseline_smooth", 0.3))
    mat = np.unique([row["material"] for row in index.rows], return_inverse=True)[1]
    have = np.array([bool(t) for t in truths])
    truth_m = [{int(mat[i]) for i in t} for t in truths]
    out: dict[str, Any] = {}
    found = index.search(test.X, test.covered, top=max(KS))
    profiles = np.asarray(patterns.profiles)
    cosine = search_match(test.X, test.covered, profiles, index.grid, smooth)
    methods = {"open": found.rows, f"search_match_{smooth:g}": _grouped_order(cosine, mat)}
    if classifier:
        from xrdid.learn.inference import predict_logits
        from xrdid.learn.models import load_model, read_metadata

        ids = json.loads(read_metadata(classifier)["ids"])
        if sorted(ids) == sorted(index.ids):
            logits = predict_logits(load_model(classifier), test.X)
            pos = {entry: i for i, entry in enumerate(index.ids)}
            methods["cnn"] = _grouped_order(logits[:, np.argsort([pos[i] for i in ids])], mat)
        else:
            log.warning("match: the classifier's classes are not this library; no cnn row")
    keep = np.flatnonzero(have)
    out["measured"] = {name: _topk(mat[rows[keep]], [truth_m[i] for i in keep]) for name, rows in methods.items()}
    for name, exact in (("open_elements", False), ("open_element_set", True)):
        found_m = _search_by_elements(index, test, elements, mat, exact)
        out["measured"][name] = _topk(found_m[keep], [truth_m[i] for i in keep])
    material_unseen = np.array([bool(t) and all(unseen[i] for i in t) for t in truths])
    out["measured_by_holdout"] = {
        name: _topk(mat[found.rows[pick]], [truth_m[i] for i in pick])
        for name, pick in (("seen", np.flatnonzero(have & ~material_unseen)), ("unseen", np.flatnonzero(material_unseen)))
        if len(pick)}
    ident = OpenIdentifier(None, [], index.grid, {}, temperature, novelty={"min_score": min_score})
    ident._attach(index, None)
    out["measured_flagged"] = _flag_rate(ident, test, np.arange(len(truths)), patterns)
    alone = (params.get("match") or {}).get("alone_source")
    if alone:
        pick = np.array([Path(s).resolve() == Path(alone).resolve() for s in sources]) if sources else None
        if pick is None or not pick.any():
            raise InputError("match.alone_source", f"no library entry comes from {alone}")
        sub = index.subset(pick)
        rows_of = np.flatnonzero(pick)
        truth_sub = [{int(np.searchsorted(rows_of, i)) for i in t if pick[i]} for t in truths]
        matchable = np.array([bool(t) for t in truth_sub])
        sub_mat = np.unique([row["material"] for row in sub.rows], return_inverse=True)[1]
        f = sub.search(test.X[matchable], test.covered[matchable], top=max(KS))
        tm = [{int(sub_mat[i]) for i in t} for t, ok in zip(truth_sub, matchable) if ok]
        cos = search_match(test.X[matchable], test.covered[matchable], profiles[pick], index.grid, smooth)
        ident._attach(sub, None)
        known = [e for e, ok in zip(elements, matchable) if ok]
        out["measured_alone"] = {
            "open": _topk(sub_mat[f.rows], tm),
            "open_elements": _topk(_search_by_elements(sub, test.subset(matchable), known, sub_mat), tm),
            "open_element_set": _topk(_search_by_elements(sub, test.subset(matchable), known, sub_mat, True), tm),
            f"search_match_{smooth:g}": _topk(sub_mat[_grouped_order(cos, sub_mat)], tm),
            "flagged_unmatchable": _flag_rate(ident, test, np.flatnonzero(~matchable), patterns),
            "flagged_matchable": _flag_rate(ident, test, np.flatnonzero(matchable), patterns),
            "flagged_unmatchable_elements": _flag_rate(ident, test, np.flatnonzero(~matchable), patterns, elements),
            "flagged_matchable_elements": _flag_rate(ident, test, np.flatnonzero(matchable), patterns, elements),
        }
    return out


def _search_by_elements(index: LibraryIndex, test: MeasuredSet, elements: Sequence[frozenset[str]],
                        materials: np.ndarray, exact: bool = False, k: int = max(KS)) -> np.ndarray:
    """The ``materials`` of each pattern's ``k`` best entries among those made of its ``elements`` only (the
    chemistry filter; ``exact``: of all of them), best first; a pattern with fewer such entries repeats its
    last one (none at all: -1, no material)."""
    out = np.full((len(test.X), k), -1, np.int64)
    groups: dict[frozenset[str], list[int]] = {}
    for q, e in enumerate(elements):
        groups.setdefault(e, []).append(q)
    table = ElementTable.from_rows(index.rows)
    for allowed, pick in groups.items():
        keep = table.mask(allowed, allowed if exact else ())
        if not keep.any():
            continue
        rows = np.flatnonzero(keep)[index.subset(keep).search(test.X[pick], test.covered[pick], top=k).rows]
        out[pick] = materials[np.pad(rows, ((0, 0), (0, k - rows.shape[1])), mode="edge")]
    return out


def _grouped_order(scores: np.ndarray, materials: np.ndarray, k: int = max(KS)) -> np.ndarray:
    """Rows of the ``k`` best entries, one per material (a material's best entry), best first."""
    order = np.argsort(-scores, axis=1, kind="stable")
    out = np.empty((len(scores), k), np.int64)
    for q, row in enumerate(order):  # walk until k materials are seen: a few dozen entries at most
        seen: list[int] = []
        picked = []
        for r in row:
            if materials[r] not in seen:
                seen.append(materials[r])
                picked.append(r)
                if len(picked) == k:
                    break
        out[q, : len(picked)] = picked
        out[q, len(picked):] = picked[-1]
    return out


def _flag_rate(ident: OpenIdentifier, test: MeasuredSet, pick: np.ndarray, patterns: PatternSet,
               elements: Sequence[frozenset[str]] | None = None) -> dict[str, Any]:
    """Share of the patterns ``pick`` answered "not in library" (score or peak evidence), with the count;
    with ``elements``, each pattern searched with its chemistry filter (no entry passing it: flagged)."""
    if not len(pick):
        return {"rate": None, "n": 0}
    ident._patterns = patterns
    if elements is None:
        flagged = [not r["in_library"] for r in ident.identify(test.X[pick], test.covered[pick], top=1)]
    else:
        flagged = []
        for q in pick:
            try:
                result = ident.restrict(elements[q]).identify(test.X[q:q + 1], test.covered[q:q + 1], top=1)[0]
            except InputError:  # no entry of those elements at all
                flagged.append(True)
                continue
            flagged.append(not result["in_library"])
        ident.restrict()  # the whole library again
    return {"rate": round(float(np.mean(flagged)), 4), "n": len(pick)}


def _write_topk_csv(folder: Path, metrics: Mapping[str, Any]) -> None:
    """``topk.csv`` in the long form the DVC Top-k plot draws: ``set,method,k,accuracy``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, group in (("measured", "measured"), ("measured (library source alone)", "measured_alone"),
                        ("synthetic", "synthetic")):
        for method, scores in (metrics.get(group) or {}).items():
            if isinstance(scores, dict) and "top1" in scores:
                rows += [(name, method, k, scores[f"top{k}"]) for k in KS]
    with open(folder / "topk.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["set", "method", "k", "accuracy"])
        writer.writerows(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "match, augment, evaluate")
    add_stage_inputs(parser, "library", "patterns", "noise", "index")
    parser.add_argument("--classifier", default=None, help="a trained classifier (model.safetensors) scored beside")
    add_out(parser, "models_open", "the open-library identifier folder")
    parser.add_argument("--metrics", default="metrics_open.json", help="metrics (JSON)")
    parser.add_argument("--plots", default="plots_open", help="plots folder (topk.csv)")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    noise = args.noise if args.noise and Path(args.noise, "noise.npy").is_file() else None
    metrics = run(params, args.library, args.patterns, noise, args.index, args.out, args.metrics, args.plots,
                  args.classifier)
    line = metrics.get("measured", {}).get("open") or metrics["synthetic"].get("seen", {})
    print(f"open-library identifier: top1 {line.get('top1', float('nan')):.3f} top5 "
          f"{line.get('top5', float('nan')):.3f} ({metrics['n_entries']} entries) -> {args.out}")
    return 0

