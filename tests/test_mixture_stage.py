"""The mixture stage, and mixtures through the registry, the served model and the report (the tiny pipeline)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from xrdid.cli import main
from xrdid.data.library import read_index
from xrdid.data.patterns import PatternSet


def _mixture_scan(folder: Path, store: dict, entries: tuple[int, ...], name: str) -> Path:
    """A two-column scan of the tiny library's ``entries`` in equal parts, with counts and a background."""
    patterns = PatternSet.load(store["dir"] / "patterns")
    profile = sum(np.asarray(patterns.profiles[e], np.float64) for e in entries)
    counts = np.random.default_rng(len(entries)).poisson(1000 * profile / profile.max() + 50)
    path = folder / name
    np.savetxt(path, np.column_stack([patterns.grid.values, counts]))
    return path


def test_the_stage_writes_calibration_scores_and_scattering_powers(registered_pipeline: dict) -> None:
    d = registered_pipeline["dir"]
    spec = json.loads((d / "mixture" / "mixture.json").read_text())
    ids = PatternSet.load(d / "patterns").ids
    assert set(spec["intensity_per_mass"]) == set(ids) and min(spec["intensity_per_mass"].values()) > 0
    assert spec["settings"]["max_phases"] == 4
    if spec["calibration"] is not None:  # fitted when the calibration share held right and wrong phases
        assert np.all(np.diff(spec["calibration"]["probability"]) >= 0)
    metrics = json.loads((d / "metrics_mixture.json").read_text())
    synthetic = metrics["synthetic"]
    assert synthetic["n"] == 3 and synthetic["calibration_samples"] == 3  # 6 augmented mixtures, half each
    assert 0 <= synthetic["recall"] <= 1 and 0 <= synthetic["precision"] <= 1
    assert (d / "plots_mixture").is_dir()


def test_measured_mixtures_are_scored_per_scan_and_a_bad_file_is_reported(registered_pipeline: dict,
                                                                          tmp_path: Path) -> None:
    d = registered_pipeline["dir"]
    formulas = dict(zip(read_index(d / "library")["id"].astype(str), read_index(d / "library")["reduced_formula"]))
    ids = PatternSet.load(d / "patterns").ids
    rows = [{"pattern": _mixture_scan(tmp_path, registered_pipeline, (0, 1), "a.xy").name,
             "phases": f"{formulas[ids[0]]};{formulas[ids[1]]}", "scan": "long"},
            {"pattern": _mixture_scan(tmp_path, registered_pipeline, (2,), "b.xy").name,
             "phases": formulas[ids[2]], "scan": "long"},
            {"pattern": "missing.xy", "phases": formulas[ids[3]], "scan": "short"}]
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["pattern", "phases", "scan"])
        writer.writeheader()
        writer.writerows(rows)
    params = yaml.safe_load(registered_pipeline["params"].read_text())
    # the library's entry of the second formula taken for another polymorph than the scanned one
    params["mixture"]["measured"] = {"labels": str(tmp_path / "labels.csv"), "unmatched": [formulas[ids[1]]]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert main(["mixture", "--params", str(tmp_path / "p.yaml"), "--library", f"{d}/library", "--patterns",
                 f"{d}/patterns", "--augmented", str(tmp_path / "none"), "--out", str(tmp_path / "mixture"),
                 "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots"), "--no-progress"]) == 0
    measured = json.loads((tmp_path / "m.json").read_text())["measured"]
    assert measured["long"]["n"] == 2 and "short" not in measured
    assert len(measured["unreadable"]) == 1 and measured["unreadable"][0].startswith("missing.xy")
    assert measured["long"]["recall"] >= 0.5  # noiseless library profiles: at least the pure one is found
    # scored again with the unmatched formula counted as absent: finding it is now a wrong phase
    assert measured["long_matchable"]["n"] == 2 and "short_matchable" not in measured
    assert measured["long_matchable"]["precision"] <= measured["long"]["precision"]
    # again with the chemistry filter of the rows' elements: never a phase of other elements
    assert measured["long_elements"]["n"] == 2 and measured["long_elements"]["precision"] == 1.0
    assert (tmp_path / "plots" / "phases.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "mixture" / "mixture.json").read_text())["calibration"] is None

    # single-phase test sets (RRUFF's labels: pattern, cif): the expected phase is the CIF's formula
    (tmp_path / "single.csv").write_text(f"pattern,cif\nb.xy,cif/{ids[2]}.cif\n")
    params["mixture"]["measured"] = {"labels": str(tmp_path / "single.csv")}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert main(["mixture", "--params", str(tmp_path / "p.yaml"), "--library", f"{d}/library", "--patterns",
                 f"{d}/patterns", "--augmented", str(tmp_path / "none"), "--out", str(tmp_path / "mixture"),
                 "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots"), "--no-progress"]) == 0
    single = json.loads((tmp_path / "m.json").read_text())["measured"]
    assert "all_matchable" not in single  # nothing unmatched
    single = single["all"]
    assert single["n"] == 1 and single["recall"] == 1.0  # a noiseless pure pattern: its own formula


def test_the_registered_open_model_carries_the_mixture_spec_and_serves_phases(store: dict, tmp_path: Path) -> None:
    import mlflow

    from xrdid.ops.registry import pull

    uri = f"models:/{store['registered_open']['name']}@champion"
    folder = pull(uri, tmp_path / "pulled")
    assert (Path(folder) / "mixture.json").is_file()
    patterns = PatternSet.load(store["dir"] / "patterns")
    x = np.asarray(patterns.profiles[0], np.float32) + np.asarray(patterns.profiles[1], np.float32)
    model = mlflow.pyfunc.load_model(uri)
    answers = model.predict(x[None] / x.max(), params={"mixture": True, "max_phases": 3})
    assert "phases" in answers[0] and 0 <= answers[0]["residual_share"] <= 1
    assert {p["id"] for p in answers[0]["phases"]} <= set(patterns.ids) and len(answers[0]["phases"]) <= 3
    assert "phases" not in model.predict(x[None] / x.max())[0]
    with pytest.raises(Exception, match="--max-phases: must be an integer of at least 1"):
        model.predict(x[None] / x.max(), params={"mixture": True, "max_phases": 0})
    # the chemistry filter per request: answers and phases among the entries of those elements only
    whole = model.predict(x[None] / x.max(), params={"top": 50})
    elements = read_index(store["dir"] / "library").set_index("id")["elements"]
    known = " ".join(elements[patterns.ids[0]].split() + elements[patterns.ids[1]].split())
    answer = model.predict(x[None] / x.max(), params={"mixture": True, "elements": known})[0]
    allowed = {i for i in patterns.ids if set(elements[i].split()) <= set(known.split())}
    assert {c["id"] for c in answer["candidates"]} <= allowed and {p["id"] for p in answer["phases"]} <= allowed
    with pytest.raises(Exception, match="elements: Qq is not an element symbol"):
        model.predict(x[None] / x.max(), params={"elements": "Qq"})
    assert model.predict(x[None] / x.max(), params={"top": 50}) == whole  # the next request: the whole library


def test_predict_report_shows_the_phases_and_their_stacked_plot(store: dict, tmp_path: Path) -> None:
    scan = _mixture_scan(tmp_path, store, (0, 1), "mix.xy")
    report = tmp_path / "report.html"
    uri = f"models:/{store['registered_open']['name']}@champion"
    assert main(["predict", str(scan), "--model", uri, "--mixture", "--report", str(report), "--no-progress"]) == 0
    page = report.read_text()
    assert "<h3>Phases</h3>" in page and "of the signal unexplained by these phases" in page
    plots = sorted((tmp_path / "report").glob("*_phases.png"))
    assert len(plots) == 1 and plots[0].read_bytes()[:4] == b"\x89PNG" and plots[0].name in page
