"""Reading measured patterns (xrdid.measured): formats, wavelengths, resampling, bad input, `xrdid read`."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import struct
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
    path = shared_data / "rruff236" / "patterns" / "Al2O3_167.xy"
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
    ("down.xy", "12 1\n11 2\n10 3\n", "2θ decreases throughout"),
    ("back.xy", "10 1\n12 2\n11 3\n", "2θ not increasing at line 3"),
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
    path = shared_data / "rruff236" / "patterns" / "Al2O3_167.xy"
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


# ---------------------------------------------------------------- hostile input (issue 17)

GOOD_ROWS = "".join(f"{20 + 0.25 * i:.2f} {100 + i}\n" for i in range(20))


def _unreadable(tmp_path: Path) -> Path:
    path = tmp_path / "unreadable.xy"
    path.write_text(GOOD_ROWS)
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: (d / "folder.xy").mkdir() or d / "folder.xy", "is a directory"),
        (lambda d: os.symlink(d / "loop.xy", d / "loop.xy") or d / "loop.xy", "symlink loop"),
        (lambda d: os.symlink(d / "gone.xy", d / "dangling.xy") or d / "dangling.xy", "broken symbolic link"),
        (lambda d: os.mkfifo(d / "pipe.xy") or d / "pipe.xy", "not a regular file"),
        (lambda d: d / "absent.xy", "file not found"),
    ],
    ids=["directory", "symlink_loop", "dangling_symlink", "fifo", "missing"],
)
def test_unreadable_paths_name_the_real_reason(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=match) as info:
        Pattern.read(path)
    assert "empty file" not in str(info.value) and info.value.path == str(path)


@pytest.mark.parametrize("suffix", [".xy", ".xrdml"])
def test_permission_denied_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Any OSError while reading (here EACCES, as a root test runner cannot be denied) becomes its reason."""
    path = tmp_path / f"locked{suffix}"
    path.write_text(GOOD_ROWS)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("xrdid.xrd.measured.open", denied, raising=False)
    with pytest.raises(InputError, match="permission denied"):
        Pattern.read(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_for_real(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _unreadable(tmp_path)
    path.chmod(0)
    assert main(["read", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"xrdid: error: {path}: permission denied"


@pytest.mark.parametrize(
    ("encoded", "name"),
    [
        (b"\xef\xbb\xbf" + GOOD_ROWS.encode(), "utf8_bom.xy"),
        (GOOD_ROWS.encode("utf-16"), "utf16_bom.xy"),
        (GOOD_ROWS.encode("utf-16-be"), "utf16be_no_bom.xy"),
        (GOOD_ROWS.encode("utf-32"), "utf32_bom.xy"),
        (GOOD_ROWS.replace("\n", "\r\n").encode(), "crlf.xy"),
    ],
)
def test_encodings_keep_every_point(tmp_path: Path, encoded: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(encoded)
    pattern = Pattern.read(path)
    assert pattern.two_theta.size == 20 and pattern.two_theta[0] == 20.0 and pattern.intensity[0] == 100


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("10 1\n11 2\nabc 3\n13 4\n", r"line 3: non-numeric row 'abc 3' inside the data"),
        ("10 1\n11 2\n12 x\n13 4\n", r"line 3: non-numeric field 'x' inside the data"),
        ("10 1\n11 2\n12 x\n", r"line 3: non-numeric field 'x'"),
        ("# head\n10 1\n11 2\n12", r"line 4: one value '12' .*truncated"),
        ("10 1\n11 1e309\n12 3\n", r"line 2: intensity '1e309' overflows a float"),
        ("10 1\n11 inf\n12 3\n", r"line 2: intensity 'inf' is NaN or infinite"),
        ("10 1\n11 1e308\n12 3\n", r"intensity 1e\+308 at line 2 is not a count"),
        ("10 1\n10 2\n11 3\n", r"2θ repeated at line 2"),
        ("<?xml version='1.0'?>\n<xrdMeasurements/>\n", "XML or HTML"),
        ("\x01\x02\x03\x04\x05 garbage \x06\x07\x08\x0e\x0f\n", "binary content"),
    ],
    ids=["text_row", "bad_field", "bad_last_field", "truncated", "overflow", "inf", "huge", "repeated", "xml", "control"],
)
def test_broken_text_is_refused_with_its_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "broken.xy"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        Pattern.read(path)


def test_header_comments_and_footer_stay_allowed(tmp_path: Path) -> None:
    path = tmp_path / "a.xy"
    path.write_text("Sample: quartz\n2theta intensity\n10 1\n# a comment between rows\n11 2\n12 3\n"
                    "# end\n[End of data]\nsaved by nobody\n")
    assert_allclose(Pattern.read(path).intensity, [1, 2, 3])


def test_decimal_comma_with_tabs_or_spaces(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("10,5\t1,5\n11,5\t2\n12,5   3,25\n")
    pattern = Pattern.read(path)
    assert_allclose(pattern.two_theta, [10.5, 11.5, 12.5])
    assert_allclose(pattern.intensity, [1.5, 2.0, 3.25])


def test_radians_are_refused_but_low_short_scans_are_not(tmp_path: Path) -> None:
    path = tmp_path / "rad.xy"
    x = np.radians(np.linspace(5, 90, 50))
    np.savetxt(path, np.column_stack([x, np.ones_like(x)]))
    with pytest.raises(InputError, match="radians"):
        Pattern.read(path)
    path.write_text("1 5\n2 6\n3 7\n")  # a few points: not enough to call it radians
    assert Pattern.read(path).two_theta.size == 3


def test_file_too_large_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("xrdid.xrd.measured._MAX_FILE_BYTES", 100)
    path = tmp_path / "big.xy"
    path.write_text(GOOD_ROWS)
    with pytest.raises(InputError, match="too large for a pattern file"):
        Pattern.read(path)


def _raw4(points: int, stored: int) -> bytes:
    """A minimal Bruker RAW v4 file (Cu, 2θ from 20° by 0.25°) as fairmat's parser reads it."""
    header = bytearray(0x051F)
    header[:8] = b"RAW4.00\x00"
    header[0x01A8:0x01AA] = b"Cu"
    header[0x01C3:0x01C5] = struct.pack("<H", points)
    header[0x020F:0x0217] = struct.pack("<d", 0.25)
    header[0x04D0:0x04D6] = b"Theta\x00"
    header[0x04FB:0x0503] = struct.pack("<d", 20.0)
    values = np.arange(stored, dtype=np.float32) + 1
    return bytes(header) + np.column_stack([values, np.zeros_like(values)]).tobytes()


def test_raw_is_read_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The RAW parser logs a warning and INFO lines on every read: they must not reach the user."""
    path = tmp_path / "scan.raw"
    path.write_bytes(_raw4(30, 30))
    with caplog.at_level(logging.DEBUG):
        pattern = Pattern.read(path)
    assert not [r for r in caplog.records if r.name.startswith("fairmat_readers_xrd")]
    assert_allclose(pattern.two_theta[[0, -1]], [20.0, 27.25])
    assert_allclose(pattern.intensity, np.arange(30) + 1)
    assert pattern.wavelength == pytest.approx((1.540598 + 0.5 * 1.544426) / 1.5)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (_raw4(30, 10), "header gives 30 points, the data holds 10"),
        (_raw4(30, 30)[:300], "truncated Bruker RAW file: 300 bytes"),
        (b"RAW1.01\x00" + bytes(100), "version 'RAW1.01' is not supported"),
        (b"10 1\n11 2\n", "not a Bruker RAW file"),
    ],
    ids=["short_data", "short_header", "v1", "text"],
)
def test_broken_raw_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                                content: bytes, match: str) -> None:
    path = tmp_path / "broken.raw"
    path.write_bytes(content)
    with caplog.at_level(logging.DEBUG):
        assert main(["read", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err
    assert not [r for r in caplog.records if r.name.startswith("fairmat_readers_xrd")]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda x: x.replace(" 1000 ", " 1O00 "), "non-numeric values"),
        (lambda x: x[: len(x) // 2], "malformed or truncated XML"),
        (lambda x: x.replace("<startPosition>20.0000</startPosition><endPosition>30.0000</endPosition>",
                             "<listPositions>20 21 22</listPositions>"), "3 2θ positions but 101 intensities"),
        (lambda x: re.sub(r'(<intensities unit="counts">)[^<]*', lambda m: m.group(1) + "7 " * 101, x),
         "every intensity is 7"),
        (lambda x: "20 1\n21 2\n", "not an XML file"),
    ],
    ids=["letter", "truncated", "count_mismatch", "constant", "text"],
)
def test_broken_xrdml(tmp_path: Path, edit, match: str) -> None:
    path = tmp_path / "broken.xrdml"
    path.write_text(edit((DATA / "co_peak.xrdml").read_text()))
    with pytest.raises(InputError, match=match):
        Pattern.read(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"10 1\n", "not a zip archive"), (b"PK\x03\x04" + bytes(30), "damaged zip archive"), (None, "the archive has no")],
    ids=["text", "truncated", "no_data"],
)
def test_broken_brml(tmp_path: Path, content: bytes | None, match: str) -> None:
    import zipfile

    path = tmp_path / "broken.brml"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "no Bruker data here")
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        Pattern.read(path)


def test_file_name_with_a_newline_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two\nlines.xy"
    path.write_text("")
    assert main(["read", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two\\nlines.xy: empty file" in err
