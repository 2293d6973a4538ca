"""The ln sin θ axis, on which a uniform lattice strain is a plain shift.

Bragg's law gives ``sin θ = λ / 2d``; a cell scaled by ``1 + ε`` scales every ``d`` by
``1 + ε``, so every reflection moves by ``−ln(1 + ε)`` in ``u = ln sin θ`` whatever its angle.
Patterns resampled on an even ``u`` axis can therefore be compared over a range of isotropic
strains by shifting one of them a whole number of points — a cross-correlation, not a refit.
DFT-relaxed cells (1–3 % larger than measured ones), solid solutions and thermal expansion move
peaks this way; a zero-point error of the goniometer does not, and stays within the smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrdid.config import Grid


@dataclass(frozen=True)
class StrainAxis:
    """An even ``u = ln sin θ`` axis covering a 2θ grid.

    Parameters
    ----------
    start, step, n_points : the axis in ``u`` (``step`` is the relative strain of one point).

    Examples
    --------
    >>> axis = StrainAxis.from_grid(Grid(5.0, 90.0, 2126), step=0.001)
    >>> axis.n_points, round(float(axis.two_theta[-1]), 2)
    (2786, 89.92)
    >>> axis.points(0.02)  # a 2 % strain is 20 points
    20
    """

    start: float
    step: float
    n_points: int

    @classmethod
    def from_grid(cls, grid: Grid, step: float = 0.001) -> StrainAxis:
        """The axis spanning ``grid`` with points ``step`` apart (0.001: 0.1 % strain per point)."""
        if not step > 0:
            raise ValueError(f"strain axis step must be positive, got {step}")
        lo, hi = np.log(np.sin(np.radians([grid.start / 2, grid.stop / 2])))
        return cls(float(lo), float(step), int(np.floor((hi - lo) / step)) + 1)

    @property
    def values(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.n_points)

    @property
    def two_theta(self) -> np.ndarray:
        """The 2θ (degrees) of every axis point."""
        return 2 * np.degrees(np.arcsin(np.exp(self.values)))

    def points(self, strain: float) -> int:
        """Whole axis points that a relative lattice strain ``strain`` moves the peaks by."""
        return int(round(abs(np.log1p(strain)) / self.step))

    def strain(self, shift: np.ndarray | int) -> np.ndarray:
        """The lattice strain that a shift of ``shift`` points (reference → sample) stands for.

        A positive shift moves the sample's peaks to larger ``u`` (higher angle), i.e. a smaller cell.
        """
        return np.expm1(-np.asarray(shift) * self.step)

    def resample(self, rows: np.ndarray, grid: Grid) -> np.ndarray:
        """Rows on the 2θ ``grid`` → float32 rows on this axis (linear interpolation, vectorised)."""
        rows = np.asarray(rows, dtype=np.float32)
        position = np.clip((self.two_theta - grid.start) / grid.step, 0, grid.n_points - 1)
        left = np.minimum(position.astype(np.int64), grid.n_points - 2)
        weight = (position - left).astype(np.float32)
        return rows[..., left] * (1 - weight) + rows[..., left + 1] * weight
