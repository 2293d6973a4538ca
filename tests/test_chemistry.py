"""The chemistry filter (xrdid.identify.chemistry): which library entries a sample's known elements allow."""

from __future__ import annotations

import pytest

from xrdid.errors import InputError
from xrdid.identify.chemistry import element_mask, entry_elements, parse_elements


def test_the_chemistry_filter_keeps_entries_made_of_the_given_elements() -> None:
    rows = [{"elements": "Fe O"}, {"formula": "Fe2O3"}, {"formula": "FeCO3"}, {"reduced_formula": "Ca3Fe2(SiO4)3"},
            {"formula": "MgO"}]
    assert entry_elements(rows[3]) == {"Ca", "Fe", "Si", "O"}
    assert element_mask(rows, ["Fe", "O"]).tolist() == [True, True, False, False, False]
    assert element_mask(rows, ["Fe", "O", "C", "Ca", "Si"], required=["Ca"]).tolist() == [False, False, False, True,
                                                                                          False]
    assert element_mask(rows).all()  # no filter
    assert parse_elements("Fe, O;Ca  Si") == {"Fe", "O", "Ca", "Si"}
    assert parse_elements(None) == parse_elements("") == frozenset()
    with pytest.raises(InputError, match="--elements: Xx, fe is not an element symbol"):
        parse_elements("Fe,Xx,fe")
