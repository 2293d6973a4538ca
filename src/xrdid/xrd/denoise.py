"""FFT denoising of measured patterns (Wang et al., J. Chem. Inf. Model. 60, 2004 (2020)).

The published rule: take the FFT of the pattern; the mean magnitude of the components beyond
the first ``cutoff`` (200) is the "white noise" level; if it exceeds ``threshold`` (1), keep only
the first ``cutoff`` components (inverse FFT), else use the raw pattern.

What the numbers mean (numpy's unnormalised ``rfft``, ``X_k = Σ_n x_n exp(-2πi kn/N)``, used
here; a real pattern's full FFT is the rfft plus mirrored conjugates, so "the first 200
components" are rfft components 0..199, i.e. frequencies below 200 cycles per scan):

- White noise of standard deviation σ (pattern intensity units) gives components with
  ``E|X_k|² = N σ²``: ``|X_k|`` is Rayleigh distributed with mean ``σ √(πN) / 2``. The absolute
  level is therefore in *intensity units × √N*, not a pure intensity: for N = 4801 points a
  threshold of 1 means σ ≈ 0.016 intensity units. On raw counts (σ = √counts ≥ 1 wherever
  there are counts) the published rule thus denoises essentially every pattern; it only
  discriminates on max-normalised patterns (σ ≈ 1.6% of the maximum at N = 4801) and depends
  on N. A deterministic sinusoid of amplitude A gives ``|X_k| = A N / 2`` instead.
- Keeping components below ``cutoff`` is a low-pass filter removing periods shorter than
  ``N Δ2θ / cutoff``: 0.24° for the 2–50° grid at 0.01°. Peaks narrower than a few tenths of a
  degree are broadened, and their own spectrum also reaches beyond the cutoff and counts as
  "noise".
- ``relative=True`` is the scale-free variant the pipeline uses (``params.yaml``,
  ``denoise``): the level is the white-noise σ estimated from the same components,
  ``mean|X_k| · 2 / √(πN)``, divided by the pattern's maximum |intensity| — the noise standard
  deviation as a fraction of the strongest point, independent of N and of the intensity unit.

``detrend=True`` (default) removes the straight line between the means of the first and last
few points before the FFT and adds it back after: the FFT treats the pattern as periodic, and
the jump between a high low-angle end and a low high-angle end otherwise leaks
``|X_k| ≈ jump · N / (πk)`` into every component (far above the noise) and rings after the
low-pass. ``detrend=False`` is the published rule literally.

Examples
--------
>>> x = np.linspace(0, 1, 1000)
>>> clean = np.exp(-((x - 0.5) / 0.05) ** 2)
>>> noisy = clean + np.random.default_rng(0).normal(0, 0.05, x.size)
>>> fft_denoise(noisy, threshold=0.01, relative=True).denoised
True
>>> fft_denoise(clean, threshold=0.01, relative=True).denoised
False
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

# Published values (Wang et al. 2020); the pipeline's own live in params.yaml (denoise).
DEFAULT_CUTOFF = 200
DEFAULT_THRESHOLD = 1.0
_DETREND_POINTS = 10


class Denoised(NamedTuple):
    """Result of :func:`fft_denoise` (scalars for a 1D input, arrays over rows for 2D)."""

    values: np.ndarray  # denoised rows, raw rows where not noisy; same shape as the input
    denoised: Any  # bool or bool array: whether the low-pass was applied
    level: Any  # float or float array: the noise level compared with the threshold


def noise_level(
    intensity: np.ndarray, cutoff: int = DEFAULT_CUTOFF, *, relative: bool = False, detrend: bool = True
) -> Any:
    """White-noise level of a pattern (or of each row of a 2D array) from its rfft.

    Parameters
    ----------
    intensity : pattern, shape (N,) or (rows, N).
    cutoff : components 0..cutoff-1 are signal; the mean magnitude of the rest is the level.
    relative : False: mean |X_k| for k ≥ cutoff (intensity units × √N, see the module notes);
        True: the estimated noise σ (``mean|X_k| · 2/√(πN)``) divided by max |intensity|.
    detrend : remove the end-to-end straight line before the FFT.

    Returns
    -------
    float for a 1D input, else an array (rows,). Zero when there are no components past cutoff.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> level = noise_level(rng.normal(0, 2.0, 4096), cutoff=200)
    >>> bool(abs(level / (2.0 * np.sqrt(np.pi * 4096) / 2) - 1) < 0.05)
    True
    """
    rows, single = _rows(intensity)
    _check_cutoff(cutoff)
    spectrum = np.fft.rfft(rows - _trend(rows) if detrend else rows, axis=1)
    return _level(spectrum, rows, cutoff, relative, single)


def fft_denoise(
    intensity: np.ndarray,
    cutoff: int = DEFAULT_CUTOFF,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    relative: bool = False,
    detrend: bool = True,
) -> Denoised:
    """Low-pass a pattern by FFT when its white-noise level exceeds ``threshold``.

    Parameters
    ----------
    intensity : pattern, shape (N,) or (rows, N); rows are treated independently.
    cutoff : number of rfft components kept (published: 200).
    threshold : noise level above which a row is denoised; absolute (published: 1, in units of
        intensity × √N) or, with ``relative``, the noise σ as a fraction of the row's maximum.
    relative : use the scale-free level (see :func:`noise_level`).
    detrend : remove the end-to-end straight line before the FFT (added back after).

    Returns
    -------
    Denoised(values, denoised, level)

    Examples
    --------
    >>> y = np.random.default_rng(0).poisson(100.0, (3, 2048)).astype(float)
    >>> out = fft_denoise(y)  # raw counts: σ = 10 is far above the published threshold of 1
    >>> out.denoised.tolist(), bool(out.values.std() < y.std() / 2)
    ([True, True, True], True)
    """
    rows, single = _rows(intensity)
    _check_cutoff(cutoff)
    trend = _trend(rows) if detrend else np.zeros_like(rows)
    spectrum = np.fft.rfft(rows - trend, axis=1)
    level = np.atleast_1d(_level(spectrum, rows, cutoff, relative, False))
    noisy = level > threshold
    values = rows.copy()
    if noisy.any():
        kept = spectrum[noisy]
        kept[:, cutoff:] = 0
        values[noisy] = np.fft.irfft(kept, n=rows.shape[1], axis=1) + trend[noisy]
    if single:
        return Denoised(values[0], bool(noisy[0]), float(level[0]))
    return Denoised(values, noisy, level)


def _rows(intensity: np.ndarray) -> tuple[np.ndarray, bool]:
    array = np.asarray(intensity, dtype=float)
    if array.ndim not in (1, 2) or array.shape[-1] < 2:
        raise ValueError(f"expected a pattern (N,) or rows (rows, N) with N ≥ 2, got shape {array.shape}")
    return np.atleast_2d(array), array.ndim == 1


def _check_cutoff(cutoff: int) -> None:
    if int(cutoff) != cutoff or cutoff < 1:
        raise ValueError(f"cutoff must be a positive integer, got {cutoff!r}")


def _trend(rows: np.ndarray) -> np.ndarray:
    """Straight line through the means of the first and last few points of each row."""
    k = max(1, min(_DETREND_POINTS, rows.shape[1] // 10))
    first, last = rows[:, :k].mean(axis=1, keepdims=True), rows[:, -k:].mean(axis=1, keepdims=True)
    n = rows.shape[1]
    t = (np.arange(n) - (k - 1) / 2) / max(n - k, 1)  # 0 at the first block's centre, 1 at the last's
    return first + (last - first) * t


def _level(spectrum: np.ndarray, rows: np.ndarray, cutoff: int, relative: bool, single: bool) -> Any:
    """Mean |X_k| past the cutoff, or (relative) the implied σ over the raw rows' max |value|."""
    tail = np.abs(spectrum[:, cutoff:])
    level = tail.mean(axis=1) if tail.shape[1] else np.zeros(rows.shape[0])
    if relative:
        sigma = level * 2 / math.sqrt(math.pi * rows.shape[1])
        peak = np.abs(rows).max(axis=1)
        level = np.divide(sigma, peak, out=np.zeros_like(sigma), where=peak > 0)
    return float(level[0]) if single else level
