"""Reading CIFs: gemmi against pymatgen, and the checks that run before any native code."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from xrdid.data.library import (
    core_mof_ids,
    iter_core_mof,
    overlapping_pairs,
    space_group,
)
from xrdid.errors import InputError
from xrdid.xrd.crystal import Crystal, cell_problem, read_cif
from xrdid.xrd.diffraction import reflections

DATA = Path(__file__).parent / "data"
CELL = "_cell_length_a {}\n_cell_length_b {}\n_cell_length_c {}\n_cell_angle_alpha {}\n_cell_angle_beta {}\n" \
       "_cell_angle_gamma {}\n"


def _assert_same_structure(entry: str, data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast, fast_problem = read_cif(data, "gemmi", entry)
        ref, ref_problem = read_cif(data, "pymatgen", entry)
    assert (fast is None) == (ref is None), (entry, fast_problem, ref_problem)
    if ref is None:
        return
    assert fast.n_sites == ref.n_sites, entry  # co-located species merged into one site, as pymatgen does
    assert fast.is_ordered == ref.is_ordered, entry
    assert fast.composition().almost_equals(ref.composition()), entry
    assert space_group(fast) == space_group(ref) == tuple(ref.to_structure().get_space_group_info(symprec=0.1)), entry
    assert overlapping_pairs(fast) == overlapping_pairs(ref), entry
    assert_allclose(fast.lattice, ref.lattice, atol=1e-9, err_msg=entry)
    a, b = (reflections(c, "CuKa", (5, 50)) for c in (fast, ref))
    assert len(a) == len(b), entry
    assert_allclose(a.two_theta, b.two_theta, atol=1e-6, err_msg=entry)
    assert_allclose(a.intensity, b.intensity, atol=1e-3, err_msg=entry)


def test_gemmi_reads_core_mof_cifs_as_pymatgen_does() -> None:
    chosen = set(np.random.default_rng(2024).choice(core_mof_ids("2019-ASR"), 12, replace=False).tolist())
    entries = list(iter_core_mof("2019-ASR", chosen))
    assert len(entries) == 12
    for entry, data in entries:
        _assert_same_structure(entry, data)


@pytest.mark.shared
def test_gemmi_reads_rruff_cifs_as_pymatgen_does(shared_data: Path) -> None:
    paths = sorted((shared_data / "rruff236" / "cif").glob("*.cif"))
    assert len(paths) == 236
    for i in np.random.default_rng(7).choice(len(paths), 40, replace=False):
        _assert_same_structure(paths[i].stem, paths[i].read_bytes())


def test_disordered_site_stays_one_site() -> None:
    data = (DATA / "partial_occupancy.cif").read_bytes()
    fast, _ = read_cif(data, "gemmi")
    assert not fast.is_ordered and fast.n_sites == len(fast.numbers) // 2  # Cu/Au share every site
    _assert_same_structure("partial_occupancy", data)


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ((4, 4, 4, 90, 90, 90), ""),
        (("4.0123(4)", 4, 4, 90, 90, 90), ""),
        (("nan", 4, 4, 90, 90, 90), "_cell_length_a = nan is not finite"),
        ((4, "inf", 4, 90, 90, 90), "_cell_length_b = inf is not finite"),
        ((4, 4, -4, 90, 90, 90), "_cell_length_c = -4 is not a positive length"),
        ((4, 4, 4, 0, 90, 90), "_cell_angle_alpha = 0° outside 0–180°"),
        ((4, 4, 4, 30, 30, 120), "do not make a cell"),
        ((1e6, 4, 4, 90, 90, 90), "outside 0.5–1000 Å"),
        (("?", 4, 4, 90, 90, 90), "_cell_length_a missing"),
    ],
)
def test_cell_problem(cell: tuple, problem: str) -> None:
    found = cell_problem("data_x\n" + CELL.format(*cell))
    assert (problem in found) if problem else found == ""


def test_a_second_structure_block_is_refused() -> None:
    one = "data_x\n" + CELL.format(4, 4, 4, 90, 90, 90)
    assert "2 data blocks" in cell_problem(one + one.replace("data_x", "data_y"))
    assert cell_problem("data_global\n_journal_year 2020\n" + one) == ""  # a metadata block is fine


@pytest.mark.parametrize(
    ("name", "match"),
    [("unknown_element", "unknown element 'Xx'"), ("negative_occupancy", "occupancy -1.0 of site Cl1"),
     ("nan_cell", "nan is not finite"), ("two_blocks", "2 data blocks")],
)
@pytest.mark.parametrize("parser", ["gemmi", "pymatgen"])
def test_from_cif_refuses_with_the_reason(name: str, match: str, parser: str) -> None:
    path = Path(__file__).parent / "bad_input" / "cif" / f"{name}.cif"
    with pytest.raises(InputError, match=match):
        Crystal.from_cif(path)
    crystal, problem = read_cif(path.read_bytes(), parser)
    assert crystal is None and re.search(match, problem), problem


def test_unknown_parser_is_an_error() -> None:
    with pytest.raises(ValueError, match="parser must be one of"):
        read_cif((DATA / "nacl.cif").read_bytes(), "cod")
