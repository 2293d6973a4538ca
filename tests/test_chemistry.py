"""The chemistry filter (xrdid.identify.chemistry): which library entries a sample's known elements allow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrdid.config import Grid
from xrdid.errors import InputError
from xrdid.identify.chemistry import element_mask, entry_elements, parse_elements
from xrdid.identify.identifier import Identifier


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
    assert parse_elements("D, O") == {"H", "O"}
    with pytest.raises(InputError, match="--elements: Xx, fe is not an element symbol"):
        parse_elements("Fe,Xx,fe")


class _Sure(torch.nn.Module):
    """A network sure of entry 0 and mildly preferring entry 2 among the others."""

    n_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[120.0, 0.0, 5.0, 1.0]]).expand(len(x), 4)


def test_a_classifier_restricted_ranks_the_kept_entries_even_beside_a_sure_excluded_one() -> None:
    """Conditioning on the filter happens before the softmax: the kept entries keep their order and share 1."""
    library = [{"id": i, "formula": f} for i, f in zip("abcd", ["MgO", "FeO", "Fe2O3", "Fe3O4"])]
    ident = Identifier(_Sure(), library, Grid(10.0, 40.0, 11), {}, peak_rule=None)
    ranked = ident.restrict(["Fe", "O"]).rank(np.ones((1, 11), np.float32), top=4)[0]
    assert [c["id"] for c in ranked] == ["c", "d", "b"]
    assert sum(c["probability"] for c in ranked) == pytest.approx(1.0, abs=1e-5)
    assert ident.provenance_summary()["chemistry"] == {"elements": ["Fe", "O"], "required": []}
    with pytest.raises(InputError, match="--require-elements: no entry of the 4-entry library is holding Li"):
        ident.restrict(required=["Li"])
    assert [c["id"] for c in ident.restrict().rank(np.ones((1, 11), np.float32), top=1)[0]] == ["a"]
    assert "chemistry" not in ident.provenance_summary()
