"""The CIF library and its compact crystal store (built by the ``library`` stage).

Sources are the CoRE MOF datasets shipped by the ``core-mof`` package (read in
one streaming pass over its ``.tar.xz``) or any folder of CIFs. Each CIF is
parsed once, in parallel, into a :class:`Crystal` (lattice, atomic numbers,
fractional coordinates, occupancies); later stages read ``structures.npz``
and never parse a CIF again. A CIF that cannot be used is recorded in
``rejects.csv`` with its reason while the rest go on.

Output folder layout::

    cif/<id>.cif        the CIFs, byte for byte
    index.csv           id, source, formula, reduced_formula, spacegroup, spacegroup_number,
                        n_atoms, volume, density, refcode, sha256, elements, the Niggli cell
                        (a, b, c, alpha, beta, gamma) and overlaps (atom pairs < 0.5 Å apart)
    rejects.csv         id, file, reason
    structures.npz      ids, lattice (n, 3, 3), offsets (n + 1), numbers, frac_coords, occupancies
    settings.json       the filters it was built with (a rebuild with the same ones reuses unchanged CIFs)

Examples
--------
>>> lib = Library.load("data/library")  # doctest: +SKIP
>>> lib.crystal(0).formula  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import tarfile
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from xrdid.errors import InputError
from xrdid.outputs import atomic_dir, require
from xrdid.xrd.crystal import _CELL, PARSERS, Crystal, read_cif

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "id", "source", "formula", "reduced_formula", "spacegroup", "spacegroup_number",
    "n_atoms", "volume", "density", "refcode", "sha256",
    "elements", "a", "b", "c", "alpha", "beta", "gamma",  # element set and Niggli-reduced cell
    "overlaps",  # atom pairs closer than OVERLAP_DISTANCE: simulated intensities unreliable
]
# Closer than this no two fully occupied sites can be (pymatgen's Structure.is_valid default); split
# sites of a disordered model (total occupancy < 1) may be, so only full sites count.
OVERLAP_DISTANCE = 0.5
# CSD refcodes: six capital letters, optionally two digits (RUBTAK01_SL -> RUBTAK).
_REFCODE = re.compile(r"^([A-Z]{6})(\d{2})?(?:_|$)")


@dataclass(frozen=True)
class LibraryFilters:
    """How CIFs are read (``parser``) and which parsed structures to keep (the ``library`` section's filters)."""

    max_atoms: int | None = None
    elements_allowed: frozenset[str] = frozenset()
    elements_required: frozenset[str] = frozenset()
    partial_occupancy: str = "keep"
    parser: str = "gemmi"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LibraryFilters:
        policy = str(params.get("partial_occupancy", "keep"))
        if policy not in ("keep", "reject"):
            raise ValueError(f"partial_occupancy must be keep or reject, not {policy!r}")
        parser = str(params.get("parser", "gemmi"))
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {', '.join(PARSERS)}, not {parser!r}")
        return cls(
            max_atoms=params.get("max_atoms"),
            elements_allowed=frozenset(params.get("elements_allowed") or ()),
            elements_required=frozenset(params.get("elements_required") or ()),
            partial_occupancy=policy,
            parser=parser,
        )

    def problem(self, crystal: Crystal) -> str:
        """Why ``crystal`` is filtered out, or '' to keep it."""
        from pymatgen.core import Element

        if self.max_atoms and crystal.n_sites > self.max_atoms:
            return f"cell of {crystal.n_sites} atoms is over max_atoms={self.max_atoms} (memory budget)"
        if self.partial_occupancy == "reject" and not crystal.is_ordered:
            per_site = np.bincount(crystal.site_index)
            partial = np.bincount(crystal.site_index, weights=crystal.occupancies < 1 - 1e-8)
            n = int(((per_site > 1) | (partial > 0)).sum())
            return f"partial occupancy not supported ({n} disordered sites)"
        elements = {Element.from_Z(int(z)).symbol for z in np.unique(crystal.numbers)}
        if self.elements_allowed and not elements <= self.elements_allowed:
            return f"elements {sorted(elements - self.elements_allowed)} not in elements_allowed"
        if self.elements_required and not self.elements_required <= elements:
            return f"missing required elements {sorted(self.elements_required - elements)}"
        return ""


# (id, CIF bytes, index row, crystal, reason): row and crystal are None when rejected for reason
_Parsed = tuple[str, bytes, "dict[str, Any] | None", "Crystal | None", str]


def _parse_entry(job: tuple[str, bytes, LibraryFilters]) -> _Parsed:
    """Worker: parse and describe one CIF; never raises."""
    from pymatgen.core import Lattice

    entry_id, data, filters = job
    crystal, problem = read_cif(data, filters.parser, entry_id)
    if crystal is None:
        return entry_id, data, None, None, problem
    try:
        problem = filters.problem(crystal)
        if problem:
            return entry_id, data, None, None, problem
        symbol, number = space_group(crystal)
        match = _REFCODE.match(entry_id)
        cell = Lattice(crystal.lattice).get_niggli_reduced_lattice()
        composition = crystal.composition()
        row = {
            "id": entry_id,
            "formula": composition.formula.replace(" ", ""),
            "reduced_formula": composition.reduced_formula,
            "spacegroup": symbol,
            "spacegroup_number": number,
            "n_atoms": crystal.n_sites,
            "volume": round(crystal.volume, 4),
            "density": round(float(composition.weight) * _AMU_PER_A3_IN_G_PER_CM3 / crystal.volume, 5),
            "refcode": match.group(1) if match else "",
            "sha256": hashlib.sha256(data).hexdigest(),
            "elements": " ".join(sorted(element.symbol for element in composition.elements)),
            **{name: round(float(value), 4) for name, value in zip(_CELL, (*cell.abc, *cell.angles))},
            "overlaps": overlapping_pairs(crystal),
        }
        return entry_id, data, row, crystal, ""
    except Exception as exc:  # one odd structure must not stop the stage
        return entry_id, data, None, None, f"{type(exc).__name__}: {exc}"


# 1 amu/Å³ in g/cm³ (pymatgen's Structure.density: weight in amu → g, volume Å³ → cm³)
_AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660


def _site_positions(crystal: Crystal) -> np.ndarray:
    """(n_sites, 3) fractional position of each site (its rows share it)."""
    return crystal.frac_coords[np.unique(crystal.site_index, return_index=True)[1]]


def _site_types(crystal: Crystal) -> np.ndarray:
    """(n_sites,) one number per distinct species mix, as spglib wants atom types."""
    kinds: dict[tuple, int] = {}
    mixes: list[list[tuple[int, float]]] = [[] for _ in range(crystal.n_sites)]
    for i, z, occ in zip(crystal.site_index.tolist(), crystal.numbers.tolist(), crystal.occupancies.tolist()):
        mixes[i].append((z, occ))
    return np.array([kinds.setdefault(tuple(sorted(mix)), len(kinds)) for mix in mixes])


def space_group(crystal: Crystal, symprec: float = 0.1) -> tuple[str, int]:
    """International symbol and number of ``crystal`` by spglib, or ("", 0) when it finds none.

    What pymatgen's ``Structure.get_space_group_info(symprec)`` returns (one atom type per
    distinct site species, angle tolerance 5°), without building a ``Structure``.

    Examples
    --------
    >>> nacl = Crystal("NaCl", 5.64 * np.eye(3), np.array([11, 17]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
    ...                np.ones(2))
    >>> space_group(nacl)
    ('Pm-3m', 221)
    """
    os.environ.setdefault("SPGLIB_WARNING", "OFF")  # its C library prints a stderr line per cell it gives up on
    import spglib

    cell = (crystal.lattice, _site_positions(crystal), _site_types(crystal))
    try:
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=5)
    except Exception:  # spglib gives up on some distorted cells; the pattern is still usable
        dataset = None
    return (str(dataset.international), int(dataset.number)) if dataset is not None else ("", 0)


def overlapping_pairs(crystal: Crystal, distance: float = OVERLAP_DISTANCE) -> int:
    """Number of pairs of fully occupied sites closer than ``distance`` (Å), periodic images included.

    A structure with such pairs is not physical: typically a broken model (an asymmetric unit
    written in P1 with its coordinates in the wrong units, as in the opXRD CIFs of RRUFF-304).
    Its peak positions still follow the cell, but its simulated intensities do not.

    Examples
    --------
    >>> pair = Crystal("NaCl", 5.0 * np.eye(3), np.array([11, 17]), np.array([[0, 0, 0], [0.01, 0, 0]]),
    ...                np.ones(2))
    >>> overlapping_pairs(pair)
    1
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    lattice = np.ascontiguousarray(crystal.lattice, dtype=float)
    cart = np.ascontiguousarray(_site_positions(crystal) @ lattice)
    occupancy = np.bincount(crystal.site_index, weights=crystal.occupancies)
    centres, neighbours, _, dist = find_points_in_spheres(
        cart, cart, r=float(distance), pbc=np.ones(3, dtype=np.int64), lattice=lattice, tol=1e-8)
    full = occupancy >= 0.99
    both = full[centres] & full[neighbours] & ~((centres == neighbours) & (dist <= 1e-8))
    # each pair is listed from both ends; a site's own image closer than 0.5 Å counts once
    return int(np.sum(both & (centres < neighbours)) + np.sum(both & (centres == neighbours)) // 2)


# --------------------------------------------------------------------------- sources


def core_mof_archive(dataset: str) -> Path:
    """Path of the ``.tar.xz`` that the ``core-mof`` package ships for ``dataset``."""
    import CoRE_MOF

    if dataset not in CoRE_MOF.list_datasets():
        raise ValueError(f"unknown core-mof dataset {dataset!r}; choose one of {CoRE_MOF.list_datasets()}")
    return Path(str(resources.files(CoRE_MOF.data) / f"{dataset}.tar.xz"))


def core_mof_ids(dataset: str) -> list[str]:
    """Ids (CIF stems) of a core-mof dataset, from the table the package ships beside the archive."""
    import CoRE_MOF

    core_mof_archive(dataset)  # validates the name
    return list(CoRE_MOF.list_structures(dataset))


def _is_cif(member: tarfile.TarInfo) -> bool:
    name = member.name.rsplit("/", 1)[-1]
    return member.isfile() and member.size > 0 and name.endswith(".cif") and not name.startswith(".")


def _stem(name: str) -> str:
    return name.rsplit("/", 1)[-1][: -len(".cif")]


def _select(ids: list[str], select: Any, seed: int) -> list[str]:
    """Apply ``select``: 'all', an int N (seeded sample, kept in source order), a list of ids or a file of them."""
    if select in (None, "all"):
        return ids
    if isinstance(select, str):  # a text file, one id per line (the Dara library's library_ids.txt)
        try:
            select = Path(select).read_text().split()
        except OSError as exc:
            raise ValueError(f"select: cannot read the id file {select}: {exc.strerror or exc}") from exc
    if isinstance(select, int):
        if select <= 0:
            raise ValueError("select must be positive")
        if select >= len(ids):
            return ids
        chosen = np.random.default_rng(seed).choice(len(ids), size=select, replace=False)
        return [ids[i] for i in sorted(chosen)]
    if isinstance(select, list | tuple):
        wanted = [str(s) for s in select]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(f"unknown ids in select: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        return [i for i in ids if i in set(wanted)]
    raise ValueError(f"select must be 'all', a number or a list of ids, not {select!r}")


def iter_core_mof(dataset: str, ids: set[str]) -> Iterator[tuple[str, bytes]]:
    """Yield (id, bytes) of the wanted CIFs in one streaming pass over the archive."""
    with tarfile.open(core_mof_archive(dataset), mode="r|xz") as tar:
        for member in tar:
            if _is_cif(member) and _stem(member.name) in ids:
                yield _stem(member.name), tar.extractfile(member).read()


def iter_folder(paths: list[Path]) -> Iterator[tuple[str, bytes, str]]:
    """Yield (id, bytes, '') per CIF file, or (id, b'', why) when it cannot be read."""
    for path in paths:
        try:
            yield path.stem, path.read_bytes(), ""
        except OSError as exc:  # a directory, a symlink loop, no permission: the reason, not "empty file"
            yield path.stem, b"", f"cannot read file: {exc.strerror or exc}"


# --------------------------------------------------------------------------- the stage


@dataclass
class Library:
    """A built library folder: the index table and every entry's :class:`Crystal`."""

    folder: Path
    index: pd.DataFrame
    ids: list[str]
    lattice: np.ndarray
    offsets: np.ndarray
    numbers: np.ndarray
    frac_coords: np.ndarray
    occupancies: np.ndarray

    @classmethod
    def load(cls, folder: str | Path) -> Library:
        folder = require(folder, "structures.npz", "xrdid library")
        try:
            store = np.load(folder / "structures.npz")
        except (OSError, ValueError) as exc:
            raise InputError(folder, f"not a library folder ({exc})") from exc
        return cls(folder, read_index(folder), [str(i) for i in store["ids"]],
                   **{k: store[k] for k in ("lattice", "offsets", "numbers", "frac_coords", "occupancies")})

    def __len__(self) -> int:
        return len(self.ids)

    def crystal(self, i: int) -> Crystal:
        sl = slice(self.offsets[i], self.offsets[i + 1])
        return Crystal(self.ids[i], self.lattice[i], self.numbers[sl], self.frac_coords[sl], self.occupancies[sl])

    def crystals(self, ids: Sequence[str]) -> list[Crystal]:
        """The structures of ``ids`` in that order (e.g. a pattern set's); InputError when one is missing."""
        where = {entry: i for i, entry in enumerate(self.ids)}
        missing = [str(entry) for entry in ids if str(entry) not in where]
        if missing:
            raise InputError(self.folder, f"{len(missing)} entries are not in the library (first: {missing[0]})")
        return [self.crystal(where[str(entry)]) for entry in ids]


def read_index(folder: str | Path) -> pd.DataFrame:
    """The ``index.csv`` of a library folder (ids and refcodes as text); InputError when unreadable."""
    path = Path(folder) / "index.csv"
    if not path.is_file():
        raise InputError(path, "library index not found")
    try:
        return pd.read_csv(path, dtype={"id": str, "refcode": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"library index not readable ({exc})") from exc


def build_library(params: dict[str, Any], out_dir: str | Path, progress: bool = True) -> Library:
    """Run the ``library`` stage with the ``library`` params section; see the module docstring.

    Raises :class:`InputError` only when the source is unusable or nothing usable is left.
    """
    source = params.get("source", "core-mof")
    labels: dict[str, str] = {}  # each entry's source when they differ
    seed = int(params.get("seed", 0))
    workers = int(params.get("workers", 2))
    try:
        filters = LibraryFilters.from_params(params)
        if source == "core-mof":
            dataset = str(params.get("dataset", "2019-ASR"))
            ids = _select(core_mof_ids(dataset), params.get("select", "all"), seed)
            entries = ((entry_id, data, "") for entry_id, data in iter_core_mof(dataset, set(ids)))
            label = f"core-mof:{dataset}"
        elif source == "folder":  # one folder or several (a merged library; ids must not repeat)
            folders = params.get("folder") or ""
            folders = [Path(str(f)) for f in ([folders] if isinstance(folders, (str, Path)) else folders)]
            paths: dict[str, Path] = {}
            for folder in folders:
                if not folder.is_dir():
                    raise InputError(folder, "CIF folder not found")
                found = {p.stem: p for p in sorted(folder.glob("*.cif"))}
                if not found:
                    raise InputError(folder, "no *.cif files in folder")
                twice = sorted(set(found) & set(paths))
                if twice:
                    raise InputError(folder, f"{len(twice)} CIF names also in {paths[twice[0]].parent} "
                                             f"(first: {twice[0]}): ids must be unique")
                paths.update(found)
            ids = _select(list(paths), params.get("select", "all"), seed)
            entries = iter_folder([paths[i] for i in ids])
            label = ", ".join(map(str, folders))
            labels = {i: str(p.parent) for i, p in paths.items()}
        else:
            raise ValueError(f"library source must be core-mof or folder, not {source!r}")
    except ValueError as exc:
        raise InputError("params.yaml", f"library: {exc}") from exc

    out = Path(out_dir)
    settings = {"format": 1, "filters": {k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(filters).items()}}
    previous = _previous(out, settings)
    with atomic_dir(out) as tmp:
        (tmp / "cif").mkdir()
        rows: list[dict[str, Any]] = []
        crystals: list[Crystal] = []
        rejects: list[tuple[str, str]] = []
        bar = tqdm(total=len(ids), desc="library", unit="cif", disable=not progress)
        for entry_id, data, row, crystal, problem in _parse_all(entries, filters, workers, previous):
            bar.update()
            if row is None:
                rejects.append((entry_id, problem))
                continue
            (tmp / "cif" / f"{entry_id}.cif").write_bytes(data)
            rows.append({**row, "source": labels.get(entry_id, label)})
            crystals.append(crystal)
        bar.close()

        seen = {c.id for c in crystals} | {r[0] for r in rejects}
        rejects += [(entry_id, "not found in the source") for entry_id in ids if entry_id not in seen]
        _write_rejects(tmp / "rejects.csv", rejects)
        for entry_id, problem in rejects:
            log.warning("library: %s rejected: %s", entry_id, problem)
        if not crystals:
            raise InputError(label, f"no usable CIF among {len(ids)} ({len(rejects)} rejected, e.g. "
                             f"{rejects[0][0]}: {rejects[0][1]})" if rejects else f"no usable CIF among {len(ids)}")
        pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(tmp / "index.csv", index=False)
        (tmp / "settings.json").write_text(json.dumps(settings, sort_keys=True) + "\n")
        broken = [row["id"] for row in rows if row["overlaps"]]
        if broken:  # kept (the peak positions are right); augment can stop trusting their intensities
            log.warning("library: %d entries have atoms closer than %.1f Å (not physical; simulated intensities "
                        "unreliable), e.g. %s; see the overlaps column of index.csv",
                        len(broken), OVERLAP_DISTANCE, ", ".join(broken[:5]))
        np.savez(  # last: Library.load's marker of a complete folder
            tmp / "structures.npz",
            ids=np.array([c.id for c in crystals]),
            lattice=np.stack([c.lattice for c in crystals]),
            offsets=np.r_[0, np.cumsum([len(c.numbers) for c in crystals])].astype(np.int64),
            numbers=np.concatenate([c.numbers for c in crystals]).astype(np.int16),
            frac_coords=np.concatenate([c.frac_coords for c in crystals]),
            occupancies=np.concatenate([c.occupancies for c in crystals]),
        )
    reused = sum(previous[c.id][1] is c for c in crystals if c.id in previous)
    log.info("library: %d entries in %s, %d rejected%s", len(crystals), out, len(rejects),
             f" ({reused} unchanged CIFs taken from the previous build)" if reused else "")
    return Library.load(out)


# A parser that dies natively (spglib on a cell that slipped past cell_problem) must cost its CIF only.
_CRASHED = "the parser crashed on this CIF (a native error in spglib or pymatgen)"


def _parse_all(entries: Iterable[tuple[str, bytes, str]], filters: LibraryFilters, workers: int,
               previous: dict[str, tuple[dict[str, Any], Crystal]] | None = None) -> Iterator[_Parsed]:
    """Parse ``entries`` in ``workers`` processes, in input order.

    An entry of ``previous`` (id → row and crystal of an earlier build with the same filters)
    whose CIF bytes have the recorded sha256 is taken from it without parsing: a library that
    grows by a thousand CIFs parses those thousand.

    Batches are submitted ahead (reading the next CIFs from the archive overlaps the parsing of
    the previous ones). ``concurrent.futures`` turns a dead worker into ``BrokenProcessPool`` for
    every pending task (``multiprocessing.Pool`` would wait forever); the batch is then parsed
    again one CIF per fresh process, so only the CIF that kills its process is rejected and the
    stage finishes.
    """
    pool = ProcessPoolExecutor(workers)
    pending: deque[tuple[list, list, list]] = deque()  # (batch, its jobs, their futures), oldest first
    try:
        for batch in _batches(_known(entries, previous or {}), 32 * workers):
            jobs = [(entry_id, data, filters) for entry_id, data, problem in batch if not problem]
            pending.append((batch, jobs, _submit(pool, jobs)))
            if len(pending) > 2:
                pool = yield from _collect(pending, pool, workers)
        while pending:
            pool = yield from _collect(pending, pool, workers)
    finally:
        pool.shutdown(cancel_futures=True)


def _submit(pool: ProcessPoolExecutor, jobs: list) -> list:
    return [pool.submit(_parse_chunk, jobs[i:i + 4]) for i in range(0, len(jobs), 4)]


def _parse_chunk(jobs: list[tuple[str, bytes, LibraryFilters]]) -> list[_Parsed]:
    return [_parse_entry(job) for job in jobs]


def _collect(pending: deque, pool: ProcessPoolExecutor, workers: int) -> Generator[_Parsed, None, ProcessPoolExecutor]:
    """Yield the oldest pending batch's results; returns the pool, a new one after a crash."""
    batch, jobs, futures = pending.popleft()
    try:
        parsed = [result for future in futures for result in future.result()]
    except BrokenProcessPool:
        pool.shutdown(cancel_futures=True)
        parsed = [_parse_alone(job) for job in jobs]
        pool = ProcessPoolExecutor(workers)
        for i, (other, other_jobs, _) in enumerate(pending):  # their tasks died with the pool
            pending[i] = (other, other_jobs, _submit(pool, other_jobs))
    results = iter(parsed)
    for entry_id, data, problem in batch:
        if isinstance(problem, tuple):  # unchanged since the previous build (see _known)
            yield entry_id, data, problem[0], problem[1], ""
        else:
            yield (entry_id, data, None, None, problem) if problem else next(results)
    return pool


def _known(entries: Iterable[tuple[str, bytes, str]],
           previous: dict[str, tuple[dict[str, Any], Crystal]]) -> Iterator[tuple[str, bytes, Any]]:
    """``entries`` with those unchanged since ``previous`` carrying its (row, crystal) as their "problem".

    A non-empty problem keeps an entry out of the parsing jobs; :func:`_collect` tells the two apart.
    """
    for entry_id, data, problem in entries:
        old = previous.get(entry_id)
        if not problem and old is not None and old[0]["sha256"] == hashlib.sha256(data).hexdigest():
            yield entry_id, data, old
        else:
            yield entry_id, data, problem


def _previous(out: Path, settings: dict[str, Any]) -> dict[str, tuple[dict[str, Any], Crystal]]:
    """Rows and crystals of the library already in ``out`` when it was built with ``settings`` (else none).

    DVC keeps the stage's output in place (``persist``), so re-running the stage after adding
    CIFs parses only the new and the changed ones.
    """
    try:
        if json.loads((out / "settings.json").read_text()) != settings:
            return {}
        library = Library.load(out)
    except (OSError, ValueError, InputError):
        return {}
    rows = library.index.to_dict("records")
    return {row["id"]: (row, library.crystal(i)) for i, row in enumerate(rows) if row["id"] == library.ids[i]}


def _parse_alone(job: tuple[str, bytes, LibraryFilters]) -> _Parsed:
    """``_parse_entry`` in a process of its own: its crash is this CIF's reject."""
    with ProcessPoolExecutor(1) as one:
        try:
            return one.submit(_parse_entry, job).result()
        except BrokenProcessPool:
            return job[0], job[1], None, None, _CRASHED


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _write_rejects(path: Path, rejects: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reason"])
        writer.writerows(rejects)


def read_rejects(folder: str | Path) -> pd.DataFrame:
    """The rejects table of a library folder."""
    return pd.read_csv(Path(folder, "rejects.csv"), keep_default_na=False)


def material_groups(index: pd.DataFrame, profiles: np.ndarray, threshold: float = 0.95,
                    length_tol: float = 0.02, angle_tol: float = 2.0) -> list[str]:
    """The material each entry belongs to: the id of its group's first entry.

    The same material is often several entries (UiO-66 is at least four in CoRE MOF 2019; a
    mineral and a partial model of it with the same cell). Two entries are one material when
    they share a CSD refcode stem; or the same reduced formula and simulated profiles whose
    cosine similarity is at least ``threshold``; or the same element set and the same lattice
    (Niggli cells within ``length_tol`` relative and ``angle_tol`` degrees, when the index has
    the cell columns). Groups are the connected components of that relation. Polymorphs such as
    andalusite and sillimanite (cells 3-4 % apart) stay apart.

    Parameters
    ----------
    index : the library index (columns ``id``, ``reduced_formula``, ``refcode``; optionally
        ``elements``, ``a``, ``b``, ``c``, ``alpha``, ``beta``, ``gamma``), in ``profiles`` order.
    profiles : (n_entries, n_points) simulated profiles on one grid.
    threshold : cosine above which same-formula entries count as one material.
    length_tol, angle_tol : how far two cells of one material may differ.

    Examples
    --------
    >>> idx = pd.DataFrame({"id": ["a", "b", "c"], "reduced_formula": ["X", "X", "X"], "refcode": ["", "", ""]})
    >>> material_groups(idx, np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]]))
    ['a', 'a', 'c']
    """
    n = len(index)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(members: np.ndarray) -> None:
        for j in members[1:]:
            a, b = root(int(members[0])), root(int(j))
            parent[max(a, b)] = min(a, b)

    for _, rows in index.groupby("refcode").indices.items() if "refcode" in index else ():
        if _:
            join(np.asarray(rows))
    unit = np.asarray(profiles, dtype=np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    for _, rows in index.groupby("reduced_formula").indices.items():
        if len(rows) > 1:
            similar = unit[rows] @ unit[rows].T >= threshold
            for i, row in zip(rows, similar):
                join(np.concatenate([[i], np.asarray(rows)[row]]))
    for i, j in _same_lattice_pairs(index, length_tol, angle_tol):
        join(np.array([i, j]))
    ids = index["id"].astype(str).tolist()
    return [ids[root(i)] for i in range(n)]


def _same_lattice_pairs(index: pd.DataFrame, length_tol: float, angle_tol: float) -> list[tuple[int, int]]:
    """Pairs of rows with one element set whose lattices map onto each other within tolerance."""
    if not {"elements", *_CELL} <= set(index.columns):
        return []  # an index written before the cell columns existed
    from pymatgen.core import Lattice

    cells = index[list(_CELL)].to_numpy(dtype=float)
    pairs = []
    for elements, rows in index.groupby("elements").indices.items():
        rows = rows[np.isfinite(cells[rows]).all(axis=1)]
        if not elements or len(rows) < 2:
            continue
        # Sorted by the shortest Niggli length, each entry meets only those within tolerance of it;
        # the other two lengths screen them cheaply and pymatgen confirms (angles, settings).
        rows = rows[np.argsort(cells[rows, 0], kind="stable")]
        window = np.searchsorted(cells[rows, 0], cells[rows, 0] * (1 + length_tol), side="right")
        for a, stop in enumerate(window):
            near = rows[a + 1 : stop]
            near = near[(np.abs(cells[near, :3] / cells[rows[a], :3] - 1) <= length_tol).all(axis=1)]
            if len(near):
                first = Lattice.from_parameters(*cells[rows[a]])
                pairs += [(int(rows[a]), int(b)) for b in near
                          if first.find_mapping(Lattice.from_parameters(*cells[b]), length_tol, angle_tol) is not None]
    return pairs
