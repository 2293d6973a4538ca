"""What a chemist reads: entry names without pipeline suffixes, reduced formulas, honest probabilities.

The library's ids are file stems that carry the curation of their source (CoRE MOF's
``RUBTAK01_SL``, ``DANZAV_charged``, ``KEXPOU_clean``) and its ``formula`` is the unit cell's
contents (``Cd256C784Se112S304``). The terminal, the CSV and the HTML report show the id without
those suffixes (the CSD refcode a chemist searches for), the reduced formula and, when the library
index has a ``mineral`` or ``name`` column, that name; the JSON keeps the full id and formula.
Organic and metal-organic formulas (carbon beyond carbonate) are written in Hill order
(:func:`hill_formula`: C, H, then alphabetical), as the CSD indexes them, so ``C24H14O16Zr3``
reads as a MOF chemist expects; inorganic ones keep the reduced formula's order (``ZnO``,
``CaCO3``, ``NaCl``), as a mineralogist writes them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DisplayName", "display_formula", "display_names", "format_probability", "hill_formula", "short_id",
           "wavelength_label"]

# CoRE MOF's curation tags (2014, 2019-ASR and 2019-FSR: every id carries exactly one of these).
_PIPELINE_SUFFIX = re.compile(
    r"_(?:clean(?:_h(?:_min)?|_b|5b)?|freeONLY|(?:un)?charged(?:_b)?|manual|SL(?:_part)?|ion_b|neutral(?:_b|_?5b)?"
    r"|auto)$"
)

_TOKEN = re.compile(r"([A-Z][a-z]?|\(|\))(\d*(?:\.\d+)?)")


def _element_counts(formula: str) -> dict[str, float] | None:
    """Element → count of a formula with optional brackets (``NaCaB5(H5O7)2``); None if unreadable."""
    tokens = _TOKEN.findall(formula)
    if not tokens or "".join(t + n for t, n in tokens) != formula:
        return None
    stack: list[dict[str, float]] = [{}]
    for token, number in tokens:
        count = float(number) if number else 1.0
        if token == "(":
            if number:
                return None
            stack.append({})
        elif token == ")":
            if len(stack) == 1:
                return None
            inner = stack.pop()
            for element, n in inner.items():
                stack[-1][element] = stack[-1].get(element, 0.0) + n * count
        else:
            stack[-1][token] = stack[-1].get(token, 0.0) + count
    return stack[0] if len(stack) == 1 else None


def hill_formula(formula: str) -> str:
    """``formula`` in Hill order: C first, then H, then the other elements alphabetically.

    Without carbon every element, H included, is alphabetical (``ZnO`` → ``OZn``, as the CSD
    writes it). Brackets are multiplied out, counts of 1 left out and a repeated element
    summed; a formula this cannot read (charges, hydrate dots) is returned as given.

    Examples
    --------
    >>> hill_formula("Zr3C24H14O16"), hill_formula("Ag3SbS3"), hill_formula("Al2O3"), hill_formula("NaCl")
    ('C24H14O16Zr3', 'Ag3S3Sb', 'Al2O3', 'ClNa')
    >>> hill_formula("H2O"), hill_formula("Fe0.95S"), hill_formula("NaCaB5(H5O7)2"), hill_formula("Cu2+")
    ('H2O', 'Fe0.95S', 'B5CaH10NaO14', 'Cu2+')
    """
    counts = _element_counts(formula)
    if not counts:
        return formula
    first = [e for e in ("C", "H") if e in counts] if "C" in counts else []
    order = first + sorted(e for e in counts if e not in first)
    return "".join(e + ("" if counts[e] == 1 else f"{counts[e]:g}") for e in order)


def display_formula(formula: str) -> str:
    """Hill order for an organic or metal-organic formula, else as given (a mineralogist's order).

    Organic means carbon that is not all carbonate: fewer than three oxygens per carbon.

    Examples
    --------
    >>> display_formula("Zr3C24H14O16"), display_formula("ZnC8"), display_formula("ZnO"), display_formula("CaMg(CO3)2")
    ('C24H14O16Zr3', 'C8Zn', 'ZnO', 'CaMg(CO3)2')
    """
    counts = _element_counts(formula) or {}
    organic = counts.get("C", 0) > 0 and counts.get("O", 0) < 3 * counts["C"]
    return hill_formula(formula) if organic else formula


def short_id(entry_id: str) -> str:
    """``entry_id`` without its CoRE MOF curation suffix; other ids unchanged.

    Examples
    --------
    >>> short_id("RUBTAK01_SL"), short_id("DANZAV_charged"), short_id("ABAVIJ_clean_h"), short_id("Al2O3_167")
    ('RUBTAK01', 'DANZAV', 'ABAVIJ', 'Al2O3_167')
    """
    return _PIPELINE_SUFFIX.sub("", entry_id) or entry_id


@dataclass(frozen=True)
class DisplayName:
    """How one library entry is shown: ``name`` (short id), ``formula`` (reduced), ``common`` (mineral or '')."""

    name: str
    formula: str
    common: str = ""

    def label(self) -> str:
        """``name common (formula)``, the parts that exist.

        Examples
        --------
        >>> DisplayName("Al2O3_167", "Al2O3", "corundum").label(), DisplayName("RUBTAK01", "").label()
        ('Al2O3_167 corundum (Al2O3)', 'RUBTAK01')
        """
        text = f"{self.name} {self.common}" if self.common else self.name
        return f"{text} ({self.formula})" if self.formula else text


def display_names(library: Sequence[Mapping[str, str]]) -> dict[str, DisplayName]:
    """Id → :class:`DisplayName` for every library row.

    A short id that two entries share (possible in a folder library) would name two structures
    alike: those entries keep their full id. The reduced formula (falling back to ``formula`` for
    an index written before it had the column) is shown as :func:`display_formula` writes it.

    Examples
    --------
    >>> names = display_names([{"id": "A_clean", "formula": "Zn4O16", "reduced_formula": "ZnO4"},
    ...                        {"id": "B_clean", "formula": "Cu2", "mineral": "copper"},
    ...                        {"id": "B_charged", "formula": "Cu4"}])
    >>> names["A_clean"].label(), names["B_clean"].label(), names["B_charged"].name
    ('A (ZnO4)', 'B_clean copper (Cu2)', 'B_charged')
    """
    shorts = {row["id"]: short_id(row["id"]) for row in library}
    taken = Counter(shorts.values())
    return {
        row["id"]: DisplayName(
            shorts[row["id"]] if taken[shorts[row["id"]]] == 1 else row["id"],
            display_formula(row.get("reduced_formula") or row.get("formula") or ""),
            row.get("mineral") or row.get("name") or "",
        )
        for row in library
    }


def format_probability(p: float) -> str:
    """A probability to three decimals that never claims certainty: ``> 0.99`` and ``< 0.001`` at the ends.

    A calibrated 0.9996 printed as ``1.000`` reads as "certain", and 0.0002 as ``0.000`` as
    "impossible"; neither is what the model says. The JSON keeps the float.

    Examples
    --------
    >>> [format_probability(p) for p in (0.9996, 0.995, 0.42, 0.0004)]
    ['> 0.99', '0.995', '0.420', '< 0.001']
    """
    p = float(p)
    if p > 0.995:
        return "> 0.99"
    if p < 0.0005:
        return "< 0.001"
    return f"{p:.3f}"


def wavelength_label(wavelength: str | float) -> str:
    """An X-ray line name or a number as ``name (λ Å)``.

    Examples
    --------
    >>> wavelength_label("CuKa"), wavelength_label(0.7093)
    ('CuKa (1.5418 Å)', '0.7093 Å')
    """
    from xrdid.xrd.measured import wavelength_angstrom

    try:
        value = wavelength_angstrom(wavelength)
    except ValueError:
        return str(wavelength)
    if isinstance(wavelength, str) and not re.fullmatch(r"[\d.eE+-]+", wavelength.strip()):
        return f"{wavelength} ({value:.4f} Å)"
    return f"{value:.4g} Å"
