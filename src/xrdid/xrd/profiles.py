"""Peak shapes: reflections (2θ, intensity) drawn as a continuous profile on a 2θ grid.

Peaks are area-normalised Gaussians or pseudo-Voigts whose full width at half
maximum follows Caglioti's law, FWHM² = U tan²θ + V tanθ + W (degrees²).
Each peak is evaluated only in a window around its position and scattered
onto the grid with one ``bincount``, so the cost grows with the number of
peaks, not with peaks × grid points.

Examples
--------
>>> import numpy as np
>>> from xrdid.config import Grid
>>> grid = Grid(10, 20, 1001)
>>> y = render(np.array([15.0]), np.array([1.0]), grid, fwhm=0.1, shape="gaussian")
>>> round(float(grid.values[np.argmax(y)]), 2), round(float(y.sum() * grid.step), 3)
(15.0, 1.0)
"""

from __future__ import annotations

import numpy as np

from xrdid.config import Grid

_LN2 = np.log(2.0)
# Window half-widths in FWHM: a Gaussian is below 1e-10 of its height beyond 2.7 FWHM;
# a Lorentzian keeps 0.06 % of its height at 20 FWHM, where its tail is cut.
_WINDOW_FWHM = {"gaussian": 2.7, "pseudo-voigt": 20.0, "lorentzian": 20.0}


def caglioti_fwhm(two_theta: np.ndarray, u: float = 0.0, v: float = 0.0, w: float = 0.01) -> np.ndarray:
    """FWHM in degrees from Caglioti's law at the given 2θ (degrees).

    Examples
    --------
    >>> caglioti_fwhm(np.array([20.0, 40.0]), 0.0, 0.0, 0.01).round(3).tolist()
    [0.1, 0.1]
    """
    tan = np.tan(np.radians(np.asarray(two_theta, dtype=float) / 2))
    return np.sqrt(np.maximum(u * tan**2 + v * tan + w, 1e-12))


def render(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    grid: Grid,
    fwhm: float | np.ndarray,
    shape: str = "gaussian",
    eta: float | np.ndarray = 0.5,
) -> np.ndarray:
    """Draw peaks as a profile on ``grid``; batched over leading rows.

    Parameters
    ----------
    two_theta : peak positions in degrees, shape (P,) or (B, P); NaN marks padding.
    intensity : integrated intensities, same shape (0 for padding).
    grid : the 2θ grid.
    fwhm : FWHM in degrees: a scalar, or an array broadcastable to ``two_theta``.
    shape : ``"gaussian"``, ``"lorentzian"`` or ``"pseudo-voigt"``.
    eta : Lorentzian fraction of the pseudo-Voigt (scalar or per row, shape (B, 1)).

    Returns
    -------
    float32 array of shape (n_points,) or (B, n_points), in intensity × degrees⁻¹ (area = intensity).
    """
    if shape not in _WINDOW_FWHM:
        raise ValueError(f"unknown peak shape {shape!r}; use one of {sorted(_WINDOW_FWHM)}")
    single = np.ndim(two_theta) == 1
    pos = np.atleast_2d(np.asarray(two_theta, dtype=np.float64))
    height = np.atleast_2d(np.asarray(intensity, dtype=np.float64))
    width = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), pos.shape)
    n_rows, n = pos.shape[0], grid.n_points
    valid = np.isfinite(pos) & (height != 0) & np.isfinite(width)
    rows = np.broadcast_to(np.arange(n_rows)[:, None], pos.shape)[valid]
    pos, height, width = pos[valid], height[valid], width[valid]
    if np.ndim(eta):
        eta_v = np.broadcast_to(np.asarray(eta, dtype=np.float64), (n_rows, valid.shape[1]))[valid]
    else:
        eta_v = float(eta)

    out = np.zeros(n_rows * n, dtype=np.float64)
    if len(pos):
        half = int(np.ceil(_WINDOW_FWHM[shape] * width.max() / grid.step))
        offsets = np.arange(-half, half + 1)
        centre = np.rint((pos - grid.start) / grid.step).astype(np.int64)
        idx = centre[:, None] + offsets  # (peaks, window)
        x = (grid.start + idx * grid.step - pos[:, None]) / width[:, None]  # distance in FWHM
        # each peak's own window, so a row's profile does not depend on the rest of the batch
        inside = (idx >= 0) & (idx < n) & (np.abs(x) <= _WINDOW_FWHM[shape])
        values = _shape(x, shape, eta_v if np.ndim(eta_v) == 0 else eta_v[:, None])
        values *= (height / width)[:, None]
        flat = (rows[:, None] * n + idx)[inside]
        out += np.bincount(flat, weights=values[inside], minlength=n_rows * n)
    out = out.reshape(n_rows, n).astype(np.float32)
    return out[0] if single else out


def _shape(x: np.ndarray, shape: str, eta: float | np.ndarray) -> np.ndarray:
    """Unit-area peak of unit FWHM at offset ``x`` (in FWHM)."""
    gauss = np.sqrt(4 * _LN2 / np.pi) * np.exp(-4 * _LN2 * x**2)
    if shape == "gaussian":
        return gauss
    lorentz = (2 / np.pi) / (1 + 4 * x**2)
    if shape == "lorentzian":
        return lorentz
    return eta * lorentz + (1 - eta) * gauss
