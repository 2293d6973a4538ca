"""Open-library search: rank the entries of any simulated library, strain-tolerantly, without training.

A measured pattern is compared with every library entry in two steps:

1. **Candidate search.** Both sides live on the ln sin θ axis (:class:`~xrdid.xrd.strain.StrainAxis`),
   are smoothed wide (``coarse_smooth`` points, a few % of strain) and thinned; the cosine of
   those vectors is an inner product, searched exactly by faiss (``IndexFlatIP``) over the whole
   library. The wide smoothing keeps the right entry among the ``candidates`` best even when its
   cell is a few % off (DFT cells) and its intensities differ (texture, solvent).
2. **Lattice-tolerant fit.** Each candidate is compared with the pattern at every isotropic strain
   up to ``max_strain`` — on this axis a whole-point shift — with the narrow smoothing ``smooth``;
   the score is the best cosine minus ``strain_penalty`` per % of strain, so that among
   look-alikes the entry that fits without strain wins. Intensities are compared as
   ``I ** power`` (below 1: weak peaks count, the strongest ones dominate less).

The library is data, not weights: :meth:`LibraryIndex.build` turns the ``simulate`` stage's
patterns into the index (seconds for 25,000 entries), so adding CIFs means re-running
``library``, ``simulate`` and ``index``, never training.

Examples
--------
>>> index = LibraryIndex.build(PatternSet.load("data/patterns"), read_index("data/library"))  # doctest: +SKIP
>>> found = index.search(X, covered)  # doctest: +SKIP
>>> index.ids[found.rows[0, 0]], found.score[0, 0], found.strain[0, 0]  # doctest: +SKIP
('mp-1234', 0.91, 0.018)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from xrdid.config import Grid
from xrdid.data.library import material_groups
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.outputs import atomic_dir, require
from xrdid.xrd.preprocess import rolling_background
from xrdid.xrd.strain import StrainAxis

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
FLOAT32_BUDGET = 2**30  # bytes: a loaded index keeps its fit vectors as float32 up to this size
_ROW_COLUMNS = ("id", "formula", "reduced_formula", "spacegroup", "refcode", "overlaps", "source",
                "elements")  # for answers and the chemistry filter


@dataclass(frozen=True)
class SearchSettings:
    """How patterns are compared (the ``match`` section's search keys; see the module notes).

    Attributes
    ----------
    axis_step : ln sin θ step of the fine comparison (0.001: 0.1 % strain per point).
    smooth : Gaussian σ, in axis points, on both sides of the fine comparison.
    power : intensities are compared as ``I ** power``.
    max_strain : largest isotropic lattice strain tried (both signs).
    strain_penalty : subtracted from the cosine per % of strain.
    coarse_smooth : Gaussian σ, in axis points, of the candidate-search vectors ...
    coarse_stride : ... which keep one point in this many.
    candidates : entries the fit re-ranks per pattern.
    """

    axis_step: float = 0.001
    smooth: float = 5.0
    power: float = 0.7
    max_strain: float = 0.03
    strain_penalty: float = 0.03
    coarse_smooth: float = 15.0
    coarse_stride: int = 5
    candidates: int = 200

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SearchSettings:
        """The settings from a mapping (a ``match`` section); other keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def index_keys(self) -> dict[str, Any]:
        """The settings an index is built with (the rest apply at query time)."""
        return {k: getattr(self, k) for k in ("axis_step", "smooth", "power", "coarse_smooth", "coarse_stride")}


@dataclass
class Matches:
    """The ranked candidates of each pattern: arrays (n_patterns, k), best first.

    ``rows`` index the library, ``score`` is the strain-penalised cosine, ``cosine`` the cosine at
    the fitted ``strain`` (the measured cell relative to the entry's: +0.02 = 2 % larger).
    """

    rows: np.ndarray
    score: np.ndarray
    cosine: np.ndarray
    strain: np.ndarray


@dataclass
class LibraryIndex:
    """Search vectors of a simulated library (see the module notes).

    Attributes
    ----------
    rows : one dict per entry (``id``, ``formula``, ``material``, ...), in pattern order.
    grid : the 2θ grid the patterns were simulated on (measured rows must come on it).
    settings : the :class:`SearchSettings`.
    fine : (n_entries, axis points) smoothed ``I ** power`` for the fit: float16 on disk, float32
        once loaded when that takes at most :data:`FLOAT32_BUDGET`.
    coarse : float32 (n_entries, d): unit vectors for the candidate search.
    patterns_sha256 : hash of the simulated patterns' ``meta.json`` (ids, grid, settings).
    """

    rows: list[dict[str, str]]
    grid: Grid
    settings: SearchSettings
    fine: np.ndarray
    coarse: np.ndarray
    patterns_sha256: str = ""
    _faiss: Any = field(default=None, repr=False, compare=False)
    _norm2: np.ndarray | None = field(default=None, repr=False, compare=False)  # squared norm of each fine row

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]

    @property
    def axis(self) -> StrainAxis:
        return StrainAxis.from_grid(self.grid, self.settings.axis_step)

    # ------------------------------------------------------------------ building and storing

    @classmethod
    def build(cls, patterns: PatternSet, library: pd.DataFrame | None = None,
              settings: SearchSettings | None = None, chunk: int = 2048) -> LibraryIndex:
        """The index of a ``simulate`` output; ``library`` (its ``index.csv``) adds formulas and materials.

        Entries of one material (same reduced formula and near-identical pattern, see
        :func:`~xrdid.data.library.material_groups`) are ranked as one candidate with aliases.
        """
        settings = settings or SearchSettings()
        axis = StrainAxis.from_grid(patterns.grid, settings.axis_step)
        n = len(patterns.ids)
        fine = np.empty((n, axis.n_points), np.float16)
        coarse = np.empty((n, len(range(0, axis.n_points, settings.coarse_stride))), np.float32)
        for start in range(0, n, chunk):  # bounded memory: 25,000 float32 rows on the axis are 280 MB
            rows = axis.resample(np.asarray(patterns.profiles[start:start + chunk]), patterns.grid)
            fine[start:start + chunk], coarse[start:start + chunk] = _vectors(rows, None, settings)
        table = pd.DataFrame({"id": patterns.ids, "formula": ""})
        if library is not None:
            found = library.astype({"id": str}).set_index("id")
            missing = [i for i in patterns.ids if i not in found.index]
            if missing:
                raise InputError("library", f"{len(missing)} simulated entries are not in the library "
                                            f"index (first: {missing[0]}): library and patterns differ")
            full = found.loc[patterns.ids].reset_index()
            table = full[[c for c in _ROW_COLUMNS if c in full.columns]].copy()
            table["material"] = material_groups(full, np.asarray(patterns.profiles))
        rows = table.fillna("").astype(str).to_dict("records")
        return cls(rows, patterns.grid, settings, fine, coarse, _meta_sha256(patterns))

    def save(self, folder: str | Path) -> Path:
        """Write the index folder (``meta.json``, ``library.csv``, ``fine.npy``, ``coarse.npy``)."""
        with atomic_dir(folder) as tmp:
            np.save(tmp / "fine.npy", self.fine)
            np.save(tmp / "coarse.npy", self.coarse)
            pd.DataFrame(self.rows).to_csv(tmp / "library.csv", index=False, lineterminator="\n")
            meta = {"format": INDEX_FORMAT, "grid": self.grid.to_dict(), "settings": self.settings.to_dict(),
                    "patterns_sha256": self.patterns_sha256, "n_entries": len(self)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> LibraryIndex:
        folder = require(folder, "meta.json", "xrdid index")
        try:
            meta = json.loads((folder / "meta.json").read_text())
            rows = pd.read_csv(folder / "library.csv", dtype=str, keep_default_na=False).to_dict("records")
            fine, coarse = np.load(folder / "fine.npy"), np.load(folder / "coarse.npy")
            grid, settings = Grid.from_params(meta["grid"]), SearchSettings.from_dict(meta["settings"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(folder, f"not an xrdid index ({exc})") from exc
        if not (len(rows) == len(fine) == len(coarse)):
            raise InputError(folder, f"library.csv has {len(rows)} rows but the vectors {len(fine)}: a partial copy")
        if fine.size * 4 <= FLOAT32_BUDGET:  # float16 on disk; float32 in memory spares a conversion per query
            fine = fine.astype(np.float32)
        return cls(rows, grid, settings, fine, coarse, str(meta.get("patterns_sha256", "")))

    @classmethod
    def for_library(cls, folder: str | Path, settings: SearchSettings | None = None) -> LibraryIndex:
        """The index of a pipeline data folder holding ``library/``, ``patterns/`` and maybe ``index/``.

        A stored ``index/`` is used when it was built from these patterns with these settings;
        otherwise the index is built in memory (seconds) and the reason logged.
        """
        folder = Path(folder)
        patterns = PatternSet.load(require(folder / "patterns", "meta.json", "xrdid simulate"))
        settings = settings or SearchSettings()
        if (folder / "index" / "meta.json").is_file():
            stored = cls.load(folder / "index")
            if stored.patterns_sha256 == _meta_sha256(patterns) and stored.settings.index_keys == settings.index_keys:
                stored.settings = settings  # query-time keys (strain, candidates) follow the model
                return stored
            log.info("index: %s is stale (other patterns or settings); building it in memory", folder / "index")
        from xrdid.data.library import read_index

        library = read_index(folder / "library") if (folder / "library" / "index.csv").is_file() else None
        return cls.build(patterns, library, settings)

    def subset(self, keep: np.ndarray) -> LibraryIndex:
        """The index of the entries where ``keep`` is True (e.g. one source of a merged library)."""
        keep = np.asarray(keep, bool)
        return LibraryIndex([r for r, k in zip(self.rows, keep) if k], self.grid, self.settings,
                            self.fine[keep], self.coarse[keep], self.patterns_sha256,
                            _norm2=None if self._norm2 is None else self._norm2[keep])

    # ------------------------------------------------------------------ searching

    def prepare(self, X: np.ndarray, covered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Measured rows on the grid → (fine rows, fine coverage, coarse unit vectors)."""
        X = self._rows(X)
        covered = np.ones(X.shape, bool) if covered is None else np.asarray(covered, bool)
        X = np.clip(X - rolling_background(X, self.grid.step), 0, None) * covered
        axis = self.axis
        mask = axis.resample(covered.astype(np.float32), self.grid) > 0.5
        fine, coarse = _vectors(axis.resample(X, self.grid), mask, self.settings)
        return fine.astype(np.float32), mask, coarse

    def search(self, X: np.ndarray, covered: np.ndarray | None = None, top: int | None = None,
               workers: int | None = None) -> Matches:
        """The best ``top`` entries of each measured row (default: all ``candidates``), best first.

        Each pattern's fit is a few small matrix products: BLAS and OpenMP threads would only spin
        against each other (15× slower on a busy 2-core machine), so they run single-threaded and
        the patterns are spread over ``workers`` threads (default: the CPU count, at most 8): their
        fits, and for a batch of 64 or more their preparation too.
        """
        from concurrent.futures import ThreadPoolExecutor

        X = self._rows(X)
        covered = np.ones(X.shape, bool) if covered is None else np.asarray(covered, bool)
        k = min(int(self.settings.candidates), len(self))
        n_top = k if top is None else min(int(top), k)
        workers = workers or min(8, os.cpu_count() or 1)
        batch = len(X) >= 64  # smaller batches: splitting costs more than it saves
        m = self.axis.points(self.settings.max_strain)
        strains = self.axis.strain(np.arange(-m, m + 1))  # one per shift tried
        penalty = self.settings.strain_penalty * 100 * np.abs(strains)[:, None]
        faiss_index, norm2 = self._index(), self._norms()
        with _threads().limit(limits=1), ThreadPoolExecutor(workers) as pool:  # numpy and ndimage release the GIL
            run = pool.map if workers > 1 and len(X) > 1 else map
            parts = np.array_split(np.arange(len(X)), workers if batch else 1)
            fine, mask, coarse = (np.concatenate(a) for a in zip(*run(lambda p: self.prepare(X[p], covered[p]), parts)))
            with _threads().limit(limits=workers if batch else 1, user_api="openmp"):  # faiss splits a batch
                _, found = faiss_index.search(coarse, k)
            fits = list(run(lambda q: self._fit(fine[q], mask[q], found[q], norm2, penalty, strains, n_top),
                            range(len(X))))
        rows, score, cosine, strain = (np.array([f[i] for f in fits]).reshape(len(X), n_top) for i in range(4))
        return Matches(rows.astype(np.int64), score.astype(np.float32), cosine.astype(np.float32),
                       strain.astype(np.float32))

    def _fit(self, fine: np.ndarray, mask: np.ndarray, rows: np.ndarray, norm2: np.ndarray, penalty: np.ndarray,
             strains: np.ndarray, n_top: int) -> tuple[np.ndarray, ...]:
        """One pattern's candidates ``rows`` ranked by the cosine less ``penalty`` at each of the 2m + 1 shifts
        (lattice ``strains``) tried: (rows, score, cosine, strain), best first."""
        m = len(strains) // 2
        # one (shifts × points) @ (points × candidates) product; row j: the pattern moved by j - m
        padded = np.zeros(fine.size + 2 * m, np.float32)  # np.pad costs 5 % of a fit
        padded[m:m + fine.size] = fine
        windows = sliding_window_view(padded, fine.size)
        cand = self.fine.take(rows, axis=0).astype(np.float32, copy=False)
        norms = np.sqrt(_covered_norms(cand, mask, m, norm2[rows])) * np.linalg.norm(windows, axis=1, keepdims=True)
        cosine = (windows @ cand.T) / np.maximum(norms, 1e-12)
        scored = cosine - penalty
        best = scored.argmax(axis=0)
        score = scored[best, np.arange(len(rows))]
        order = np.argsort(-score, kind="stable")[:n_top]
        # the strain: the measured cell relative to the entry's
        return rows[order], score[order], cosine[best[order], order], strains[best[order]]

    def _rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.grid.n_points:
            raise ValueError(f"expected rows of {self.grid.n_points} points, got shape {X.shape}")
        return X

    def _norms(self) -> np.ndarray:
        if self._norm2 is None:  # in chunks: a float16 index of 25,000 entries is 280 MB as float32
            self._norm2 = np.concatenate([np.square(self.fine[i:i + 4096], dtype=np.float32).sum(1, dtype=np.float64)
                                          for i in range(0, len(self), 4096)] or [np.zeros(0)])
        return self._norm2

    def _index(self) -> Any:
        if self._faiss is None:
            logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # one INFO line per CPU feature tried
            import faiss

            self._faiss = faiss.IndexFlatIP(self.coarse.shape[1])
            self._faiss.add(np.ascontiguousarray(self.coarse, dtype=np.float32))
        return self._faiss


def _threads() -> ThreadpoolController:
    """threadpoolctl's controller of the loaded BLAS and OpenMP libraries, faiss's included.

    Created once per process, after faiss is imported: ``threadpool_limits`` lists the loaded
    libraries afresh on each call (9 ms, half a single query).
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


_CONTROLLER: ThreadpoolController | None = None


def _vectors(rows: np.ndarray, mask: np.ndarray | None, s: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
    """Rows on the strain axis → (fine rows, coarse unit vectors) as :class:`LibraryIndex` stores them."""
    rows = np.clip(rows, 0, None)
    fine = np.clip(ndimage.gaussian_filter1d(rows, s.smooth, axis=1), 0, None) ** s.power
    coarse = np.clip(ndimage.gaussian_filter1d(rows, s.coarse_smooth, axis=1), 0, None) ** s.power
    if mask is not None:
        fine, coarse = fine * mask, coarse * mask
    coarse = coarse[:, :: s.coarse_stride]
    coarse /= np.maximum(np.linalg.norm(coarse, axis=1, keepdims=True), 1e-12)
    return fine, coarse.astype(np.float32)


def _covered_norms(cand: np.ndarray, mask: np.ndarray, m: int, norm2: np.ndarray) -> np.ndarray:
    """Squared norms of the candidate rows over the pattern's coverage moved by each shift: (2m + 1, k).

    Row j covers the candidate points p where ``mask[p + j - m]``. When the coverage is one run of
    points [a, b) (nearly every scan), that is the range [a + m - j, b + m - j): the whole norm less
    two edge sums of at most a + m and n - b + m points, a fraction of the product with the shifted
    masks that scans with gaps take. Where that difference is below 1e-6 of the whole norm (a
    candidate with almost nothing in a short scan's range) it has lost its digits to cancellation,
    and those candidates take the product too.
    """
    n = mask.size
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))
    covers = sliding_window_view(np.pad(mask.astype(np.float32), m), n)
    if len(edges) != 2:
        return (covers @ np.square(cand).T).astype(np.float64)
    j = np.arange(2 * m + 1)
    lo, hi = np.clip(edges[0] + m - j, 0, n), np.clip(edges[1] + m - j, 0, n)
    zero = np.zeros((len(cand), 1))
    head = np.hstack([zero, np.cumsum(np.square(cand[:, :lo.max()], dtype=np.float64), axis=1)])  # points < x
    edge = np.square(cand[:, hi.min():], dtype=np.float64)[:, ::-1]
    tail = np.hstack([np.cumsum(edge, axis=1)[:, ::-1], zero])  # column i: points ≥ hi.min() + i
    norms = norm2 - head[:, lo].T - tail[:, hi - hi.min()].T
    lost = np.flatnonzero((norms < 1e-6 * norm2).any(axis=0))
    if len(lost):
        norms[:, lost] = covers @ np.square(cand[lost]).T
    return norms


def _meta_sha256(patterns: PatternSet) -> str:
    """What identifies a ``simulate`` output: its ids, grid and settings (``meta.json``)."""
    return hashlib.sha256(json.dumps(patterns.meta, sort_keys=True).encode()).hexdigest()


def matches_truth(found: np.ndarray, truth: Sequence[set[int]], k: int) -> np.ndarray:
    """Whether each row's first ``k`` entries of ``found`` hold one of its ``truth`` rows (material level)."""
    return np.array([bool(set(row[:k].tolist()) & t) for row, t in zip(found, truth)])
