"""The universal synthetic spectra benchmark (Schuetzke, Szymanski, Reischl, npj Comput. Mater. 9, 100, 2023).

A *class config* (JSON, the authors' format) lists, for every class, peak positions (integer
indices on an ``n_points`` axis) and relative peak heights. From it this module renders the
benchmark's train / validation / test spectra exactly as the published procedure
(``spectra_from_config.py`` of jschuetzke/synthetic-spectra-benchmark) does:

* train (50 per class) and val (10 per class): every peak shifted independently by an integer in
  ``[-50, +49]`` points, every height offset by ``U(-0.05, +0.05)`` (then clipped to ``[0, 2]``),
  delta spikes blurred by ``gaussian_filter1d(mode="constant")`` with one ``σ ~ U(2, 5)`` per
  spectrum;
* test (9 per class): {no shift, all peaks −30, all +30} × {exact, heights +0.04, −0.04} (peaks of
  height exactly 1.0 keep their height; offset heights clipped to ``[0, 2]``), ``σ = 2``;
* no noise or background; every spectrum divided by its own maximum (the published training script
  does this right after loading).

Published details kept on purpose (see :class:`Procedure`):

* Shifted positions are **clipped** to ``[0, n_points - 1]`` (``edge="clip"``), not dropped. The
  published configs keep every peak ≥ 100 points from the edges, so with shifts ≤ 50 this never
  triggers for them; ``edge="drop"`` removes such peaks instead.
* Two spikes that land on the same point are **not summed**: the published code assigns
  ``scan[positions] = heights``, so the later peak of the class list wins. We do the same.
* Special cases of the 500-class benchmark (confusable classes): classes 8 and 318 use ±17 test
  shifts, classes 164, 281, 219 and 347 use ±0.025 test heights. They are data
  (:data:`DATASET500_PROCEDURE`), applied automatically only to the published ``dataset500.json``
  (recognised by its content fingerprint), and overridable by passing a :class:`Procedure`.
  The 27-class challenge config gets its own published variant (:data:`CHALLENGE27_PROCEDURE`:
  6 test spectra per class in class-specific layouts, ±0.03 test heights, height-1 peaks never
  jittered).

Randomness differs from the published script only in *how* it is drawn: all draws of a split come
from one seeded :class:`numpy.random.Generator` in vectorised calls (so the same seed gives the
same bytes whatever the chunk size), not from thousands of scalar calls, so the published arrays
themselves cannot be reproduced bit for bit, only their distribution.

Rendering is sparse: a blurred spike train is a sum of truncated Gaussian kernels, so each peak's
kernel (``2r+1`` weights, ``r = int(4σ + 0.5)`` as in scipy) is scattered straight into the output
with one :func:`numpy.bincount` per chunk. This equals ``gaussian_filter1d(spikes, σ,
mode="constant", truncate=4)`` (zero padding = kernel taps outside the axis dropped) to float64
rounding, and costs O(peaks × kernel) instead of O(spectra × points × kernel).

Examples
--------
>>> cfg = make_config(5, 500, boundary=60, seed=1)
>>> X, y = generate(cfg, "test")
>>> X.shape, X.dtype, float(X.max())
((45, 500), dtype('float32'), 1.0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xrdid.errors import InputError

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_SPLIT_KEY = {"train": 1, "val": 2}  # spawn keys: train and val draw from independent streams

# The published 3 × 3 test layout, in the published row order: (shift direction, height direction).
NINE_GRID: tuple[tuple[int, int], ...] = (
    (0, 0), (-1, 0), (1, 0),
    (0, 1), (-1, 1), (1, 1),
    (0, -1), (-1, -1), (1, -1),
)  # fmt: skip


@dataclass(frozen=True)
class Procedure:
    """How a class config is turned into spectra; the defaults are the published procedure.

    Parameters
    ----------
    n_train, n_val : spectra per class in the train and validation splits.
    shift : train/val peaks move by an integer in ``[-shift, shift - 1]`` (numpy's half-open
        ``integers(p - shift, p + shift)`` as published).
    height_jitter : train/val heights move by ``U(-height_jitter, +height_jitter)``.
    jitter_unit_peaks : also jitter peaks of height exactly 1.0 (True in the 500-class script,
        False in the challenge script).
    sigma : ``(low, high)`` of the per-spectrum Gaussian σ (points) for train/val.
    height_clip : jittered / offset heights are clipped to this range.
    test_grid : the test spectra of a class as (shift direction, height direction) pairs in
        ``{-1, 0, 1}``; a class may have its own in ``class_grid``.
    test_shift, test_height : magnitudes of the test shift (points) and height offset.
    test_sigma : σ of every test spectrum.
    class_shift, class_height, class_grid : per-class replacements of ``test_shift``,
        ``test_height`` and ``test_grid`` (the authors' special cases).
    truncate : Gaussian kernel radius in σ, as scipy's ``truncate`` (radius ``int(truncate σ + .5)``).
    edge : ``"clip"`` (published) moves peaks shifted off the axis onto its first/last point;
        ``"drop"`` removes them.
    normalize : divide each spectrum by its maximum (the published training input).

    Examples
    --------
    >>> Procedure().n_train, len(Procedure().test_grid)
    (50, 9)
    >>> DATASET500_PROCEDURE.class_shift[8]
    17
    """

    n_train: int = 50
    n_val: int = 10
    shift: int = 50
    height_jitter: float = 0.05
    jitter_unit_peaks: bool = True
    sigma: tuple[float, float] = (2.0, 5.0)
    height_clip: tuple[float, float] = (0.0, 2.0)
    test_grid: tuple[tuple[int, int], ...] = NINE_GRID
    test_shift: int = 30
    test_height: float = 0.04
    test_sigma: float = 2.0
    class_shift: Mapping[int, int] = field(default_factory=dict)
    class_height: Mapping[int, float] = field(default_factory=dict)
    class_grid: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    truncate: float = 4.0
    edge: Literal["clip", "drop"] = "clip"
    normalize: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.sigma
        problems = [
            (self.n_train < 0 or self.n_val < 0, "n_train and n_val must be ≥ 0"),
            (self.shift < 0 or self.test_shift < 0, "shifts must be ≥ 0"),
            (not 0 < lo <= hi, f"sigma range {self.sigma} must satisfy 0 < low ≤ high"),
            (not self.test_sigma > 0 or not self.truncate > 0, "test_sigma and truncate must be > 0"),
            (self.edge not in ("clip", "drop"), f"edge must be 'clip' or 'drop', not {self.edge!r}"),
            (self.height_clip[0] > self.height_clip[1], f"bad height_clip {self.height_clip}"),
        ]
        grids = [self.test_grid, *self.class_grid.values()]
        if any(not g or any(s not in (-1, 0, 1) or d not in (-1, 0, 1) for s, d in g) for g in grids):
            problems.append((True, "test grids must be non-empty lists of (shift, height) in {-1, 0, 1}"))
        for bad, message in problems:
            if bad:
                raise ValueError(f"invalid Procedure: {message}")

    def grid_for(self, label: int) -> tuple[tuple[int, int], ...]:
        """The test layout of class ``label``."""
        return tuple(self.class_grid.get(label, self.test_grid))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``meta.json``)."""
        d = dataclasses.asdict(self)
        for key in ("class_shift", "class_height", "class_grid"):
            d[key] = {str(k): v for k, v in sorted(d[key].items())}
        return d


# The 500-class benchmark: the authors special-cased classes whose test variants would overlap
# another class (spectra_from_config.py, "change lines for modified config!").
DATASET500_PROCEDURE = Procedure(
    class_shift={8: 17, 318: 17},
    class_height={164: 0.025, 281: 0.025, 219: 0.025, 347: 0.025},
)

# The 27-class challenge (challenge_dataset/spectra_from_config.py): 6 test spectra per class in
# class-specific layouts, ±0.03 test heights, height-1 peaks never jittered in train/val.
_L6 = ((0, 0), (-1, 0), (1, 0), (0, -1), (-1, -1), (1, -1))
_CHALLENGE_LAYOUTS: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {
    tuple(range(9)): _L6,
    (9, 12, 15): ((0, 0), (1, 0), (0, 1), (1, 1), (0, -1), (1, -1)),
    (10, 13, 16): ((-1, 0), (1, 0), (-1, 1), (1, 1), (-1, -1), (1, -1)),
    (11, 14, 17): ((0, 0), (-1, 0), (0, 1), (-1, 1), (0, -1), (-1, -1)),
    (18, 21, 24): ((0, 0), (-1, 0), (1, 0), (0, 1), (-1, 1), (1, 1)),
    (19, 22, 25): ((0, -1), (-1, -1), (1, -1), (0, 1), (-1, 1), (1, 1)),
    (20, 23, 26): _L6,
}
CHALLENGE27_PROCEDURE = Procedure(
    jitter_unit_peaks=False,
    test_grid=_L6,
    test_height=0.03,
    class_grid={c: g for classes, g in _CHALLENGE_LAYOUTS.items() for c in classes},
)

# Content fingerprints (SyntheticConfig.fingerprint) of the published configs.
DATASET500_FINGERPRINT = "9bef51a6d40730a4f14513f7df98ea9b1dd0aa85dc6a8e8a22aeafdb90f9e839"
CHALLENGE27_FINGERPRINT = "2b935e2dac26f95d682331cf59ef5f8a58775c73011229658db994d663cc93fd"
_KNOWN_PROCEDURES = {DATASET500_FINGERPRINT: DATASET500_PROCEDURE, CHALLENGE27_FINGERPRINT: CHALLENGE27_PROCEDURE}


@dataclass(frozen=True)
class SyntheticConfig:
    """A class config: per class, integer peak positions and relative heights on ``n_points``.

    The JSON format (the authors')::

        {"datapoints": 5000, "boundary": 100, "classes": 500, "min_peaks": 2, "max_peaks": 10,
         "max_height": 100,
         "spectra": {"0": {"peak_positions": [391, 413, ...], "peak_heights": [0.424, 0.889, ...]},
                     "1": ...}}

    ``datapoints`` and ``spectra`` are required; ``classes`` must match the number of entries;
    ``boundary``, ``min_peaks``, ``max_peaks`` and ``max_height`` describe how the config was
    drawn (see :func:`make_config`) and are kept for round trips. Class keys must be ``"0"`` …
    ``"K-1"``; the key is the label.

    Examples
    --------
    >>> cfg = SyntheticConfig(n_points=100, positions=((10, 50), (70,)), heights=((0.5, 1.0), (1.0,)))
    >>> cfg.n_classes, cfg.n_peaks.tolist()
    (2, [2, 1])
    """

    n_points: int
    positions: tuple[tuple[int, ...], ...]
    heights: tuple[tuple[float, ...], ...]
    boundary: int | None = None
    min_peaks: int | None = None
    max_peaks: int | None = None
    max_height: int | None = None

    def __post_init__(self) -> None:
        problem = _config_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def n_classes(self) -> int:
        return len(self.positions)

    @property
    def n_peaks(self) -> np.ndarray:
        """Number of peaks of each class."""
        return np.array([len(p) for p in self.positions], dtype=np.int64)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the content that matters for rendering (axis length, positions, heights)."""
        canon = json.dumps([self.n_points, [list(p) for p in self.positions], [list(h) for h in self.heights]])
        return hashlib.sha256(canon.encode()).hexdigest()

    @cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        pos = np.fromiter((p for ps in self.positions for p in ps), dtype=np.int64)
        hts = np.fromiter((h for hs in self.heights for h in hs), dtype=np.float64)
        return pos, hts

    @classmethod
    def from_json(cls, path: str | Path) -> SyntheticConfig:
        """Read and validate a config file; any problem raises :class:`~xrdid.errors.InputError`.

        Examples
        --------
        >>> cfg = SyntheticConfig.from_json("../shared/data/schuetzke2022/dataset500.json")  # doctest: +SKIP
        >>> cfg.n_classes, cfg.n_points  # doctest: +SKIP
        (500, 5000)
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"invalid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise InputError(path, str(exc)) from exc

    @classmethod
    def from_dict(cls, data: Any) -> SyntheticConfig:
        """Build from the parsed JSON; raises ValueError naming the first problem."""
        if not isinstance(data, dict):
            raise ValueError("top level must be a JSON object")
        for key in ("datapoints", "spectra"):
            if key not in data:
                raise ValueError(f"missing key '{key}'")
        n_points = data["datapoints"]
        if not _is_int(n_points) or n_points < 2:
            raise ValueError(f"'datapoints' must be an integer ≥ 2, not {n_points!r}")
        spectra = data["spectra"]
        if not isinstance(spectra, dict) or not spectra or not all(isinstance(k, str) for k in spectra):
            raise ValueError("'spectra' must be a non-empty object of classes")
        keys = sorted(spectra, key=lambda k: int(k) if k.isdecimal() else -1)
        if keys != [str(i) for i in range(len(keys))]:
            raise ValueError("class keys of 'spectra' must be '0', '1', ... without gaps")
        if "classes" in data and data["classes"] != len(keys):
            raise ValueError(f"'classes' is {data['classes']!r} but 'spectra' has {len(keys)} classes")
        positions, heights = [], []
        for key in keys:
            entry = spectra[key]
            if not isinstance(entry, dict) or "peak_positions" not in entry or "peak_heights" not in entry:
                raise ValueError(f"class {key}: needs 'peak_positions' and 'peak_heights'")
            pos, hts = entry["peak_positions"], entry["peak_heights"]
            if not isinstance(pos, list) or not all(_is_int(p) for p in pos):
                raise ValueError(f"class {key}: 'peak_positions' must be a list of integers")
            if not isinstance(hts, list) or not all(_is_number(h) for h in hts):
                raise ValueError(f"class {key}: 'peak_heights' must be a list of numbers")
            positions.append(tuple(int(p) for p in pos))
            heights.append(tuple(float(h) for h in hts))
        meta = {}
        for key in ("boundary", "min_peaks", "max_peaks", "max_height"):
            value = data.get(key)
            if value is not None and not _is_int(value):
                raise ValueError(f"'{key}' must be an integer, not {value!r}")
            meta[key] = value
        return cls(n_points, tuple(positions), tuple(heights), **meta)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (same keys and order as the published files)."""
        data: dict[str, Any] = {"datapoints": self.n_points}
        for key in ("boundary",):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["classes"] = self.n_classes
        for key in ("min_peaks", "max_peaks", "max_height"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["spectra"] = {
            str(i): {"peak_positions": list(p), "peak_heights": list(h)}
            for i, (p, h) in enumerate(zip(self.positions, self.heights))
        }
        return data

    def to_json(self, path: str | Path) -> Path:
        """Write the config as JSON (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _config_problem(cfg: SyntheticConfig) -> str | None:
    if len(cfg.positions) != len(cfg.heights) or not cfg.positions:
        return "a config needs at least one class and as many height lists as position lists"
    for label, (pos, hts) in enumerate(zip(cfg.positions, cfg.heights)):
        if not pos or len(pos) != len(hts):
            return f"class {label}: needs ≥ 1 peak and as many heights as positions ({len(pos)} vs {len(hts)})"
        if min(pos) < 0 or max(pos) >= cfg.n_points:
            return f"class {label}: peak positions must lie in [0, {cfg.n_points - 1}]"
        if not all(math.isfinite(h) and h >= 0 for h in hts) or max(hts) <= 0:
            return f"class {label}: peak heights must be finite, ≥ 0 and not all 0"
    return None


def _as_config(config: SyntheticConfig | str | Path) -> SyntheticConfig:
    return config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_json(config)


def procedure_for(config: SyntheticConfig) -> Procedure:
    """The published procedure for ``config``: with its special cases for the published
    ``dataset500.json`` / ``challenge27.json`` (recognised by fingerprint), plain otherwise.

    Examples
    --------
    >>> procedure_for(make_config(3, 400, boundary=60)) == Procedure()
    True
    """
    return _KNOWN_PROCEDURES.get(config.fingerprint, Procedure())


@dataclass(frozen=True, eq=False)  # array fields: compare by identity
class SplitPlan:
    """Everything random about a split, drawn once: the exact delta spikes and σ of each spectrum.

    Spectrum ``i`` has spikes ``pos[offsets[i]:offsets[i+1]]`` with heights ``height[...]``
    (after edge handling and with coinciding spikes resolved as published), Gaussian width
    ``sigma[i]`` and label ``y[i]``. Spectra are ordered class by class.
    """

    split: Split
    n_points: int
    y: np.ndarray
    sigma: np.ndarray
    offsets: np.ndarray
    pos: np.ndarray
    height: np.ndarray
    truncate: float = 4.0

    def __len__(self) -> int:
        return len(self.y)

    def spikes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dense float64 spike arrays of spectra ``start:stop`` (before blurring), for checks."""
        stop = len(self) if stop is None else stop
        out = np.zeros((stop - start, self.n_points))
        a, b = self.offsets[start], self.offsets[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(self.offsets[start : stop + 1]))
        out[rows, self.pos[a:b]] = self.height[a:b]
        return out


def plan_split(
    config: SyntheticConfig | str | Path, split: Split, seed: int = 0, procedure: Procedure | None = None
) -> SplitPlan:
    """Draw the spikes and σ of every spectrum of ``split``.

    ``train`` and ``val`` draw from independent streams of ``seed``; ``test`` is deterministic.

    Examples
    --------
    >>> cfg = SyntheticConfig(n_points=300, positions=((100, 200),), heights=((0.5, 1.0),))
    >>> p = plan_split(cfg, "test")
    >>> len(p), p.pos[:2].tolist(), float(p.sigma[0])
    (9, [100, 200], 2.0)
    """
    config = _as_config(config)
    proc = procedure_for(config) if procedure is None else procedure
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if not _is_int(seed) and not isinstance(seed, np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, not {seed!r}")
    base_pos, base_h = config._flat
    n_peaks = config.n_peaks
    class_start = np.concatenate([[0], np.cumsum(n_peaks)])
    lo, hi = proc.height_clip

    if split == "test":
        grids = [proc.grid_for(c) for c in range(config.n_classes)]
        per_class = np.array([len(g) for g in grids])
        y = np.repeat(np.arange(config.n_classes), per_class)
        sigma = np.full(len(y), float(proc.test_sigma))
        # one (shift, height offset) pair per test spectrum, then broadcast over its class's peaks
        shift = np.array([s * proc.class_shift.get(c, proc.test_shift) for c, g in enumerate(grids) for s, _ in g])
        dh_dir = np.array([d for g in grids for _, d in g])
        dh = dh_dir * np.array([proc.class_height.get(c, proc.test_height) for c in y])
        counts = n_peaks[y]
        peak_index = _ranges(class_start[y], counts)  # which config peak each spike comes from
        spec = np.repeat(np.arange(len(y)), counts)
        pos = base_pos[peak_index] + shift[spec]
        h0 = base_h[peak_index]
        # height-1 peaks keep their height; offset heights are clipped, exact ones are not (published)
        height = np.where((h0 == 1.0) | (dh_dir[spec] == 0), h0, np.clip(h0 + dh[spec], lo, hi))
    else:
        n_per = proc.n_train if split == "train" else proc.n_val
        rng = np.random.default_rng([int(seed), _SPLIT_KEY[split]])
        y = np.repeat(np.arange(config.n_classes), n_per)
        counts = n_peaks[y]
        peak_index = _ranges(class_start[y], counts)
        spec = np.repeat(np.arange(len(y)), counts)
        shifts = rng.integers(-proc.shift, proc.shift, size=len(peak_index)) if proc.shift else 0
        pos = base_pos[peak_index] + shifts
        h0 = base_h[peak_index]
        height = np.clip(h0 + rng.uniform(-proc.height_jitter, proc.height_jitter, size=len(h0)), lo, hi)
        if not proc.jitter_unit_peaks:
            height = np.where(h0 == 1.0, h0, height)
        sigma = rng.uniform(*proc.sigma, size=len(y))

    n = config.n_points
    if proc.edge == "clip":
        pos = np.clip(pos, 0, n - 1)
    else:
        keep = (pos >= 0) & (pos < n)
        pos, height, spec = pos[keep], height[keep], spec[keep]
    # Coinciding spikes: the published `scan[positions] = heights` keeps the last one written.
    key = spec * n + pos
    if len(key) and np.any(np.diff(np.sort(key)) == 0):
        _, last_rev = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - last_rev)
        pos, height, spec = pos[keep], height[keep], spec[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(spec, minlength=len(y)))])
    return SplitPlan(split, n, y.astype(np.int64), sigma, offsets, pos.astype(np.int64), height, proc.truncate)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each pair, vectorised."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts, counts) + np.repeat(starts, counts)


def render(
    plan: SplitPlan,
    start: int = 0,
    stop: int | None = None,
    *,
    normalize: bool = True,
    dtype: np.dtype | type = np.float32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blurred spectra ``start:stop`` of ``plan`` (one row each), optionally max-normalised.

    Equals ``gaussian_filter1d(plan.spikes(...), σ_i, mode="constant", truncate=plan.truncate)``
    row by row to float64 rounding (then cast to ``dtype``).

    Examples
    --------
    >>> cfg = SyntheticConfig(n_points=300, positions=((100, 200),), heights=((0.5, 1.0),))
    >>> X = render(plan_split(cfg, "test"), 0, 1, normalize=False)
    >>> round(float(X[0, 200]), 4)  # the height-1 peak's centre: 1 / (sqrt(2π) σ) with σ = 2
    0.1995
    """
    stop = len(plan) if stop is None else stop
    rows, n = stop - start, plan.n_points
    sig = plan.sigma[start:stop]
    # scipy's kernel: radius int(truncate σ + 0.5), weights exp(-x²/2σ²) normalised to sum 1
    radius = (plan.truncate * sig + 0.5).astype(np.int64)
    r_max = int(radius.max()) if rows else 0
    x = np.arange(-r_max, r_max + 1)
    w = np.exp(-0.5 / (sig * sig)[:, None] * (x * x)[None, :])
    w[np.abs(x)[None, :] > radius[:, None]] = 0.0
    w /= w.sum(axis=1, keepdims=True)

    a, b = plan.offsets[start], plan.offsets[stop]
    spec = np.repeat(np.arange(rows), np.diff(plan.offsets[start : stop + 1]))
    idx = plan.pos[a:b, None] + x[None, :]
    vals = w[spec] * plan.height[a:b, None]
    flat = idx + (spec * n)[:, None]
    inside = (idx >= 0) & (idx < n)  # mode="constant": taps off the axis see zeros, so drop them
    if not inside.all():
        flat, vals = flat[inside], vals[inside]
    dense = np.bincount(flat.ravel(), weights=vals.ravel(), minlength=rows * n).reshape(rows, n)
    if normalize:
        peak = dense.max(axis=1, keepdims=True)
        dense /= np.where(peak > 0, peak, 1.0)  # an all-zero spectrum (every height clipped to 0) stays 0
    if out is None:
        return dense.astype(dtype, copy=False)
    out[...] = dense
    return out


def _default_chunk(n_points: int) -> int:
    # ~8 MiB of float64 scratch: cache-friendly; measured fastest on dataset500 (200-500 rows)
    return max(1, (1 << 20) // n_points)


def iter_chunks(
    config: SyntheticConfig | str | Path,
    split: Split,
    seed: int = 0,
    chunk: int | None = None,
    *,
    procedure: Procedure | None = None,
    dtype: np.dtype | type = np.float32,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(X, y)`` of ``split`` in chunks of ``chunk`` spectra (class by class order).

    The concatenation of the chunks is the same bytes for any chunk size.

    Examples
    --------
    >>> cfg = make_config(4, 400, boundary=60, seed=0)
    >>> [X.shape for X, _ in iter_chunks(cfg, "val", chunk=16)]
    [(16, 400), (16, 400), (8, 400)]
    """
    config = _as_config(config)
    proc = procedure_for(config) if procedure is None else procedure
    plan = plan_split(config, split, seed, proc)
    step = chunk or _default_chunk(config.n_points)
    if step < 1:
        raise ValueError(f"chunk must be ≥ 1, not {chunk}")
    for a in range(0, len(plan), step):
        b = min(a + step, len(plan))
        yield render(plan, a, b, normalize=proc.normalize, dtype=dtype), plan.y[a:b]


def generate(
    config: SyntheticConfig | str | Path,
    split: Split,
    seed: int = 0,
    chunk: int | None = None,
    *,
    procedure: Procedure | None = None,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """All spectra of ``split``: ``X`` (n, n_points) float32 in [0, 1], ``y`` (n,) int64.

    ``config`` is a :class:`SyntheticConfig` or the path of its JSON file.

    ``procedure`` defaults to :func:`procedure_for` ``(config)`` (the published procedure, with
    the authors' special cases for the published configs). ``chunk`` bounds the scratch memory
    only; the result does not depend on it.

    Examples
    --------
    >>> cfg = make_config(3, 400, boundary=60, seed=0)
    >>> [generate(cfg, s)[0].shape[0] for s in SPLITS]
    [150, 30, 27]
    """
    config = _as_config(config)
    proc = procedure_for(config) if procedure is None else procedure
    plan = plan_split(config, split, seed, proc)
    X = np.empty((len(plan), config.n_points), dtype=dtype)
    step = chunk or _default_chunk(config.n_points)
    for a in range(0, len(plan), step):
        b = min(a + step, len(plan))
        render(plan, a, b, normalize=proc.normalize, out=X[a:b])
    return X, plan.y.copy()


def write_dataset(
    config: SyntheticConfig | str | Path,
    out_dir: str | Path,
    seed: int = 0,
    *,
    procedure: Procedure | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    chunk: int | None = None,
    source: str | None = None,
) -> Path:
    """Write ``x_{train,val,test}.npy``, ``y_{...}.npy`` (int16) and ``meta.json`` into ``out_dir``.

    Streams chunk by chunk into the ``.npy`` files, so memory stays at one chunk.

    Examples
    --------
    >>> import tempfile, json
    >>> out = write_dataset(make_config(3, 400, boundary=60), tempfile.mkdtemp())
    >>> sorted(p.name for p in out.iterdir())[:3]
    ['meta.json', 'x_test.npy', 'x_train.npy']
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {dtype!r}")
    config = _as_config(config)
    proc = procedure_for(config) if procedure is None else procedure
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_dtype = np.int16 if config.n_classes <= np.iinfo(np.int16).max else np.int32
    splits: dict[str, Any] = {}
    for split in SPLITS:
        plan = plan_split(config, split, seed, proc)
        # header, then the rows chunk by chunk: plain writes keep memory (and RSS) at one chunk
        shape = (len(plan), config.n_points)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        step = chunk or _default_chunk(config.n_points)
        with open(out / f"x_{split}.npy", "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for a in range(0, len(plan), step):
                b = min(a + step, len(plan))
                fh.write(render(plan, a, b, normalize=proc.normalize, dtype=dtype).tobytes())
        np.save(out / f"y_{split}.npy", plan.y.astype(y_dtype))
        splits[split] = {"n": len(plan), "x": f"x_{split}.npy", "y": f"y_{split}.npy"}
    meta = {
        "format": "xrdid-synthetic/1",
        "source": source,
        "config_fingerprint": config.fingerprint,
        "n_classes": config.n_classes,
        "n_points": config.n_points,
        "seed": int(seed),
        "dtype": dtype,
        "y_dtype": np.dtype(y_dtype).name,
        "splits": splits,
        "procedure": proc.to_dict(),
    }  # no timings: the folder must be byte-identical between runs (a DVC output)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def make_config(
    n_classes: int,
    n_points: int = 5000,
    *,
    peaks_per_class: tuple[int, int] = (2, 10),
    seed: int = 0,
    boundary: int = 100,
    max_height: int = 100,
    distribution: Literal["gamma", "uniform"] = "gamma",
) -> SyntheticConfig:
    """Draw a new class config with the authors' rules (``dataset_config_generator.py``).

    Per class, with one :class:`numpy.random.Generator` seeded by ``seed``:

    * number of peaks ``k = round(Gamma(shape 1.2, scale 1.2) + min_peaks)`` (favours few peaks;
      the dataset500 counts are 2: 126, 3: 183, 4: 100, 5: 50, 6+: 41), or uniform on
      ``[min_peaks, max_peaks]`` with ``distribution="uniform"``;
    * ``k`` positions uniform on ``[boundary, n_points - boundary)`` and ``k`` integer heights
      uniform on ``[1, max_height]``, both then cut to the first ``max_peaks`` (as published);
    * heights divided by their maximum and rounded to 3 decimals (so each class has a peak of
      height 1.0; ``max_height = 100`` makes 0.01 the smallest), peaks sorted by position.

    One deviation: a class whose positions coincide is drawn again (the published script would
    silently merge them; it never happened in dataset500). ``make_config(500, 5000, seed=2022)``
    reproduces the published ``dataset500.json``.

    Examples
    --------
    >>> cfg = make_config(4, 1000, seed=3)
    >>> cfg.n_classes, all(max(h) == 1.0 for h in cfg.heights)
    (4, True)
    """
    lo, hi = peaks_per_class
    if n_classes < 1 or not 1 <= lo <= hi:
        raise ValueError(f"need n_classes ≥ 1 and 1 ≤ min ≤ max peaks, got {n_classes}, {peaks_per_class}")
    if boundary < 0 or n_points - 2 * boundary < hi:
        raise ValueError(f"{n_points} points with boundary {boundary} leave no room for {hi} distinct peaks")
    if max_height < 1 or distribution not in ("gamma", "uniform"):
        raise ValueError(f"need max_height ≥ 1 and distribution gamma|uniform, got {max_height}, {distribution!r}")
    rng = np.random.default_rng(seed)
    positions, heights = [], []
    for _ in range(n_classes):
        while True:
            if distribution == "gamma":
                k = int(np.round(rng.gamma(1.2, 1.2) + lo))
            else:
                k = int(rng.integers(lo, hi, endpoint=True))
            pos = rng.integers(boundary, n_points - boundary, k)[:hi]
            hts = rng.integers(1, max_height, k, endpoint=True)[:hi]
            if len(np.unique(pos)) == len(pos):
                break
        hts = np.round(hts / hts.max(), 3)
        order = np.argsort(pos)
        positions.append(tuple(int(p) for p in pos[order]))
        heights.append(tuple(float(h) for h in hts[order]))
    return SyntheticConfig(
        n_points,
        tuple(positions),
        tuple(heights),
        boundary=boundary,
        min_peaks=lo,
        max_peaks=hi,
        max_height=max_height,
    )


# ---------------------------------------------------------------------------------------------
# command line
