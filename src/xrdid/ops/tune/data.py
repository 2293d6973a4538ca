"""The stored augmented set of a study, and its subsets by augmentation ratio.

The augmented set is generated once, at the largest ratio searched. A trial with ratio ``r``
trains on the first ``r - round(r * val_fraction)`` training spectra of every entry
(:func:`ratio_rows`; the augment stage draws every spectrum independently, so the first ones
are a random sample) and is scored on the whole stored validation split, the same yardstick
for every trial. :class:`TuneData` also holds the measured test set of ``evaluate.measured``
when one is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.data.splits import load_split, read_meta, split_sizes
from xrdid.errors import InputError

if TYPE_CHECKING:
    from xrdid.data.measured_set import MeasuredSet
    from xrdid.learn.datasets import ArrayDataset


def ratio_rows(y: np.ndarray, per_entry: int) -> np.ndarray:
    """Row indices (ascending) of the first ``per_entry`` rows of every label in ``y``.

    The augment stage writes a split as a random permutation of ``per_entry`` rows per entry,
    every row an independent draw, so the first ``k`` rows of each entry (file order) are a
    random sample of its spectra, and a smaller ratio's rows are a subset of a larger one's.

    Raises
    ------
    ValueError
        ``per_entry`` is below 1 or more than some label has.

    Examples
    --------
    >>> y = np.array([2, 0, 1, 0, 2, 1, 1, 0, 2])
    >>> ratio_rows(y, 2).tolist()
    [0, 1, 2, 3, 4, 5]
    >>> y[ratio_rows(y, 1)].tolist()
    [2, 0, 1]
    """
    y = np.asarray(y)
    if per_entry < 1:
        raise ValueError(f"need at least 1 spectrum per entry, got {per_entry}")
    order = np.argsort(y, kind="stable")  # grouped by label, file order within a label
    grouped = y[order]
    rank = np.arange(len(y)) - np.searchsorted(grouped, grouped, side="left")
    fewest = int(np.bincount(grouped - grouped.min()).min()) if len(y) else 0
    if per_entry > fewest:
        raise ValueError(f"{per_entry} spectra per entry requested, the stored split has {fewest}")
    return np.sort(order[rank < per_entry])


class _Rows:
    """Rows ``rows`` of a (memory-mapped) 2D array, indexable like one: no copy of the subset.

    :class:`~xrdid.learn.datasets.ArrayDataset` reads slices and sorted index arrays of it; ``rows`` is
    ascending, so reads stay sequential on disk.
    """

    def __init__(self, X: np.ndarray, rows: np.ndarray) -> None:
        self._X, self._rows = X, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self._rows), X.shape[1])
        self.ndim = 2
        self.dtype = X.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._X[self._rows[index]])


@dataclass
class TuneData:
    """The stored augmented splits, opened once per worker, and the optional measured test set.

    Examples
    --------
    >>> data = TuneData.load("data/augmented")  # doctest: +SKIP
    >>> len(data.train(20)), data.max_ratio     # doctest: +SKIP
    (800, 40)
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    ids: list[str]
    grid: dict[str, Any]
    max_ratio: int
    val_fraction: float
    folder: Path
    measured: MeasuredSet | None = None
    _rows: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, folder: str | Path, params: Mapping[str, Any] | None = None, measured: bool = False,
             progress: bool = False) -> TuneData:
        """Open ``folder`` (``xrdid augment``); ``measured`` also reads ``evaluate.measured``.

        ``measured`` True requires the labels file; otherwise a configured, existing one is read
        too (its Top-k is logged beside the objective).
        """
        folder = Path(folder)
        meta = read_meta(folder)
        X_train, y_train = load_split(folder, "train")
        X_val, y_val = load_split(folder, "val")
        data = cls(X_train, np.asarray(y_train), X_val, np.asarray(y_val), list(meta["ids"]), dict(meta["grid"]),
                   int(meta["ratio"]), float((meta.get("params") or {}).get("val_fraction", 0.2)), folder)
        data.measured = _load_measured(params or {}, data, required=measured, progress=progress)
        return data

    def train_per_entry(self, ratio: int) -> int:
        """Training spectra per entry used for ``ratio`` (checked against the stored set)."""
        if not 1 <= int(ratio) <= self.max_ratio:
            raise ValueError(f"ratio {ratio} is outside 1..{self.max_ratio}, the stored set's ratio "
                             "(generate it at the largest ratio searched)")
        n_train = split_sizes(ratio, self.val_fraction)[0]
        if n_train < 1:
            raise ValueError(f"ratio {ratio} leaves no training spectrum per entry")
        return n_train

    def train(self, ratio: int) -> ArrayDataset:
        """The training split of ``ratio``: the first spectra of every entry (:func:`ratio_rows`)."""
        from xrdid.learn.datasets import ArrayDataset

        n = self.train_per_entry(ratio)
        if n not in self._rows:
            self._rows[n] = ratio_rows(self.y_train, n)
        rows = self._rows[n]
        return ArrayDataset(_Rows(self.X_train, rows), self.y_train[rows])  # type: ignore[arg-type]

    def val(self) -> ArrayDataset:
        from xrdid.learn.datasets import ArrayDataset

        return ArrayDataset(self.X_val, self.y_val)


def _load_measured(params: Mapping[str, Any], data: TuneData, required: bool, progress: bool) -> MeasuredSet | None:
    """``evaluate.measured`` on the augmented set's grid and ids; None when not configured."""
    from xrdid.config import Grid
    from xrdid.data.measured_set import MeasuredSet

    test = MeasuredSet.from_params(params, data.ids, Grid.from_params(data.grid), progress)
    if test is None and required:
        labels = ((params.get("evaluate") or {}).get("measured") or {}).get("labels")
        raise InputError(labels or "evaluate.measured.labels",
                         "tune.objective is 'measured' but no measured labels file is configured or found")
    return test
