"""Peak profiles on the 2θ grid."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from xrdid.config import Grid
from xrdid.xrd.profiles import caglioti_fwhm, render

GRID = Grid(10.0, 30.0, 2001)


@pytest.mark.parametrize("shape", ["gaussian", "lorentzian", "pseudo-voigt"])
def test_peak_area_position_and_width(shape: str) -> None:
    y = render(np.array([20.0]), np.array([3.0]), GRID, fwhm=0.2, shape=shape)
    x = GRID.values
    assert x[np.argmax(y)] == pytest.approx(20.0)
    area = y.sum() * GRID.step
    assert area == pytest.approx(3.0, rel=0.02 if shape == "gaussian" else 0.05)  # Lorentz tails are cut
    above = x[y >= y.max() / 2]
    assert above[-1] - above[0] == pytest.approx(0.2, abs=2 * GRID.step)


def test_batch_rows_are_independent_and_nan_is_padding() -> None:
    two_theta = np.array([[15.0, 25.0], [12.0, np.nan]])
    intensity = np.array([[1.0, 2.0], [1.0, 0.0]])
    batch = render(two_theta, intensity, GRID, fwhm=np.array([[0.1], [0.3]]), shape="pseudo-voigt")
    assert batch.shape == (2, 2001)
    assert_allclose(batch[0], render(two_theta[0], intensity[0], GRID, 0.1, "pseudo-voigt"), rtol=1e-6, atol=1e-7)
    assert_allclose(batch[1], render(np.array([12.0]), np.array([1.0]), GRID, 0.3, "pseudo-voigt"), rtol=1e-6,
                    atol=1e-7)


def test_peaks_outside_the_grid_leave_only_tails() -> None:
    y = render(np.array([9.9, 40.0]), np.array([1.0, 1.0]), GRID, fwhm=0.1, shape="gaussian")
    assert y[0] > 0 and y[-1] == 0


def test_caglioti_law() -> None:
    two_theta = np.array([10.0, 40.0, 80.0])
    tan = np.tan(np.radians(two_theta / 2))
    assert_allclose(caglioti_fwhm(two_theta, 0.02, -0.01, 0.005), np.sqrt(0.02 * tan**2 - 0.01 * tan + 0.005))


def test_unknown_shape() -> None:
    with pytest.raises(ValueError, match="unknown peak shape"):
        render(np.array([20.0]), np.array([1.0]), GRID, 0.1, shape="voigt")
