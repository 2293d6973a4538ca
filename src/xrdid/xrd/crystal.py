"""A crystal structure as plain arrays: what the diffraction engine needs of a CIF."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdid.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from pymatgen.core import Structure


_CELL = ("a", "b", "c", "alpha", "beta", "gamma")


@dataclass
class Crystal:
    """What diffraction needs of a structure: one row per (site, species) with its occupancy.

    Parameters
    ----------
    id : library id (the CIF file's stem).
    lattice : (3, 3) lattice vectors as rows, Å.
    numbers : (n,) atomic numbers.
    frac_coords : (n, 3) fractional coordinates.
    occupancies : (n,) site occupancies of each species.
    sites : (n,) index of each row's site (rows of one disordered site share it); None: one site per row.

    Examples
    --------
    >>> c = Crystal("Po", 3.35 * np.eye(3), np.array([84]), np.zeros((1, 3)), np.ones(1))
    >>> c.formula, round(c.volume, 2)
    ('Po1', 37.6)
    """

    id: str
    lattice: np.ndarray
    numbers: np.ndarray
    frac_coords: np.ndarray
    occupancies: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    sites: np.ndarray | None = None

    @classmethod
    def from_structure(cls, id: str, structure: Structure) -> Crystal:
        """Flatten a pymatgen ``Structure`` (disordered sites become one row per species)."""
        rows = [
            (sp.Z, site.frac_coords, occu, i)
            for i, site in enumerate(structure)
            for sp, occu in site.species.items()
        ]
        if not rows:
            raise ValueError("no atoms")
        numbers, frac, occ, sites = zip(*rows)
        return cls(
            id=id,
            lattice=np.array(structure.lattice.matrix, dtype=float),
            numbers=np.array(numbers, dtype=np.int16),
            frac_coords=np.array(frac, dtype=float),
            occupancies=np.array(occ, dtype=float),
            sites=np.array(sites, dtype=np.int64),
        )

    @classmethod
    def from_cif(cls, path: str | Path) -> Crystal:
        """Parse one CIF file; raises :class:`InputError` naming the file and the problem."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(path, f"cannot read file ({exc.strerror or exc})") from exc
        crystal, problem = read_cif(data, id=path.stem)
        if crystal is None:
            raise InputError(path, problem)
        return crystal

    @property
    def site_index(self) -> np.ndarray:
        """(n,) the site of each row."""
        return np.arange(len(self.numbers)) if self.sites is None else self.sites

    @property
    def n_sites(self) -> int:
        return int(self.site_index.max()) + 1 if len(self.numbers) else 0

    @property
    def is_ordered(self) -> bool:
        """Every site holds one species, fully occupied (pymatgen's ``Structure.is_ordered``)."""
        per_site = np.bincount(self.site_index, minlength=self.n_sites)
        return bool((per_site == 1).all() and (self.occupancies >= 1 - 1e-8).all())

    def composition(self) -> Any:
        """The cell contents as a pymatgen ``Composition`` (occupancy-weighted)."""
        from pymatgen.core import Composition, Element

        amounts = np.bincount(self.numbers.astype(np.int64), weights=self.occupancies)
        return Composition({Element.from_Z(int(z)): float(amounts[z]) for z in np.flatnonzero(amounts)})

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        return self.composition().formula.replace(" ", "")

    def to_structure(self) -> Structure:
        """Back to a pymatgen ``Structure``, one (possibly disordered) site per site."""
        from pymatgen.core import Element, Lattice, Structure

        index = self.site_index
        species: list[dict[Any, float]] = [{} for _ in range(self.n_sites)]
        for i, z, occ in zip(index.tolist(), self.numbers.tolist(), self.occupancies.tolist()):
            species[i][Element.from_Z(z)] = occ
        first = np.unique(index, return_index=True)[1]
        return Structure(Lattice(self.lattice), species, self.frac_coords[first])


PARSERS = ("gemmi", "pymatgen")


def read_cif(data: bytes, parser: str = "gemmi", id: str = "") -> tuple[Crystal | None, str]:
    """Parse CIF bytes into a checked :class:`Crystal`, or (None, reason).

    The text and the cell are checked before any native code sees them: a NaN, infinite or
    zero-angle cell makes spglib crash the process, and a negative length would be used as
    positive without a word. ``parser="gemmi"`` reads the CIF with gemmi (tens of times faster
    than pymatgen on large symmetric cells) and falls back to pymatgen's ``CifParser`` when gemmi
    cannot read it; ``"pymatgen"`` uses pymatgen only. Both give the same sites (tests/test_crystal.py).

    Examples
    --------
    >>> crystal, problem = read_cif(Path("tests/data/nacl.cif").read_bytes(), id="nacl")  # doctest: +SKIP
    >>> crystal.formula, crystal.n_sites  # doctest: +SKIP
    ('Na4Cl4', 8)
    """
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS}, not {parser!r}")
    if not data.strip():
        return None, "empty file"
    text = _decode(data)
    if "\x00" in text:
        return None, "binary content; expected a CIF text file"
    if "_cell_length_a" not in text and "_cell_length_b" not in text:
        return None, "not a CIF (no _cell_length_a)"
    problem = cell_problem(text)
    if problem:
        return None, problem
    crystal = None
    if parser == "gemmi":
        crystal, problem = _read_gemmi(text, id)
    if crystal is None and not problem:
        crystal, problem = _read_pymatgen(text, id)
    if crystal is None:
        return None, problem
    problem = crystal_problem(crystal)
    return (None, problem) if problem else (crystal, "")


def _read_pymatgen(text: str, id: str) -> tuple[Crystal | None, str]:
    from pymatgen.core import DummySpecies
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception as exc:  # pymatgen raises many kinds of errors on malformed CIFs
        message = " ".join(str(exc).split())[:200] or type(exc).__name__
        return None, f"CIF parse error: {message}"
    problem = _occupancy_problem(parser.as_dict().values())
    if problem:
        return None, problem
    if not structures or len(structures[0]) == 0:
        return None, "no atoms"
    for site in structures[0]:
        for species in site.species:
            if isinstance(species, DummySpecies):
                return None, f"unknown element {species.symbol!r} at site {site.label or site.species_string}"
    return Crystal.from_structure(id, structures[0]), ""


# Sites of different species closer than this (fractional, per axis) share one position: one disordered site.
_SAME_POSITION = 1e-3


def _read_gemmi(text: str, id: str) -> tuple[Crystal | None, str]:
    """The crystal by gemmi's CIF reader and symmetry expansion; (None, '') when pymatgen should try."""
    import gemmi
    from pymatgen.core import Lattice

    try:
        block = gemmi.cif.read_string(text).sole_block()
        small = gemmi.make_small_structure_from_block(block)
        sites = small.get_all_unit_cell_sites()
    except (RuntimeError, ValueError, IndexError):
        return None, ""
    if not sites:
        return None, ""
    problem = _occupancy_problem([{"_atom_site_label": list(block.find_values("_atom_site_label")),
                                   "_atom_site_occupancy": list(block.find_values("_atom_site_occupancy"))}])
    if problem:
        return None, problem
    for site in sites:
        if site.element.atomic_number == 0:
            return None, f"unknown element {site.type_symbol or site.label!r} at site {site.label}"
    frac = np.array([site.fract.tolist() for site in sites]) % 1.0
    numbers = np.array([site.element.atomic_number for site in sites], dtype=np.int16)
    occupancy = np.array([site.occ for site in sites], dtype=float)
    # gemmi lists co-located species (Cu/Au on one site) as separate sites; pymatgen holds them as
    # one disordered site, which n_atoms, is_ordered, the space group and the overlap count rely on.
    key = np.round(frac / _SAME_POSITION).astype(np.int64) % int(round(1 / _SAME_POSITION))
    _, first, group = np.unique(key, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))  # sites numbered in gemmi's order of first appearance
    index = rank[group.ravel()]
    order = np.argsort(index, kind="stable")  # rows of one site together, as from_structure gives them
    cell = small.cell
    lattice = Lattice.from_parameters(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma).matrix
    return Crystal(id, np.array(lattice), numbers[order], frac[first[group.ravel()]][order], occupancy[order],
                   sites=index[order]), ""


# Cells longer than this are not crystals a powder library holds; they would also exhaust memory.
MAX_CELL_LENGTH = 1000.0  # Å
MIN_CELL_LENGTH = 0.5  # Å: shorter than any bond
_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_CELL_VALUE = re.compile(r"^[ \t]*(_cell_(?:length_[abc]|angle_(?:alpha|beta|gamma)))[ \t]+(\S+)", re.M | re.I)
_DATA_BLOCK = re.compile(r"^[ \t]*data_", re.M | re.I)
_ESD = re.compile(r"\(\d+\)$")


def cell_problem(text: str) -> str:
    r"""Why the cell of CIF ``text`` cannot be a crystal's, or '' (the text is one data block's or more).

    Examples
    --------
    >>> cell_problem("data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c -4\n"
    ...              "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n")
    'cell: _cell_length_c = -4 is not a positive length'
    """
    blocks = [b for b in _DATA_BLOCK.split(text)[1:] if "_cell_length_a" in b.lower()]
    if len(blocks) > 1:
        return f"{len(blocks)} data blocks with a cell; expected one structure per file (split the file)"
    values = {tag.lower(): raw for tag, raw in _CELL_VALUE.findall(text)}
    cell = []
    for tag in _CELL_TAGS:
        raw = values.get(tag)
        if raw is None or raw in ("?", "."):
            return f"cell: {tag} missing"
        try:
            value = float(_ESD.sub("", raw))
        except ValueError:
            return f"cell: {tag} = {raw!r} is not a number"
        if not math.isfinite(value):
            return f"cell: {tag} = {raw} is not finite"
        cell.append(value)
    lengths, angles = cell[:3], cell[3:]
    for tag, value in zip(_CELL_TAGS, lengths):
        if value <= 0:
            return f"cell: {tag} = {value:g} is not a positive length"
        if not MIN_CELL_LENGTH <= value <= MAX_CELL_LENGTH:
            return f"cell: {tag} = {value:g} Å outside {MIN_CELL_LENGTH:g}–{MAX_CELL_LENGTH:g} Å"
    for tag, value in zip(_CELL_TAGS[3:], angles):
        if not 0 < value < 180:
            return f"cell: {tag} = {value:g}° outside 0–180°"
    cos = np.cos(np.radians(angles))
    # V / (abc) squared: positive exactly when the three angles close a parallelepiped
    if 1 - (cos**2).sum() + 2 * cos.prod() <= 1e-6:
        return "cell: angles {:g}°, {:g}°, {:g}° do not make a cell (zero volume)".format(*angles)
    return ""


def crystal_problem(crystal: Crystal) -> str:
    """Why a parsed crystal cannot be simulated, or '' (bad occupancies, non-finite coordinates)."""
    bad = np.flatnonzero(~((crystal.occupancies > 0) & (crystal.occupancies <= 1 + 1e-3)))
    if bad.size:
        return f"occupancy {crystal.occupancies[bad[0]]:g} outside 0–1"
    total = np.bincount(crystal.site_index, weights=crystal.occupancies)
    if (total > 1 + 1e-2).any():
        return f"a site holds {total.max():g} atoms (occupancies sum above 1)"
    if not np.isfinite(crystal.frac_coords).all():
        return "non-finite atomic coordinates"
    return ""


def _occupancy_problem(blocks: Iterable[Mapping[str, Any]]) -> str:
    """A listed occupancy outside 0–1: pymatgen silently drops such sites (a negative one, for one)."""
    for block in blocks:
        labels = block.get("_atom_site_label") or []
        for i, raw in enumerate(block.get("_atom_site_occupancy") or []):
            try:
                value = float(_ESD.sub("", raw))
            except ValueError:
                continue  # '?' and '.' mean "not given": 1
            if not 0 < value <= 1 + 1e-3:
                site = labels[i] if i < len(labels) else f"#{i + 1}"
                return f"occupancy {raw} of site {site} outside 0–1"
    return ""


def _decode(data: bytes) -> str:
    """CIF bytes as text: UTF-16 by its byte-order mark, else UTF-8 (BOM dropped), else Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")
