"""A crystal structure as plain arrays: what the diffraction engine needs of a CIF."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdid.errors import InputError

if TYPE_CHECKING:
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

    @classmethod
    def from_structure(cls, id: str, structure: Structure) -> Crystal:
        """Flatten a pymatgen ``Structure`` (disordered sites become one row per species)."""
        rows = [
            (sp.Z, site.frac_coords, occu)
            for site in structure
            for sp, occu in site.species.items()
        ]
        if not rows:
            raise ValueError("no atoms")
        numbers, frac, occ = zip(*rows)
        return cls(
            id=id,
            lattice=np.array(structure.lattice.matrix, dtype=float),
            numbers=np.array(numbers, dtype=np.int16),
            frac_coords=np.array(frac, dtype=float),
            occupancies=np.array(occ, dtype=float),
        )

    @classmethod
    def from_cif(cls, path: str | Path) -> Crystal:
        """Parse one CIF file; raises :class:`InputError` naming the file and the problem."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(path, f"cannot read file ({exc.strerror or exc})") from exc
        structure, problem = _parse_cif(data)
        if structure is None:
            raise InputError(path, problem)
        return cls.from_structure(path.stem, structure)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        from pymatgen.core import Composition, Element

        amounts: dict[str, float] = {}
        for z, occ in zip(self.numbers.tolist(), self.occupancies.tolist()):
            symbol = Element.from_Z(z).symbol
            amounts[symbol] = amounts.get(symbol, 0.0) + occ
        return Composition(amounts).formula.replace(" ", "")

    def to_structure(self) -> Structure:
        """Back to a pymatgen ``Structure`` (for checks against pymatgen)."""
        from pymatgen.core import Element, Lattice, Structure

        species = [{Element.from_Z(int(z)): float(o)} for z, o in zip(self.numbers, self.occupancies)]
        return Structure(Lattice(self.lattice), species, self.frac_coords)


def _parse_cif(data: bytes) -> tuple[Structure | None, str]:
    """Parse CIF bytes into a Structure, or (None, reason)."""
    from pymatgen.io.cif import CifParser

    if not data.strip():
        return None, "empty file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if "_cell_length_a" not in text and "_cell_length_b" not in text:
        return None, "not a CIF (no _cell_length_a)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
    except Exception as exc:  # pymatgen raises many kinds of errors on malformed CIFs
        message = " ".join(str(exc).split())[:200] or type(exc).__name__
        return None, f"CIF parse error: {message}"
    if not structures:
        return None, "CIF parse error: no structure"
    structure = structures[0]
    if len(structure) == 0:
        return None, "no atoms"
    return structure, ""
