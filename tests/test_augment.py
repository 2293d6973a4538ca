"""The augment stage: varied reflections, main peaks + noise, datasets on disk."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from xrdid.cli import main
from xrdid.config import Grid
from xrdid.data.augment import Augmenter, load_noise_bank, write_augmented
from xrdid.data.library import Library, build_library
from xrdid.data.patterns import PatternSet, simulate_library
from xrdid.errors import InputError
from xrdid.xrd.diffraction import SimulationSettings

DATA = Path(__file__).parent / "data"
GRID = Grid(10.0, 80.0, 3501)  # 0.02° step
OFF = {  # every variation switched off
    "zero_shift": [0, 0], "strain": [0, 0], "intensity_sigma": 0, "texture_probability": 0,
    "crystallite_size": None, "kalpha2_probability": 0,
}
CLEAN = {**OFF, "noise_scale": [0, 0]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[PatternSet, Library, np.ndarray, Path]:
    """NaCl and a disordered CuAu simulated on GRID, their library, and a small noise bank."""
    root = tmp_path_factory.mktemp("augment")
    (root / "cifs").mkdir()
    for name in ("nacl.cif", "partial_occupancy.cif"):
        shutil.copy(DATA / name, root / "cifs" / name)
    build_library({"source": "folder", "folder": str(root / "cifs"), "workers": 1}, root / "library", progress=False)
    patterns = simulate_library(root / "library", root / "patterns", SimulationSettings(GRID), workers=1,
                                progress=False)
    noise = (0.02 * np.random.default_rng(0).random((5, GRID.n_points))).astype(np.float32)
    return patterns, Library.load(root / "library"), noise, root


def _peak_near(x: np.ndarray, two_theta: float, window: float = 0.5) -> float:
    """2θ of the maximum of ``x`` within ±window of ``two_theta`` (centroid of the top 3 points)."""
    grid = GRID.values
    sel = np.flatnonzero(np.abs(grid - two_theta) <= window)
    top = sel[np.argmax(x[sel])]
    w = x[top - 1: top + 2]
    return float((grid[top - 1: top + 2] * w).sum() / w.sum())


def _two_theta(d: float, wavelength: float = 1.54184) -> float:
    return float(np.degrees(2 * np.arcsin(wavelength / (2 * d))))


def test_sample_shapes_dtypes_labels(inputs) -> None:
    patterns, library, noise, _ = inputs
    aug = Augmenter.from_params(patterns, noise, library, {"shuffle": ["permute", "segments", "keep"]})
    rng = np.random.default_rng(1)
    X, y = aug.sample(rng, np.array([1, 0, 1, 1]))
    assert X.shape == (4, GRID.n_points) and X.dtype == np.float32
    assert y.dtype == np.int32 and y.tolist() == [1, 0, 1, 1]
    assert_allclose(X.max(axis=1), 1.0)
    assert X.min() >= 0
    X, y = aug.sample(rng, 50)
    assert X.shape == (50, GRID.n_points) and set(y.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="labels must lie"):
        aug.sample(rng, np.array([2]))


def test_fft_profile_matches_the_simulated_profile(inputs) -> None:
    patterns, library, _, _ = inputs
    aug = Augmenter.from_params(patterns, None, library, {**CLEAN, "main_points": GRID.n_points})
    X, _ = aug.sample(np.random.default_rng(0), np.array([0, 1]))
    assert_allclose(X, patterns.profiles, atol=0.005)  # FWHM of 5 points: a coarse grid for the sticks


def test_merge_keeps_the_main_peaks(inputs) -> None:
    patterns, library, noise, _ = inputs
    n_main = 300
    clean = Augmenter.from_params(patterns, None, library, {**CLEAN, "main_points": n_main})
    X, _ = clean.sample(np.random.default_rng(2), np.array([0, 1]))
    assert np.count_nonzero(X, axis=1).tolist() == [n_main, n_main]
    bank = noise * 0.05  # up to 0.001 of the strongest peak
    noisy = Augmenter.from_params(patterns, bank, library, {**OFF, "main_points": n_main})
    X, _ = noisy.sample(np.random.default_rng(3), np.array([0, 1]))
    for row, profile in zip(X, patterns.profiles):
        ours, simulated = set(np.argsort(row)[-n_main:]), np.argsort(profile)[-n_main:]
        # the N-th largest simulated point is ~1e-3 of the peak (peak tails), as low as the noise:
        # every main point clearly above the noise (and the 0.3 % rendering error) stays in place
        clear = simulated[profile[simulated] > 5 * bank.max()]
        assert set(clear) <= ours and len(clear) >= n_main // 4
        assert len(ours & set(simulated)) >= 0.8 * n_main
    # the noise fills the rest: every point is non-zero, at the bank's level
    assert np.all(X > 0) and np.median(X) < 0.01


@pytest.mark.parametrize("shift", [-0.3, 0.24])
def test_zero_shift_moves_the_strongest_peak(inputs, shift: float) -> None:
    patterns, library, _, _ = inputs
    base = Augmenter.from_params(patterns, None, library, CLEAN)
    moved = Augmenter.from_params(patterns, None, library, {**CLEAN, "zero_shift": [shift, shift]})
    rng = np.random.default_rng(4)
    for label in (0, 1):
        x0, _ = base.sample(rng, np.array([label]))
        x1, _ = moved.sample(rng, np.array([label]))
        t0 = GRID.values[np.argmax(x0[0])]
        assert _peak_near(x1[0], t0 + shift, 0.1) - _peak_near(x0[0], t0, 0.1) == pytest.approx(shift, abs=0.01)


def test_strain_moves_peaks_per_axis(inputs) -> None:
    patterns, library, _, _ = inputs
    nacl = patterns.ids.index("nacl")
    a = float(library.lattice[library.ids.index("nacl")][0, 0])
    rng = np.random.default_rng(5)
    # isotropic: every d scales by s
    s = 1.015
    aug = Augmenter.from_params(patterns, None, library, {**CLEAN, "strain": [s - 1, s - 1]})
    x, _ = aug.sample(rng, np.array([nacl]))
    for hkl in ([2, 0, 0], [2, 2, 0], [2, 2, 2]):
        d = a / np.linalg.norm(hkl)
        assert _peak_near(x[0], _two_theta(s * d), 0.2) == pytest.approx(_two_theta(s * d), abs=0.01)
    # anisotropic: only a stretches; the representative hkl (h ≥ k ≥ l) says which peaks move how
    e = 0.03
    aug = Augmenter.from_params(patterns, None, library, {**CLEAN, "strain": [[e, e], [0, 0], [0, 0]]})
    x, _ = aug.sample(rng, np.array([nacl]))
    for hkl in ([2, 0, 0], [2, 2, 0], [4, 0, 0]):
        h = np.array(hkl) / np.array([1 + e, 1, 1])
        expected = _two_theta(a / np.linalg.norm(h))
        assert _peak_near(x[0], expected, 0.2) == pytest.approx(expected, abs=0.01)
    unstrained = _two_theta(a / 2)  # 200 left its place: a becomes 3 % longer
    assert abs(_peak_near(x[0], _two_theta(1.03 * a / 2), 0.2) - unstrained) > 0.5


def test_march_dollase_r1_is_a_no_op(inputs) -> None:
    patterns, library, _, _ = inputs
    plain = Augmenter.from_params(patterns, None, library, CLEAN)
    unit = Augmenter.from_params(patterns, None, library, {**CLEAN, "texture_probability": 1, "texture_r": [1, 1]})
    strong = Augmenter.from_params(patterns, None, library,
                                   {**CLEAN, "texture_probability": 1, "texture_r": [0.5, 0.5]})
    labels = np.array([0, 1, 0])
    x0, _ = plain.sample(np.random.default_rng(6), labels)
    x1, _ = unit.sample(np.random.default_rng(6), labels)
    x2, _ = strong.sample(np.random.default_rng(6), labels)
    assert_allclose(x1, x0, rtol=1e-5, atol=1e-6)
    assert np.abs(x2 - x0).max() > 0.05


def test_size_broadening_and_kalpha2(inputs) -> None:
    patterns, library, _, _ = inputs
    rng = np.random.default_rng(7)
    sharp, _ = Augmenter.from_params(patterns, None, library, CLEAN).sample(rng, np.array([0]))
    broad, _ = Augmenter.from_params(patterns, None, library, {**CLEAN, "crystallite_size": [8, 8]}).sample(
        rng, np.array([0]))
    assert np.count_nonzero(broad[0] > 0.5) > 2 * np.count_nonzero(sharp[0] > 0.5)
    doublet, _ = Augmenter.from_params(patterns, None, library, {**CLEAN, "kalpha2_probability": 1}).sample(
        rng, np.array([0]))
    nacl = library.lattice[library.ids.index(patterns.ids[0])][0, 0]
    d = nacl / np.linalg.norm([4, 2, 0])  # a high-angle peak: the doublet splits by ~0.2°
    k1, k2 = _two_theta(d, 1.54056), _two_theta(d, 1.54439)
    assert _peak_near(doublet[0], k1, 0.05) == pytest.approx(k1, abs=0.01)
    assert _peak_near(doublet[0], k2, 0.05) == pytest.approx(k2, abs=0.02)


def test_entries_with_overlapping_atoms_draw_their_own_intensity_spread(inputs) -> None:
    patterns, library, _, _ = inputs
    # the second pattern entry gets flagged as a broken model
    flagged = dataclasses.replace(library, index=library.index.assign(
        overlaps=np.where(library.index["id"] == patterns.ids[1], 3, 0)))
    settings = {**CLEAN, "unreliable_intensity_sigma": 0.5}
    reference, _ = Augmenter.from_params(patterns, None, library, CLEAN).sample(np.random.default_rng(0), [0, 1])
    labels = np.array([0, 0, 0, 1, 1, 1])
    x, _ = Augmenter.from_params(patterns, None, flagged, settings).sample(np.random.default_rng(8), labels)
    assert_allclose(x[:3], reference[[0, 0, 0]], atol=1e-6)  # every variation off: always the reference
    assert np.abs(x[3:] - reference[1]).max(axis=1).min() > 0.01
    # an index without the column (older library) trusts every entry
    old = dataclasses.replace(library, index=library.index.drop(columns="overlaps"))
    x, _ = Augmenter.from_params(patterns, None, old, settings).sample(np.random.default_rng(8), labels)
    assert_allclose(x, reference[labels], atol=1e-6)


def _write(inputs, out: Path, **params) -> dict:
    patterns, library, noise, _ = inputs
    settings = {"ratio": 10, "chunk_size": 3, "workers": 2, **params}
    return write_augmented(patterns, noise, library, out, settings, progress=False)


def test_datasets_on_disk(inputs, tmp_path: Path) -> None:
    meta = _write(inputs, tmp_path / "aug")
    assert meta["counts"] == {"train": 16, "val": 4, "train_per_entry": 8, "val_per_entry": 2, "mixtures": 0}
    on_disk = json.loads((tmp_path / "aug" / "meta.json").read_text())
    assert on_disk["ids"] == inputs[0].ids and on_disk["grid"] == GRID.to_dict() and on_disk["seed"] == 0
    for split, count in (("train", 16), ("val", 4)):
        X = np.load(tmp_path / "aug" / split / "X.npy", mmap_mode="r")
        y = np.load(tmp_path / "aug" / split / "y.npy", mmap_mode="r")
        assert isinstance(X, np.memmap) and X.dtype == np.float16 and X.shape == (count, GRID.n_points)
        assert y.dtype == np.int32 and np.bincount(y).tolist() == [count // 2] * 2
        assert_allclose(np.asarray(X, dtype=np.float32).max(axis=1), 1.0)


@pytest.mark.parametrize("seed", range(6))
def test_mixtures_are_weight_fractions_of_distinct_entries(inputs, seed: int) -> None:
    """Each phase's share of the integrated intensity is its weight fraction × its scattering power per mass,
    and the mixture search reads the weight fractions back."""
    from scipy.optimize import nnls

    from xrdid.identify.mixture import MixtureSearch
    from xrdid.xrd.diffraction import intensity_per_mass

    patterns, library, _, _ = inputs
    mixtures = {"count": 4, "phases": [2, 2], "min_fraction": 0.35}  # a lighter phase below 35 % falls under the 5 % peak rule
    aug = Augmenter.from_params(patterns, None, library, {**CLEAN, "main_points": GRID.n_points, "mixtures": mixtures})
    X, entries, fractions = aug.sample_mixtures(np.random.default_rng(seed), 4)
    assert X.shape == (4, GRID.n_points) and entries.shape == fractions.shape == (4, 2)
    assert_allclose(fractions.sum(axis=1), 1.0, rtol=1e-6)
    assert fractions.min() >= 0.35 and (entries[:, 0] != entries[:, 1]).all()
    power = np.array([intensity_per_mass(library.crystal(i), 1.54184, (GRID.start, GRID.stop)) for i in range(2)])
    profiles = np.asarray(patterns.profiles, np.float64)
    search = MixtureSearch(patterns, None, crystals=[library.crystal(i) for i in range(2)])
    for x, e, f in zip(X, entries, fractions):
        w = np.zeros(2)
        w[e] = f
        scale = nnls(profiles.T, x.astype(np.float64))[0]
        share = scale * profiles.sum(axis=1)
        assert_allclose(share / share.sum(), w * power / (w * power).sum(), atol=0.02)
        found = {p["id"]: p["weight_fraction"] for p in search.fit(x)[0]["phases"]}
        assert_allclose([found.get(i, 0.0) for i in patterns.ids], w, atol=0.05)


def test_mixtures_on_disk(inputs, tmp_path: Path) -> None:
    meta = _write(inputs, tmp_path / "aug", mixtures={"count": 5, "phases": [1, 2]})
    assert meta["counts"]["mixtures"] == 5
    X = np.load(tmp_path / "aug" / "mixtures" / "X.npy")
    entries = np.load(tmp_path / "aug" / "mixtures" / "entries.npy")
    fractions = np.load(tmp_path / "aug" / "mixtures" / "fractions.npy")
    assert X.dtype == np.float16 and X.shape == (5, GRID.n_points) and entries.shape == (5, 2)
    assert ((entries >= 0) == (fractions > 0)).all() and (entries[:, 0] >= 0).all()
    assert_allclose(fractions.sum(axis=1), 1.0, rtol=1e-6)
    _, entries, _ = Augmenter.from_params(inputs[0], None, inputs[1], {"mixtures": {"phases": [3, 4]}}).sample_mixtures(
        np.random.default_rng(0), 2)  # two entries in the library: mixtures of both
    assert entries.shape == (2, 2) and (np.sort(entries, axis=1) == [0, 1]).all()
    with pytest.raises(ValueError, match="min_fraction"):
        Augmenter.from_params(inputs[0], None, inputs[1], {"mixtures": {"min_fraction": 0.3}})


def test_same_seed_same_bytes(inputs, tmp_path: Path) -> None:
    _write(inputs, tmp_path / "a")
    _write(inputs, tmp_path / "b", workers=1)  # thread scheduling does not matter
    _write(inputs, tmp_path / "c", seed=1)
    for name in ("train/X.npy", "train/y.npy", "val/X.npy", "val/y.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train/X.npy").read_bytes() != (tmp_path / "c" / "train/X.npy").read_bytes()


def test_bad_inputs(inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patterns, library, noise, root = inputs
    with pytest.raises(InputError, match="does not fit"):
        Augmenter.from_params(patterns, noise[:, :-1], library, {})
    with pytest.raises(ValueError, match="unknown augment settings: ratios"):
        Augmenter.from_params(patterns, noise, library, {"ratios": 3})
    with pytest.raises(ValueError, match="strain must be"):
        Augmenter.from_params(patterns, noise, library, {"strain": [0.1, -0.1]})
    with pytest.raises(InputError, match="noise bank folder not found"):
        load_noise_bank(tmp_path / "nowhere", GRID)
    (tmp_path / "short").mkdir()
    np.save(tmp_path / "short" / "noise.npy", noise[:, :100])
    with pytest.raises(InputError, match="100 points do not fit the 3501-point grid"):
        load_noise_bank(tmp_path / "short", GRID)

    params = tmp_path / "params.yaml"
    params.write_text("augment:\n  ratio: 5\n  chunk_size: 4\n")
    bank = tmp_path / "bank"
    bank.mkdir()
    np.save(bank / "noise.npy", noise)
    common = ["augment", "--params", str(params), "--noise", str(bank), "--library", str(root / "library"),
              "--no-progress"]
    assert main([*common, "--patterns", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")]) == 2
    assert "missing: patterns folder not found" in capsys.readouterr().err
    assert main([*common[:4], str(tmp_path / "short"), *common[5:], "--patterns", str(root / "patterns"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert main([*common, "--patterns", str(root / "patterns"), "--out", str(tmp_path / "o3")]) == 0
    assert np.load(tmp_path / "o3" / "train" / "X.npy", mmap_mode="r").shape == (8, GRID.n_points)


def test_rruff_measurements_match_their_own_augmented_spectra(shared_data: Path, tmp_path: Path) -> None:
    """Twelve RRUFF minerals: each measured pattern's closest augmented spectrum is of its own CIF."""
    import csv

    from scipy import ndimage

    from xrdid.xrd.measured import Pattern

    folder = shared_data / "rruff236"
    rows = [r for r in csv.DictReader(open(folder / "labels.csv")) if r["source"] == "RRUFF"][::10][:12]
    (tmp_path / "cifs").mkdir()
    for row in rows:
        shutil.copy(folder / row["cif"], tmp_path / "cifs")
    grid = Grid(10.0, 70.0, 3001)
    build_library({"source": "folder", "folder": str(tmp_path / "cifs"), "workers": 1}, tmp_path / "library",
                  progress=False)
    patterns = simulate_library(tmp_path / "library", tmp_path / "patterns", SimulationSettings(grid), workers=1,
                                progress=False)
    rng = np.random.default_rng()
    bank = (0.05 + 0.01 * np.abs(rng.standard_normal((8, grid.n_points)))).astype(np.float32)
    aug = Augmenter.from_params(patterns, bank, Library.load(tmp_path / "library"), {})
    X, y = aug.sample(rng, np.repeat(np.arange(len(patterns)), 20))

    def unit(x: np.ndarray) -> np.ndarray:  # background removed (rolling minimum), unit length
        x = x - ndimage.grey_opening(x, size=(1, 101))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    scans = [Pattern.read(folder / row["pattern"], "CuKa") for row in rows]
    measured = np.array([np.interp(grid.values, scan.two_theta, scan.intensity) for scan in scans])
    best = y[np.argmax(unit(measured) @ unit(X).T, axis=1)]
    truth = [patterns.ids.index(Path(row["cif"]).stem) for row in rows]
    assert np.sum(best == truth) >= 10
