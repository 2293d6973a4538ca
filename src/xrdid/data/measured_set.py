"""Measured test patterns with their library labels."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from xrdid.errors import InputError
from xrdid.xrd.preprocess import preprocess

if TYPE_CHECKING:
    from typing import Any

    from xrdid.config import Grid


log = logging.getLogger(__name__)
@dataclass
class MeasuredSet:
    """Measured patterns on the model grid with their library labels.

    Attributes
    ----------
    files : pattern paths, relative to the folder.
    X : float32 (n, n_points), each row divided by its maximum over the covered points.
    covered : bool (n, n_points), grid points the scan measured.
    y : int (n,), index of the true entry in ``ids``; -1 when it is not in the library.
    sources : group of each pattern (e.g. RRUFF or opXRD) for per-source figures.
    failed : (file, problem) of the patterns that could not be read; they are left out.
    """

    files: list[str]
    X: np.ndarray
    covered: np.ndarray
    y: np.ndarray
    sources: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        labels: str | Path,
        ids: list[str],
        grid: Grid,
        wavelength: str | float,
        default_wavelength: str | float | None = "CuKa",
        denoise: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> MeasuredSet:
        """Read every pattern listed in ``labels`` (columns ``pattern``, ``cif``, optional ``source``).

        ``pattern`` is relative to the labels file's folder or to ``folder``; ``cif``'s stem is
        the library id. ``denoise`` (the ``denoise`` params) applies the FFT rule.
        """
        labels = Path(labels)
        if not labels.is_file():
            raise InputError(labels, "labels file not found")
        with open(labels, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"pattern", "cif"} <= set(rows[0]):
            raise InputError(labels, "labels need the columns 'pattern' and 'cif'")
        index = {entry: i for i, entry in enumerate(ids)}
        files, X, covered, y, sources, failed = [], [], [], [], [], []
        for row in tqdm(rows, desc="measured", unit="pattern", disable=not progress):
            path = labels.parent / row["pattern"]
            if not path.is_file():
                path = Path(folder) / Path(row["pattern"]).name
            try:
                values, mask = preprocess(path, grid, wavelength, default_wavelength, denoise)
            except InputError as exc:
                failed.append((row["pattern"], exc.problem))
                log.warning("evaluate: %s", exc)
                continue
            files.append(row["pattern"])
            X.append(values)
            covered.append(mask)
            y.append(index.get(Path(row["cif"]).stem, -1))
            sources.append(row.get("source", ""))
        if not files:
            raise InputError(labels, "no measured pattern could be read")
        return cls(files, np.array(X, np.float32), np.array(covered), np.array(y), sources, failed)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], ids: list[str], grid: Grid, progress: bool = True) -> MeasuredSet | None:
        """The test set of ``evaluate.measured`` (its ``grid.wavelength`` too), or None when none is configured.

        A configured labels file that does not exist is logged and gives None as well, so a
        profile whose ``../shared`` data is absent still runs on its validation split.
        """
        measured = (params.get("evaluate") or {}).get("measured") or {}
        labels = measured.get("labels")
        if not labels:
            return None
        if not Path(labels).is_file():
            log.warning("measured labels %s not found; no measured test set", labels)
            return None
        return cls.from_folder(measured.get("folder") or Path(labels).parent, labels, ids, grid,
                               (params.get("grid") or {}).get("wavelength", "CuKa"),
                               measured.get("default_wavelength", "CuKa"), progress=progress)

    def subset(self, keep: np.ndarray) -> MeasuredSet:
        keep = np.asarray(keep, bool)
        pick = np.flatnonzero(keep)
        return MeasuredSet([self.files[i] for i in pick], self.X[keep], self.covered[keep], self.y[keep],
                           [self.sources[i] for i in pick], self.failed)
