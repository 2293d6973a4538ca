"""Augmentation: realistic synthetic spectra from simulated reflections and the noise bank.

The ``augment`` stage (:mod:`xrdid.stages.augment`) writes the datasets built here.

Every spectrum starts from the reflections of one library entry (the ``simulate`` stage's
:class:`~xrdid.data.patterns.PatternSet`), varied the way measured patterns differ from simulated
ones, drawn as a profile, cut down to its main peaks and merged with measured noise:

1. **reflections**: the strongest ``max_peaks`` reflections of the entry (200 by default; weaker
   ones lie far below the main-peak cut for any realistic pattern and cost rendering time);
2. **lattice strain**: a, b and c of the entry's cell are scaled by ``1 + e`` with e drawn per axis
   (``strain``: one ``[lo, hi]`` for all axes or one per axis), and each peak's d is recomputed
   from its representative hkl and the strained cell: MOFs breathe anisotropically (MIL-53 moves
   by a degree or more). Peaks merged in the simulation (e.g. 200/020/002 of a cubic cell) move
   together with their representative. Without a library the cell is unknown: one factor per
   spectrum (isotropic strain, from the mean range);
3. **intensities**: a log-normal factor per peak (``intensity_sigma``; ``unreliable_intensity_sigma``
   for entries whose structure has overlapping atoms, library column ``overlaps``: a broken model
   whose cell, hence peak positions, can be trusted but not its intensities) and, with probability
   ``texture_probability``, March–Dollase preferred orientation
   ``(r² cos²α + sin²α / r)^(-3/2)`` with α the angle between a peak's plane normal and a low-index
   (or random) direction, r log-uniform in ``texture_r`` (r = 1 is no texture);
4. **Kα2**: with probability ``kalpha2_probability`` every peak becomes a Kα1 + Kα2 doublet
   (I(Kα2) = I(Kα1)/2) at the two wavelengths of the simulated line;
5. **zero shift**: one 2θ offset per spectrum (``zero_shift``);
6. **profile**: sticks on the grid convolved by FFT with the simulated peak shape (Gaussian or
   pseudo-Voigt of the Caglioti FWHM) times a Lorentzian of the Scherrer width ``K λ / (L cos θ)``
   for a crystallite size L drawn per spectrum (``crystallite_size``). The transforms are exact
   (uncut Lorentzian tails); each stick is spread over its 3 nearest points by a quadratic
   B-spline whose transform is divided out, so the profile matches
   :func:`xrdid.xrd.profiles.render` to ~0.3 % of the strongest peak even at 5 points per FWHM. One
   width per spectrum and band: the widths at the intensity-weighted mean 2θ of each of
   ``width_bands`` bands of the grid (one band: the Scherrer width is within 5 % on 2–50°);
7. **merge** (Wang et al. 2020): the ``main_points`` largest points of the profile are kept (ties
   included), all others set to 0, and a noise-bank row (background + noise as a fraction of the
   strongest peak) times ``noise_scale`` is added, its points ``permute``-d (published), its
   ``segments`` of ``segment_width`` shuffled, or kept in order (``keep``; a list draws one mode
   per spectrum); each row is finally divided by its maximum.

``permute`` draws, per chunk, one permuted bank row per 32 spectra and gives each spectrum a random
cyclic roll of one of them: a full permutation per spectrum would cost more than the rest of the
pipeline. Every variation is switched off by a zero range or probability (``crystallite_size:
null``). Spectra are drawn in chunks of ``chunk_size`` (256: the working set stays in cache); the
draws of a chunk come from its own ``SeedSequence(seed).spawn`` child, so the bytes do not depend
on threads or scheduling. Per entry the constructor keeps ~50 bytes per reflection kept
(``max_peaks``): ~120 MB for 12,000 entries.

Output folder (``data/augmented``): ``train/X.npy``, ``val/X.npy`` float16 (N, n_points), rows
max-normalised to 1; ``train/y.npy``, ``val/y.npy`` int32 (N,), index of the library entry in
PatternSet order (``meta.json`` ``ids``); ``meta.json``: ids, grid, ratio, seed, params, counts.
Each entry gets ``ratio`` spectra, ``round(ratio · val_fraction)`` of them in validation; rows are
in a seeded random order. With ``mixtures.count`` > 0, ``mixtures/X.npy`` also holds that many
spectra of 2–4 entries (``mixtures.phases``) at random weight fractions, each phase varied on its
own, scaled by its scattering power per unit mass, on one noise-bank row
(:meth:`Augmenter.sample_mixtures`), with ``mixtures/entries.npy`` and ``mixtures/fractions.npy``.

Examples
--------
>>> ps = PatternSet.load("data/patterns")  # doctest: +SKIP
>>> aug = Augmenter.from_params(ps, np.load("data/noise_bank/noise.npy"), Library.load("data/library"),
...                             load_params("params.yaml", "augment"))  # doctest: +SKIP
>>> X, y = aug.sample(np.random.default_rng(0), 128)  # doctest: +SKIP
>>> X.shape, X.dtype, float(X.max(axis=1).min())  # doctest: +SKIP
((128, 4801), dtype('float32'), 1.0)
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from pymatgen.analysis.diffraction.xrd import WAVELENGTHS
from tqdm import tqdm

from xrdid.config import Grid
from xrdid.data.patterns import PatternSet
from xrdid.data.splits import split_sizes
from xrdid.errors import InputError
from xrdid.outputs import atomic_dir
from xrdid.xrd.diffraction import KALPHA2_RATIO, intensity_per_mass
from xrdid.xrd.profiles import caglioti_fwhm

if TYPE_CHECKING:
    from collections.abc import Callable

    from xrdid.data.library import Library
    from xrdid.xrd.crystal import Crystal

log = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "Augmenter", "load_noise_bank", "write_augmented"]

DEFAULTS: dict[str, Any] = {
    "ratio": 72,
    "val_fraction": 0.2,
    "seed": 0,
    "main_points": 400,
    "max_peaks": 200,
    "shuffle": "permute",
    "segment_width": 2.0,
    "noise_scale": [1.0, 1.0],
    "zero_shift": [-0.1, 0.1],
    "strain": [-0.02, 0.02],
    "intensity_sigma": 0.15,
    "unreliable_intensity_sigma": None,
    "texture_probability": 0.5,
    "texture_r": [0.7, 1.4],
    "texture_direction": "low-index",
    "crystallite_size": [30.0, 1000.0],
    "scherrer_k": 0.9,
    "kalpha2_probability": 0.5,
    "width_bands": 1,
    "chunk_size": 256,
    "workers": 2,
    "mixtures": {"count": 0, "phases": [2, 4], "min_fraction": 0.05},
}
SHUFFLE_MODES = ("permute", "segments", "keep")
_RANGES = ("noise_scale", "zero_shift", "texture_r", "crystallite_size")
# Plane normals of {100}, {110}, {111} up to sign: the low-index texture directions.
_LOW_INDEX = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1],
                       [0, 1, 1], [0, 1, -1], [1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]], dtype=np.float64)
_SHAPE_ETA = {"gaussian": 0.0, "lorentzian": 1.0}
_MARGIN_DEG = 1.0  # the simulate stage keeps reflections 1° beyond the grid; so do the sticks
_WRAP_DEG = 4.0  # FFT padding: a Lorentzian tail wrapping around is ~(FWHM / 8°)² of its peak
_SUBSAMPLE = 8  # main-point threshold: bracketed on every 8th point (a miss falls back to a partition)
_POOL_SHARE = 32  # spectra per permuted bank row in the permute shuffle


def _settings(params: dict[str, Any] | None) -> dict[str, Any]:
    """Merge ``params`` into :data:`DEFAULTS` and validate; raises ValueError naming the key."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augment settings: {', '.join(unknown)}")
    p = {**DEFAULTS, **params}
    for key in _RANGES:
        if key == "crystallite_size" and p[key] is None:
            continue
        value = p[key]
        if not (isinstance(value, list | tuple) and len(value) == 2) or float(value[0]) > float(value[1]):
            raise ValueError(f"{key} must be a range [lo, hi] with lo <= hi, got {value!r}")
        p[key] = [float(value[0]), float(value[1])]
    strain = p["strain"]
    if isinstance(strain, list | tuple) and len(strain) == 3 and all(isinstance(v, list | tuple) for v in strain):
        axes = [list(v) for v in strain]
    else:
        axes = [strain] * 3
    if not all(isinstance(v, list | tuple) and len(v) == 2 and -1 < float(v[0]) <= float(v[1]) for v in axes):
        raise ValueError(f"strain must be [lo, hi] or one [lo, hi] per axis a, b, c with -1 < lo <= hi, got {strain!r}")
    p["strain"] = [[float(v[0]), float(v[1])] for v in axes]
    if p["crystallite_size"] is not None and p["crystallite_size"][0] <= 0:
        raise ValueError("crystallite_size must be positive (nm) or null")
    if p["texture_r"][0] <= 0:
        raise ValueError("texture_r must be positive")
    modes = [p["shuffle"]] if isinstance(p["shuffle"], str) else list(p["shuffle"])
    if not modes or any(m not in SHUFFLE_MODES for m in modes):
        raise ValueError(f"shuffle must be one of {SHUFFLE_MODES} or a list of them, got {p['shuffle']!r}")
    p["shuffle"] = modes[0] if len(modes) == 1 else modes
    if p["texture_direction"] not in ("low-index", "random"):
        raise ValueError(f"texture_direction must be low-index or random, got {p['texture_direction']!r}")
    for key in ("ratio", "main_points", "max_peaks", "width_bands", "chunk_size", "workers"):
        p[key] = int(p[key])
        if p[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {p[key]}")
    for key in ("val_fraction", "texture_probability", "kalpha2_probability"):
        p[key] = float(p[key])
        if not 0 <= p[key] <= 1:
            raise ValueError(f"{key} must lie in [0, 1], got {p[key]}")
    if p["unreliable_intensity_sigma"] is None:
        p["unreliable_intensity_sigma"] = p["intensity_sigma"]
    for key in ("intensity_sigma", "unreliable_intensity_sigma", "segment_width", "scherrer_k"):
        p[key] = float(p[key])
        if p[key] < 0 or (key == "segment_width" and p[key] == 0):
            raise ValueError(f"{key} must be positive, got {p[key]}")
    p["seed"] = int(p["seed"])
    p["mixtures"] = _mixture_settings(p["mixtures"])
    return p


def _mixture_settings(value: Any) -> dict[str, Any]:
    """The ``mixtures`` block: ``count`` spectra of ``phases`` [lo, hi] entries, each ≥ ``min_fraction`` by weight."""
    m = {**DEFAULTS["mixtures"], **(value or {})}
    unknown = sorted(set(m) - set(DEFAULTS["mixtures"]))
    if unknown:
        raise ValueError(f"unknown augment.mixtures settings: {', '.join(unknown)}")
    lo, hi = (int(v) for v in m["phases"]) if isinstance(m["phases"], list | tuple) and len(m["phases"]) == 2 else (0, 0)
    if not 1 <= lo <= hi:
        raise ValueError(f"mixtures.phases must be a range [lo, hi] with 1 <= lo <= hi, got {m['phases']!r}")
    count, floor = int(m["count"]), float(m["min_fraction"])
    if count < 0:
        raise ValueError(f"mixtures.count must be >= 0, got {count}")
    if not 0 <= floor * hi < 1:
        raise ValueError(f"mixtures.min_fraction × the most phases must lie in [0, 1), got {floor} × {hi}")
    return {"count": count, "phases": [lo, hi], "min_fraction": floor}


class Augmenter:
    """Draws augmented spectra of the entries of a :class:`~xrdid.data.patterns.PatternSet`.

    Build it with :meth:`from_params`; see the module notes for what is varied and how.

    Attributes
    ----------
    grid : the 2θ grid of the patterns and the output.
    ids : library ids in PatternSet order (label ``i`` is ``ids[i]``).
    settings : the ``augment`` parameters, defaults filled in.

    Examples
    --------
    >>> aug = Augmenter.from_params(patterns, noise, library, {"ratio": 10})  # doctest: +SKIP
    >>> X, y = aug.sample(np.random.default_rng(0), np.array([0, 0, 1]))  # doctest: +SKIP
    >>> X.shape, y.tolist()  # doctest: +SKIP
    ((3, 4801), [0, 0, 1])
    """

    def __init__(self, patterns: PatternSet, noise: np.ndarray | None, lattices: np.ndarray | None,
                 settings: dict[str, Any], unreliable: np.ndarray | None = None,
                 crystal: Callable[[int], Crystal] | None = None) -> None:
        p = self.settings = settings
        self.grid: Grid = patterns.grid
        self.ids = list(patterns.ids)
        n = self.grid.n_points
        self._noise = None if noise is None else np.ascontiguousarray(noise, dtype=np.float32)
        meta = patterns.meta
        self._lambda = float(meta.get("reflection_wavelength_angstrom") or meta.get("wavelength_angstrom") or 1.54184)
        self._eta = float(_SHAPE_ETA.get(meta.get("profile", "pseudo-voigt"), meta.get("eta", 0.5)))
        cag = meta.get("caglioti") or {"U": 0.0, "V": 0.0, "W": 0.01}
        self._caglioti = tuple(float(cag[k]) for k in "UVW")
        self._kalpha = _kalpha_wavelengths(meta.get("wavelength"))
        if self._kalpha is None and p["kalpha2_probability"] > 0:
            log.warning("augment: wavelength %r has no Kα doublet; Kα2 augmentation is off", meta.get("wavelength"))

        two_theta, intensity, hkl = _padded_reflections(patterns, p["max_peaks"])
        self._sin = np.sin(np.radians(two_theta.astype(np.float64) / 2)).astype(np.float32)  # NaN = padding
        self._intensity = intensity
        # log-normal σ of the per-peak intensity factor, per entry
        self._sigma = np.full(len(self.ids), p["intensity_sigma"], dtype=np.float32)
        if unreliable is not None:
            self._sigma[np.asarray(unreliable, bool)] = p["unreliable_intensity_sigma"]
        self._lattice = lattices is not None
        if self._lattice:
            recip = np.linalg.inv(np.asarray(lattices, dtype=np.float64)).transpose(0, 2, 1)  # rows a*, b*, c*
            g = np.einsum("epi,eij->epj", hkl.astype(np.float64), recip)  # Cartesian scattering vectors
            g_norm = np.linalg.norm(g, axis=2)
            d = patterns.d_spacing
            expected = _padded_values(patterns, d.astype(np.float64), p["max_peaks"])
            ok = (intensity == 0) | (np.abs(g_norm * expected - 1) < 1e-3)
            if not ok.all():
                bad = self.ids[int(np.flatnonzero(~ok.all(axis=1))[0])]
                raise InputError(None, f"the library lattice of entry {bad} does not match its simulated "
                                       "reflections: library and patterns come from different runs")
            # |g|² = Σ G*_ij h_i h_j; with the cell scaled by (1 + e) per axis h_i becomes h_i / (1 + e_i), so
            # (|g'| / |g|)² = Σ_k w_k / s_k with w_k = G*_ij h_i h_j / |g|² (ij = 11 22 33 12 13 23, off-
            # diagonal terms doubled) per reflection and s_k = (1 + e_i)(1 + e_j) per spectrum
            metric = recip @ recip.transpose(0, 2, 1)
            pairs = ([0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2])
            terms = hkl[..., pairs[0]].astype(np.float64) * hkl[..., pairs[1]] * metric[:, None, pairs[0], pairs[1]]
            terms[..., 3:] *= 2
            self._strain_terms = (terms / np.where(g_norm > 0, g_norm**2, 1)[..., None]).astype(np.float32)
            self._pairs = pairs
            self._g_unit = (g / np.where(g_norm > 0, g_norm, 1)[..., None]).astype(np.float32)
            low = np.einsum("ui,eij->euj", _LOW_INDEX, recip)
            self._low_index = (low / np.linalg.norm(low, axis=2, keepdims=True)).astype(np.float32)

        need = n + 2 * _points(_MARGIN_DEG, self.grid) + 4 + _points(_WRAP_DEG, self.grid)
        self._n_fft = scipy.fft.next_fast_len(need, real=True)
        self._freq = (np.arange(self._n_fft // 2 + 1) / self._n_fft).astype(np.float32)  # cycles per point
        self._unspread = (1 / np.sinc(self._freq.astype(np.float64)) ** 3).astype(np.float32)  # see _render
        self._shape_cache: tuple[float, np.ndarray] = (math.nan, self._freq)
        self._segment = min(n, max(1, _points(p["segment_width"], self.grid)))
        # mixtures only, computed at their first draw: entry → structure, Σ intensity on the grid, power per mass
        self._patterns, self._crystal = patterns, crystal
        self._intensity_sum: np.ndarray | None = None
        self._per_mass: dict[int, float] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_params(cls, patterns: PatternSet, noise_bank: np.ndarray | None, library: Library | None,
                    params: dict[str, Any] | None = None) -> Augmenter:
        """Build from the stage inputs and the ``augment`` section of params.yaml.

        Parameters
        ----------
        patterns : the ``simulate`` output.
        noise_bank : float (n_rows, n_points) background + noise rows on the patterns' grid
            (``data/noise_bank/noise.npy``); None merges no noise (clean main peaks).
        library : the library the patterns were simulated from (its cells drive the anisotropic
            strain and the texture); None: isotropic strain and no texture.
        params : the ``augment`` section; missing keys take :data:`DEFAULTS`.

        Raises
        ------
        ValueError
            An unknown key or a value out of range in ``params``.
        InputError
            A noise bank on another grid; library entries missing or not matching the patterns.

        Examples
        --------
        >>> aug = Augmenter.from_params(ps, None, None, {"strain": [0, 0]})  # doctest: +SKIP
        """
        p = _settings(params)
        n = patterns.grid.n_points
        if noise_bank is not None and (np.ndim(noise_bank) != 2 or np.shape(noise_bank)[1] != n
                                       or np.shape(noise_bank)[0] < 1):
            raise InputError(None, f"noise bank of shape {np.shape(noise_bank)} does not fit the {n}-point grid "
                                   "of the patterns")
        lattices = unreliable = None
        if library is not None:
            index = {entry: i for i, entry in enumerate(library.ids)}
            missing = [entry for entry in patterns.ids if entry not in index]
            if missing:
                raise InputError(library.folder, f"{len(missing)} pattern entries are not in the library "
                                                 f"(first: {missing[0]})")
            lattices = np.asarray(library.lattice)[[index[entry] for entry in patterns.ids]]
            unreliable = _unreliable_entries(library, patterns.ids)
            rows = [index[entry] for entry in patterns.ids]
            if unreliable is not None and unreliable.any() and p["unreliable_intensity_sigma"] != p["intensity_sigma"]:
                log.info("augment: %d entries with overlapping atoms draw intensities with σ = %g",
                         int(unreliable.sum()), p["unreliable_intensity_sigma"])
        elif p["texture_probability"] > 0 or np.ptp(p["strain"]) > 0:
            log.info("augment: no library: strain is isotropic and texture is off")
        crystal = (lambda i: library.crystal(rows[i])) if library is not None else None
        return cls(patterns, noise_bank, lattices, p, unreliable, crystal)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ drawing

    def sample(self, rng: np.random.Generator, labels: int | np.ndarray,
               workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw fresh augmented spectra (a ``GeneratorDataset`` sample function).

        Parameters
        ----------
        rng : the source of every random draw (same state, same spectra).
        labels : entry indices to draw, or a count (then drawn uniformly over the entries).
        workers : FFT threads (default: the ``workers`` setting); large batches are drawn
            ``chunk_size`` spectra at a time.

        Returns
        -------
        X : float32 (B, n_points), each row max-normalised to 1.
        y : int32 (B,), the labels.

        Examples
        --------
        >>> X, y = aug.sample(np.random.default_rng(1), 64)  # doctest: +SKIP
        """
        if np.ndim(labels) == 0:
            labels = rng.integers(0, len(self), int(labels))
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self)):
            raise ValueError(f"labels must lie in [0, {len(self)})")
        workers = self.settings["workers"] if workers is None else workers
        size = self.settings["chunk_size"]
        if len(labels) <= size:
            return self._draw(labels, rng, workers), labels.astype(np.int32)
        X = np.empty((len(labels), self.grid.n_points), dtype=np.float32)
        for start in range(0, len(labels), size):
            X[start:start + size] = self._draw(labels[start:start + size], rng, workers)
        return X, labels.astype(np.int32)

    def _draw(self, labels: np.ndarray, rng: np.random.Generator, workers: int = 1) -> np.ndarray:
        """Augmented, max-normalised float32 spectra of ``labels``; every draw comes from ``rng``."""
        if len(labels) == 0:
            return np.zeros((0, self.grid.n_points), dtype=np.float32)
        position, height = self._vary(labels, rng)
        return self._merge(_main_peaks(self._render(position, height, rng, workers), self.settings["main_points"]), rng)

    def _merge(self, main: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Main peaks plus noise-bank rows, max-normalised (step 7 of the module notes)."""
        lo, hi = self.settings["noise_scale"]
        if self._noise is None or hi == 0:
            return _normalise(np.ascontiguousarray(main))
        noise = self._noise_rows(len(main), rng)
        # the bank's unit is the strongest peak: scale by the profile's maximum
        noise *= rng.uniform(lo, hi, (len(main), 1)).astype(np.float32) * main.max(axis=1, keepdims=True)
        noise += main
        return _normalise(noise)

    def sample_mixtures(self, rng: np.random.Generator, count: int,
                        workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw spectra of mixtures: ``mixtures.phases`` distinct entries at random weight fractions.

        Each phase is varied, broadened and cut to its main peaks on its own (strain, intensities,
        texture, Kα2, zero shift, crystallite size, ``main_points``, as :meth:`sample`), scaled so
        that its integrated intensity is its weight fraction times its scattering power per unit mass
        (:func:`~xrdid.xrd.diffraction.intensity_per_mass`: weight fractions as in quantitative
        phase analysis; intensity fractions without a library), and the sum gets one noise-bank row.
        Fractions are uniform on the simplex above ``mixtures.min_fraction``. A library of fewer
        entries than ``mixtures.phases`` asks gives mixtures of all of them.

        Returns
        -------
        X : float32 (count, n_points), max-normalised rows.
        entries : int32 (count, most phases), the entries of each row, -1 past its phases.
        fractions : float32 (count, most phases), their weight fractions (0 past its phases).

        Examples
        --------
        >>> X, entries, fractions = aug.sample_mixtures(np.random.default_rng(0), 8)  # doctest: +SKIP
        >>> fractions.sum(axis=1)  # doctest: +SKIP
        array([1., 1., 1., 1., 1., 1., 1., 1.], dtype=float32)
        """
        m = self.settings["mixtures"]
        lo, hi = (min(v, len(self)) for v in m["phases"])  # a library smaller than the range: all of it at most
        k = rng.integers(lo, hi + 1, count)
        present = np.arange(hi) < k[:, None]
        entries = np.full((count, hi), -1, np.int32)
        fractions = np.zeros((count, hi), np.float32)
        for i in range(count):  # distinct entries per row; a row at a time keeps a 25,000-entry library cheap
            entries[i, :k[i]] = rng.choice(len(self), k[i], replace=False)
            fractions[i, :k[i]] = m["min_fraction"] + (1 - k[i] * m["min_fraction"]) * rng.dirichlet(np.ones(k[i]))
        flat = entries[present]
        profiles = np.zeros((len(flat), self.grid.n_points), np.float32)
        workers = self.settings["workers"] if workers is None else workers
        size = self.settings["chunk_size"]
        scale = (fractions[present] * self._power(flat) / self._intensity_on_grid()[flat]).astype(np.float32)
        for start in range(0, len(flat), size):
            part = slice(start, start + size)
            position, height = self._vary(flat[part].astype(np.int64), rng)
            drawn = self._render(position, height * scale[part, None], rng, workers)
            profiles[part] = _main_peaks(drawn, self.settings["main_points"])  # per phase: a minor one keeps its peaks
        starts = np.concatenate([[0], np.cumsum(k)[:-1]])
        return self._merge(np.add.reduceat(profiles, starts, axis=0), rng), entries, fractions

    def _intensity_on_grid(self) -> np.ndarray:
        """Each entry's Σ reflection intensity (strongest = 100) inside the grid: its profile's area, unscaled."""
        if self._intensity_sum is None:
            ps = self._patterns
            inside = (ps.two_theta >= self.grid.start) & (ps.two_theta <= self.grid.stop)
            cumulative = np.concatenate([[0.0], np.cumsum(np.where(inside, ps.intensity, 0.0))])
            self._intensity_sum = np.maximum(np.diff(cumulative[np.asarray(ps.offsets)]), 1e-12)
        return self._intensity_sum

    def _power(self, entries: np.ndarray) -> np.ndarray:
        """Scattering power per unit mass of ``entries`` (cached; 1 without structures)."""
        if self._crystal is None:
            return np.ones(len(entries))
        span = (self.grid.start, self.grid.stop)
        for e in set(entries.tolist()) - set(self._per_mass):
            self._per_mass[e] = intensity_per_mass(self._crystal(e), self._lambda, span)
        return np.array([self._per_mass[e] for e in entries.tolist()])

    def _vary(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Peak positions (2θ, degrees; NaN = none) and heights after strain, intensity, texture, Kα2, shift."""
        p = self.settings
        b = len(labels)
        sin = self._sin[labels]
        height = self._intensity[labels].copy()

        lo, hi = np.array(p["strain"]).T  # per axis a, b, c
        if np.any(lo != 0) or np.any(hi != 0):
            if self._lattice:
                # d of each peak from its representative hkl in the cell scaled by (1 + e) per axis
                scale = 1 + rng.uniform(lo, hi, (b, 3))
                inverse = (1 / (scale[:, self._pairs[0]] * scale[:, self._pairs[1]])).astype(np.float32)
                sin = sin * np.sqrt(np.einsum("bpk,bk->bp", self._strain_terms[labels], inverse))
            else:  # no cell: one factor, from the mean of the axes' ranges
                sin = sin / (1 + rng.uniform(lo.mean(), hi.mean(), (b, 1))).astype(np.float32)

        sigma = self._sigma[labels]
        if sigma.any():
            height *= np.exp(sigma[:, None] * rng.standard_normal((b, height.shape[1]), dtype=np.float32))

        textured = rng.random(b) < p["texture_probability"]
        if self._lattice and textured.any():
            rows = np.flatnonzero(textured)
            if p["texture_direction"] == "random":
                axis = rng.standard_normal((len(rows), 3)).astype(np.float32)
                axis /= np.linalg.norm(axis, axis=1, keepdims=True)
            else:
                axis = self._low_index[labels[rows], rng.integers(0, len(_LOW_INDEX), len(rows))]
            cos2 = np.einsum("bpi,bi->bp", self._g_unit[labels[rows]], axis) ** 2
            lo, hi = p["texture_r"]
            r = np.exp(rng.uniform(math.log(lo), math.log(hi), (len(rows), 1))).astype(np.float32)
            height[rows] *= (r**2 * cos2 + (1 - cos2) / r) ** -1.5

        doublet = rng.random(b) < p["kalpha2_probability"]
        if self._kalpha is not None and doublet.any():
            k1, k2 = self._kalpha[0] / self._lambda, self._kalpha[1] / self._lambda
            sin = np.concatenate([np.where(doublet[:, None], sin * k1, sin), sin * k2], axis=1)
            height = np.concatenate([height, np.where(doublet[:, None], KALPHA2_RATIO * height, 0)], axis=1)

        with np.errstate(invalid="ignore"):  # sin θ > 1: the peak left the sphere; NaN drops it
            position = np.degrees(2 * np.arcsin(sin))
        lo, hi = p["zero_shift"]
        if hi > lo or lo != 0:
            position += rng.uniform(lo, hi, (b, 1)).astype(np.float32)
        return position, height

    def _render(self, position: np.ndarray, height: np.ndarray, rng: np.random.Generator,
                workers: int) -> np.ndarray:
        """Profiles (B, n_points) of the peaks: sticks convolved with each band's peak shape by FFT."""
        p, grid, n_fft = self.settings, self.grid, self._n_fft
        b, k = position.shape[0], p["width_bands"]
        n, margin = grid.n_points, _points(_MARGIN_DEG, grid)
        u = (position - np.float32(grid.start)) / np.float32(grid.step)  # position in grid points
        ok = np.isfinite(u) & (u >= -margin) & (u <= n - 1 + margin) & (height > 0)
        u, weight = np.where(ok, u, 0), np.where(ok, height, 0)
        band = np.clip((u * (k / n)).astype(np.int64), 0, k - 1) if k > 1 else np.zeros(u.shape, np.int64)
        slot = np.arange(b)[:, None] * k + band  # one FFT row per (spectrum, band)

        # the band's widths at its intensity-weighted mean 2θ
        if k == 1:
            total, centre = weight.sum(axis=1), (weight * u).sum(axis=1)
        else:
            total = np.bincount(slot.ravel(), weight.ravel(), minlength=b * k)
            centre = np.bincount(slot.ravel(), (weight * u).ravel(), minlength=b * k)
        default = np.tile((np.arange(k) + 0.5) * n / k, b)
        centre = np.where(total > 0, centre / np.where(total > 0, total, 1), default)
        two_theta = grid.start + centre * grid.step
        fwhm = caglioti_fwhm(two_theta, *self._caglioti) / grid.step  # points
        size = p["crystallite_size"]
        if size is None:
            scherrer = np.zeros(b * k)
        else:
            length = 10 * np.exp(rng.uniform(math.log(size[0]), math.log(size[1]), b))  # Å
            cos = np.cos(np.radians(two_theta / 2))
            scherrer = np.degrees(p["scherrer_k"] * self._lambda / (np.repeat(length, k) * cos)) / grid.step

        # sticks: each peak spread onto its 3 nearest points by a quadratic B-spline, whose transform
        # (sinc³) the transfer function divides out: within ~1e-3 of exact sampling on any grid.
        # Grid point 0 sits at FFT index ``start``, so the sticks beyond either end need no wrapping.
        start = margin + 2
        nearest = np.rint(u)
        t = (u - nearest).astype(np.float32)
        index = (slot * n_fft + start + nearest.astype(np.int64)).ravel()
        sticks = np.zeros(b * k * n_fft, dtype=np.float32)
        for offset, spline in ((-1, (0.5 - t) ** 2 / 2), (0, 0.75 - t * t), (1, (0.5 + t) ** 2 / 2)):
            np.add.at(sticks, index + offset, (weight * spline).ravel())
        spectrum = scipy.fft.rfft(sticks.reshape(b * k, n_fft), axis=1, workers=workers)
        del sticks
        np.multiply(spectrum, self._transfer(fwhm, scherrer), out=spectrum)
        if k > 1:
            spectrum = spectrum.reshape(b, k, -1).sum(axis=1)
        return scipy.fft.irfft(spectrum, n_fft, axis=1, workers=workers)[:, start:start + n]

    def _transfer(self, fwhm: np.ndarray, scherrer: np.ndarray) -> np.ndarray:
        """Fourier transforms (rows, n_fft // 2 + 1) of unit-area pseudo-Voigts convolved with Lorentzians.

        A Gaussian of FWHM Γ transforms to exp(-π² Γ² f² / (4 ln 2)), a Lorentzian of FWHM Γ to
        exp(-π Γ f) (f ≥ 0 in cycles per point); convolution multiplies them. Divided by sinc³ to undo
        the B-spline spreading of the sticks.
        """
        f, n_freq = self._freq, len(self._freq)
        size = (np.pi * scherrer).astype(np.float32)[:, None]
        if np.ptp(fwhm) == 0:  # one instrument width (Caglioti with U = V = 0): one shape × the size term
            out = _exp_linear(size, n_freq, self._n_fft)
            out *= self._shape(float(fwhm[0]))
            return out
        gamma = fwhm.astype(np.float32)[:, None]
        eta = np.float32(self._eta)
        out = eta * _exp_linear(np.float32(np.pi) * gamma + size, n_freq, self._n_fft) if eta > 0 else \
            np.zeros((len(gamma), n_freq), dtype=np.float32)
        a = np.float32(np.pi**2 / (4 * math.log(2))) * gamma**2
        # the Gaussian factor is below e^-20 beyond this frequency for every row: leave those out
        cut = int(np.searchsorted(f, math.sqrt(20 / float(a.min())))) if a.min() > 0 else n_freq
        gauss = np.multiply(a, f[:cut] ** 2)
        gauss += size * f[:cut]
        np.exp(np.negative(gauss, out=gauss), out=gauss)
        gauss *= 1 - eta
        out[:, :cut] += gauss
        out *= self._unspread
        return out

    def _shape(self, fwhm: float) -> np.ndarray:
        """The instrument part of :meth:`_transfer` for one FWHM (points), sinc³ divided out; cached."""
        if self._shape_cache[0] != fwhm:
            f = self._freq.astype(np.float64)
            gauss = np.exp(-(np.pi**2 / (4 * math.log(2))) * fwhm**2 * f**2)
            shape = (self._eta * np.exp(-np.pi * fwhm * f) + (1 - self._eta) * gauss) * self._unspread
            self._shape_cache = (fwhm, shape.astype(np.float32))
        return self._shape_cache[1]

    def _noise_rows(self, b: int, rng: np.random.Generator) -> np.ndarray:
        """(B, n_points) noise-bank rows, shuffled per the ``shuffle`` mode(s)."""
        modes = self.settings["shuffle"]
        bank = self._noise
        source = rng.integers(0, bank.shape[0], b)
        if isinstance(modes, str):
            return self._shuffled(modes, source, rng)
        mode = rng.integers(0, len(modes), b)
        out = np.empty((b, bank.shape[1]), dtype=np.float32)
        for m, name in enumerate(modes):
            rows = np.flatnonzero(mode == m)
            if len(rows):
                out[rows] = self._shuffled(name, source[rows], rng)
        return out

    def _shuffled(self, mode: str, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Bank rows ``source`` in ``mode`` order (a new array)."""
        if mode == "keep":
            return self._noise[source]
        if mode == "segments":
            return _shuffle_segments(self._noise, source, self._segment, rng)
        return _permute_rolled(self._noise, source, rng)


# --------------------------------------------------------------------------- helpers


def _points(degrees: float, grid: Grid) -> int:
    return int(math.ceil(degrees / grid.step))


def _exp_linear(rate: np.ndarray, n_freq: int, n_fft: int) -> np.ndarray:
    """exp(-rate · k / n_fft) for k < n_freq, one row per entry of ``rate`` (R, 1).

    exp(-c (64 q + r)) = exp(-64 c q) · exp(-c r): one product per value instead of one exponential.
    """
    c = -rate.astype(np.float32) / np.float32(n_fft)
    high = np.exp(c * np.arange(0, n_freq + 63, 64, dtype=np.float32))
    low = np.exp(c * np.arange(64, dtype=np.float32))
    return np.multiply(high[:, :, None], low[:, None, :]).reshape(len(rate), -1)[:, :n_freq]


def _kalpha_wavelengths(name: Any) -> tuple[float, float] | None:
    """(λ Kα1, λ Kα2) of a Kα line name such as ``CuKa``; None for Kα1, Kβ or a number (no doublet)."""
    if not isinstance(name, str) or not name.endswith("Ka") or name + "2" not in WAVELENGTHS:
        return None
    return WAVELENGTHS[name + "1"], WAVELENGTHS[name + "2"]


def _strongest_order(patterns: PatternSet, max_peaks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(entry, rank, reflection index) of the ``max_peaks`` strongest reflections of each entry, and P."""
    counts = np.diff(patterns.offsets)
    width = max(1, int(min(max_peaks, counts.max(initial=0))))
    entry = np.repeat(np.arange(len(patterns)), counts)
    order = np.lexsort((-patterns.intensity, entry))  # within each entry, strongest first
    rank = np.arange(len(order)) - patterns.offsets[entry[order]]
    keep = rank < width
    return entry[order][keep], rank[keep], order[keep], width


def _padded_values(patterns: PatternSet, values: np.ndarray, max_peaks: int) -> np.ndarray:
    """Per-reflection ``values`` as (n_entries, P), same layout as :func:`_padded_reflections`, NaN padded."""
    entry, rank, index, width = _strongest_order(patterns, max_peaks)
    out = np.full((len(patterns), width), np.nan, dtype=values.dtype)
    out[entry, rank] = values[index]
    return out


def _unreliable_entries(library: Library, ids: list[str]) -> np.ndarray | None:
    """Per pattern entry: does its structure have overlapping atoms (library ``overlaps`` column)?"""
    if "overlaps" not in library.index:
        log.info("augment: library index %s has no overlaps column (built by an older xrdid): every "
                 "entry's intensities are trusted", library.folder)
        return None
    overlaps = library.index.set_index("id")["overlaps"]
    return overlaps.loc[ids].to_numpy() > 0


def _padded_reflections(patterns: PatternSet, max_peaks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2θ (NaN padded), intensity (0 padded) and hkl of each entry's strongest reflections, (E, P[, 3])."""
    entry, rank, index, width = _strongest_order(patterns, max_peaks)
    two_theta = np.full((len(patterns), width), np.nan, dtype=np.float32)
    intensity = np.zeros((len(patterns), width), dtype=np.float32)
    hkl = np.zeros((len(patterns), width, 3), dtype=np.float32)
    two_theta[entry, rank] = patterns.two_theta[index]
    intensity[entry, rank] = patterns.intensity[index]
    hkl[entry, rank] = patterns.hkl[index]
    return two_theta, intensity, hkl


def _main_peaks(profile: np.ndarray, n_main: int) -> np.ndarray:
    """Zero all but the ``n_main`` largest points of each row (ties kept), in place.

    The exact n-th largest value of each row is found without a full selection: a subsample of
    every 8th point brackets it between two of its own values, and only the points of the row in
    that bracket are sorted; rows whose bracket misses fall back to a partition.
    """
    b, n = profile.shape
    if n_main >= n:
        return profile
    threshold = np.empty(b, dtype=profile.dtype)
    exact = np.ones(b, dtype=bool)
    sub = profile[:, ::_SUBSAMPLE]
    m = sub.shape[1]
    k_lo, k_hi = int(1.3 * n_main / _SUBSAMPLE) + 2, int(0.7 * n_main / _SUBSAMPLE) - 2  # ranks from the top
    if k_hi >= 1 and k_lo < m:
        part = np.partition(sub, [m - k_lo, m - k_hi], axis=1)
        lo, hi = part[:, m - k_lo, None], part[:, m - k_hi, None]
        over = profile > hi  # the n-th largest lies in [lo, hi] when fewer than n points are above hi
        band = profile >= lo  # and n reach lo
        above = _row_counts(over)
        in_band = _row_counts(band) - above
        np.logical_xor(band, over, out=band)  # lo <= hi, so "over" lies within "band"
        exact = (above >= n_main) | (above + in_band < n_main) | (in_band > 2 * n_main)
        band[exact] = False
        flat = np.flatnonzero(band)  # row-major: grouped by row
        if len(flat):
            count = in_band * ~exact
            slot = np.arange(len(flat)) - np.repeat(np.cumsum(count) - count, count)
            values = np.full((b, int(count.max())), np.inf, dtype=profile.dtype)
            row, col = np.divmod(flat, n)
            values[row, slot] = profile[row, col]
            values.sort(axis=1)  # ascending, padding last: the wanted value is at count - (n - above)
            ok = np.flatnonzero(~exact)
            threshold[ok] = values[ok, count[ok] - (n_main - above[ok])]
    if exact.any():
        threshold[exact] = np.partition(profile[exact], n - n_main, axis=1)[:, n - n_main]
    # never keep FFT round-off (|x| ~ 1e-7 of the peak, either sign) of a row with fewer than n peaks' points
    np.maximum(threshold, np.float32(1e-6) * profile.max(axis=1), out=threshold)
    np.multiply(profile, profile >= threshold[:, None], out=profile)
    return profile


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """True values per row of a 2D bool array (bit counts of the packed rows: ~10× a sum)."""
    return np.bitwise_count(np.packbits(mask, axis=1)).sum(axis=1, dtype=np.int64)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Divide each row by its maximum in place (rows with max <= 0 stay)."""
    top = x.max(axis=1, keepdims=True)
    x /= np.where(top > 0, top, 1)
    return x


def _shuffle_segments(bank: np.ndarray, source: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Each row: segments of ``length`` points of its bank row, in a random order."""
    n = bank.shape[1]
    count = -(-n // length)
    starts = np.rint(np.linspace(0, n - length, count)).astype(np.int64)  # cover the row; the last may overlap
    order = np.argsort(rng.random((len(source), count)), axis=1)
    windows = sliding_window_view(bank.reshape(-1), length)
    return windows[source[:, None] * n + starts[order]].reshape(len(source), -1)[:, :n]


def _permute_rolled(bank: np.ndarray, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row: a randomly rolled copy of a permuted bank row, one permuted row per ``_POOL_SHARE`` rows."""
    n = bank.shape[1]
    size = -(-len(source) // _POOL_SHARE)
    pool = rng.permuted(bank[source[:size]], axis=1)
    doubled = np.concatenate([pool, pool], axis=1)
    windows = sliding_window_view(doubled, n, axis=1)  # (size, n + 1, n), no copy
    return windows[rng.integers(0, size, len(source)), rng.integers(0, n, len(source))]


# --------------------------------------------------------------------------- the stage


def load_noise_bank(folder: str | Path, grid: Grid | None = None) -> np.ndarray:
    """``noise.npy`` of a noise-bank folder (``xrdid noise``), checked against ``grid``.

    Raises
    ------
    InputError
        The folder or ``noise.npy`` is missing or unreadable, or it does not fit the grid.

    Examples
    --------
    >>> load_noise_bank("data/noise_bank", Grid(2, 50, 4801)).shape  # doctest: +SKIP
    (352, 4801)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "noise bank folder not found: build it with `xrdid noise` (dvc repro noise)")
    path = folder / "noise.npy"
    try:
        noise = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the noise bank ({exc})") from exc
    if noise.ndim != 2 or noise.shape[0] < 1 or not np.issubdtype(noise.dtype, np.floating):
        raise InputError(path, f"expected a float (n_rows, n_points) array, got {noise.dtype} {noise.shape}")
    if grid is not None:
        if noise.shape[1] != grid.n_points:
            raise InputError(path, f"rows of {noise.shape[1]} points do not fit the {grid.n_points}-point grid "
                                   "of the patterns: rebuild the noise bank")
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            try:
                bank_grid = json.loads(meta_path.read_text()).get("grid") or {}
            except ValueError as exc:
                raise InputError(meta_path, f"invalid JSON ({exc})") from exc
            span = [bank_grid.get("two_theta_min"), bank_grid.get("two_theta_max")]
            if None not in span and not np.allclose(span, [grid.start, grid.stop], atol=grid.step / 2):
                raise InputError(meta_path, f"noise bank grid {span[0]}–{span[1]}° differs from the patterns' "
                                            f"{grid.start}–{grid.stop}°: rebuild the noise bank")
    noise = np.asarray(noise, dtype=np.float32)
    if not np.isfinite(noise).all():
        raise InputError(path, "the noise bank holds NaN or infinite values")
    return noise


def write_augmented(patterns: PatternSet, noise_bank: np.ndarray | None, library: Library | None,
                    out: str | Path, params: dict[str, Any] | None = None, progress: bool = True,
                    sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the train/validation datasets of the ``augment`` stage (see the module notes).

    Spectra are drawn in chunks of ``chunk_size`` by ``workers`` threads and written in place, so
    memory stays bounded whatever the dataset size; chunk ``c`` of a split draws from its own
    ``SeedSequence`` child, so the files are the same bytes for the same seed and settings.

    Parameters
    ----------
    patterns, noise_bank, library, params : as for :meth:`Augmenter.from_params`.
    out : output folder (``train/``, ``val/``, ``meta.json``).
    progress : show a tqdm bar.
    sources : input paths recorded in ``meta.json``.

    Returns
    -------
    The ``meta.json`` content.

    Examples
    --------
    >>> meta = write_augmented(ps, noise, lib, "data/augmented", {"ratio": 72})  # doctest: +SKIP
    >>> meta["counts"]  # doctest: +SKIP
    {'train': 58058, 'val': 14168, 'train_per_entry': 58, 'val_per_entry': 14}
    """
    aug = Augmenter.from_params(patterns, noise_bank, library, params)
    p = aug.settings
    out = Path(out)
    per_entry = dict(zip(("train", "val"), split_sizes(p["ratio"], p["val_fraction"])))
    split_seeds = np.random.SeedSequence(p["seed"]).spawn(4)  # train, val, order, mixtures
    order_rng = np.random.default_rng(split_seeds[2])
    jobs = []
    for split, seq in zip(("train", "val"), split_seeds[:2]):
        labels = order_rng.permutation(np.repeat(np.arange(len(aug), dtype=np.int32), per_entry[split]))
        jobs.append((split, labels, seq))
    mixtures = p["mixtures"]["count"]
    total = sum(len(labels) for _, labels, _ in jobs) + mixtures
    bar = tqdm(total=total, desc="augment", unit="spectrum", unit_scale=True, disable=not progress)
    import torch  # only for the float16 cast (numpy's is ~20× slower); imported late: the CLI imports this module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the chunks are the parallel units; a threaded cast of one chunk only adds hand-offs
    with atomic_dir(out) as tmp:  # meta.json last; an interrupted run leaves the previous output
        try:
            with ThreadPoolExecutor(p["workers"]) as pool:
                for split, labels, seq in jobs:
                    _write_split(aug, pool, tmp / split, labels, seq, bar)
            if mixtures:
                _write_mixtures(aug, tmp / "mixtures", mixtures, split_seeds[3], bar)
        finally:
            torch.set_num_threads(threads)
            bar.close()

        meta = {
            "ids": aug.ids,
            "grid": aug.grid.to_dict(),
            "ratio": p["ratio"],
            "seed": p["seed"],
            "params": p,
            "counts": {"train": len(jobs[0][1]), "val": len(jobs[1][1]),
                       "train_per_entry": per_entry["train"], "val_per_entry": per_entry["val"], "mixtures": mixtures},
            "n_entries": len(aug),
            "noise_rows": 0 if noise_bank is None else int(np.shape(noise_bank)[0]),
            "files": {"X": "float16 (N, n_points), rows max-normalised to 1",
                      "y": "int32 (N,), index into ids (PatternSet order)",
                      "mixtures/entries": "int32 (M, most phases), index into ids, -1 past a row's phases",
                      "mixtures/fractions": "float32 (M, most phases), weight fractions (0 past a row's phases)"},
            "sources": sources or {},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("augment: %d train + %d validation spectra of %d entries → %s",
             meta["counts"]["train"], meta["counts"]["val"], len(aug), out)
    return meta


def _write_split(aug: Augmenter, pool: ThreadPoolExecutor, folder: Path, labels: np.ndarray,
                 seq: np.random.SeedSequence, bar: tqdm) -> None:
    """Fill ``folder/X.npy`` and ``folder/y.npy`` chunk by chunk, at most 2 × workers chunks in flight."""
    folder.mkdir(parents=True, exist_ok=True)
    n, size = aug.grid.n_points, aug.settings["chunk_size"]
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.int32, shape=(len(labels),))
    y[:] = labels
    y.flush()
    del y
    X = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float16, shape=(len(labels), n))
    offset, row_bytes = X.offset, n * X.itemsize
    del X  # written with positioned writes below: mapped pages would count as resident memory
    starts = range(0, len(labels), size)
    seeds = seq.spawn(len(starts))

    def draw(start: int, child: np.random.SeedSequence) -> np.ndarray:
        return _float16(aug._draw(labels[start:start + size].astype(np.int64), np.random.default_rng(child)))

    pending: deque = deque()
    with open(folder / "X.npy", "r+b") as fh:
        for start, child in zip(starts, seeds):
            pending.append((start, pool.submit(draw, start, child)))
            if len(pending) >= 2 * aug.settings["workers"]:
                _write_chunk(fh, pending.popleft(), offset, row_bytes, bar)
        while pending:
            _write_chunk(fh, pending.popleft(), offset, row_bytes, bar)


def _write_mixtures(aug: Augmenter, folder: Path, count: int, seq: np.random.SeedSequence, bar: tqdm) -> None:
    """``folder/{X,entries,fractions}.npy``: ``count`` mixture spectra, one chunk's seed child each."""
    folder.mkdir(parents=True, exist_ok=True)
    size = aug.settings["chunk_size"]
    parts = []
    for start, child in zip(range(0, count, size), seq.spawn(-(-count // size))):
        parts.append(aug.sample_mixtures(np.random.default_rng(child), min(size, count - start)))
        bar.update(len(parts[-1][0]))
    np.save(folder / "X.npy", _float16(np.concatenate([x for x, _, _ in parts])))
    np.save(folder / "entries.npy", np.concatenate([e for _, e, _ in parts]))
    np.save(folder / "fractions.npy", np.concatenate([f for _, _, f in parts]))


def _float16(x: np.ndarray) -> np.ndarray:
    """``x.astype(float16)``, same rounding (to nearest even), via torch: numpy's cast is ~20× slower."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.float16).numpy()


def _write_chunk(fh: Any, item: tuple[int, Any], offset: int, row_bytes: int, bar: tqdm) -> None:
    start, future = item
    chunk = future.result()
    fh.seek(offset + start * row_bytes)
    fh.write(np.ascontiguousarray(chunk).data)
    bar.update(len(chunk))
