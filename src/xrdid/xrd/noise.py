"""The noise bank: background + noise rows on the model grid (built by the ``noise`` stage).

Wang et al. (2020) made simulated patterns realistic by merging their main peaks with the
baseline of measured patterns whose main peaks had been removed; this module builds that bank.

From measured patterns (``noise.folder``, searched recursively), each file is split into
background, noise and peaks (:func:`separate`):

1. a first baseline: the lower envelope of the lightly smoothed scan for features narrower than
   ``baseline_window`` (grey opening + running mean, a rolling-ball baseline), which keeps
   broader humps (amorphous scattering, holder) and low-angle air scatter as background;
2. peaks: runs of points that stay ``peak_extent_sigma`` local noise σ above the baseline and
   reach ``peak_sigma`` σ somewhere (hysteresis), widened by ``peak_pad``; the local σ comes
   from a running median of point-to-point differences, which peaks barely move;
3. the background: a Gaussian-weighted mean (σ ``background_smooth``) of the non-peak points
   only, linearly interpolated through wide peak regions; steps 2–3 are repeated once against
   this mean-level background;
4. the noise: non-peak residuals divided by their local σ (running RMS of the non-peak
   residuals, window ``noise_window``), a unit-variance sequence that keeps the measured texture
   (distribution, point-to-point correlation), clipped at ±6; peak regions are filled with a
   contiguous block of that sequence taken from elsewhere.

On the grid (2θ converted to the grid wavelength through d-spacing) a row is
``background + σ · z`` with the z sequence laid out point by point from a seeded offset, so the
per-point noise is as measured whatever the two steps; beyond the scan the background and σ
keep their nearest covered value and the z sequence simply continues (``covered.npy`` records
which points were measured). Rows are clipped at 0 and divided by ``scale``, the source
pattern's strongest peak height above background, so they are fractions of a peak of height 1,
the simulated profiles' scale. Peakless scans (blanks, background scans: strongest peak below
``min_peak_snr`` σ) have no peak of their own: their scale is their median background divided
by a background/peak ratio sampled from the measured framework patterns of the same bank
(``blank_ratio: frameworks``) or uniformly from a ``[lo, hi]`` range.

Without a folder (``noise.folder: null``, a fresh machine without ``../shared``) the rows come
from a seeded physical model (:func:`physical_rows`): Poisson counting noise on a smooth
polynomial background, low-angle air scatter and an amorphous hump.

Output folder (``data/noise_bank``): ``noise.npy`` float32 (n_entries, n_points);
``covered.npy`` bool, same shape; ``sources.csv`` (row, source relative to the folder, kind
``measured``/``physical``, source wavelength Å, coverage = covered fraction of the grid, scale =
the divisor in source intensity units, ratio = median of the covered row, i.e. background per
unit peak, note); ``rejects.csv`` (source, problem); ``meta.json`` (kind, grid, units, params).

Examples
--------
>>> from xrdid.config import Grid
>>> bank = build_noise_bank({"folder": None, "seed": 0, "physical": {"n_entries": 4}},
...                         Grid(2.0, 50.0, 4801), "CuKa", progress=False)
>>> bank.noise.shape, bank.kind
((4, 4801), 'physical')
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from xrdid.config import Grid
from xrdid.errors import InputError
from xrdid.outputs import atomic_dir, require
from xrdid.xrd.measured import SUPPORTED_SUFFIXES, Pattern, wavelength_angstrom

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "folder": None,
    "default_wavelength": "CuKa",
    "seed": 0,
    "baseline_window": 1.0,
    "background_smooth": 0.15,
    "noise_window": 1.5,
    "peak_sigma": 4.0,
    "peak_extent_sigma": 0.5,
    "peak_pad": 0.1,
    "min_peak_snr": 10.0,
    "blank_ratio": "frameworks",
}
PHYSICAL_DEFAULTS: dict[str, Any] = {
    "n_entries": 256,
    "count_level": [300.0, 30000.0],
    "background": [0.01, 0.15],
    "slope": [-0.5, 0.5],
    "curvature": [-0.5, 0.5],
    "air_scatter": [0.0, 0.5],
    "air_decay": [0.5, 4.0],
    "hump": [0.0, 0.1],
    "hump_center": [18.0, 30.0],
    "hump_width": [3.0, 8.0],
}
UNITS = "fraction of the source pattern's strongest peak height above its background (simulated max = 1)"
_MAD = 1.4826  # σ of a normal distribution per median absolute deviation
_MIN_POINTS = 50  # shorter scans cannot tell peaks from background
_Z_CLIP = 6.0  # |z| cap: an undetected spike (cosmic ray, peak remnant) must not be copied around
_SOURCE_COLUMNS = ["row", "source", "kind", "wavelength", "coverage", "scale", "ratio", "note"]


class Separation(NamedTuple):
    """A measured scan split by :func:`separate` (arrays on the scan's own points)."""

    background: np.ndarray  # smooth mean background through peak regions
    sigma: np.ndarray  # local noise standard deviation
    z: np.ndarray  # unit-variance noise sequence; peak regions filled from elsewhere
    peaks: np.ndarray  # bool: points belonging to peaks
    height: float  # strongest peak above the background (0 when there are no peaks)


@dataclass(eq=False)
class NoiseBank:
    """Background + noise rows on the grid, with their provenance.

    Attributes
    ----------
    noise : float32 (n_entries, n_points), fractions of a peak of height 1.
    covered : bool, same shape: grid points the source scan measured.
    sources : one dict per row (``_SOURCE_COLUMNS``).
    rejects : one dict per unreadable file (source, problem).
    meta : kind, grid, units, params.
    """

    noise: np.ndarray
    covered: np.ndarray
    sources: list[dict[str, Any]]
    rejects: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind"))

    def save(self, folder: str | Path) -> Path:
        """Write ``noise.npy``, ``covered.npy``, ``sources.csv``, ``rejects.csv``, ``meta.json`` (whole or not at all)."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            np.save(tmp / "noise.npy", self.noise.astype(np.float32))
            np.save(tmp / "covered.npy", self.covered.astype(bool))
            (tmp / "sources.csv").write_text(_csv(self.sources, _SOURCE_COLUMNS))
            (tmp / "rejects.csv").write_text(_csv(self.rejects, ["source", "problem"]))
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> NoiseBank:
        """Read a bank written by :meth:`save`.

        Raises
        ------
        InputError
            A file of the bank is missing.
        """
        folder = require(folder, "meta.json", "xrdid noise")
        for name in ("noise.npy", "sources.csv"):
            if not (folder / name).is_file():
                raise InputError(folder / name, "missing: run `xrdid noise` (or dvc repro noise)")
        noise = np.load(folder / "noise.npy")
        covered = np.load(folder / "covered.npy") if (folder / "covered.npy").is_file() else np.ones(noise.shape, bool)
        with open(folder / "sources.csv", newline="") as handle:
            sources = list(csv.DictReader(handle))
        rejects: list[dict[str, str]] = []
        if (folder / "rejects.csv").is_file():
            with open(folder / "rejects.csv", newline="") as handle:
                rejects = list(csv.DictReader(handle))
        return cls(noise, covered, sources, rejects, json.loads((folder / "meta.json").read_text()))


def separate(two_theta: np.ndarray, intensity: np.ndarray, params: dict[str, Any] | None = None,
             rng: np.random.Generator | None = None) -> Separation:
    """Split a measured scan into background, noise and peaks (see the module notes).

    Parameters
    ----------
    two_theta : increasing 2θ (degrees), roughly even steps.
    intensity : the scan.
    params : ``noise`` parameters (``DEFAULTS`` fill the gaps).
    rng : draws the offset of the block that fills peak regions in ``z`` (default: seed 0).

    Examples
    --------
    >>> x = np.arange(5, 40, 0.015)
    >>> y = 50 + 2 * x + 500 * np.exp(-0.5 * ((x - 20) / 0.05) ** 2)
    >>> y = np.random.default_rng(0).poisson(y).astype(float)
    >>> s = separate(x, y)
    >>> bool(s.peaks[np.abs(x - 20) < 0.05].all()), bool(abs(s.height / 500 - 1) < 0.1)
    (True, True)
    """
    p = {**DEFAULTS, **(params or {})}
    rng = rng or np.random.default_rng(0)
    x, y = np.asarray(two_theta, float), np.asarray(intensity, float)
    n = x.size
    step = float(np.median(np.diff(x)))

    def points(degrees: float) -> int:
        return max(1, int(round(float(degrees) / step)))

    window = min(n, 2 * points(p["noise_window"]) + 1)
    smooth = ndimage.gaussian_filter1d(y, 1.0, mode="nearest")
    # Local σ from point-to-point differences: Var(Δy) = 2σ² for white noise; peaks are few.
    diff = np.abs(np.diff(y, append=y[-1] + (y[-1] - y[-2])))
    sigma_detect = _MAD / np.sqrt(2) * ndimage.median_filter(diff, size=window, mode="nearest")
    sigma_detect = np.maximum(sigma_detect, _floor(y))

    baseline = _rolling_ball(smooth, points(p["baseline_window"]))
    peaks = _peak_mask(smooth - baseline, sigma_detect, p, points(p["peak_pad"]))
    background = _masked_smooth(y, ~peaks, points(p["background_smooth"]))
    peaks = _peak_mask(smooth - background, sigma_detect, p, points(p["peak_pad"]))
    background = _masked_smooth(y, ~peaks, points(p["background_smooth"]))

    residual = y - background
    quiet = ~peaks
    if quiet.sum() < 10:  # a scan that is all peak: keep its difference noise
        quiet = np.ones(n, bool)
    # Running RMS over quiet points (peaks are already out); a median would be biased by
    # the count quantisation of low-intensity scans.
    local = np.sqrt(ndimage.uniform_filter1d(residual[quiet] ** 2, size=min(window, int(quiet.sum())), mode="nearest"))
    sigma = np.maximum(np.interp(x, x[quiet], local), _floor(y))
    z = np.clip(residual / sigma, -_Z_CLIP, _Z_CLIP)
    z_quiet = z[quiet]
    n_fill = int((~quiet).sum())
    if n_fill:  # a contiguous block from the quiet sequence keeps its point-to-point correlation
        start = int(rng.integers(z_quiet.size))
        z[~quiet] = z_quiet[(start + np.arange(n_fill)) % z_quiet.size]
    height = float((smooth - background)[peaks].max()) if peaks.any() else 0.0
    return Separation(background, sigma, z, peaks, max(height, 0.0))


def build_noise_bank(params: dict[str, Any], grid: Grid, wavelength: str | float, out: str | Path | None = None,
                     *, progress: bool = True) -> NoiseBank:
    """Build the noise bank from ``params['folder']`` or, when it is None, the physical model.

    Parameters
    ----------
    params : the ``noise`` section of params.yaml (``DEFAULTS`` and ``PHYSICAL_DEFAULTS`` fill gaps).
    grid : the model grid.
    wavelength : the grid's radiation (Å or a line name): measured 2θ are converted to it.
    out : folder to write the bank to (None: only return it).
    progress : show a tqdm bar over the files.

    Returns
    -------
    NoiseBank

    Raises
    ------
    InputError
        The folder is missing, holds no pattern files, or none of them could be used.

    Examples
    --------
    >>> bank = build_noise_bank({"folder": None, "physical": {"n_entries": 2}}, Grid(5, 50, 451), 1.5406,
    ...                         progress=False)
    >>> bank.noise.dtype, bank.sources[0]["kind"]
    (dtype('float32'), 'physical')
    """
    p = {**DEFAULTS, **(params or {})}
    p["physical"] = {**PHYSICAL_DEFAULTS, **(p.get("physical") or {})}
    target = wavelength_angstrom(wavelength)
    if p["folder"] is None:
        rows, sources = physical_rows(p["physical"], grid, int(p["seed"]))
        for source in sources:
            source["wavelength"] = _fmt(target)
        bank = NoiseBank(rows.astype(np.float32), np.ones(rows.shape, bool), sources, [], {})
    else:
        bank = _measured_bank(p, grid, target, progress)
    bank.meta = {
        "kind": "physical" if p["folder"] is None else "measured",
        "n_entries": int(bank.noise.shape[0]),
        "n_points": int(bank.noise.shape[1]),
        "grid": {**grid.to_dict(), "wavelength": wavelength, "wavelength_angstrom": target},
        "units": UNITS,
        "files": {"noise": "noise.npy", "covered": "covered.npy", "sources": "sources.csv", "rejects": "rejects.csv"},
        "n_rejects": len(bank.rejects),
        "params": p,
    }
    if out is not None:
        bank.save(out)
    return bank


def physical_rows(params: dict[str, Any], grid: Grid, seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Seeded background + Poisson noise rows from a physical model, on the scale of a unit peak.

    Each row is ``Poisson(C · b) / C`` with ``C`` counts at the (absent) strongest peak (log-uniform
    in ``count_level``) and the background fraction ``b(2θ)``: a level (``background``) times a
    quadratic in the normalised 2θ (``slope``, ``curvature``, kept ≥ 10% of the level), plus air
    scatter ``A exp(-(2θ - start)/τ)`` (``air_scatter``, ``air_decay`` in °) and an amorphous hump
    ``H exp(-(2θ - c)²/2w²)`` (``hump``, ``hump_center``, ``hump_width`` in °). Every range is
    ``[lo, hi]`` sampled uniformly.

    Returns
    -------
    rows : float64 (n_entries, n_points).
    sources : one dict per row.

    Examples
    --------
    >>> rows, _ = physical_rows({**PHYSICAL_DEFAULTS, "n_entries": 3}, Grid(5, 50, 451), seed=1)
    >>> rows.shape, bool((rows >= 0).all())
    ((3, 451), True)
    """
    p = {**PHYSICAL_DEFAULTS, **params}
    n = int(p["n_entries"])
    if n < 1:
        raise InputError(None, f"noise.physical.n_entries must be ≥ 1, got {n}")
    rng = np.random.default_rng(seed)

    def draw(key: str) -> np.ndarray:
        lo, hi = (float(v) for v in p[key])
        return rng.uniform(lo, hi, (n, 1))

    x = grid.values[None, :]
    u = (x - grid.start) / (grid.stop - grid.start) - 0.5
    lo, hi = (float(v) for v in p["count_level"])
    counts = np.exp(rng.uniform(np.log(lo), np.log(hi), (n, 1)))
    level, slope, curvature = draw("background"), draw("slope"), draw("curvature")
    air, decay = draw("air_scatter"), draw("air_decay")
    hump, center, width = draw("hump"), draw("hump_center"), draw("hump_width")
    smooth = level * np.maximum(1 + slope * u + curvature * (u * u - 1 / 12), 0.1)
    mean = smooth + air * np.exp(-(x - grid.start) / decay) + hump * np.exp(-0.5 * ((x - center) / width) ** 2)
    rows = rng.poisson(mean * counts) / counts
    sources = [
        {"row": i, "source": "physical", "kind": "physical", "wavelength": "", "coverage": "1", "scale": "1",
         "ratio": f"{float(np.median(rows[i])):.6g}",
         "note": (f"counts={counts[i, 0]:.0f} background={level[i, 0]:.4f} slope={slope[i, 0]:.3f} "
                  f"curvature={curvature[i, 0]:.3f} air={air[i, 0]:.3f}/{decay[i, 0]:.2f}deg "
                  f"hump={hump[i, 0]:.3f}@{center[i, 0]:.1f}+-{width[i, 0]:.1f}deg")}
        for i in range(n)
    ]
    return rows, sources


# ---------------------------------------------------------------- measured bank


def _measured_bank(p: dict[str, Any], grid: Grid, target: float, progress: bool) -> NoiseBank:
    folder = Path(p["folder"])
    if not folder.is_dir():
        raise InputError(folder, "noise folder not found")
    files = sorted((f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES),
                   key=lambda f: f.relative_to(folder).as_posix())
    if not files:
        raise InputError(folder, f"no pattern files ({', '.join(SUPPORTED_SUFFIXES)}) in the noise folder")
    rows, covered, sources, rejects, medians = [], [], [], [], []
    for path in tqdm(files, desc="noise", unit="file", disable=not progress):
        name = path.relative_to(folder).as_posix()
        rng = np.random.default_rng([int(p["seed"]), zlib.crc32(name.encode())])
        try:
            pattern = Pattern.read(path, wavelength=p["default_wavelength"])
            if pattern.two_theta.size < _MIN_POINTS:
                raise InputError(path, f"only {pattern.two_theta.size} points; too few to separate peaks")
            split = separate(pattern.two_theta, pattern.intensity, p, rng)
            x, lam = pattern.two_theta, pattern.wavelength
            background, mask = Pattern(x, split.background, lam, path).to_grid(grid, target)
            sigma, _ = Pattern(x, split.sigma, lam, path).to_grid(grid, target)
            if not mask.any():
                raise InputError(path, "the scan covers no grid point (only gaps)")
        except InputError as exc:
            log.warning("noise: skipping %s", exc)
            rejects.append({"source": name, "problem": exc.problem})
            continue
        start = int(rng.integers(split.z.size))
        z = split.z[(start + np.arange(grid.n_points)) % split.z.size]
        rows.append(np.maximum(background + sigma * z, 0.0))
        covered.append(mask)
        snr = split.height / float(np.median(split.sigma))
        peakless = split.height <= 0 or snr < float(p["min_peak_snr"])
        medians.append(float(np.median(background[mask])))
        sources.append({
            "row": len(sources), "source": name, "kind": "measured", "wavelength": _fmt(pattern.wavelength),
            "coverage": _fmt(mask.mean()), "scale": split.height, "peakless": peakless,
            "note": (f"wavelength from {pattern.wavelength_from}; "
                     + (f"peakless (strongest {snr:.1f} sigma)" if peakless else
                        f"peaks {split.peaks.mean():.1%} of points, strongest {snr:.0f} sigma")),
        })
    if not rows:
        raise InputError(folder, f"none of the {len(files)} pattern files could be used (see rejects)")
    _scale_peakless(sources, np.array(medians), p)
    scales = np.array([s["scale"] for s in sources])
    noise = (np.array(rows) / scales[:, None]).astype(np.float32)
    for s, row, mask in zip(sources, noise, covered):
        s["ratio"] = _fmt(np.median(row[mask]))  # the row's background level per unit peak
        s["scale"] = _fmt(s.pop("scale"))
        s.pop("peakless")
    return NoiseBank(noise, np.array(covered), sources, rejects)


def _scale_peakless(sources: list[dict[str, Any]], medians: np.ndarray, p: dict[str, Any]) -> None:
    """Give peakless rows a scale: median background / a sampled background-to-peak ratio."""
    peakless = np.array([s["peakless"] for s in sources])
    if not peakless.any():
        return
    ratios = medians[~peakless] / np.array([s["scale"] for s, blank in zip(sources, peakless) if not blank])
    rng = np.random.default_rng([int(p["seed"]), 1])
    rule = p["blank_ratio"]
    if rule == "frameworks" and ratios.size:
        drawn = rng.choice(ratios, int(peakless.sum()))
        how = "a framework pattern's"
    else:
        lo, hi = (float(v) for v in (rule if rule != "frameworks" else PHYSICAL_DEFAULTS["background"]))
        drawn = rng.uniform(lo, hi, int(peakless.sum()))
        how = f"U({lo:g}, {hi:g})"
    for s, median, ratio in zip((s for s, blank in zip(sources, peakless) if blank), medians[peakless], drawn):
        s["scale"] = max(median, 1e-12) / ratio
        s["note"] += f"; scaled to {how} background/peak ratio {ratio:.4f}"


def _rolling_ball(y: np.ndarray, width: int) -> np.ndarray:
    """Lower envelope for features narrower than ``width`` points: grey opening, then a running mean.

    The opening (running minimum, then running maximum) removes peaks narrower than the window
    but follows broader humps and monotonic slopes (air scatter) exactly; the mean smooths its steps.
    """
    width = max(1, min(width, y.size - 1))
    # Odd reflection continues the end slopes: a flat pad would flatten a steep low-angle start.
    padded = np.pad(y, width, mode="reflect", reflect_type="odd")
    opened = ndimage.grey_opening(padded, size=width)
    return ndimage.uniform_filter1d(opened, width)[width:-width]


def _peak_mask(excess: np.ndarray, sigma: np.ndarray, p: dict[str, Any], pad: int) -> np.ndarray:
    """Runs above ``peak_extent_sigma`` σ that reach ``peak_sigma`` σ, widened by ``pad`` points."""
    ratio = excess / sigma
    low = ratio > float(p["peak_extent_sigma"])
    labels, count = ndimage.label(low)
    if not count:
        return np.zeros(excess.size, bool)
    strong = np.zeros(count + 1, bool)
    strong[np.unique(labels[ratio > float(p["peak_sigma"])])] = True
    strong[0] = False
    return ndimage.binary_dilation(strong[labels], iterations=pad)


def _masked_smooth(y: np.ndarray, weight: np.ndarray, sigma: int) -> np.ndarray:
    """Gaussian mean of the points where ``weight`` is True; interpolated where they are too few."""
    w = weight.astype(float)
    total = ndimage.gaussian_filter1d(w, sigma, mode="nearest")
    mean = ndimage.gaussian_filter1d(y * w, sigma, mode="nearest") / np.maximum(total, 1e-12)
    good = total > 0.2
    if not good.any():
        return np.full_like(y, np.median(y))
    index = np.arange(y.size)
    return np.interp(index, index[good], mean[good])


def _floor(y: np.ndarray) -> float:
    """Smallest σ allowed: keeps ratios finite on flat or zero stretches."""
    return max(1e-6 * float(np.abs(y).max()), 1e-12)


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.6g}"


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
