"""Augmented splits on disk: their sizes and memory-mapped reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xrdid.errors import InputError
from xrdid.outputs import require


def split_sizes(ratio: int, val_fraction: float) -> tuple[int, int]:
    """Training and validation spectra per entry of the augment stage for ``ratio``.

    :func:`write_augmented` splits every entry this way (Python's ``round``).

    Examples
    --------
    >>> split_sizes(72, 0.2), split_sizes(40, 0.2), split_sizes(5, 0.2)
    ((58, 14), (32, 8), (4, 1))
    """
    n_val = int(round(int(ratio) * float(val_fraction)))
    return int(ratio) - n_val, n_val


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped (X, y) of an augmented split written by the ``augment`` stage."""
    folder = require(folder, "meta.json", "xrdid augment") / split
    try:
        return np.load(folder / "X.npy", mmap_mode="r"), np.load(folder / "y.npy")
    except OSError as exc:
        raise InputError(folder, f"augmented split missing ({exc.strerror or exc}): run `xrdid augment`") from exc


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of an augmented folder (ids, grid, counts); InputError when absent or broken."""
    path = require(folder, "meta.json", "xrdid augment") / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(path, f"invalid JSON ({exc}): run `xrdid augment` again") from exc
    if not isinstance(meta, dict) or "ids" not in meta:
        raise InputError(path, "no ids: not written by `xrdid augment`")
    return meta
