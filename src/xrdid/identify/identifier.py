"""Identify measured patterns with a trained model: the deployable :class:`Identifier`.

An identifier is a self-contained folder — everything prediction needs and nothing pickled::

    identifier.json     grid, preprocessing, temperature, library hash, provenance
    model.safetensors   weights; the network is rebuilt from the config in its metadata
    library.csv         the library index in the model's class order (id, formula, ...)
    patterns/           simulated profiles and reflections of the library (for explanations)

The MLflow model registered by the pipeline carries this folder as its artifact, so
``xrdid predict --model`` takes a ``models:/`` or ``runs:/`` URI, an MLflow model folder or an
identifier folder (e.g. one written by ``xrdid pull``) and works offline on the latter.

Examples
--------
>>> ident = Identifier.from_folder("models/identifier")  # doctest: +SKIP
>>> ident.predict_files(["scan.xy"], top=3)[0]["candidates"][0]  # doctest: +SKIP
{'id': 'RUBTAK01_SL', 'formula': 'Zr6 C48 H28 O32', 'probability': 0.97}
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xrdid.config import Grid
from xrdid.data.library import material_groups
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.identify.chemistry import ElementTable
from xrdid.identify.evidence import PeakRule, peak_evidence, unexplained_message
from xrdid.learn.calibration import NoveltyRule, novelty_evidence
from xrdid.learn.models import load_model, read_metadata
from xrdid.xrd.measured import SUPPORTED_SUFFIXES
from xrdid.xrd.preprocess import preprocess

log = logging.getLogger(__name__)

IDENTIFIER_FILE = "identifier.json"
MEASURED_SUFFIXES = frozenset(SUPPORTED_SUFFIXES)  # what a folder search picks up: every format the reader reads


def library_sha256(path: str | Path) -> str:
    """Content hash of a library index (its rows carry each CIF's own sha256)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_library(path: Path, library: Sequence[Mapping[str, str]], classes: Sequence[str] | None,
                  recorded_sha256: str | None) -> None:
    """Refuse a ``library.csv`` that is not the one its identifier was built with.

    Its ids must be the model's classes in order (``classes``: the ids stored in the weights'
    header) and, when the identifier recorded one, the file must still have its sha256. An edited
    id would otherwise crash later, and two swapped ids would silently rename the answers, while
    the provenance still names the original library.

    Raises
    ------
    InputError
        Naming the file and what differs.
    """
    if library and "id" not in library[0]:
        raise InputError(path, "no id column")
    ids = [row["id"] for row in library]
    if classes is not None:
        if len(ids) != len(classes):
            raise InputError(path, f"{len(ids)} rows but the model has {len(classes)} classes")
        differ = [(n, got, want) for n, (got, want) in enumerate(zip(ids, classes), 1) if got != want]
        if differ:
            n, got, want = differ[0]
            raise InputError(path, f"{len(differ)} of {len(ids)} ids differ from the model's classes "
                                   f"(first: row {n} is {got!r}, the model's {want!r})")
    if recorded_sha256 is not None:  # identifiers built before it was recorded get the id check only
        actual = library_sha256(path)
        if actual != recorded_sha256:
            raise InputError(path, f"sha256 {actual[:12]}... differs from the {recorded_sha256[:12]}... recorded "
                                   f"in {IDENTIFIER_FILE}: the file was changed after the model was built")


def check_top(top: Any, name: str = "top") -> int:
    """``top`` as a number of candidates: an integer of at least 1 (not a bool, not 2.5).

    The one rule of the CLI's ``--top`` and the served model's ``top`` parameter.

    Examples
    --------
    >>> check_top(3)
    3
    >>> check_top(0, "--top")
    Traceback (most recent call last):
    xrdid.errors.InputError: --top: must be an integer of at least 1, got 0
    """
    if isinstance(top, (bool, np.bool_)) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(name, f"must be an integer of at least 1, got {top!r}")
    return int(top)


@dataclass
class Identifier:
    """A trained network with the library it ranks and the preprocessing it expects.

    Attributes
    ----------
    model : the network (eval mode).
    library : index rows in the model's class order (at least ``id`` and ``formula``).
    grid : the 2θ grid the model reads.
    preprocessing : ``wavelength``, ``default_wavelength`` and ``denoise`` (the FFT rule or None).
    temperature : softmax temperature fitted on validation data (1 = uncalibrated).
    provenance : model name and version, run id, library hash, git commit.
    folder : where the identifier lives (its ``patterns/`` serve explanations).
    peak_rule : when the measured strongest peaks count as explained by the top candidate's
        reflections (:mod:`xrdid.identify.evidence`); None skips the check.
    allowed : bool per library entry, the entries a chemistry filter leaves (:meth:`restrict`);
        None: all.
    chemistry : that filter (``elements``, ``required``), which answers carry in their provenance.
    """

    model: Any
    library: list[dict[str, str]]
    grid: Grid
    preprocessing: dict[str, Any]
    temperature: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)
    novelty: dict[str, Any] | None = None
    folder: Path | None = None
    peak_rule: PeakRule | None = field(default_factory=PeakRule)
    allowed: np.ndarray | None = field(default=None, repr=False)
    chemistry: dict[str, list[str]] | None = None
    _profiles: np.ndarray | None = field(default=None, repr=False)
    _patterns: Any = field(default=None, repr=False)
    _elements: ElementTable | None = field(default=None, repr=False)  # of ``library``, built at the first filter

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.library]

    @property
    def element_table(self) -> ElementTable:
        """The elements of each library entry (built once: every chemistry filter reads it)."""
        if self._elements is None:
            self._elements = ElementTable.from_rows(self.library)
        return self._elements

    def restrict(self, elements: Iterable[str] = (), required: Iterable[str] = ()) -> Identifier:
        """Rank only the entries made of ``elements`` (any when empty) that hold every one of ``required``.

        A chemist who knows a sample's elements (from its synthesis, XRF or EDS) searches only the
        entries that can be it, as the chemistry filter of a classical search-match program; the
        probabilities are then conditioned on the answer being one of them (the not-in-library rule,
        fitted without a filter, sees those conditioned probabilities). No argument: the whole
        library again. Returns the identifier.

        Examples
        --------
        >>> ident.restrict(["Fe", "C", "O"]).identify(X)  # doctest: +SKIP
        """
        elements, required = frozenset(elements), frozenset(required)
        if not self.library:
            raise InputError("--library", "this model carries no library to restrict: give one with --library DIR")
        mask = self.element_table.mask(elements, required)
        if not mask.any():
            wanted = (f"made of {', '.join(sorted(elements))} only" if elements else "") + \
                     (" and " if elements and required else "") + \
                     (f"holding {', '.join(sorted(required))}" if required else "")
            raise InputError("--elements" if elements else "--require-elements",
                             f"no entry of the {len(mask)}-entry library is {wanted}")
        self.allowed = None if mask.all() else mask
        self.chemistry = {"elements": sorted(elements), "required": sorted(required)} if elements or required else None
        return self

    # ------------------------------------------------------------------ building and storing

    @classmethod
    def from_folder(cls, folder: str | Path) -> Identifier:
        """Load an identifier folder (see the module docstring).

        Its ``library.csv`` is checked against the model first (see :func:`check_library`).
        """

        folder = Path(folder)
        try:
            spec = json.loads((folder / IDENTIFIER_FILE).read_text())
            with open(folder / "library.csv", newline="") as handle:
                library = list(csv.DictReader(handle))
            model = load_model(folder / "model.safetensors")
            classes = json.loads(read_metadata(folder / "model.safetensors").get("ids", "null"))
            grid, preprocessing = Grid.from_params(spec["grid"]), spec["preprocessing"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(folder, f"not an xrdid identifier ({exc})") from exc
        if model.n_classes != len(library):
            raise InputError(folder, f"model has {model.n_classes} classes but library.csv {len(library)} rows")
        check_library(folder / "library.csv", library, classes, spec.get("library_csv_sha256"))
        return cls(model, library, grid, preprocessing, float(spec.get("temperature", 1.0)),
                   spec.get("provenance", {}), spec.get("novelty"), folder)

    def detach(self) -> Identifier:
        """Read what is still on disk (the simulated patterns) into memory and forget the folder.

        The folder may then be deleted: a model downloaded from the registry is loaded from a
        temporary copy that must not outlive the call. Returns the identifier itself.
        """
        if self.folder is not None and (self.folder / "patterns").is_dir():
            self._patterns = PatternSet.load(self.folder / "patterns", mmap=False)
            self.profiles()
        self.folder = None
        return self

    @classmethod
    def build(
        cls,
        folder: str | Path,
        model_path: str | Path,
        library_dir: str | Path,
        patterns_dir: str | Path | None,
        params: Mapping[str, Any],
        *,
        temperature: float = 1.0,
        novelty: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Path:
        """Assemble an identifier folder from the pipeline's outputs; returns the folder.

        The library rows are put in the model's class order (the ``ids`` in the model's metadata).
        """

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = read_metadata(model_path)
        ids = json.loads(meta["ids"])
        grid = json.loads(meta["grid"])
        index_path = Path(library_dir) / "index.csv"
        with open(index_path, newline="") as handle:
            rows = {row["id"]: row for row in csv.DictReader(handle)}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise InputError(index_path, f"{len(missing)} model classes are not in the library (e.g. {missing[0]})")
        library = [dict(rows[i]) for i in ids]
        if patterns_dir is not None:  # one material may be several entries: rank materials, keep aliases

            patterns = PatternSet.load(patterns_dir)
            groups = material_groups(pd.DataFrame(library), np.asarray(patterns.profiles)[patterns.rows(ids)])
            for row, material in zip(library, groups):
                row["material"] = material
        with open(folder / "library.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(library[0]))
            writer.writeheader()
            writer.writerows(library)
        shutil.copyfile(model_path, folder / "model.safetensors")
        if patterns_dir is not None:
            shutil.copytree(patterns_dir, folder / "patterns", dirs_exist_ok=True)
        measured = (params.get("evaluate") or {}).get("measured") or {}
        spec = {
            "format": 1,
            "grid": grid,
            "preprocessing": {
                "wavelength": params.get("grid", {}).get("wavelength", "CuKa"),
                "default_wavelength": measured.get("default_wavelength", "CuKa"),
                "denoise": None,  # the pipeline's CNN reads raw measurements (see README)
            },
            "temperature": float(temperature),
            "novelty": dict(novelty) if novelty else None,
            "library_sha256": library_sha256(index_path),
            "library_csv_sha256": library_sha256(folder / "library.csv"),  # what check_library compares
            "provenance": dict(provenance or {}),
        }
        (folder / IDENTIFIER_FILE).write_text(json.dumps(spec, indent=1) + "\n")
        return folder

    def write_provenance(self, **fields: Any) -> None:
        """Add fields (e.g. the registry version) to the stored provenance."""
        self.provenance.update(fields)
        if self.folder is not None:
            path = self.folder / IDENTIFIER_FILE
            spec = json.loads(path.read_text())
            spec["provenance"] = self.provenance
            path.write_text(json.dumps(spec, indent=1) + "\n")

    # ------------------------------------------------------------------ predicting

    def prepare(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """One measured file → (row on the grid, covered mask), exactly as evaluation reads it."""

        p = self.preprocessing
        return preprocess(path, self.grid, p.get("wavelength", "CuKa"), p.get("default_wavelength", "CuKa"),
                          p.get("denoise"))

    def probabilities(self, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Calibrated class probabilities (n, n_classes) of rows on the grid.

        Rows are shifted to a zero minimum and divided by their maximum first, as in training.
        Entries a chemistry filter leaves out (:meth:`restrict`) get 0, the others share 1.
        """
        import torch

        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.grid.n_points:
            raise ValueError(f"expected rows of {self.grid.n_points} points, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("patterns contain NaN or infinite values")
        X = X - X.min(axis=1, keepdims=True)
        X = X / np.maximum(X.max(axis=1, keepdims=True), 1e-12)
        out = np.empty((len(X), self.model.n_classes), dtype=np.float32)
        # conditioned on the answer passing the chemistry filter: the softmax over those entries only (masking
        # after it would round the kept entries to 0 when the network is sure of an excluded look-alike)
        excluded = None if self.allowed is None else torch.from_numpy(~self.allowed)
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                logits = self.model(torch.from_numpy(X[start:start + batch_size])) / self.temperature
                if excluded is not None:
                    logits = logits.masked_fill(excluded, float("-inf"))
                out[start:start + batch_size] = torch.softmax(logits, dim=1).numpy()
        return out

    def rank(self, X: np.ndarray, top: int = 5) -> list[list[dict[str, Any]]]:
        """The ``top`` best candidates of each row (see :meth:`_rank_probabilities`); no novelty check."""
        return self._rank_probabilities(self.probabilities(X), top)

    def _rank_probabilities(self, probs: np.ndarray, top: int) -> list[list[dict[str, Any]]]:
        """The ``top`` best candidates of each row: ``{"id", "formula", "probability"}``, best first.

        Entries of one material (see :func:`xrdid.data.library.material_groups`) are ranked as one
        candidate: its most probable entry's id, the group's summed probability, and the other
        entries under ``aliases``. A candidate whose structure has overlapping atoms (library
        ``overlaps``) carries ``"unreliable_intensities": True``. Materials a chemistry filter
        (:meth:`restrict`) leaves out are never candidates.
        """
        groups, members = self._materials()
        from scipy import sparse

        membership = sparse.csr_matrix((np.ones(len(groups)), (np.arange(len(groups)), groups)))
        grouped = np.asarray((membership.T @ probs.T).T)  # each material's summed probability
        # a material's entries share its reduced formula, so the filter keeps all of them or none
        kept = np.ones(len(members), bool) if self.allowed is None else np.bincount(groups, self.allowed,
                                                                                    len(members)) > 0
        top = max(1, min(int(top), int(kept.sum())))
        order = np.argsort(np.where(kept, -grouped, np.inf), axis=1, kind="stable")[:, :top]
        ranked = []
        for p, g, row in zip(probs, grouped, order):
            candidates = []
            for m in row:
                entries = members[m]
                best = entries[int(np.argmax(p[entries]))]
                candidate = {"id": self.library[best]["id"], "formula": self.library[best].get("formula", ""),
                             "probability": round(float(g[m]), 6)}
                if len(entries) > 1:
                    candidate["aliases"] = [self.library[j]["id"] for j in entries if j != best]
                if int(float(self.library[best].get("overlaps") or 0)):
                    candidate["unreliable_intensities"] = True
                candidates.append(candidate)
            ranked.append(candidates)
        return ranked

    def _materials(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Material index of every class and the classes of every material (singletons without a column)."""
        names = [row.get("material") or row["id"] for row in self.library]
        _, groups = np.unique(names, return_inverse=True)
        order = np.argsort(groups, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)
        return groups, members

    def identify(self, X: np.ndarray, covered: np.ndarray | None = None, top: int = 5) -> list[dict[str, Any]]:
        """Ranked candidates of each row with the not-in-library verdict.

        Each result is ``{"candidates", "in_library", "warnings", "evidence"}``: ``in_library`` is
        False when the identifier's :class:`~xrdid.learn.calibration.NoveltyRule` flags the pattern
        (unsure network, peaks that match no entry, or no diffraction signal: a blank holder) or
        when the measured strongest peaks are not all explained by the top candidate's reflections
        (:func:`~xrdid.identify.evidence.peak_evidence`, the ``evidence`` field: a probability alone
        does not earn an answer), and ``warnings`` says why, plus a note when the scan covers
        little of the grid. Without a stored rule ``in_library`` is None unless the peaks are
        unexplained; without simulated patterns there is no ``evidence`` either.
        """
        probs = self.probabilities(X)
        results: list[dict[str, Any]] = [{"candidates": c, "in_library": None, "warnings": []}
                                         for c in self._rank_probabilities(probs, top)]
        profiles = self.profiles()
        if self.novelty and profiles is not None:

            rule = NoveltyRule.from_dict(self.novelty)
            evidence = novelty_evidence(probs, np.asarray(X, np.float32), covered, profiles, self.grid, rule.smooth)
            for result, flagged, reasons in zip(results, rule.flagged(evidence), rule.reasons(evidence)):
                result.update(in_library=not bool(flagged), warnings=list(reasons))
        if self.peak_rule is not None and profiles is not None:
            patterns = self.patterns()
            tops = patterns.rows([result["candidates"][0]["id"] for result in results])
            for result, found in zip(results, peak_evidence(X, covered, self.grid, patterns, tops, self.peak_rule)):
                result["evidence"] = found
                message = unexplained_message(found)
                if message:  # a confident probability is not enough: the answer must fit the measured peaks
                    result["in_library"] = False
                    result["warnings"].append(message)
        for result in results:
            best = result["candidates"][0] if result["candidates"] else {}
            if best.get("unreliable_intensities"):
                result["warnings"].append(f"the CIF of {best['id']} has overlapping atoms: its simulated "
                                          "intensities are unreliable, compare peak positions")
        self._warn_coverage(results, covered)
        return results

    def _warn_coverage(self, results: list[dict[str, Any]], covered: np.ndarray | None) -> None:
        """A note on each result whose scan covers less than half of the model's range."""
        if covered is not None:
            for result, fraction in zip(results, np.asarray(covered).mean(axis=1)):
                if fraction < 0.5:
                    result["warnings"].append(f"the scan covers only {fraction:.0%} of the model's "
                                              f"{self.grid.start:g}-{self.grid.stop:g}° range")

    def profiles(self) -> np.ndarray | None:
        """Simulated profiles in class order (from the folder's ``patterns/``), or None."""
        if self._profiles is None and self.folder is not None and (self.folder / "patterns").is_dir():
            patterns = self.patterns()
            self._profiles = np.asarray(patterns.profiles)[patterns.rows(self.ids)]
        return self._profiles

    def patterns(self) -> Any:
        """The library's :class:`~xrdid.data.patterns.PatternSet` stored with the identifier."""

        if self._patterns is None:  # loaded once: explanations of a batch all draw from it
            if self.folder is None:
                raise InputError("identifier", "no simulated patterns stored with this identifier")
            self._patterns = PatternSet.load(self.folder / "patterns")
        return self._patterns

    def predict_files(self, paths: Sequence[str | Path], top: int = 5, batch_size: int = 256,
                      progress: bool = False, keep_rows: bool = False) -> Iterator[dict[str, Any]]:
        """One result per file, in order: :meth:`identify`'s fields plus ``file`` and ``provenance``,
        or ``{"file", "error"}``.

        Files are read and ranked in batches; a file that cannot be read yields its error and the
        rest go on. ``keep_rows`` adds the preprocessed ``row`` and ``covered`` arrays (for
        explanations; not JSON). ``progress`` shows a bar that counts files as they are read
        (reading is most of the time here; the ranking of a batch follows its last file).
        """
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="identify", unit="file", disable=not progress)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            rows, masks, ok, results = [], [], [], []
            for path in chunk:
                try:
                    values, covered = self.prepare(path)
                except InputError as exc:
                    results.append({"file": str(path), "error": exc.problem})
                    continue
                except Exception as exc:  # a failure nobody foresaw costs this file, never the batch
                    log.debug("reading %s failed", path, exc_info=True)
                    problem = " ".join(f"unexpected error: {type(exc).__name__}: {exc}".split())
                    results.append({"file": str(path), "error": problem})
                    continue
                finally:
                    bar.update(1)  # per file read, not per batch: a batch of 256 files would jump 0 -> 256
                ok.append(len(results))
                results.append({"file": str(path)})
                rows.append(values)
                masks.append(covered)
            if rows:
                X, M = np.stack(rows), np.stack(masks)
                for n, (i, found) in enumerate(zip(ok, self.identify(X, M, top))):
                    results[i].update(found, provenance=self.provenance_summary())
                    if keep_rows:
                        results[i].update(row=X[n], covered=M[n])
            if start + batch_size >= len(paths):  # done before the caller's slow work on the results
                bar.close()
            yield from results
        bar.close()

    def provenance_summary(self) -> dict[str, Any]:
        """What a prediction came from: model, version, library hash and preprocessing."""
        keys = ("model_name", "model_version", "run_id", "git_commit")
        summary = {k: self.provenance[k] for k in keys if k in self.provenance}
        summary["library_sha256"] = self.provenance.get("library_sha256", "")
        summary["preprocessing"] = self.preprocessing
        if self.chemistry:
            summary["chemistry"] = self.chemistry
        return summary


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the measured-pattern files inside any folder (sorted, recursive).

    Inside a folder every entry with a pattern extension that is not itself a folder is kept,
    unreadable files, broken symlinks and symlink loops included, so that each gets its reason
    from the reader instead of vanishing from the batch.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = (p for p in item.rglob("*") if p.suffix.lower() in MEASURED_SUFFIXES and not p.is_dir())
            files.extend(sorted(found))
        else:
            files.append(item)
    return files
