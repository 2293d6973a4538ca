"""The reflection engine against pymatgen's XRDCalculator, and the simulate stage."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from pymatgen.analysis.diffraction.xrd import XRDCalculator

from xrdid.config import Grid
from xrdid.data.library import core_mof_ids, iter_core_mof
from xrdid.data.patterns import PatternSet
from xrdid.xrd.crystal import Crystal, read_cif
from xrdid.xrd.diffraction import SimulationSettings, reflections, simulate_one
from xrdid.xrd.measured import wavelength_angstrom

DATA = Path(__file__).parent / "data"


def _assert_matches_pymatgen(crystal: Crystal, two_theta_range=(5, 50), wavelength="CuKa", method="auto") -> None:
    structure = crystal.to_structure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = XRDCalculator(wavelength).get_pattern(structure, two_theta_range=two_theta_range)
    ours = reflections(crystal, wavelength, two_theta_range, method=method)
    assert len(ours) == len(ref.x), crystal.id
    assert_allclose(ours.two_theta, ref.x, atol=1e-4, rtol=0, err_msg=crystal.id)
    assert_allclose(ours.intensity, ref.y, atol=0.05, rtol=0, err_msg=crystal.id)
    assert_allclose(ours.d_spacing, ref.d_hkls, rtol=1e-9, err_msg=crystal.id)
    # Total multiplicity of each merged peak, and our hkl is one of pymatgen's families.
    assert ours.multiplicity.tolist() == [sum(f["multiplicity"] for f in fams) for fams in ref.hkls]
    for hkl, fams in zip(ours.hkl.tolist(), ref.hkls):
        reps = [list(f["hkl"]) if len(f["hkl"]) == 3 else [f["hkl"][0], f["hkl"][1], f["hkl"][3]] for f in fams]
        assert hkl in reps, (crystal.id, hkl, reps)


@pytest.fixture(scope="module")
def core_mof_sample() -> list[Crystal]:
    """Ten CoRE MOF 2019-ASR structures chosen by a seed (the package ships them; no ../shared needed)."""
    ids = core_mof_ids("2019-ASR")
    chosen = set(np.random.default_rng(7).choice(ids, 10, replace=False).tolist())
    crystals = []
    for entry_id, data in iter_core_mof("2019-ASR", chosen):
        crystal, problem = read_cif(data, id=entry_id)
        assert crystal is not None, problem
        crystals.append(crystal)
    return crystals


@pytest.mark.parametrize("method", ["gemm", "nufft"])
def test_core_mof_agrees_with_pymatgen(core_mof_sample: list[Crystal], method: str) -> None:
    for crystal in core_mof_sample:
        _assert_matches_pymatgen(crystal, (2, 50), method=method)


def test_rruff_cifs_agree_with_pymatgen(shared_data: Path) -> None:
    paths = sorted((shared_data / "rruff236" / "cif").glob("*.cif"))
    assert len(paths) == 236
    for path in paths[::10]:  # every tenth: a spread of space groups and chemistries
        _assert_matches_pymatgen(Crystal.from_cif(path), (5, 90))


@pytest.mark.parametrize("wavelength", ["CuKa1", "MoKa", 1.2])
def test_other_wavelengths_agree(wavelength) -> None:
    _assert_matches_pymatgen(Crystal.from_cif(DATA / "nacl.cif"), (5, 80), wavelength)


def test_partial_occupancy_agrees_with_pymatgen() -> None:
    crystal = Crystal.from_cif(DATA / "partial_occupancy.cif")
    assert np.all(crystal.occupancies == 0.5)
    _assert_matches_pymatgen(crystal, (10, 90))


def test_nacl_known_lines() -> None:
    refl = reflections(Crystal.from_cif(DATA / "nacl.cif"), "CuKa1", (20, 60))
    # Fm-3m with a = 5.6402 Å: 111, 200, 220, 311, 222 (Cu Kα1)
    d = 5.6402 / np.sqrt([3, 4, 8, 11, 12])
    assert_allclose(refl.two_theta, np.degrees(2 * np.arcsin(1.54056 / (2 * d))), atol=1e-6)
    assert refl.hkl[np.argmax(refl.intensity)].tolist() == [2, 0, 0]
    assert refl.intensity.max() == 100


def test_debye_waller_weakens_high_angles() -> None:
    crystal = Crystal.from_cif(DATA / "nacl.cif")
    cold = reflections(crystal, "CuKa", (20, 90))
    warm = reflections(crystal, "CuKa", (20, 90), debye_waller={"*": 2.0})
    assert_allclose(warm.two_theta, cold.two_theta)
    ratio = warm.intensity / cold.intensity
    assert np.all(np.diff(ratio[cold.intensity > 1]) <= 1e-9)  # relative intensity falls with angle
    structure = crystal.to_structure()
    ref = XRDCalculator("CuKa", debye_waller_factors={"Na": 2.0, "Cl": 2.0}).get_pattern(structure, two_theta_range=(20, 90))
    assert_allclose(warm.intensity, ref.y, atol=0.05)


def test_unknown_wavelength_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown wavelength"):
        wavelength_angstrom("XyKa")


def test_simulate_one_profile_peaks_at_reflections() -> None:
    crystal = Crystal.from_cif(DATA / "nacl.cif")
    settings = SimulationSettings(Grid(20, 60, 4001), wavelength="CuKa", profile="gaussian")
    refl, profile = simulate_one(crystal, settings)
    assert profile.dtype == np.float32 and profile.shape == (4001,)
    assert profile.max() == pytest.approx(1.0)
    strongest = refl.two_theta[np.argmax(refl.intensity)]
    assert abs(settings.grid.values[np.argmax(profile)] - strongest) <= settings.grid.step


def test_doublet_adds_kalpha2_shoulder() -> None:
    crystal = Crystal.from_cif(DATA / "nacl.cif")
    grid = Grid(30, 33, 3001)
    single = simulate_one(crystal, SimulationSettings(grid, "CuKa", profile="gaussian", caglioti=(0, 0, 1e-4)))[1]
    double = simulate_one(crystal, SimulationSettings(grid, "CuKa", doublet=True, profile="gaussian",
                                                      caglioti=(0, 0, 1e-4)))[1]
    # Kα1 of 200 at 31.69°, Kα2 0.08° higher with half the height
    peaks = grid.values[(double > 0.3) & (np.r_[0, np.diff(double)] > 0) & (np.r_[np.diff(double), 0] <= 0)]
    assert len(peaks) == 2 and 0.07 < peaks[1] - peaks[0] < 0.09
    assert grid.values[np.argmax(single)] != grid.values[np.argmax(double)]


def test_simulate_stage_writes_pattern_set(tmp_path: Path) -> None:
    from xrdid.data.library import build_library
    from xrdid.data.patterns import simulate_library

    cif_dir = tmp_path / "cifs"
    cif_dir.mkdir()
    for name in ("nacl.cif", "partial_occupancy.cif"):
        (cif_dir / name).write_bytes((DATA / name).read_bytes())
    build_library({"source": "folder", "folder": str(cif_dir), "workers": 1}, tmp_path / "library", progress=False)
    settings = SimulationSettings(Grid(10, 80, 701))
    patterns = simulate_library(tmp_path / "library", tmp_path / "patterns", settings, workers=2, progress=False)
    assert patterns.ids == ["nacl", "partial_occupancy"]
    assert patterns.profiles.shape == (2, 701)
    assert_allclose(patterns.profiles.max(axis=1), 1.0, rtol=1e-6)
    two_theta, intensity = patterns.peaks(0)
    assert intensity.max() == pytest.approx(100)
    direct = reflections(Crystal.from_cif(DATA / "nacl.cif"), "CuKa", (9, 81))
    assert_allclose(two_theta, direct.two_theta, atol=1e-4)
    padded_t, padded_i = patterns.padded_peaks(max_peaks=3)
    assert padded_t.shape == (2, 3) and np.all(padded_i[:, 0] >= padded_i[:, 1])
    meta = json.loads((tmp_path / "patterns" / "meta.json").read_text())
    assert meta["grid"]["n_points"] == 701
    again = PatternSet.load(tmp_path / "patterns")
    assert_allclose(np.asarray(again.profiles), np.asarray(patterns.profiles))


def test_gemm_in_small_chunks_agrees(core_mof_sample: list[Crystal], monkeypatch) -> None:
    # Many small (lines × atoms) tables, each padded to its own longest line, give the same peaks.
    import xrdid.xrd.diffraction as diffraction

    monkeypatch.setattr(diffraction, "_GEMM_CHUNK", 1 << 12)
    for crystal in core_mof_sample[:3]:
        _assert_matches_pymatgen(crystal, (2, 50), method="gemm")


def test_single_precision_gemm_matches_double_nufft(core_mof_sample: list[Crystal]) -> None:
    for crystal in core_mof_sample:
        gemm = reflections(crystal, "CuKa", (2, 50), method="gemm")
        nufft = reflections(crystal, "CuKa", (2, 50), method="nufft", eps=1e-9)
        assert len(gemm) == len(nufft)
        assert_allclose(gemm.intensity, nufft.intensity, atol=1e-3, rtol=0, err_msg=crystal.id)


def test_blas_threads_restored() -> None:
    from threadpoolctl import threadpool_info

    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    reflections(Crystal.from_cif(DATA / "nacl.cif"), "CuKa", (5, 80), method="gemm")
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before


def test_is_hexagonal_matches_pymatgen() -> None:
    from pymatgen.core import Lattice

    from xrdid.xrd.diffraction import _is_hexagonal

    rng = np.random.default_rng(0)
    lattices = [Lattice.hexagonal(3.0, 5.0).matrix, Lattice.cubic(4.0).matrix, np.diag([3.0, 3.005, 5.0])]
    for _ in range(300):  # around the tolerances: angles 90 ± 6°, 60/120 ± 6°, lengths ± 0.02 Å
        a = 3 + rng.uniform(-0.02, 0.02, 3) * rng.integers(0, 2, 3)
        gamma = rng.choice([60.0, 90.0, 120.0]) + rng.uniform(-6, 6)
        alpha, beta = 90 + rng.uniform(-6, 6, 2)
        angles = rng.permutation([alpha, beta, gamma])
        lattices.append(Lattice.from_parameters(*a, *angles).matrix)
    flags = [_is_hexagonal(np.asarray(m)) for m in lattices]
    assert flags == [Lattice(m).is_hexagonal() for m in lattices]
    assert 20 < sum(flags) < len(flags) - 20  # both answers are exercised
