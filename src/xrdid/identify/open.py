"""The open-library identifier: ranks the entries of any library, calibrated, with evidence.

Where the classifier (:class:`~xrdid.identify.identifier.Identifier`) knows only the entries it
was trained on, an :class:`OpenIdentifier` holds no per-entry weights: the library is an input,
searched through a :class:`~xrdid.identify.search.LibraryIndex`. What is fitted (by the ``match``
stage, on augmented spectra of a seeded part of the library) is how scores become answers: a
softmax temperature over the candidates' scores and the score below which a pattern is "not in
library". Its folder::

    identifier.json     kind "open": grid, preprocessing, search settings, temperature, novelty
    library/            the index it was calibrated with (answers when no other library is given)
    patterns/           that library's simulated patterns, when small enough to carry (evidence)

Examples
--------
>>> ident = OpenIdentifier.from_folder("models/open").use_library("data")  # doctest: +SKIP
>>> ident.predict_files(["scan.xy"], top=3)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrdid.config import Grid
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.identify.evidence import peak_evidence, unexplained_message
from xrdid.identify.identifier import IDENTIFIER_FILE, Identifier
from xrdid.identify.search import LibraryIndex, Matches, SearchSettings

log = logging.getLogger(__name__)

KIND = "open"
CARRY_PATTERNS = 5000  # libraries up to this size travel with the model with their patterns (evidence)


def load_folder(folder: str | Path) -> Identifier:
    """An identifier folder of either kind: an :class:`OpenIdentifier` or a classifier's :class:`Identifier`."""
    try:
        kind = json.loads((Path(folder) / IDENTIFIER_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(folder, f"not an xrdid identifier ({exc})") from exc
    return (OpenIdentifier if kind == KIND else Identifier).from_folder(folder)


def candidate_probabilities(score: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of the candidates' scores over each row (the entries outside them count as 0).

    Examples
    --------
    >>> candidate_probabilities(np.array([[0.9, 0.8]]), 0.05).round(3).tolist()
    [[0.881, 0.119]]
    """
    z = np.asarray(score, np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass
class OpenIdentifier(Identifier):
    """An :class:`Identifier` whose library is searched, not learned (see the module notes).

    Attributes (besides the :class:`Identifier` ones; ``model`` is None)
    ----------
    index : the library it ranks (:meth:`use_library` swaps it).
    search : the :class:`~xrdid.identify.search.SearchSettings`.
    patterns_dir : the library's simulated patterns, for peak evidence (None: no evidence).
    """

    index: LibraryIndex | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    patterns_dir: Path | None = None
    _restricted: tuple[np.ndarray, LibraryIndex] | None = field(default=None, repr=False)  # rows, their index

    @classmethod
    def from_folder(cls, folder: str | Path) -> OpenIdentifier:
        folder = Path(folder)
        try:
            spec = json.loads((folder / IDENTIFIER_FILE).read_text())
            grid, preprocessing = Grid.from_params(spec["grid"]), spec["preprocessing"]
            search = SearchSettings.from_dict(spec["search"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(folder, f"not an xrdid open-library identifier ({exc})") from exc
        if spec.get("kind") != KIND:
            raise InputError(folder, f"kind {spec.get('kind')!r} is not an open-library identifier")
        ident = cls(None, [], grid, preprocessing, float(spec.get("temperature", 1.0)), spec.get("provenance", {}),
                    spec.get("novelty"), folder, search=search)
        if (folder / "library" / "meta.json").is_file():
            ident._attach(LibraryIndex.load(folder / "library"),
                          folder / "patterns" if (folder / "patterns").is_dir() else None)
        return ident

    @classmethod
    def build(cls, folder: str | Path, index: LibraryIndex, patterns_dir: str | Path | None,
              params: Mapping[str, Any], *, temperature: float, novelty: Mapping[str, Any] | None,
              provenance: Mapping[str, Any] | None = None) -> Path:
        """Write an identifier folder around ``index`` (and its patterns, when the library is small)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index.save(folder / "library")
        if patterns_dir is not None and len(index) <= CARRY_PATTERNS:
            shutil.copytree(patterns_dir, folder / "patterns", dirs_exist_ok=True)
        measured = (params.get("evaluate") or {}).get("measured") or {}
        spec = {
            "format": 1,
            "kind": KIND,
            "grid": index.grid.to_dict(),
            "preprocessing": {"wavelength": params.get("grid", {}).get("wavelength", "CuKa"),
                              "default_wavelength": measured.get("default_wavelength", "CuKa"), "denoise": None},
            "search": index.settings.to_dict(),
            "temperature": float(temperature),
            "novelty": dict(novelty) if novelty else None,
            "provenance": {"library_sha256": index.patterns_sha256, **dict(provenance or {})},
        }
        (folder / IDENTIFIER_FILE).write_text(json.dumps(spec, indent=1) + "\n")
        return folder

    def use_library(self, data_dir: str | Path) -> OpenIdentifier:
        """Rank the library in ``data_dir`` (``library/`` + ``patterns/`` of the pipeline stages, maybe ``index/``).

        The patterns must be on the identifier's grid: the calibration holds for that grid only.
        """
        data_dir = Path(data_dir)
        index = LibraryIndex.for_library(data_dir, self.search)
        if index.grid != self.grid:
            raise InputError(data_dir / "patterns", f"simulated on {index.grid}, but the model reads {self.grid}: "
                                                    "re-run simulate with the model's grid")
        self._attach(index, data_dir / "patterns")
        self.provenance["library_sha256"] = index.patterns_sha256
        return self

    def _attach(self, index: LibraryIndex, patterns_dir: Path | None) -> None:
        self.index, self.library, self.patterns_dir = index, index.rows, patterns_dir
        self._patterns = self._profiles = self.allowed = self._restricted = self.chemistry = self._elements = None

    def restrict(self, elements: Iterable[str] = (), required: Iterable[str] = ()) -> OpenIdentifier:
        """As :meth:`Identifier.restrict`; the search runs over the entries left only."""
        super().restrict(elements, required)
        assert self.index is not None  # the base refuses an empty library
        self._restricted = None if self.allowed is None else (np.flatnonzero(self.allowed),
                                                             self.index.subset(self.allowed))
        return self

    def detach(self) -> OpenIdentifier:
        if self.patterns_dir is not None and self.patterns_dir.is_dir():
            self._patterns = PatternSet.load(self.patterns_dir, mmap=False)
        self.folder = self.patterns_dir = None
        return self

    # ------------------------------------------------------------------ predicting

    def matches(self, X: np.ndarray, covered: np.ndarray | None = None) -> Matches:
        if self.index is None:
            raise InputError("--library", "this open-library model carries no library: give one with --library DIR")
        if self._restricted is None:
            return self.index.search(X, covered)
        rows, index = self._restricted
        found = index.search(X, covered)
        found.rows = rows[found.rows]
        return found

    def probabilities(self, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Probabilities (n, n_entries): the candidates' softmax, zero elsewhere."""
        found = self.matches(X)
        probs = np.zeros((len(found.rows), len(self.library)), np.float32)
        np.put_along_axis(probs, found.rows, candidate_probabilities(found.score, self.temperature), axis=1)
        return probs

    def identify(self, X: np.ndarray, covered: np.ndarray | None = None, top: int = 5) -> list[dict[str, Any]]:
        """Ranked candidates of each row with the not-in-library verdict, as :meth:`Identifier.identify`.

        Each candidate also carries ``score`` (the strain-penalised cosine) and ``strain`` (the
        measured cell relative to the entry's). ``in_library`` is False when the best score is
        below the calibrated ``min_score`` or the strongest measured peaks are not explained by
        the best entry's reflections moved by its fitted strain.
        """
        X = np.asarray(X, np.float32)
        found = self.matches(X, covered)
        probs = np.zeros((len(X), len(self.library)), np.float32)
        np.put_along_axis(probs, found.rows, candidate_probabilities(found.score, self.temperature), axis=1)
        ranked = self._rank_probabilities(probs, top)
        where = [dict(zip(r.tolist(), zip(s.tolist(), e.tolist()))) for r, s, e in zip(found.rows, found.score, found.strain)]
        pos = {entry: i for i, entry in enumerate(self.ids)}
        results = []
        for candidates, fits, score in zip(ranked, where, found.score[:, 0]):
            for c in candidates:
                s, e = fits.get(pos[c["id"]], (float("nan"), 0.0))
                c.update(score=round(float(s), 4), strain=round(float(e), 4))
            result = {"candidates": candidates, "in_library": None, "warnings": []}
            min_score = (self.novelty or {}).get("min_score")
            if min_score is not None:
                result["in_library"] = bool(score >= min_score)
                if score < min_score:
                    result["warnings"].append(f"the best match reproduces the pattern only to a score of {score:.2f}; "
                                              f"library entries' patterns score ≥ {min_score:.2f}")
            results.append(result)
        patterns = self.patterns()
        if self.peak_rule is not None and patterns is not None:
            tops = patterns.rows([r["candidates"][0]["id"] for r in results])
            strain = [r["candidates"][0]["strain"] for r in results]
            for result, ev in zip(results, peak_evidence(X, covered, self.grid, patterns, tops, self.peak_rule, strain)):
                result["evidence"] = ev
                message = unexplained_message(ev)
                if message:
                    result["in_library"] = False
                    result["warnings"].append(message)
        self._warn_coverage(results, covered)
        return results

    def contribution(self, row: np.ndarray, entry: str, strain: float = 0.0) -> np.ndarray:
        """Where ``row`` and the entry's profile moved by ``strain`` coincide, in [0, 1] (the peaks behind the match).

        The geometric mean of the two, point by point: high only where both have intensity.
        """
        patterns = self.patterns()
        if patterns is None:
            return np.zeros(self.grid.n_points)
        x = self.grid.values
        # the entry's intensity at x is its simulated one at the angle whose sin θ is (1 + strain) times larger
        source = 2 * np.degrees(np.arcsin(np.clip(np.sin(np.radians(x / 2)) * (1 + strain), 0, 1)))
        profile = np.interp(source, x, np.asarray(patterns.profiles[patterns.rows([entry])[0]], float))
        both = np.sqrt(np.clip(np.asarray(row, float), 0, None) * np.clip(profile, 0, None))
        return both / both.max() if both.max() > 0 else both

    def profiles(self) -> np.ndarray | None:
        patterns = self.patterns()
        return None if patterns is None else np.asarray(patterns.profiles)[patterns.rows(self.ids)]

    def patterns(self) -> PatternSet | None:
        if self._patterns is None and self.patterns_dir is not None and self.patterns_dir.is_dir():
            self._patterns = PatternSet.load(self.patterns_dir)
        return self._patterns

    def provenance_summary(self) -> dict[str, Any]:
        summary = super().provenance_summary()
        summary["kind"] = KIND
        return summary
