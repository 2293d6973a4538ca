"""Reading measured patterns (xrdid.measured): formats, wavelengths, resampling, bad input, `xrdid read`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from xrdid.cli import main
from xrdid.config import Grid
from xrdid.errors import InputError
from xrdid.xrd.measured import Pattern, wavelength_angstrom

DATA = Path(__file__).parent / "data" / "measured"
CO_KA1, CU_KA1, CU_KA = 1.78896, 1.54056, 1.54184


def _two_theta(d: float, wavelength: float) -> float:
    return float(np.degrees(2 * np.arcsin(wavelength / (2 * d))))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("CuKa", CU_KA), ("CuKa1", CU_KA1), ("Co-Ka1", CO_KA1), ("co_kα1", CO_KA1), ("Cu K-alpha1", CU_KA1),
     ("MoKa", 0.71073), ("Cu", CU_KA), ("CuKb", 1.39222), (1.5, 1.5), ("0.7093", 0.7093)],
)
def test_wavelength_names_and_numbers(value: str | float, expected: float) -> None:
    assert wavelength_angstrom(value) == pytest.approx(expected)


@pytest.mark.parametrize(("value", "match"), [("XyKa", "unknown wavelength"), (-1.0, "invalid wavelength"),
                                              ("nan", "invalid wavelength")])
def test_bad_wavelength(value: str | float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wavelength_angstrom(value)


def test_rruff_pattern(shared_data: Path) -> None:
    path = shared_data / "rruff304" / "patterns" / "Al2O3_167.xy"
    pattern = Pattern.read(path)
    assert pattern.wavelength is None and pattern.source == path
    assert pattern.two_theta.size == 8501
    assert_allclose(pattern.two_theta[[0, -1]], [5.0, 90.0])
    assert_allclose(np.diff(pattern.two_theta), 0.01, atol=1e-6)
    assert (pattern.intensity >= 0).all() and pattern.intensity.max() > 100
    cu = Pattern.read(path, wavelength="CuKa")
    assert cu.wavelength == pytest.approx(CU_KA) and cu.wavelength_from == "parameter"


def test_mocof1_wavelength_from_file_name(shared_data: Path) -> None:
    path = next((shared_data / "noise" / "mocof1").glob("*_Co-Ka1_*.xyd"))
    pattern = Pattern.read(path, wavelength="CuKa")  # the name's Co Kα1 wins over the fallback
    assert pattern.wavelength == pytest.approx(CO_KA1) and pattern.wavelength_from == "name"
    assert pattern.two_theta[0] == pytest.approx(1.5)
    assert_allclose(np.median(np.diff(pattern.two_theta)), 0.015, atol=1e-6)


def test_d8_background_scan(shared_data: Path) -> None:
    pattern = Pattern.read(shared_data / "noise" / "d8" / "RMS-D8-ADS-15-LynxEyeXE-bkgr.xy", wavelength=CU_KA)
    assert pattern.two_theta.size == 9633 and pattern.wavelength == CU_KA
    values, mask = pattern.to_grid(Grid(2.0, 50.0, 4801), CU_KA)
    assert mask.all() and np.isfinite(values).all()


def test_xrdml_through_fairmat_reader() -> None:
    pattern = Pattern.read(DATA / "co_peak.xrdml", wavelength="CuKa")
    assert pattern.wavelength_from == "file"
    assert pattern.wavelength == pytest.approx((1.78901 + 0.5 * 1.79285) / 1.5)  # weighted Kα1/Kα2
    assert pattern.two_theta.size == 101
    assert pattern.two_theta[np.argmax(pattern.intensity)] == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("name", "content", "wavelength"),
    [
        ("a.csv", "2theta,intensity\n10.0,1\n10.5,5\n11.0,2\n", None),
        ("a.xye", "# x y esd\n10.0 1 0.1\n10.5 5 0.2\n11.0 2 0.1\n", None),
        ("a.DAT", ";Rigaku MiniFlex\n;WAVELENGTH=1.54056\n10.0  1\n10.5  5\n11.0  2\n", CU_KA1),
        ("a.txt", "wavelength: 1.5406\n10.0\t1\n10.5\t5\n11.0\t2\n", 1.5406),
        ("a.dat", "; Co Ka1 radiation\n10,0;1\n10,5;5\n11,0;2\n", CO_KA1),
        ("b_Cu-Ka1.xy", "10.0 1\n10.5 5\n11.0 2\n", CU_KA1),
    ],
)
def test_text_variants(tmp_path: Path, name: str, content: str, wavelength: float | None) -> None:
    path = tmp_path / name
    path.write_text(content)
    pattern = Pattern.read(path)
    assert_allclose(pattern.two_theta, [10.0, 10.5, 11.0])
    assert_allclose(pattern.intensity, [1.0, 5.0, 2.0])
    assert pattern.wavelength == (None if wavelength is None else pytest.approx(wavelength))


BAD_FILES = [
    ("empty.xy", "", "empty file"),
    ("one.xy", "10\n11\n12\n", "only one column"),
    ("text.xy", "two theta, intensity\n", "no numeric data"),
    ("nan.xy", "10 1\n11 nan\n12 3\n", "NaN"),
    ("neg.xy", "10 1\n11 -4\n12 3\n", "negative intensities"),
    ("down.xy", "12 1\n11 2\n10 3\n", "2θ not increasing"),
    ("single.xy", "10 1\n", "only 1 data point"),
    ("pattern.foo", "10 1\n11 2\n", "unknown format '.foo'"),
    ("broken.xrdml", "<xrdMeasurements>", "cannot parse .xrdml"),
]


@pytest.mark.parametrize(("name", "content", "match"), BAD_FILES)
def test_bad_files_raise_input_error(tmp_path: Path, name: str, content: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        Pattern.read(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize(("name", "content", "match"), BAD_FILES[:4])
def test_cli_bad_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                           content: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert main(["read", str(path), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("xrdid: error:") and str(path) in err and match in err


def test_missing_file_and_bad_wavelength(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read", str(tmp_path / "absent.xy")]) == 2
    assert "absent.xy: file not found" in capsys.readouterr().err
    path = tmp_path / "ok.xy"
    path.write_text("10 1\n11 2\n")
    assert main(["read", str(path), "--wavelength", "XyKa"]) == 2
    assert "unknown wavelength" in capsys.readouterr().err


def test_no_overlap_with_grid(tmp_path: Path) -> None:
    path = tmp_path / "high.xy"
    path.write_text("60 1\n61 2\n62 3\n")
    with pytest.raises(InputError, match="no overlap with the grid"):
        Pattern.read(path, "CuKa").to_grid(Grid(2.0, 50.0, 4801), "CuKa")
    with pytest.raises(InputError, match="wavelength unknown"):
        Pattern.read(path).to_grid(Grid(2.0, 50.0, 4801), "CuKa")


def test_co_peak_lands_at_cu_angle_of_same_d() -> None:
    d = 3.0
    x = np.arange(10.0, 60.0, 0.02)
    peak_co = _two_theta(d, CO_KA1)
    pattern = Pattern(x, np.exp(-0.5 * ((x - peak_co) / 0.05) ** 2), wavelength=CO_KA1)
    grid = Grid(5.0, 50.0, 4501)
    values, mask = pattern.to_grid(grid, "CuKa1")
    assert grid.values[np.argmax(values)] == pytest.approx(_two_theta(d, CU_KA1), abs=grid.step)
    assert abs(peak_co - _two_theta(d, CU_KA1)) > 4  # the conversion really moved it
    # Co 10–60° reaches Cu 8.6–50.9°: the grid below 8.6° is uncovered.
    assert not mask[grid.values < 8.5].any() and mask[grid.values > 8.7].all()


def test_to_grid_identity_interpolation_and_edges() -> None:
    x = np.linspace(10.0, 20.0, 101)  # 0.1° step
    y = np.sin(x) + 2
    grid = Grid(5.0, 25.0, 401)  # 0.05° step: coarser scan → linear interpolation
    values, mask = Pattern(x, y, wavelength=CU_KA).to_grid(grid, CU_KA)
    g = grid.values
    assert_allclose(mask, (g >= 10) & (g <= 20))
    assert_allclose(values[mask], np.interp(g[mask], x, y))
    assert_allclose(values[g < 10], y[0])  # edges: nearest covered value
    assert_allclose(values[g > 20], y[-1])


def test_to_grid_bin_mean_when_scan_is_finer() -> None:
    x = np.linspace(10.0, 20.0, 10001)  # 0.001° step, grid 0.1°: averaged, not point-sampled
    y = np.where(np.arange(x.size) % 2 == 0, 0.0, 2.0)  # alternating points, mean 1
    values, mask = Pattern(x, y, wavelength=CU_KA).to_grid(Grid(10.5, 19.5, 91), CU_KA)
    assert mask.all()
    assert_allclose(values, 1.0, atol=0.02)
    smooth = 3 + np.cos(x)
    values, _ = Pattern(x, smooth, wavelength=CU_KA).to_grid(Grid(10.5, 19.5, 91), CU_KA)
    g = Grid(10.5, 19.5, 91).values
    exact = 3 + (np.sin(g + 0.05) - np.sin(g - 0.05)) / 0.1  # analytic bin mean
    assert_allclose(values, exact, atol=1e-6)


def test_interior_gap_is_masked() -> None:
    x = np.concatenate([np.arange(10.0, 15.0, 0.01), np.arange(17.0, 20.0, 0.01)])
    values, mask = Pattern(x, np.ones_like(x), wavelength=CU_KA).to_grid(Grid(10.0, 19.9, 100), CU_KA)
    g = Grid(10.0, 19.9, 100).values
    assert not mask[(g > 15.05) & (g < 16.95)].any() and mask[g < 14.9].all()
    assert_allclose(values, 1.0)


def test_normalized() -> None:
    pattern = Pattern(np.array([1.0, 2.0, 3.0]), np.array([2.0, 8.0, 4.0]), wavelength=CU_KA)
    assert_allclose(pattern.normalized().intensity, [0.25, 1.0, 0.5])
    assert pattern.normalized().wavelength == CU_KA
    with pytest.raises(InputError, match="all intensities are zero"):
        Pattern(np.array([1.0, 2.0]), np.zeros(2)).normalized()


def test_cli_read_json_contract(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "rruff304" / "patterns" / "Al2O3_167.xy"
    assert main(["read", str(path), "--json", "--wavelength", "CuKa"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"file", "two_theta", "intensity", "wavelength"} <= set(out)
    assert len(out["two_theta"]) == len(out["intensity"]) == 8501 and out["wavelength"] == pytest.approx(CU_KA)
    assert main(["read", str(path)]) == 0
    summary = capsys.readouterr().out
    assert "8501 points" in summary and "5.000–90.000°" in summary and "wavelength unknown" in summary


def test_cli_read_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("grid: {two_theta_min: 2.0, two_theta_max: 50.0, n_points: 4801, wavelength: CuKa}\n")
    assert main(["read", str(DATA / "co_peak.xrdml"), "--grid", "--json", "--params", str(params)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["intensity"]) == len(out["covered"]) == 4801 and out["wavelength"] == pytest.approx(CU_KA)
    peak = out["two_theta"][int(np.argmax(out["intensity"]))]
    d = (1.78901 + 0.5 * 1.79285) / 1.5 / (2 * np.sin(np.radians(12.5)))
    assert peak == pytest.approx(_two_theta(d, CU_KA), abs=0.02)
