"""The chemistry filter: rank only the library entries a sample's known elements allow.

A chemist usually knows which elements a sample holds (its precursors, XRF or EDS) and, as in the
chemistry filter of a classical search-match program, searches only the entries made of them
(and, if asked, holding some of them): a look-alike pattern of other chemistry — an isostructural
compound, a DFT cell that happens to fit — is then never the answer. The rule is the ``library``
section's ``elements_allowed`` / ``elements_required`` (:class:`~xrdid.data.library.LibraryFilters`),
applied at query time to a library's index rows instead of at build time to its structures.

Examples
--------
>>> element_mask([{"formula": "FeO"}, {"formula": "Fe2O3"}, {"formula": "FeCO3"}], ["Fe", "O"]).tolist()
[True, True, False]
>>> element_mask([{"formula": "FeO"}, {"formula": "MgO"}], required=["Mg"]).tolist()
[False, True]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrdid.errors import InputError

_SYMBOL = re.compile(r"[A-Z][a-z]?")  # an element symbol in a formula


def entry_elements(row: Mapping[str, Any]) -> frozenset[str]:
    """The element symbols of a library index row: its ``elements`` column, else those of its formula.

    Examples
    --------
    >>> sorted(entry_elements({"elements": "Fe O"})), sorted(entry_elements({"formula": "Ca3Fe2(SiO4)3"}))
    (['Fe', 'O'], ['Ca', 'Fe', 'O', 'Si'])
    """
    listed = str(row.get("elements") or "").split()
    return frozenset(listed or _SYMBOL.findall(str(row.get("formula") or row.get("reduced_formula") or "")))


@dataclass(frozen=True)
class ElementTable:
    """Which elements each library entry holds, as a boolean (entries × symbols) matrix.

    Reading the rows is the slow part (0.1 s for 25,000 entries); built once per library, each
    filter is then one vectorised pass (:meth:`mask`).

    Examples
    --------
    >>> table = ElementTable.from_rows([{"formula": "FeO"}, {"formula": "MgO"}])
    >>> table.mask(["Fe", "O"]).tolist(), table.mask(required=["Mg"]).tolist()
    ([True, False], [False, True])
    """

    symbols: tuple[str, ...]
    holds: np.ndarray  # (entries, symbols) bool

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ElementTable:
        """The table of library index rows (:func:`entry_elements` of each)."""
        sets = [entry_elements(row) for row in rows]
        symbols = tuple(sorted(set().union(*sets)))
        column = {s: j for j, s in enumerate(symbols)}
        holds = np.zeros((len(sets), len(symbols)), bool)
        entry = np.repeat(np.arange(len(sets)), [len(e) for e in sets])
        holds[entry, [column[s] for e in sets for s in e]] = True
        return cls(symbols, holds)

    def mask(self, allowed: Iterable[str] = (), required: Iterable[str] = ()) -> np.ndarray:
        """Which entries are made of ``allowed`` elements only (any when empty) and hold every ``required`` one.

        An entry that names no element (no ``elements``, no formula) passes ``allowed`` and fails ``required``.
        """
        allowed, required = frozenset(allowed), frozenset(required)
        keep = np.ones(len(self.holds), bool)
        if allowed:
            keep &= ~self.holds[:, [s not in allowed for s in self.symbols]].any(axis=1)
        if required - set(self.symbols):  # an element no entry holds
            return np.zeros(len(self.holds), bool)
        return keep & self.holds[:, [s in required for s in self.symbols]].all(axis=1)


def element_mask(rows: Sequence[Mapping[str, Any]], allowed: Iterable[str] = (),
                 required: Iterable[str] = ()) -> np.ndarray:
    """Which entries are made of ``allowed`` elements only (any when empty) and hold every ``required`` one
    (:meth:`ElementTable.mask`; build an :class:`ElementTable` once to filter one library many times)."""
    return ElementTable.from_rows(rows).mask(allowed, required)


def parse_elements(text: str | None, name: str = "--elements") -> frozenset[str]:
    """Element symbols from a user's list (``"Fe,O"`` or ``"Fe O"``; none from None or ""); an unknown
    symbol is an :class:`~xrdid.errors.InputError` naming ``name``. D and T are H, as in the library's
    element sets.

    Examples
    --------
    >>> sorted(parse_elements("Fe, O"))
    ['Fe', 'O']
    """
    from pymatgen.core.periodic_table import Element

    symbols = [s for s in re.split(r"[,;\s]+", str(text or "").strip()) if s]
    unknown = [s for s in symbols if not Element.is_valid_symbol(s)]
    if unknown:
        raise InputError(name, f"{', '.join(unknown)} is not an element symbol (write them as Fe, O, Ca)")
    return frozenset("H" if s in ("D", "T") else s for s in symbols)
