"""The open-library search (xrdid.identify.search), its axis (xrdid.xrd.strain) and identifier (xrdid.identify.open)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from xrdid.cli import main
from xrdid.config import Grid
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.identify.evidence import peak_evidence
from xrdid.identify.open import OpenIdentifier, candidate_probabilities
from xrdid.identify.search import LibraryIndex, SearchSettings, _covered_norms
from xrdid.xrd.profiles import render
from xrdid.xrd.strain import StrainAxis

GRID = Grid(5.0, 89.96, 2125)


def _strained(two_theta: np.ndarray, strain: float) -> np.ndarray:
    """Bragg: a cell larger by ``strain`` has every sin θ smaller by 1 / (1 + strain)."""
    return 2 * np.degrees(np.arcsin(np.sin(np.radians(two_theta / 2)) / (1 + strain)))


def _library(seed: int, n: int = 40, grid: Grid = GRID) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """``n`` random stick patterns (positions, intensities) and their profiles on ``grid``."""
    rng = np.random.default_rng(seed)
    positions = [np.sort(rng.uniform(grid.start + 2, grid.stop - 2, rng.integers(8, 25))) for _ in range(n)]
    heights = [rng.uniform(5, 100, len(p)) for p in positions]
    profiles = np.stack([render(p, h, grid, 0.1) for p, h in zip(positions, heights)])
    return positions, heights, profiles / profiles.max(axis=1, keepdims=True)


def _index(profiles: np.ndarray, grid: Grid = GRID, **settings: float) -> LibraryIndex:
    ps = PatternSet([f"e{i}" for i in range(len(profiles))], grid, profiles.astype(np.float32), np.zeros(len(profiles) + 1, int),
                    np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros(0), np.zeros(0), {"ids": len(profiles)})
    return LibraryIndex.build(ps, None, SearchSettings(**settings))


@pytest.mark.parametrize("strain", [-0.025, 0.0, 0.012, 0.028])
def test_strain_is_a_shift_on_the_axis(strain: float) -> None:
    """Every peak of a strained pattern moves by the same number of ln sin θ points."""
    axis = StrainAxis.from_grid(GRID, 0.001)
    positions = np.array([12.0, 25.0, 47.0, 80.0])
    before = axis.resample(render(positions, np.ones(4), GRID, 0.05)[None], GRID)[0]
    after = axis.resample(render(_strained(positions, strain), np.ones(4), GRID, 0.05)[None], GRID)[0]
    lags = np.arange(-40, 41)
    best = lags[np.argmax([np.dot(np.roll(before, lag), after) for lag in lags])]
    assert abs(best + axis.points(strain) * np.sign(strain)) <= 1
    assert_allclose(axis.strain(best), strain, atol=0.0015)


def test_axis_spans_the_grid() -> None:
    axis = StrainAxis.from_grid(GRID, 0.002)
    assert axis.two_theta[0] == pytest.approx(GRID.start)
    assert GRID.stop - 0.2 < axis.two_theta[-1] <= GRID.stop
    with pytest.raises(ValueError, match="positive"):
        StrainAxis.from_grid(GRID, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_finds_a_strained_noisy_entry_and_its_strain(seed: int) -> None:
    positions, heights, profiles = _library(seed)
    rng = np.random.default_rng(seed + 100)
    index = _index(profiles)
    for entry in rng.choice(len(profiles), 5, replace=False):
        strain = rng.uniform(-0.025, 0.025)
        texture = heights[entry] * rng.lognormal(0, 0.2, len(heights[entry]))
        row = render(_strained(positions[entry], strain), texture, GRID, 0.15)
        row = row / row.max() + 0.05 + rng.normal(0, 0.01, GRID.n_points)
        found = index.search(row[None], top=3)
        assert found.rows[0, 0] == entry
        assert_allclose(found.strain[0, 0], strain, atol=0.002)
        assert found.score[0, 0] > found.score[0, 1]


def test_an_unstrained_fit_wins_among_look_alikes() -> None:
    """Two entries with the same peaks 2 % apart: the one that needs no strain ranks first."""
    positions = np.array([15.0, 31.0, 44.0, 62.0])
    profiles = np.stack([render(positions, np.ones(4), GRID, 0.1), render(_strained(positions, 0.02), np.ones(4), GRID, 0.1)])
    found = _index(profiles / profiles.max(axis=1, keepdims=True)).search(profiles[1:2], top=2)
    assert found.rows[0].tolist() == [1, 0]
    assert_allclose(found.strain[0], [0.0, 0.02], atol=0.0015)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covered_norms_equal_the_product_with_the_shifted_coverage(seed: int) -> None:
    """The edge sums of a one-run coverage give what the product with every shifted mask gives."""
    rng = np.random.default_rng(seed)
    cand = rng.random((7, 300)).astype(np.float32)
    start, stop = sorted(rng.choice(301, 2, replace=False))
    gaps = rng.random(300) > 0.3
    for mask in (np.ones(300, bool), np.arange(300) >= start, (np.arange(300) >= start) & (np.arange(300) < stop), gaps):
        m = int(rng.integers(1, 40))
        shifted = np.lib.stride_tricks.sliding_window_view(np.pad(mask.astype(np.float32), m), 300)
        expected = shifted @ (cand.astype(np.float64) ** 2).T
        got = _covered_norms(cand, mask, m, (cand.astype(np.float64) ** 2).sum(axis=1))
        assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_a_short_scan_beside_an_entry_with_nothing_there_keeps_cosines_at_most_one() -> None:
    """An entry whose peaks all lie outside a 9° scan: its covered norm is its faint tails, which the
    edge sums would lose to cancellation; its cosine must stay ≤ 1 and the right entry first."""
    positions, heights, profiles = _library(13, 150)
    index = _index(profiles[[10, 52]], max_strain=0.05)
    covered = np.zeros((1, GRID.n_points), bool)
    covered[0, 370:595] = True  # 2θ 19.8–28.8°
    found = index.search(render(positions[10], heights[10], GRID, 0.12)[None], covered)
    assert found.rows[0, 0] == 0
    assert np.all(found.cosine <= 1 + 1e-5)


def test_a_batch_ranks_as_its_patterns_one_by_one() -> None:
    """Prepared and fitted over threads (a batch of 64 or more), each pattern gets its own answer."""
    positions, heights, profiles = _library(5, 30)
    rng = np.random.default_rng(5)
    entries = rng.integers(0, len(profiles), 70)
    X = np.stack([render(_strained(positions[e], rng.uniform(-0.02, 0.02)), heights[e], GRID, 0.12) for e in entries])
    covered = np.ones(X.shape, bool)
    covered[::3, :200] = False  # some scans start later, some have a gap
    covered[1::5, 900:1000] = False
    index = _index(profiles, candidates=10)
    batch = index.search(X, covered, top=3, workers=2)
    alone = [index.search(X[i:i + 1], covered[i:i + 1], top=3, workers=1) for i in range(len(X))]
    assert_array_equal(batch.rows, np.concatenate([a.rows for a in alone]))
    assert_allclose(batch.score, np.concatenate([a.score for a in alone]), rtol=1e-5)
    assert np.mean(batch.rows[:, 0] == entries) > 0.9


def test_index_round_trip_and_staleness(tmp_path: Path) -> None:
    _, _, profiles = _library(3, 12)
    index = _index(profiles)
    index.save(tmp_path / "index")
    loaded = LibraryIndex.load(tmp_path / "index")
    assert loaded.ids == index.ids and loaded.settings == index.settings
    assert_allclose(loaded.fine, index.fine)
    assert_allclose(loaded.coarse, index.coarse)
    query = profiles[[4, 7]]
    assert_allclose(loaded.search(query).score, index.search(query).score, rtol=1e-5)
    (tmp_path / "index" / "library.csv").write_text("id\ne0\n")
    with pytest.raises(InputError, match="partial copy"):
        LibraryIndex.load(tmp_path / "index")
    with pytest.raises(InputError, match="xrdid index"):
        LibraryIndex.load(tmp_path / "nothing")


def test_rows_of_the_wrong_length_are_refused() -> None:
    _, _, profiles = _library(4, 5)
    with pytest.raises(ValueError, match="2125 points"):
        _index(profiles).search(np.ones((1, 100)))
    with pytest.raises(ValueError, match=r"shape \(2125,\)"):  # one row, not 2125 patterns of one point
        _index(profiles).search(np.ones(2125))


def test_candidate_probabilities_sum_to_one() -> None:
    p = candidate_probabilities(np.array([[0.9, 0.85, 0.2], [0.5, 0.5, 0.5]]), 0.05)
    assert_allclose(p.sum(axis=1), 1.0)
    assert_allclose(p[1], 1 / 3)
    assert p[0, 0] > p[0, 1] > p[0, 2]


def test_peak_evidence_follows_the_fitted_strain() -> None:
    """A peak 2 % of strain away from the reflection is unexplained unmoved, explained once moved."""
    grid = Grid(10.0, 80.0, 3501)
    refs = np.array([30.0, 50.0])
    ps = PatternSet(["a"], grid, np.zeros((1, grid.n_points), np.float32), np.array([0, 2]), refs, np.array([100.0, 80.0]),
                    np.array([[1, 0, 0], [1, 1, 0]]), np.array([6, 12]), np.array([2.97, 1.82]), {})
    row = render(_strained(refs, 0.02), np.array([100.0, 80.0]), grid, 0.08)
    row = row / row.max()
    assert not peak_evidence(row[None], None, grid, ps, [0])[0]["explained"]
    moved = peak_evidence(row[None], None, grid, ps, [0], strain=[0.02])[0]
    assert moved["explained"] and moved["peaks"][0]["reflection"]["d_spacing"] == pytest.approx(2.97 * 1.02, abs=1e-3)


# ---------------------------------------------------------------------- through the pipeline


def test_match_stage_scores_seen_and_unseen_entries(registered_pipeline: dict) -> None:
    metrics = json.loads((registered_pipeline["dir"] / "metrics_open.json").read_text())
    assert set(metrics["synthetic"]) == {"seen", "unseen"}
    for table in metrics["synthetic"].values():
        assert 0 <= table["top1"] <= table["top5"] <= 1 and table["n"] == 50
    calibration = metrics["calibration"]
    assert calibration["temperature"] > 0 and -1 <= calibration["min_score"] <= 1
    csv_lines = (registered_pipeline["dir"] / "plots_open" / "topk.csv").read_text().splitlines()
    assert csv_lines[0] == "set,method,k,accuracy" and len(csv_lines) == 1 + 2 * 5


def test_evaluate_scores_the_open_search_beside_the_classifier(registered_pipeline: dict) -> None:
    validation = registered_pipeline["metrics"]["validation"]
    assert {"cnn", "search_match", "open_library"} <= set(validation)
    assert 0 <= validation["open_library"]["top1"] <= validation["open_library"]["top5"] <= 1


def test_registered_open_model_predicts_from_the_registry(store: dict, tmp_path: Path, capsys) -> None:
    from _pipeline import scan_of

    registered = store["registered_open"]
    assert registered["name"].endswith("-open") and registered["version"] >= 1
    scan = scan_of(tmp_path, store, entry=2)
    assert main(["predict", str(scan), "--model", f"models:/{registered['name']}@champion", "--json", "--top", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ids = PatternSet.load(store["dir"] / "patterns").ids
    assert result["candidates"][0]["id"] == ids[2]
    assert {"id", "formula", "probability", "score", "strain"} <= set(result["candidates"][0])
    assert result["provenance"]["kind"] == "open"


def test_a_library_grows_without_retraining(store: dict, tmp_path: Path, capsys) -> None:
    """The open model ranks a new library (an entry it was never calibrated with) given by --library."""
    params = json.loads(json.dumps(__import__("yaml").safe_load(store["params"].read_text())))
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "nacl.cif", cifs / "NaCl_new.cif")
    for row in (store["dir"] / "library" / "cif").glob("*.cif"):
        shutil.copy(row, cifs / row.name)
    params["library"].update({"source": "folder", "folder": str(cifs), "select": "all"})
    grown = tmp_path / "grown"
    (tmp_path / "p.yaml").write_text(__import__("yaml").safe_dump(params))
    for step in (["library", "--out", f"{grown}/library"],
                 ["simulate", "--library", f"{grown}/library", "--out", f"{grown}/patterns"],
                 ["index", "--library", f"{grown}/library", "--patterns", f"{grown}/patterns", "--out", f"{grown}/index"]):
        assert main([step[0], "--params", str(tmp_path / "p.yaml"), "--no-progress", *step[1:]]) == 0
    patterns = PatternSet.load(grown / "patterns")
    new = patterns.ids.index("NaCl_new")
    scan = tmp_path / "nacl.xy"
    counts = np.random.default_rng(0).poisson(1000 * np.asarray(patterns.profiles[new]) + 40)
    np.savetxt(scan, np.column_stack([patterns.grid.values, counts]))
    model = store["dir"] / "models_open"
    capsys.readouterr()
    assert main(["predict", str(scan), "--model", str(model), "--library", str(grown), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["candidates"][0]["id"] == "NaCl_new"
    assert result["evidence"]["explained"] and result["in_library"] is True
    # the model's own library does not know it
    assert main(["predict", str(scan), "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["candidates"][0]["id"] != "NaCl_new"


def test_library_option_needs_an_open_model(store: dict, tmp_path: Path, capsys) -> None:
    from _pipeline import scan_of

    scan = scan_of(tmp_path, store)
    assert main(["predict", str(scan), "--model", f"models:/{store['registered']['name']}@champion",
                 "--library", str(store["dir"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs an open-library model" in err


def test_a_library_on_another_grid_is_refused(store: dict, tmp_path: Path) -> None:
    import yaml

    params = yaml.safe_load(store["params"].read_text())
    params["grid"].update({"two_theta_min": 5.0, "two_theta_max": 30.0, "n_points": 501})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(store["dir"] / "library", tmp_path / "data" / "library")
    assert main(["simulate", "--params", str(tmp_path / "p.yaml"), "--no-progress", "--library",
                 str(tmp_path / "data" / "library"), "--out", str(tmp_path / "data" / "patterns")]) == 0
    ident = OpenIdentifier.from_folder(store["dir"] / "models_open")
    with pytest.raises(InputError, match="re-run simulate with the model's grid"):
        ident.use_library(tmp_path / "data")


def test_for_library_uses_a_fresh_stored_index_and_rebuilds_a_stale_one(store: dict, caplog) -> None:
    import logging

    data = store["dir"]  # library/, patterns/ and index/ of the tiny pipeline
    stored = LibraryIndex.load(data / "index")
    same = LibraryIndex.for_library(data, stored.settings)
    assert_allclose(same.fine, stored.fine)
    with caplog.at_level(logging.INFO, logger="xrdid.identify.search"):
        other = LibraryIndex.for_library(data, SearchSettings(smooth=2.0))
    assert "stale" in caplog.text and other.settings.smooth == 2.0
    assert other.ids == stored.ids and not np.allclose(other.fine, stored.fine)


def test_the_chemistry_filter_ranks_only_the_entries_of_those_elements() -> None:
    """A chemist who knows the elements: the search ranks the entries made of them, conditioned on them."""
    import pandas as pd

    positions, heights, profiles = _library(4, 12)
    formulas = ["FeO", "Fe2O3", "MgO", "Al2O3", "SiO2", "CaCO3", "ZnO", "TiO2", "NiO", "CuO", "FeS2", "Fe3O4"]
    ps = PatternSet([f"e{i}" for i in range(12)], GRID, profiles.astype(np.float32), np.zeros(13, int),
                    *[np.zeros(0)] * 2, np.zeros((0, 3)), np.zeros(0), np.zeros(0), {"ids": 12})
    index = LibraryIndex.build(ps, pd.DataFrame({"id": ps.ids, "formula": formulas, "reduced_formula": formulas}))
    ident = OpenIdentifier(None, [], GRID, {}, 0.05, novelty=None)
    ident._attach(index, None)
    row = render(positions[1], heights[1], GRID, 0.15)[None]
    assert ident.restrict(["Fe", "O"]).identify(row, top=5)[0]["candidates"][0]["id"] == "e1"
    ranked = ident.identify(row, top=20)[0]["candidates"]
    assert {c["id"] for c in ranked} <= {"e0", "e1", "e11"}  # FeO, Fe2O3, Fe3O4: not FeS2, not the others
    assert sum(c["probability"] for c in ranked) == pytest.approx(1.0, abs=1e-5)
    # the right entry ruled out by the chemist: none of its elements' look-alikes of other chemistry come back
    others = ident.restrict(["Mg", "Zn", "O"]).identify(row, top=5)[0]["candidates"]
    assert {c["id"] for c in others} <= {"e2", "e6"}
    assert {c["id"] for c in ident.restrict(required=["S"]).identify(row, top=5)[0]["candidates"]} == {"e10"}
    with pytest.raises(InputError, match="no entry of the 12-entry library is made of Li, O only"):
        ident.restrict(["Li", "O"])
    ident.restrict()  # no filter: every entry again
    assert ident.allowed is None and len(ident.identify(row, top=20)[0]["candidates"]) == 12


def test_predict_takes_a_chemistry_filter(store: dict, tmp_path: Path, capsys) -> None:
    """``--elements`` and ``--require-elements`` for the classifier and the open model; a bad symbol is refused."""
    from _pipeline import scan_of

    from xrdid.data.library import read_index

    library = read_index(store["dir"] / "library").set_index("id")
    ids = PatternSet.load(store["dir"] / "patterns").ids
    scan = scan_of(tmp_path, store, entry=2)
    own = library.loc[ids[2], "elements"].split()
    other = next(e for e in sorted(set(" ".join(library["elements"]).split()) - set(own)))
    for model in (f"models:/{store['registered']['name']}@champion", str(store["dir"] / "models_open")):
        capsys.readouterr()
        assert main(["predict", str(scan), "--model", model, "--json", "--elements", ",".join(own)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["candidates"][0]["id"] == ids[2]
        assert all(set(library.loc[c["id"], "elements"].split()) <= set(own) for c in result["candidates"])
        assert main(["predict", str(scan), "--model", model, "--json", "--require-elements", other]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert all(other in library.loc[c["id"], "elements"].split() for c in result["candidates"])
        assert result["candidates"][0]["id"] != ids[2]
        assert main(["predict", str(scan), "--model", model, "--elements", ",".join(own)]) == 0
        header = capsys.readouterr().out.splitlines()[0]
        assert re.search(r"\(\d+ of \d+ library entries pass the chemistry filter\)", header), header
        assert main(["predict", str(scan), "--model", model, "--elements", "Fe,Qq"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--elements: Qq is not an element symbol" in err
