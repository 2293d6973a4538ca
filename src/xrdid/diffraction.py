"""Powder diffraction: reflections of a crystal and the ``simulate`` stage.

The engine follows pymatgen's ``XRDCalculator`` physics (same atomic
scattering factors, Lorentz-polarisation factor and peak merging) but
computes every structure factor of a crystal in one non-uniform FFT per
element (FINUFFT) instead of one complex exponential per atom and
reflection, which is what makes a 12,000-structure library cheap.

Examples
--------
>>> from xrdid.library import Crystal
>>> import numpy as np
>>> nacl = Crystal("NaCl", 5.64 * np.eye(3), np.array([11, 11, 11, 11, 17, 17, 17, 17]),
...                np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
...                          [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]), np.ones(8))
>>> r = reflections(nacl, two_theta_range=(20, 50))
>>> r.hkl[np.argmax(r.intensity)].tolist(), round(float(r.two_theta[np.argmax(r.intensity)]), 2)
([2, 0, 0], 31.7)
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import finufft
import numpy as np
from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS, WAVELENGTHS
from pymatgen.core import Element, Lattice
from tqdm import tqdm

from xrdid.config import Grid, load_params
from xrdid.errors import InputError
from xrdid.profiles import caglioti_fwhm, render

if TYPE_CHECKING:
    import argparse

    from xrdid.library import Crystal

log = logging.getLogger(__name__)

# pymatgen's tolerances, so that both engines merge and drop the same peaks.
TWO_THETA_TOL = 1e-5
SCALED_INTENSITY_TOL = 1e-3
KALPHA2_RATIO = 0.5  # I(Kα2)/I(Kα1)

# Cromer–Mann-like coefficients (a_i, b_i) indexed by atomic number.
_SCATTERING = np.zeros((119, 4, 2))
for _symbol, _coeffs in ATOMIC_SCATTERING_PARAMS.items():
    _SCATTERING[Element(_symbol).Z] = _coeffs
_HAS_SCATTERING = np.any(_SCATTERING != 0, axis=(1, 2))


def wavelength_angstrom(value: str | float) -> float:
    """Wavelength in Å from a name in pymatgen's table (``CuKa``, ``CoKa1``, ...) or a number.

    Examples
    --------
    >>> wavelength_angstrom("CuKa1"), wavelength_angstrom(1.5)
    (1.54056, 1.5)
    """
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    if value not in WAVELENGTHS:
        raise ValueError(f"unknown wavelength {value!r}; use Å or one of {', '.join(WAVELENGTHS)}")
    return WAVELENGTHS[value]


@dataclass
class Reflections:
    """Merged powder reflections of one crystal, strongest = 100.

    ``hkl`` is the representative of the first family of each merged peak
    (pymatgen's choice); ``multiplicity`` counts every reciprocal-lattice point
    merged into the peak (all families).
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    hkl: np.ndarray
    multiplicity: np.ndarray
    d_spacing: np.ndarray
    hexagonal: bool = False

    def __len__(self) -> int:
        return len(self.two_theta)

    def to_records(self) -> list[dict[str, Any]]:
        """The ``xrdid pattern --json`` contract: one dict per reflection (Miller–Bravais hkl if hexagonal)."""
        hkl = self.hkl.astype(int)
        if self.hexagonal:
            hkl = np.column_stack([hkl[:, 0], hkl[:, 1], -hkl[:, 0] - hkl[:, 1], hkl[:, 2]])
        return [
            {
                "two_theta": round(float(t), 6),
                "intensity": round(float(i), 6),
                "hkl": h.tolist(),
                "multiplicity": int(m),
                "d_spacing": round(float(d), 6),
            }
            for t, i, h, m, d in zip(self.two_theta, self.intensity, hkl, self.multiplicity, self.d_spacing)
        ]


def reflections(
    crystal: Crystal,
    wavelength: str | float = "CuKa",
    two_theta_range: tuple[float, float] = (0.0, 90.0),
    debye_waller: dict[str, float] | None = None,
    min_intensity: float = SCALED_INTENSITY_TOL,
    eps: float = 1e-7,
    method: str = "auto",
) -> Reflections:
    """Powder reflections of ``crystal`` (positions, intensities with strongest = 100, hkl).

    Parameters
    ----------
    crystal : the structure (lattice, atomic numbers, fractional coordinates, occupancies).
    wavelength : Å or a pymatgen name such as ``"CuKa"`` (weighted Kα) or ``"CuKa1"``.
    two_theta_range : 2θ range in degrees.
    debye_waller : isotropic B factors (Å²) by element symbol; the key ``"*"`` applies to
        every element without its own entry. Intensities are multiplied by exp(-2 B s²).
    min_intensity : drop merged peaks weaker than this (strongest = 100).
    eps : requested relative precision of the non-uniform FFT.
    method : ``"auto"``, ``"gemm"`` or ``"nufft"``: how structure factors are summed (same result).

    Returns
    -------
    Reflections, sorted by 2θ.
    """
    lam = wavelength_angstrom(wavelength)
    lo, hi = two_theta_range
    r_min, r_max = (2 * math.sin(math.radians(t / 2)) / lam for t in (lo, min(hi, 180.0)))
    lattice = np.asarray(crystal.lattice, dtype=float)
    recip = np.linalg.inv(lattice).T  # rows a*, b*, c* (crystallographic, no 2π)

    # Every |g| <= r_max satisfies |h| <= r_max·|a| (h = g·a), so this box holds the sphere.
    bounds = np.floor(r_max * np.linalg.norm(lattice, axis=1) + 1e-9).astype(int)
    hkl = _half_space_points(bounds)
    g = np.linalg.norm(hkl @ recip, axis=1)
    keep = (g <= r_max) & (g >= r_min) & (g > 0)
    hkl, g = hkl[keep], g[keep]
    if len(g) == 0:
        return _empty(lattice)

    structure_factor = _structure_factors(crystal, hkl, bounds, g / 2, debye_waller or {}, eps, method)
    theta = np.arcsin(np.clip(lam * g / 2, -1, 1))
    lorentz = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    intensity = 2 * np.abs(structure_factor) ** 2 * lorentz  # ×2: the Friedel mate -g
    two_theta = np.degrees(2 * theta)
    return _merge(hkl, g, two_theta, intensity, lattice, min_intensity)


def _half_space_points(bounds: np.ndarray) -> np.ndarray:
    """Integer hkl in the box ``|h| <= bounds``, one of each Friedel pair (lexicographically positive)."""
    h, k, l = np.meshgrid(*(np.arange(-b, b + 1) for b in bounds), indexing="ij")
    hkl = np.column_stack([h.ravel(), k.ravel(), l.ravel()])
    positive = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & ((hkl[:, 1] > 0) | ((hkl[:, 1] == 0) & (hkl[:, 2] > 0))))
    return hkl[positive]


def _structure_factors(
    crystal: Crystal,
    hkl: np.ndarray,
    bounds: np.ndarray,
    s: np.ndarray,
    debye_waller: dict[str, float],
    eps: float,
    method: str = "auto",
) -> np.ndarray:
    """F(hkl) = Σ_elements f_e(s)·DW_e(s)·G_e(hkl) with G_e = Σ_{atoms of e} occ·exp(2πi hkl·x).

    ``method`` picks how the geometric sums G_e are computed: ``"gemm"`` factorises
    exp(2πi(hx + ky + lz)) into three small tables and contracts them with one matrix
    product per element (cost ∝ box × atoms, but at BLAS speed); ``"nufft"`` spreads the
    atoms onto a fine grid and FFTs it (cost ∝ box·log(box) + atoms); ``"auto"`` takes the
    cheaper by a rough cost model.
    """
    z = np.asarray(crystal.numbers)
    missing = np.unique(z[~_HAS_SCATTERING[z]])
    if len(missing):
        raise ValueError(f"no X-ray scattering factors for Z={missing.tolist()}")
    elements, element_of_atom = np.unique(z, return_inverse=True)
    frac = np.asarray(crystal.frac_coords, dtype=float) % 1.0
    occ = np.asarray(crystal.occupancies, dtype=float)
    if method == "auto":
        box = np.prod(2 * bounds + 1) / 2
        method = "gemm" if box * len(z) < _GEMM_MAX_WORK else "nufft"
    compute = _geometric_gemm if method == "gemm" else _geometric_nufft
    geometric = compute(frac, occ, element_of_atom, len(elements), hkl, bounds, eps)  # (E, M)

    s2 = s**2
    coeffs = _SCATTERING[elements]  # (E, 4, 2)
    form = elements[:, None] - 41.78214 * s2 * np.einsum("ek,ekm->em", coeffs[:, :, 0], np.exp(-coeffs[:, :, 1, None] * s2))
    default_b = debye_waller.get("*", 0.0)
    b = np.array([debye_waller.get(Element.from_Z(int(e)).symbol, default_b) for e in elements])
    form *= np.exp(-b[:, None] * s2)
    return np.einsum("em,em->m", form, geometric)


# Above this many (reflection box × atoms) products the NUFFT beats the matrix products.
_GEMM_MAX_WORK = 1e6
# Bound on the (h, k) × atoms table of one matrix product (complex128 entries).
_GEMM_CHUNK = 1 << 21


def _geometric_gemm(
    frac: np.ndarray, occ: np.ndarray, element: np.ndarray, n_elements: int,
    hkl: np.ndarray, bounds: np.ndarray, eps: float,
) -> np.ndarray:
    """G_e(hkl) via exp(2πi(hx+ky+lz)) = Ex[h]·Ey[k]·Ez[l]: one (hk × atoms) @ (atoms × l) product."""
    hb, kb, lb = bounds
    tables = [np.exp(2j * np.pi * np.outer(np.arange(-b, b + 1), frac[:, axis])) for axis, b in enumerate(bounds)]
    ex, ey, ez = tables  # (2b+1, atoms) each; index i is the integer i - b
    # Only the (h, k) rows that hold a reflection are needed.
    rows, row_of_point = np.unique((hkl[:, 0] + hb) * (2 * kb + 1) + hkl[:, 1] + kb, return_inverse=True)
    h_idx, k_idx = np.divmod(rows, 2 * kb + 1)
    out = np.empty((n_elements, len(hkl)), dtype=np.complex128)
    for e in range(n_elements):
        atoms = np.flatnonzero(element == e)
        weights = occ[atoms]
        ez_e = ez[:, atoms].T  # (atoms, 2lb+1)
        g = np.empty((len(rows), 2 * lb + 1), dtype=np.complex128)
        step = max(1, _GEMM_CHUNK // len(atoms))
        for start in range(0, len(rows), step):
            sl = slice(start, start + step)
            hk = ex[h_idx[sl]][:, atoms] * ey[k_idx[sl]][:, atoms] * weights
            g[sl] = hk @ ez_e
        out[e] = g[row_of_point, hkl[:, 2] + lb]
    return out


def _geometric_nufft(
    frac: np.ndarray, occ: np.ndarray, element: np.ndarray, n_elements: int,
    hkl: np.ndarray, bounds: np.ndarray, eps: float,
) -> np.ndarray:
    """G_e(hkl) from one type-1 NUFFT per element over the box |h| <= bounds."""
    # finufft wants [-π, π) (the shift multiplies mode k by (-1)^k) and C-contiguous coordinates.
    points = np.ascontiguousarray((2 * np.pi * frac - np.pi).T)
    modes = tuple(int(n) for n in 2 * bounds + 1)
    idx = hkl + bounds  # mode index of k is k + N//2 for odd N
    sign = np.where(hkl.sum(axis=1) % 2, -1, 1)
    # Single precision halves the work; eps above 1e-6 keeps |F|² errors far below 1e-3 of the strongest.
    dtype = np.float32 if eps >= 1e-6 else np.float64
    out = np.empty((n_elements, len(hkl)), dtype=np.complex128)
    for e in range(n_elements):
        atoms = element == e
        grid = finufft.nufft3d1(*points[:, atoms].astype(dtype), occ[atoms].astype(np.complex64 if dtype == np.float32 else np.complex128), n_modes=modes,
                                eps=eps, isign=1, nthreads=1)
        out[e] = grid[idx[:, 0], idx[:, 1], idx[:, 2]] * sign
    return out


def _merge(
    hkl: np.ndarray,
    g: np.ndarray,
    two_theta: np.ndarray,
    intensity: np.ndarray,
    lattice: np.ndarray,
    min_intensity: float,
) -> Reflections:
    """Merge reflections whose 2θ round to the same multiple of TWO_THETA_TOL, as pymatgen does."""
    # pymatgen's order: by |g|, then by -h, -k, -l; the first point of a peak names its position.
    order = np.lexsort((-hkl[:, 2], -hkl[:, 1], -hkl[:, 0], g))
    hkl, g, two_theta, intensity = hkl[order], g[order], two_theta[order], intensity[order]
    keys = np.round(two_theta / TWO_THETA_TOL).astype(np.int64)
    # Keys are sorted up to rare off-by-one ties, so group with a stable sort on the key.
    by_key = np.argsort(keys, kind="stable")
    hkl, g, two_theta, intensity, keys = hkl[by_key], g[by_key], two_theta[by_key], intensity[by_key], keys[by_key]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    peak_of_point = np.cumsum(np.r_[True, keys[1:] != keys[:-1]]) - 1
    total = np.add.reduceat(intensity, starts)
    counts = np.diff(np.r_[starts, len(keys)])

    # Representative hkl: the lexicographically largest member of the first point's family
    # (family = same sorted |indices|, in Miller–Bravais hkil for hexagonal cells, as pymatgen;
    # every point here is the positive one of its Friedel pair, so no sign flips are needed).
    hexagonal = Lattice(lattice).is_hexagonal()
    indices = np.column_stack([hkl[:, :2], -hkl[:, 0] - hkl[:, 1], hkl[:, 2]]) if hexagonal else hkl
    family = np.sort(np.abs(indices), axis=1)
    in_first_family = np.all(family == family[starts][peak_of_point], axis=1)
    candidates = np.flatnonzero(in_first_family)
    last = np.lexsort((*indices[candidates].T[::-1], peak_of_point[candidates]))
    chosen = candidates[last]
    peak_ids = peak_of_point[chosen]
    is_last = np.r_[peak_ids[1:] != peak_ids[:-1], True]
    representative = hkl[chosen[is_last]]

    scaled = 100 * total / total.max()
    strong = scaled > min_intensity
    return Reflections(
        two_theta=two_theta[starts][strong],
        intensity=scaled[strong],
        hkl=representative[strong],
        multiplicity=2 * counts[strong],
        d_spacing=1 / g[starts][strong],
        hexagonal=hexagonal,
    )


def _empty(lattice: np.ndarray) -> Reflections:
    return Reflections(
        np.zeros(0), np.zeros(0), np.zeros((0, 3), int), np.zeros(0, int), np.zeros(0), Lattice(lattice).is_hexagonal()
    )


# --------------------------------------------------------------------------- profiles and the stage


@dataclass(frozen=True)
class SimulationSettings:
    """What turns a crystal into a profile on the grid (the ``simulate`` section of params.yaml)."""

    grid: Grid
    wavelength: str | float = "CuKa"
    doublet: bool = False
    debye_waller: dict[str, float] | None = None
    profile: str = "pseudo-voigt"
    eta: float = 0.5
    caglioti: tuple[float, float, float] = (0.0, 0.0, 0.01)
    min_intensity: float = SCALED_INTENSITY_TOL

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SimulationSettings:
        sim = params.get("simulate", {})
        cag = sim.get("caglioti", {"U": 0.0, "V": 0.0, "W": 0.01})
        return cls(
            grid=Grid.from_params(params["grid"]),
            wavelength=params["grid"].get("wavelength", "CuKa"),
            doublet=bool(sim.get("doublet", False)),
            debye_waller=dict(sim.get("debye_waller") or {}),
            profile=str(sim.get("profile", "pseudo-voigt")),
            eta=float(sim.get("eta", 0.5)),
            caglioti=(float(cag["U"]), float(cag["V"]), float(cag["W"])),
            min_intensity=float(sim.get("min_intensity", SCALED_INTENSITY_TOL)),
        )

    @property
    def reflection_wavelength(self) -> float:
        """Kα1 when the doublet is drawn, else the configured (weighted) wavelength."""
        lam = wavelength_angstrom(self.wavelength)
        if self.doublet and isinstance(self.wavelength, str) and self.wavelength.endswith("Ka"):
            return WAVELENGTHS[self.wavelength + "1"]
        return lam

    @property
    def margin(self) -> float:
        """Degrees simulated beyond the grid so that tails of peaks just outside still appear."""
        return 1.0


def simulate_one(crystal: Crystal, settings: SimulationSettings) -> tuple[Reflections, np.ndarray]:
    """Reflections and the max-normalised float32 profile of one crystal on ``settings.grid``."""
    grid = settings.grid
    lam = settings.reflection_wavelength
    rng = (max(grid.start - settings.margin, 0.5), min(grid.stop + settings.margin, 179.0))
    refl = reflections(crystal, lam, rng, settings.debye_waller, settings.min_intensity)
    positions, heights = refl.two_theta, refl.intensity
    if settings.doublet and isinstance(settings.wavelength, str) and settings.wavelength.endswith("Ka"):
        lam2 = WAVELENGTHS[settings.wavelength + "2"]
        sin2 = lam2 * np.sin(np.radians(positions / 2)) / lam
        ok = sin2 < 1
        positions = np.r_[positions, np.degrees(2 * np.arcsin(sin2[ok]))]
        heights = np.r_[heights, KALPHA2_RATIO * heights[ok]]
    fwhm = caglioti_fwhm(positions, *settings.caglioti)
    profile = render(positions, heights, grid, fwhm, shape=settings.profile, eta=settings.eta)
    peak = profile.max()
    return refl, (profile / peak if peak > 0 else profile).astype(np.float32)


@dataclass
class PatternSet:
    """The ``simulate`` stage's output: profiles (memory-mapped) and reflections of every library entry.

    Files in the folder: ``profiles.npy`` float32 (n_entries, n_points), each row max-normalised;
    ``reflections.npz`` with ``offsets`` (n_entries + 1), ``two_theta``, ``intensity``
    (strongest = 100 per entry), ``hkl`` (m, 3), ``multiplicity``, ``d_spacing``;
    ``meta.json`` with ``ids`` (library order), the grid and the settings.

    Examples
    --------
    >>> ps = PatternSet.load("data/patterns")  # doctest: +SKIP
    >>> ps.profiles.shape, ps.peaks(0)[0][:3]  # doctest: +SKIP
    """

    ids: list[str]
    grid: Grid
    profiles: np.ndarray
    offsets: np.ndarray
    two_theta: np.ndarray
    intensity: np.ndarray
    hkl: np.ndarray
    multiplicity: np.ndarray
    d_spacing: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> PatternSet:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            refl = np.load(folder / "reflections.npz")
            profiles = np.load(folder / "profiles.npy", mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise InputError(folder, f"not a simulated pattern set ({exc})") from exc
        return cls(
            ids=list(meta["ids"]),
            grid=Grid.from_params(meta["grid"]),
            profiles=profiles,
            meta=meta,
            **{k: refl[k] for k in ("offsets", "two_theta", "intensity", "hkl", "multiplicity", "d_spacing")},
        )

    def __len__(self) -> int:
        return len(self.ids)

    def peaks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(2θ, intensity) of entry ``index``'s reflections."""
        sl = slice(self.offsets[index], self.offsets[index + 1])
        return self.two_theta[sl], self.intensity[sl]

    def padded_peaks(self, max_peaks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All entries' reflections as (n_entries, P) arrays, strongest first, padded with NaN / 0.

        ``max_peaks`` keeps only the strongest P reflections of each entry (P = the largest count
        when None); handy for rendering many augmented patterns at once.
        """
        counts = np.diff(self.offsets)
        width = int(counts.max()) if max_peaks is None else int(min(max_peaks, counts.max()))
        entry = np.repeat(np.arange(len(self)), counts)
        # rank of each reflection within its entry by decreasing intensity
        order = np.lexsort((-self.intensity, entry))
        rank = np.arange(len(order)) - self.offsets[entry[order]]
        keep = rank < width
        two_theta = np.full((len(self), width), np.nan, dtype=np.float32)
        intensity = np.zeros((len(self), width), dtype=np.float32)
        two_theta[entry[order][keep], rank[keep]] = self.two_theta[order][keep]
        intensity[entry[order][keep], rank[keep]] = self.intensity[order][keep]
        return two_theta, intensity


def _simulate_worker(args: tuple[Crystal, SimulationSettings]) -> tuple[Reflections | None, np.ndarray | None, str]:
    crystal, settings = args
    try:
        refl, profile = simulate_one(crystal, settings)
        if len(refl) == 0:
            return None, None, "no reflections in the 2θ range"
        return refl, profile, ""
    except (ValueError, MemoryError) as exc:
        return None, None, str(exc)


def simulate_library(
    library_dir: str | Path,
    out_dir: str | Path,
    settings: SimulationSettings,
    workers: int = 2,
    progress: bool = True,
) -> PatternSet:
    """Simulate every entry of a library folder into ``out_dir`` (see :class:`PatternSet`).

    Entries that fail are logged and written to ``out_dir/rejects.csv``; they are left out of the set.
    """
    from xrdid.library import Library

    library = Library.load(library_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(library)
    jobs = ((library.crystal(i), settings) for i in range(n))
    results: list[tuple[Reflections | None, np.ndarray | None, str]] = []
    bar = tqdm(total=n, desc="simulate", unit="structure", disable=not progress)
    if workers > 1 and n > 1:
        with ProcessPoolExecutor(workers, initializer=_single_thread) as pool:
            for result in pool.map(_simulate_worker, jobs, chunksize=8):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_simulate_worker(job))
            bar.update()
    bar.close()

    ok = [i for i, (r, _, _) in enumerate(results) if r is not None]
    rejects = [(library.ids[i], results[i][2]) for i in range(n) if results[i][0] is None]
    with open(out / "rejects.csv", "w") as fh:
        fh.write("id,reason\n")
        fh.writelines(f"{i},{json.dumps(reason)}\n" for i, reason in rejects)
    for entry, reason in rejects:
        log.warning("simulate: %s rejected: %s", entry, reason)
    if not ok:
        raise InputError(library_dir, "no library entry could be simulated")

    profiles = np.lib.format.open_memmap(out / "profiles.npy", mode="w+", dtype=np.float32,
                                         shape=(len(ok), settings.grid.n_points))
    for row, i in enumerate(ok):
        profiles[row] = results[i][1]
    profiles.flush()
    refls = [results[i][0] for i in ok]
    np.savez(
        out / "reflections.npz",
        offsets=np.r_[0, np.cumsum([len(r) for r in refls])].astype(np.int64),
        two_theta=np.concatenate([r.two_theta for r in refls]).astype(np.float32),
        intensity=np.concatenate([r.intensity for r in refls]).astype(np.float32),
        hkl=np.concatenate([r.hkl for r in refls]).astype(np.int16),
        multiplicity=np.concatenate([r.multiplicity for r in refls]).astype(np.int32),
        d_spacing=np.concatenate([r.d_spacing for r in refls]).astype(np.float32),
    )
    meta = {
        "ids": [library.ids[i] for i in ok],
        "grid": settings.grid.to_dict(),
        "wavelength": settings.wavelength,
        "wavelength_angstrom": wavelength_angstrom(settings.wavelength),
        "reflection_wavelength_angstrom": settings.reflection_wavelength,
        "doublet": settings.doublet,
        "profile": settings.profile,
        "eta": settings.eta,
        "caglioti": dict(zip("UVW", settings.caglioti)),
        "debye_waller": settings.debye_waller,
        "n_rejected": len(rejects),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log.info("simulate: %d patterns written to %s (%d rejected)", len(ok), out, len(rejects))
    return PatternSet.load(out)


def _single_thread() -> None:
    # Two worker processes on two cores: keep BLAS/OpenMP from oversubscribing them.
    os.environ["OMP_NUM_THREADS"] = "1"


# --------------------------------------------------------------------------- CLI


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="stage: simulate every library entry's pattern")
    p.add_argument("--params", default="params.yaml", help="parameter file (sections grid, simulate)")
    p.add_argument("--library", default="data/library", help="library folder from `xrdid library`")
    p.add_argument("--out", default="data/patterns", help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = subparsers.add_parser("pattern", help="reflections of one CIF (positions, intensities, hkl)")
    p.add_argument("cif", help="CIF file")
    p.add_argument("--wavelength", default="CuKa", help="Å or a name such as CuKa, CuKa1, MoKa (default CuKa)")
    p.add_argument("--min", dest="two_theta_min", type=float, default=5.0, help="lowest 2θ in degrees (default 5)")
    p.add_argument("--max", dest="two_theta_max", type=float, default=90.0, help="highest 2θ in degrees (default 90)")
    p.add_argument("--b-iso", type=float, default=0.0, help="isotropic Debye–Waller B in Å² for every element")
    p.add_argument("--json", action="store_true", help="print the reflections as JSON")
    p.set_defaults(func=_cmd_pattern)


def _cmd_simulate(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    settings = SimulationSettings.from_params(params)
    workers = int(params.get("simulate", {}).get("workers", 2))
    simulate_library(args.library, args.out, settings, workers=workers, progress=not args.no_progress)
    return 0


def _cmd_pattern(args: argparse.Namespace) -> int:
    from xrdid.library import Crystal

    try:
        wavelength = wavelength_angstrom(args.wavelength)
    except ValueError as exc:
        raise InputError(None, str(exc)) from exc
    if not 0 <= args.two_theta_min < args.two_theta_max <= 180:
        raise InputError(None, f"invalid 2θ range {args.two_theta_min}–{args.two_theta_max}")
    crystal = Crystal.from_cif(args.cif)
    try:
        refl = reflections(crystal, wavelength, (args.two_theta_min, args.two_theta_max), {"*": args.b_iso})
    except ValueError as exc:
        raise InputError(args.cif, str(exc)) from exc
    records = refl.to_records()
    if args.json:
        print(json.dumps(records))
    else:
        print(f"{crystal.id}: {len(records)} reflections, λ = {wavelength} Å")
        print(f"{'2θ':>10} {'I':>8}  {'hkl':<14} {'mult':>4} {'d (Å)':>9}")
        for r in records:
            print(f"{r['two_theta']:10.4f} {r['intensity']:8.2f}  {str(tuple(r['hkl'])):<14} "
                  f"{r['multiplicity']:4d} {r['d_spacing']:9.4f}")
    return 0
