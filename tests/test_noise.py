"""The noise bank (xrdid.noise): peak removal, measured and physical banks, files, `xrdid noise`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from xrdid.cli import main
from xrdid.config import Grid
from xrdid.errors import InputError
from xrdid.xrd.measured import Pattern
from xrdid.xrd.noise import NoiseBank, build_noise_bank, separate

GRID = Grid(2.0, 50.0, 4801)
SUBSET = [  # (subfolder, glob) from ../shared/data/noise: three frameworks, a blank, a background scan
    ("mocof1", "PXRD_KE-001_Cu-Ka1_*.xyd"),
    ("mocof1", "PXRD_KE-221_Co-Ka1_*.xyd"),
    ("mocof1", "PXRD_KE-289_Cu-Ka1_*.xyd"),
    ("blanks", "PXRD_Blank_Cu-Ka1_capillary-1mm_5s-deg.xyd"),
    ("d8", "RMS-D8-ADS-15-Glass-LynxEyeXE-bkgr.xy"),
]


@pytest.fixture(scope="module")
def subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five measured patterns in nested folders, plus one unreadable file."""
    folder = tmp_path_factory.mktemp("noise")
    for sub, pattern in SUBSET:
        source = sorted((shared_data / "noise" / sub).glob(pattern))[0]
        (folder / sub).mkdir(exist_ok=True)
        shutil.copy(source, folder / sub / source.name)
    (folder / "bad").mkdir()
    (folder / "bad" / "broken.xy").write_text("1\n2\n3\n")
    (folder / "README.md").write_text("not a pattern: ignored\n")
    return folder


def _synthetic(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.arange(3.0, 40.0, 0.015)
    background = 40 + 30 * np.exp(-(x - 3) / 3) + 10 * np.exp(-0.5 * ((x - 22) / 4) ** 2)
    peaks = sum(h * np.exp(-0.5 * ((x - c) / 0.04) ** 2) for c, h in [(6, 2000), (11, 600), (17.5, 300), (30, 150)])
    y = np.random.default_rng(seed).poisson(background + peaks).astype(float)
    return x, y, background


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separate_finds_peaks_and_background(seed: int) -> None:
    x, y, truth = _synthetic(seed)
    split = separate(x, y, rng=np.random.default_rng(seed))
    for center in (6, 11, 17.5, 30):
        assert split.peaks[np.abs(x - center) < 0.05].all()
    assert split.peaks.mean() < 0.1
    assert split.height == pytest.approx(2000, rel=0.1)
    assert np.abs(split.background - truth).max() < 4 * np.sqrt(truth.max())  # within a few σ
    assert np.median(split.sigma / np.sqrt(truth)) == pytest.approx(1.0, abs=0.15)  # Poisson σ
    assert abs(split.z.mean()) < 0.1 and split.z.std() == pytest.approx(1.0, abs=0.1)
    cleaned = split.background + split.sigma * split.z
    assert cleaned.max() < truth.max() + 8 * np.sqrt(truth.max())  # peaks gone, noise kept


def test_measured_bank_from_subset(subset: Path, tmp_path: Path) -> None:
    bank = build_noise_bank({"folder": str(subset), "seed": 3}, GRID, "CuKa", tmp_path / "bank", progress=False)
    assert bank.kind == "measured" and bank.noise.shape == (5, 4801) and bank.noise.dtype == np.float32
    assert np.isfinite(bank.noise).all() and (bank.noise >= 0).all()
    assert [r["source"] for r in bank.rejects] == ["bad/broken.xy"]
    assert "one column" in bank.rejects[0]["problem"]
    names = [s["source"] for s in bank.sources]
    assert names == sorted(names) and names[0].startswith("blanks/") and all("/" in n for n in names)
    by_name = {s["source"].split("/")[-1][:11]: s for s in bank.sources}
    assert float(by_name["PXRD_KE-221"]["wavelength"]) == pytest.approx(1.78896)  # Co, from the name
    assert float(by_name["PXRD_KE-221"]["coverage"]) < 0.75  # Co 1.5–40° reaches Cu 34°
    assert "peakless" in by_name["PXRD_Blank_"]["note"] and "peakless" in by_name["RMS-D8-ADS-"]["note"]
    for row, source in enumerate(bank.sources):
        assert int(source["row"]) == row and source["kind"] == "measured"
        assert float(source["coverage"]) == pytest.approx(bank.covered[row].mean(), abs=1e-6)
        if "peakless" in source["note"]:
            continue
        # No strong peak left: where the source peaked (1 + background per unit peak), the row is low.
        pattern = Pattern.read(subset / source["source"])
        values, mask = pattern.to_grid(GRID, "CuKa")
        scaled = values / float(source["scale"])
        top = int(np.argmax(np.where(mask, scaled, 0)))
        assert scaled[top] > 1.0
        assert bank.noise[row, top] < 0.5 * scaled[top]
        assert bank.noise[row][mask].max() < 0.5 * scaled[mask].max()

    folder = tmp_path / "bank"
    assert sorted(p.name for p in folder.iterdir()) == [
        "covered.npy", "meta.json", "noise.npy", "rejects.csv", "sources.csv"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "measured" and meta["grid"]["n_points"] == 4801 and meta["n_rejects"] == 1
    with open(folder / "sources.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:6] == ["row", "source", "kind", "wavelength", "coverage", "scale"]
    loaded = NoiseBank.load(folder)
    assert_array_equal(loaded.noise, bank.noise)
    assert_array_equal(loaded.covered, bank.covered)


def test_measured_bank_is_repeatable(subset: Path, tmp_path: Path) -> None:
    params = {"folder": str(subset), "seed": 11}
    build_noise_bank(params, GRID, "CuKa", tmp_path / "a", progress=False)
    build_noise_bank(params, GRID, "CuKa", tmp_path / "b", progress=False)
    for name in ("noise.npy", "covered.npy", "sources.csv", "rejects.csv", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = build_noise_bank({**params, "seed": 12}, GRID, "CuKa", progress=False)
    assert not np.array_equal(other.noise, np.load(tmp_path / "a" / "noise.npy"))


@pytest.mark.parametrize("seed", [0, 5])
def test_physical_bank(seed: int, tmp_path: Path) -> None:
    params = {"folder": None, "seed": seed, "physical": {"n_entries": 12}}
    bank = build_noise_bank(params, GRID, "CuKa", tmp_path / "a", progress=False)
    assert bank.kind == "physical" and bank.noise.shape == (12, 4801) and bank.covered.all()
    assert np.isfinite(bank.noise).all() and (bank.noise >= 0).all()
    assert bank.noise.max() < 1.0  # background + noise only: below a unit peak
    assert all(s["kind"] == "physical" and s["source"] == "physical" for s in bank.sources)
    x = GRID.values
    assert (bank.noise[:, x < 4].mean() >= bank.noise[:, (x > 45)].mean())  # air scatter at low angle
    build_noise_bank(params, GRID, "CuKa", tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "noise.npy").read_bytes() == (tmp_path / "b" / "noise.npy").read_bytes()
    other = build_noise_bank({**params, "seed": seed + 1}, GRID, "CuKa", progress=False)
    assert not np.array_equal(other.noise, bank.noise)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["kind"] == "physical"


def test_physical_count_level_sets_noise() -> None:
    def roughness(level: float) -> float:
        params = {"folder": None, "physical": {"n_entries": 4, "count_level": [level, level]}}
        rows = build_noise_bank(params, GRID, "CuKa", progress=False).noise.astype(float)
        return float(np.std(np.diff(rows, axis=1) / np.sqrt(np.maximum(rows[:, 1:], 1e-9))))

    assert_allclose(roughness(100) / roughness(10000), 10, rtol=0.15)  # Poisson: σ/√mean ∝ 1/√counts


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="noise folder not found"):
        build_noise_bank({"folder": str(tmp_path / "absent")}, GRID, "CuKa", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no pattern files"):
        build_noise_bank({"folder": str(tmp_path / "empty")}, GRID, "CuKa", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.xy").write_text("")
    with pytest.raises(InputError, match="none of the 1 pattern files"):
        build_noise_bank({"folder": str(tmp_path / "junk")}, GRID, "CuKa", progress=False)


def test_cli_noise(subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "grid: {two_theta_min: 5.0, two_theta_max: 45.0, n_points: 2001, wavelength: CuKa}\n"
        "noise: {folder: null, seed: 1, physical: {n_entries: 6}}\n"
    )
    out = tmp_path / "bank"
    assert main(["noise", "--params", str(params), "--out", str(out), "--no-progress"]) == 0
    assert np.load(out / "noise.npy").shape == (6, 2001)
    assert main(["noise", "--params", str(params), "--out", str(out), "--folder", str(subset), "--no-progress"]) == 0
    assert np.load(out / "noise.npy").shape == (5, 2001)
    assert json.loads((out / "meta.json").read_text())["kind"] == "measured"
    capsys.readouterr()
    assert main(["noise", "--params", str(params), "--out", str(out), "--folder", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none: noise folder not found" in err
