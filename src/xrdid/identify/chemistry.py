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


def element_mask(rows: Sequence[Mapping[str, Any]], allowed: Iterable[str] = (),
                 required: Iterable[str] = ()) -> np.ndarray:
    """Which entries are made of ``allowed`` elements only (any when empty) and hold every ``required`` one.

    An entry whose row names no element (no ``elements``, no formula) passes ``allowed`` and fails
    ``required``.
    """
    allowed, required = frozenset(allowed), frozenset(required)
    elements = [entry_elements(row) for row in rows]
    return np.array([(not allowed or e <= allowed) and required <= e for e in elements], bool)


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
