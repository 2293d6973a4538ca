"""Evaluation: measured-set loading, search-match, classical baselines, Top-k tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from xrdid.config import Grid
from xrdid.data.measured_set import MeasuredSet
from xrdid.errors import InputError
from xrdid.learn.baselines import classical_scores, pool_features, search_match
from xrdid.learn.metrics import topk_table
from xrdid.xrd.preprocess import preprocess

GRID = Grid(10.0, 40.0, 601)


def _peaks(positions: list[float], grid: Grid = GRID, width: float = 0.1) -> np.ndarray:
    x = grid.values
    return sum(np.exp(-0.5 * ((x - p) / width) ** 2) for p in positions)


def test_search_match_finds_the_shifted_pattern_over_background() -> None:
    library = np.stack([_peaks([15, 22]), _peaks([15.5, 30]), _peaks([20, 33, 35])])
    measured = _peaks([15.03, 22.03]) + 0.3 + 0.01 * GRID.values  # small shift on a sloping background
    scores = search_match(measured[None], np.ones((1, GRID.n_points), bool), library, GRID, smooth=0.1)
    assert scores.shape == (1, 3) and scores.argmax() == 0
    assert scores.max() <= 1 + 1e-9


def test_search_match_uses_only_covered_points() -> None:
    library = np.stack([_peaks([15, 35]), _peaks([15, 25])])
    measured = _peaks([15, 35])
    covered = GRID.values < 30  # the scan stopped at 30°: both candidates explain it fully
    scores = search_match(measured[None], covered[None], library, GRID, smooth=0.0, subtract_background=False)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert scores[0, 1] < scores[0, 0]


def test_topk_table_by_source_and_unknown_labels() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    table = topk_table(scores, np.array([0, 2, 2, -1]), ["a", "a", "b", "b"])
    assert table["n"] == 3
    assert table["top1"] == pytest.approx(2 / 3) and table["top2"] == 1.0
    assert table["a"]["top1"] == 0.5 and table["b"]["n"] == 1


def test_pool_features_shape_and_scale() -> None:
    X = np.random.default_rng(0).random((4, 103))
    F = pool_features(X, 10)
    assert F.shape == (4, 10)
    assert_allclose(F.max(axis=1), 1.0)


def test_classical_baselines_learn_separable_classes() -> None:
    rng = np.random.default_rng(1)
    centres = [12, 18, 24, 30]
    X = np.stack([_peaks([centres[c] + rng.normal(0, 0.05)]) for c in range(4) for _ in range(10)])
    y = np.repeat(np.arange(4), 10)
    X_test = np.stack([_peaks([c + 0.02]) for c in centres])
    scores = classical_scores(X, y, X_test, 4, pool=5, models=("naive_bayes", "knn", "svm"))
    for name, s in scores.items():
        assert s.shape == (4, 4)
        assert topk_table(s, np.arange(4))["top1"] == 1.0, name


def test_preprocess_and_measured_set(shared_data: Path) -> None:
    folder = shared_data / "rruff236"
    grid = Grid(5.0, 70.0, 1626)
    values, covered = preprocess(folder / "patterns" / "Al2O3_167.xy", grid, "CuKa")
    assert values.shape == (1626,) and values[covered].max() == pytest.approx(1.0) and values.min() >= 0
    labels = folder / "labels.csv"
    ids = sorted(p.stem for p in (folder / "cif").glob("*.cif"))
    test = MeasuredSet.from_folder(folder / "patterns", labels, ids, grid, "CuKa", progress=False)
    assert len(test.files) == 118 and np.all(test.y >= 0) and not test.failed
    assert set(test.sources) == {"RRUFF"}


def test_measured_set_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="labels file not found"):
        MeasuredSet.from_folder(tmp_path, tmp_path / "none.csv", ["a"], GRID, "CuKa")
    bad = tmp_path / "labels.csv"
    bad.write_text("file,label\nx.xy,a\n")
    with pytest.raises(InputError, match="columns 'pattern' and 'cif'"):
        MeasuredSet.from_folder(tmp_path, bad, ["a"], GRID, "CuKa")


def test_unreadable_patterns_are_reported_and_skipped(tmp_path: Path) -> None:
    x = GRID.values
    np.savetxt(tmp_path / "good.xy", np.column_stack([x, 10 + 100 * _peaks([20])]))
    (tmp_path / "empty.xy").write_text("")
    (tmp_path / "labels.csv").write_text("pattern,cif,source\ngood.xy,a.cif,lab\nempty.xy,b.cif,lab\n")
    test = MeasuredSet.from_folder(tmp_path, tmp_path / "labels.csv", ["a", "b"], GRID, "CuKa", progress=False)
    assert test.files == ["good.xy"] and test.y.tolist() == [0]
    assert test.failed[0][0] == "empty.xy" and "empty" in test.failed[0][1]


def test_material_tables_need_the_matching_library(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from xrdid.stages.evaluate import _material_tables

    patterns = SimpleNamespace(ids=["a", "b"], profiles=np.eye(2))
    test = MeasuredSet(["x.xy"], np.zeros((1, 2), np.float32), np.ones((1, 2), bool), np.array([1]), ["S"])
    with pytest.raises(InputError, match=r"index\.csv: library index not found"):
        _material_tables({"cnn": np.array([[0.9, 0.1]])}, test, patterns, tmp_path, tmp_path / "m.csv")
    (tmp_path / "index.csv").write_text("id,reduced_formula,refcode\na,X,\n")
    with pytest.raises(InputError, match=r"1 simulated patterns are not in this library \(e\.g\. b\)"):
        _material_tables({"cnn": np.array([[0.9, 0.1]])}, test, patterns, tmp_path, tmp_path / "m.csv")
    (tmp_path / "index.csv").write_text("id,reduced_formula,refcode\na,X,\nb,X,\n")  # one formula, one pattern
    patterns.profiles = np.array([[1.0, 0.0], [1.0, 0.01]])
    tables = _material_tables({"cnn": np.array([[0.9, 0.1]])}, test, patterns, tmp_path, tmp_path / "m.csv")
    assert tables["n_materials"] == 1 and tables["measured_material"]["cnn"]["top1"] == 1.0


def test_the_chemistry_filter_of_each_pattern_is_its_own_entry_s_elements(tmp_path: Path) -> None:
    """``cnn_elements``: a pattern may be answered only by entries made of its own entry's elements."""
    from types import SimpleNamespace

    from xrdid.stages.evaluate import _own_elements

    (tmp_path / "index.csv").write_text("id,formula,elements\nb,Fe2O3,Fe O\na,FeO,Fe O\nc,MgO,Mg O\n")
    patterns = SimpleNamespace(ids=["a", "b", "c"])
    test = MeasuredSet(["x", "y", "z"], np.zeros((3, 2), np.float32), np.ones((3, 2), bool), np.array([0, 2, -1]),
                       ["S"] * 3)
    assert _own_elements(test, patterns, tmp_path).tolist() == [[True, True, False], [False, False, True],
                                                               [True, True, True]]


def _table(top1: float, n: int = 4, **by_source: dict) -> dict:
    return {**{f"top{k}": min(1.0, top1 + 0.1 * (k - 1)) for k in range(1, 6)}, "n": n, **by_source}


def test_topk_csv_has_one_row_per_set_method_and_k(tmp_path: Path) -> None:
    from xrdid.stages.evaluate import _write_topk_csv

    metrics = {"n_library": 3, "validation": {"cnn": _table(0.9), "knn": _table(0.5)},
               "measured": {"cnn": _table(0.6, RRUFF=_table(0.7)), "search_match": _table(0.4)},
               "measured_failed": 0, "measured_material": {"cnn": _table(0.8)}}
    _write_topk_csv(tmp_path / "topk.csv", metrics)
    rows = list(csv.DictReader((tmp_path / "topk.csv").open()))
    assert list(rows[0]) == ["set", "method", "k", "accuracy"]  # long format: the DVC template's fields
    keys = [(r["set"], r["method"], int(r["k"])) for r in rows]
    sets = ("validation", "measured", "measured_material")
    expected = [(s, m, k) for s in sets for m in metrics[s] for k in range(1, 6)]
    assert keys == expected  # no per-source rows: those stay in metrics.json
    assert float(rows[-1]["accuracy"]) == pytest.approx(1.0) and float(rows[5]["accuracy"]) == pytest.approx(0.5)
