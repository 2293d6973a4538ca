"""A measured file on the model grid, exactly as evaluation and prediction see it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from xrdid.errors import InputError
from xrdid.xrd.denoise import fft_denoise
from xrdid.xrd.measured import Pattern

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from xrdid.config import Grid


def preprocess(
    path: str | Path,
    grid: Grid,
    wavelength: str | float,
    default_wavelength: str | float | None = "CuKa",
    denoise: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One measured file → (values on the grid divided by their covered maximum, covered mask).

    The same steps serve evaluation and prediction, so a model sees measurements the same way.
    """

    pattern = Pattern.read(path, default_wavelength)
    values, mask = pattern.to_grid(grid, wavelength)
    if denoise:

        values = np.asarray(fft_denoise(values, **denoise).values, dtype=float)
    values = values - values[mask].min()  # counts have an arbitrary offset; the model sees shape
    peak = values[mask].max()
    if not peak > 0:
        raise InputError(path, "flat pattern on the grid (no signal)")
    return (values / peak).astype(np.float32), mask


def rolling_background(X: np.ndarray, step: float, width: float = 1.5) -> np.ndarray:
    """Rolling-ball-like background of each row (search-match and the not-in-library evidence remove it).

    Grey opening (``width`` degrees) of the lightly smoothed row, then a moving mean: vectorised
    over rows (the footprint spans one row only).
    """
    size = max(3, int(round(width / step)))
    smooth = ndimage.gaussian_filter1d(X, 2.0, axis=-1)
    return ndimage.uniform_filter1d(ndimage.grey_opening(smooth, size=(1, size)), size, axis=-1)
