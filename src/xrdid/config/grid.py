"""The model's 2θ grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The model's 2θ grid: ``n_points`` evenly spaced values from ``start`` to ``stop`` (degrees).

    Examples
    --------
    >>> g = Grid(5.0, 50.0, 4501)
    >>> round(g.step, 6), g.values[:2].tolist()
    (0.01, [5.0, 5.01])
    """

    start: float = 5.0
    stop: float = 50.0
    n_points: int = 4501

    def __post_init__(self) -> None:
        if not (0 < self.start < self.stop < 180) or self.n_points < 2:
            raise ValueError(f"invalid 2θ grid {self}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Grid:
        """Build from a ``grid`` section: ``two_theta_min``, ``two_theta_max``, ``n_points``."""
        return cls(float(params["two_theta_min"]), float(params["two_theta_max"]), int(params["n_points"]))

    @property
    def step(self) -> float:
        return (self.stop - self.start) / (self.n_points - 1)

    @property
    def values(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.n_points)

    def to_dict(self) -> dict[str, float | int]:
        return {"two_theta_min": self.start, "two_theta_max": self.stop, "n_points": self.n_points}
