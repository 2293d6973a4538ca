"""What a chemist sees from `xrdid predict` (issue 18): names, formulas, probabilities, reasons, messages, progress, CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _pipeline import scan_of

from xrdid.cli import main
from xrdid.cli.predict import CSV_FIELDS, _answer
from xrdid.identify.explain import html_report
from xrdid.identify.names import (
    display_names,
    format_probability,
    display_formula,
    short_id,
    wavelength_label,
)
from xrdid.ops.registry import load_identifier

CHAMPION = "models:/xrdid-default@champion"
SUFFIXES = ("_clean", "_SL", "_charged", "_freeONLY", "_manual", "_ion_b", "_auto", "_neutral")


def _blank(folder: Path, store: dict) -> Path:
    """An empty-holder scan: a broad air-scatter hump and counting noise, no Bragg peak."""
    from xrdid.data.patterns import PatternSet

    x = PatternSet.load(store["dir"] / "patterns").grid.values
    counts = np.random.default_rng(7).poisson(200 + 800 * np.exp(-(((x - x[0]) / 8) ** 2)))
    path = folder / "blank.xy"
    np.savetxt(path, np.column_stack([x, counts]))
    return path


def _library(store: dict) -> dict[str, dict[str, str]]:
    with open(store["dir"] / "library" / "index.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


# ---------------------------------------------------------------------- names and numbers (no model)


def test_core_mof_suffixes_are_stripped_without_merging_entries() -> None:
    """Every CoRE MOF id carries one curation suffix; without it no two ids of a dataset coincide."""
    from xrdid.data.library import core_mof_ids

    for dataset in ("2014", "2019-ASR", "2019-FSR"):
        ids = core_mof_ids(dataset)
        shorts = [short_id(i) for i in ids]
        assert all(not s.endswith(SUFFIXES) for s in shorts), dataset
        assert len(set(shorts)) == len(ids), dataset
    assert short_id("RUBTAK01_SL") == "RUBTAK01" and short_id("Al2O3_167") == "Al2O3_167"  # RRUFF ids kept


def test_display_names_prefer_reduced_formula_and_keep_ambiguous_ids() -> None:
    names = display_names([
        {"id": "CDSE_clean", "formula": "Cd256C784Se112S304", "reduced_formula": "Cd16C49Se7S19"},
        {"id": "X_clean", "formula": "Cu4"}, {"id": "X_charged", "formula": "Cu4"},
        {"id": "Al2O3_167", "formula": "Al12O18", "reduced_formula": "Al2O3", "mineral": "corundum"},
    ])  # fmt: skip
    assert names["CDSE_clean"].label() == "CDSE (C49Cd16S19Se7)"  # Hill order: C, H, then alphabetical
    assert names["X_clean"].name == "X_clean" and names["X_charged"].name == "X_charged"  # "X" would be both
    assert names["Al2O3_167"].label() == "Al2O3_167 corundum (Al2O3)"


@pytest.mark.parametrize(("p", "text"), [(1.0, "> 0.99"), (0.9996, "> 0.99"), (0.995, "0.995"), (0.5, "0.500"),
                                         (0.0004, "< 0.001"), (0.0, "< 0.001")])
def test_probabilities_never_read_as_certain(p: float, text: str) -> None:
    assert format_probability(p) == text


def test_wavelength_label() -> None:
    assert wavelength_label("CuKa") == "CuKa (1.5418 Å)" and wavelength_label(0.7093) == "0.7093 Å"


def test_terminal_answer_gives_the_reason_of_a_flag_and_notes() -> None:
    names = display_names([{"id": "RUBTAK01_SL", "formula": "Zr24C192H112O128", "reduced_formula": "Zr3C24H14O16"},
                           {"id": "ABAVIJ_clean", "formula": "Zn4C32", "reduced_formula": "ZnC8"}])
    candidates = [{"id": "RUBTAK01_SL", "formula": "Zr24C192H112O128", "probability": 0.9996},
                  {"id": "ABAVIJ_clean", "formula": "Zn4C32", "probability": 0.0004}]
    ok = _answer({"file": "a.xy", "candidates": candidates, "in_library": True, "warnings": []}, names)
    assert ok == "a.xy: RUBTAK01 (C24H14O16Zr3) > 0.99 | ABAVIJ (C8Zn) < 0.001"
    flagged = _answer({"file": "a.xy", "candidates": candidates, "in_library": False,
                       "warnings": ["low confidence (top probability 0.12 < 0.45)", "little diffraction signal"]}, names)
    first, why = flagged.split("\n")
    assert first.endswith("  [not in library?]")
    assert why == "  why: low confidence (top probability 0.12 < 0.45); little diffraction signal"
    noted = _answer({"file": "a.xy", "candidates": candidates, "in_library": True,
                     "warnings": ["the scan covers only 30% of the model's 2-50° range"]}, names)
    assert noted.split("\n")[1] == "  note: the scan covers only 30% of the model's 2-50° range"


def test_report_shows_names_reduced_formulas_and_no_false_certainty(tmp_path: Path) -> None:
    names = display_names([{"id": "RUBTAK01_SL", "formula": "Zr24C192H112O128", "reduced_formula": "Zr3C24H14O16"}])
    entry = {"file": "a.xy", "candidates": [{"id": "RUBTAK01_SL", "formula": "Zr24C192H112O128", "probability": 1.0}]}
    html = html_report([entry], tmp_path / "r.html", meta={"conditions": "2θ 2–50° at CuKa (1.5418 Å)"},
                       names=names).read_text()
    assert "1.000" not in html and html.count("&gt; 0.99") == 2  # summary table and the file's table
    assert '<td title="RUBTAK01_SL">RUBTAK01<' in html and "C24H14O16Zr3" in html
    assert "Zr24C192H112O128" not in html and "CuKa (1.5418 Å)" in html


# ---------------------------------------------------------------------- the command on a registered model


def test_one_file_prints_header_names_and_the_reason_of_its_flag(store: dict, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blank = _blank(tmp_path, store)
    assert main(["predict", str(blank), "--model", CHAMPION, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["in_library"] is False and found["warnings"]
    assert main(["predict", str(blank), "--model", CHAMPION]) == 0
    out, err = capsys.readouterr()
    header, answer, why = out.splitlines()
    assert header.startswith("model xrdid-default v1 (4 library entries) · 2θ 5–40° at CuKa (1.5418 Å)"), header
    assert answer.startswith(f"{blank}: ") and answer.endswith("  [not in library?]")
    assert why == "  why: " + "; ".join(found["warnings"])
    library = _library(store)
    for candidate in found["candidates"][:3]:  # shown as short id and reduced formula
        row = library[candidate["id"]]
        assert f"{short_id(row['id'])} ({display_formula(row['reduced_formula'])})" in answer
        assert row["id"] not in answer or short_id(row["id"]) == row["id"]
    assert not err  # one file: no progress bar


def test_json_keeps_full_ids_unit_cell_formulas_and_floats(store: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The contract is unchanged, and stdout/stderr stay JSON/errors only even with --csv and --report."""
    assert main(["predict", str(scan_of(tmp_path, store)), "--model", CHAMPION, "--json", "--no-progress",
                 "--csv", str(tmp_path / "s.csv"), "--report", str(tmp_path / "r.html")]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # one line, nothing else
    library = _library(store)
    assert all(library[c["id"]]["formula"] == c["formula"] for c in result["candidates"])
    assert all(c["id"].endswith(SUFFIXES) for c in result["candidates"])  # the tiny library is CoRE MOF
    assert all(isinstance(c["probability"], float) for c in result["candidates"])
    assert err == ""


def test_batch_says_where_it_wrote_and_the_csv_has_top_ids(store: dict, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    for entry in (0, 1):
        scan_of(folder, store, entry)
    _blank(folder, store)
    (folder / "broken.xy").write_text("2theta counts\n10 nan\n")
    summary, report = tmp_path / "summary.csv", tmp_path / "report.html"
    assert main(["predict", str(folder), "--model", CHAMPION, "--no-progress", "--top", "3",
                 "--csv", str(summary), "--report", str(report)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("xrdid: error: ") and err.count("\n") == 1

    raw = summary.read_bytes()
    assert b"\r" not in raw and raw.count(b"\n") == 5  # LF only: header and 4 rows
    rows = list(csv.DictReader(raw.decode().splitlines()))
    assert tuple(rows[0]) == CSV_FIELDS
    by_name = {Path(r["file"]).name: r for r in rows}
    library = _library(store)
    for name in ("scan0.xy", "scan1.xy", "blank.xy"):
        row = by_name[name]
        top = row["top_ids"].split(";")
        assert len(top) == 3 and top[0] == row["id"] and all(t in library for t in top)
        assert row["name"] == short_id(row["id"]) and row["formula"] == display_formula(library[row["id"]]["reduced_formula"])
        assert 0 < float(row["probability"]) <= 1
    assert by_name["blank.xy"]["in_library"] == "false" and by_name["blank.xy"]["warnings"]
    assert {by_name["scan0.xy"]["in_library"], by_name["scan1.xy"]["in_library"]} <= {"true", "false"}
    assert by_name["broken.xy"]["error"] and not by_name["broken.xy"]["id"] and not by_name["broken.xy"]["in_library"]
    flagged = sum(r["in_library"] == "false" for r in rows)
    lines = out.splitlines()
    assert lines[-2] == f"CSV written to {summary}"
    assert lines[-1] == (f"report written to {report} (4 files, {flagged} flagged, 1 failed); "
                         f"its plots in {tmp_path / 'report'}")
    html = report.read_text()
    assert f"{flagged} of 4 files not in the library?" in html and "1.000" not in html


def test_progress_counts_files_while_reading_and_while_plotting(store: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar used to count ranking batches (0 -> 1 batch at once) and stood still over the plots."""
    import tqdm

    steps: list[tuple[str, float]] = []
    update = tqdm.tqdm.update

    def record(self: tqdm.tqdm, n: float = 1) -> bool | None:
        steps.append((getattr(self, "desc", ""), n))  # a disabled bar has no desc
        return update(self, n)

    monkeypatch.setattr(tqdm.tqdm, "update", record)
    files = [str(scan_of(tmp_path, store, entry)) for entry in range(3)]
    assert main(["predict", *files, "--model", CHAMPION, "--explain", str(tmp_path / "png")]) == 0
    out, err = capsys.readouterr()
    assert [s for s in steps if s[0] == "identify"] == [("identify", 1)] * 3
    assert [s for s in steps if s[0] == "explain"] == [("explain", 1)] * 3
    assert "identify: 100%" in err and "explain: 100%" in err and "3/3" in err
    assert out.splitlines()[-1] == f"explanations written to {tmp_path / 'png'} (3 plots)"
    steps.clear()
    assert main(["predict", *files, "--model", CHAMPION, "--explain", str(tmp_path / "png"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_the_first_champion_says_so(store: dict) -> None:
    """v1 used to carry champion_decision "no champion yet" while it held the alias."""
    from mlflow import MlflowClient

    version = MlflowClient(tracking_uri=store["uri"]).get_model_version_by_alias("xrdid-default", "champion")
    assert int(version.version) == 1
    assert version.tags["champion_decision"] == "first version: champion by default"
    assert load_identifier(CHAMPION).provenance["model_version"] == "1"
