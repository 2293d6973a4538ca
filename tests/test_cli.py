"""The `xrdid` command line: contracts other tools rely on, and exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xrdid.cli import main

DATA = Path(__file__).parent / "data"


def test_pattern_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pattern", str(DATA / "nacl.cif"), "--json", "--min", "20", "--max", "60"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [sorted(r) for r in records][0] == ["d_spacing", "hkl", "intensity", "multiplicity", "two_theta"]
    assert max(r["intensity"] for r in records) == 100
    strongest = max(records, key=lambda r: r["intensity"])
    assert strongest["hkl"] == [2, 0, 0] and strongest["multiplicity"] == 6
    assert all(20 <= r["two_theta"] <= 60 for r in records)


def test_pattern_wavelength_option(capsys: pytest.CaptureFixture[str]) -> None:
    main(["pattern", str(DATA / "nacl.cif"), "--json", "--wavelength", "MoKa"])
    mo = json.loads(capsys.readouterr().out)
    main(["pattern", str(DATA / "nacl.cif"), "--json"])
    cu = json.loads(capsys.readouterr().out)
    assert min(r["two_theta"] for r in mo) < min(r["two_theta"] for r in cu)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty file"), ("garbage\n", "not a CIF"), ((DATA / "nacl.cif").read_text()[:300], "parse error")],
)
def test_bad_cif_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                       message: str) -> None:
    path = tmp_path / "bad.cif"
    path.write_text(content)
    assert main(["pattern", str(path), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and message in err


def test_missing_file_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pattern", str(tmp_path / "absent.cif")]) == 2
    assert "absent.cif: cannot read file" in capsys.readouterr().err
    assert main(["pattern", str(DATA / "nacl.cif"), "--wavelength", "XyKa"]) == 2
    assert "unknown wavelength" in capsys.readouterr().err
    assert main(["library", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "parameter file not found" in capsys.readouterr().err


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "xrdid", "pattern", str(DATA / "nacl.cif")],
                         capture_output=True, text=True, check=True).stdout
    assert "reflections" in out and "(2, 0, 0)" in out
