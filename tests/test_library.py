"""The library stage: sources, filters, rejects, and the parsed-structure store."""

from __future__ import annotations

import faulthandler
import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

import xrdid.data.library as library_module
from xrdid.data.library import (
    Library,
    build_library,
    core_mof_ids,
    material_groups,
    overlapping_pairs,
    read_rejects,
)
from xrdid.errors import InputError
from xrdid.xrd.crystal import Crystal

DATA = Path(__file__).parent / "data"
NACL = (DATA / "nacl.cif").read_text()

BAD_CIFS = {
    "empty": ("", "empty file"),
    "garbage": ("this is not a crystal\n\x00\x01 at all", "not a CIF|binary content"),
    "truncated": (NACL[: NACL.index("loop_\n _atom_site_label")], "parse error"),
    "no_atoms": (NACL[: NACL.index("  Na1")], "parse error|no atoms"),
}


@pytest.fixture
def cif_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "nacl.cif").write_text(NACL)
    (folder / "cuau.cif").write_bytes((DATA / "partial_occupancy.cif").read_bytes())
    for name, (text, _) in BAD_CIFS.items():
        (folder / f"{name}.cif").write_text(text)
    return folder


def test_bad_cifs_are_recorded_and_the_rest_go_on(cif_folder: Path, tmp_path: Path) -> None:
    lib = build_library({"source": "folder", "folder": str(cif_folder), "workers": 2}, tmp_path / "lib",
                        progress=False)
    assert lib.ids == ["cuau", "nacl"]
    rejects = read_rejects(tmp_path / "lib").set_index("id")["reason"]
    assert set(rejects.index) == set(BAD_CIFS)
    for name, (_, reason) in BAD_CIFS.items():
        assert pd.Series([rejects[name]]).str.contains(reason).all(), (name, rejects[name])
    # the CIFs are copied byte for byte and hashed
    index = lib.index.set_index("id")
    assert (tmp_path / "lib" / "cif" / "nacl.cif").read_text() == NACL
    assert index.loc["nacl", "sha256"] == hashlib.sha256(NACL.encode()).hexdigest()
    assert index.loc["nacl", "spacegroup"] == "Fm-3m" and index.loc["nacl", "spacegroup_number"] == 225
    assert index.loc["nacl", "reduced_formula"] == "NaCl" and index.loc["nacl", "n_atoms"] == 8


def test_partial_occupancy_policy(cif_folder: Path, tmp_path: Path) -> None:
    params = {"source": "folder", "folder": str(cif_folder), "workers": 1, "partial_occupancy": "reject"}
    lib = build_library(params, tmp_path / "lib", progress=False)
    assert lib.ids == ["nacl"]
    assert "partial occupancy not supported" in read_rejects(tmp_path / "lib").set_index("id")["reason"]["cuau"]


def test_filters(cif_folder: Path, tmp_path: Path) -> None:
    base = {"source": "folder", "folder": str(cif_folder), "workers": 1}
    assert build_library({**base, "elements_required": ["Cu"]}, tmp_path / "a", progress=False).ids == ["cuau"]
    assert build_library({**base, "elements_allowed": ["Na", "Cl"]}, tmp_path / "b", progress=False).ids == ["nacl"]
    reasons = read_rejects(tmp_path / "b").set_index("id")["reason"]
    assert "not in elements_allowed" in reasons["cuau"]


def test_max_atoms_rejects_large_cells(cif_folder: Path, tmp_path: Path) -> None:
    params = {"source": "folder", "folder": str(cif_folder), "workers": 1, "max_atoms": 3}
    with pytest.raises(InputError, match=r"no usable CIF among 6 \(6 rejected, e\.g\. .*over max_atoms=3"):
        build_library(params, tmp_path / "lib", progress=False)
    assert not (tmp_path / "lib").exists()  # no half-built library for the next stage to read


def test_store_round_trip(cif_folder: Path, tmp_path: Path) -> None:
    build_library({"source": "folder", "folder": str(cif_folder), "workers": 1}, tmp_path / "lib", progress=False)
    lib = Library.load(tmp_path / "lib")
    direct = Crystal.from_cif(cif_folder / "nacl.cif")
    stored = lib.crystal(lib.ids.index("nacl"))
    assert_allclose(stored.lattice, direct.lattice)
    assert_allclose(stored.frac_coords, direct.frac_coords)
    assert stored.numbers.tolist() == direct.numbers.tolist()


@pytest.mark.slow
def test_core_mof_seeded_sample_is_repeatable(tmp_path: Path) -> None:
    params = {"source": "core-mof", "dataset": "2019-ASR", "select": 3, "seed": 5, "workers": 2}
    first = build_library(params, tmp_path / "a", progress=False)
    second = build_library(params, tmp_path / "b", progress=False)
    assert first.ids == second.ids and len(first.ids) == 3
    assert set(first.ids) <= set(core_mof_ids("2019-ASR"))
    assert (first.index["source"] == "core-mof:2019-ASR").all()
    other = build_library({**params, "seed": 6}, tmp_path / "c", progress=False)
    assert other.ids != first.ids


def test_core_mof_ids_select_list(tmp_path: Path) -> None:
    wanted = ["RUBTAK01_clean", "ABAVIJ_clean"] if "RUBTAK01_clean" in core_mof_ids("2019-ASR") else \
        core_mof_ids("2019-ASR")[:2]
    lib = build_library({"source": "core-mof", "select": wanted, "workers": 1}, tmp_path / "lib", progress=False)
    assert sorted(lib.ids) == sorted(wanted)
    with pytest.raises(InputError, match="unknown ids"):
        build_library({"source": "core-mof", "select": ["NOPE"], "workers": 1}, tmp_path / "x", progress=False)


def test_bad_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="CIF folder not found"):
        build_library({"source": "folder", "folder": str(tmp_path / "nothing")}, tmp_path / "lib")
    with pytest.raises(InputError, match="source must be"):
        build_library({"source": "ftp"}, tmp_path / "lib")


def test_rruff_folder(shared_data: Path, tmp_path: Path) -> None:
    params = {"source": "folder", "folder": str(shared_data / "rruff236" / "cif"), "select": 20, "seed": 0}
    lib = build_library(params, tmp_path / "lib", progress=False)
    assert len(lib) == 20 and np.all(lib.index["n_atoms"] > 0)
    # element set and Niggli-reduced cell (sorted lengths) of every entry, for material_groups
    cell = lib.index[["a", "b", "c"]].to_numpy()
    assert np.all(cell[:, 0] <= cell[:, 1] + 1e-3) and np.all(cell[:, 1] <= cell[:, 2] + 1e-3)
    assert lib.index["elements"].str.len().min() > 0


def test_crystal_from_bad_cif_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.cif"
    path.write_text("")
    with pytest.raises(InputError, match=r"broken\.cif: empty file"):
        Crystal.from_cif(path)


def test_material_groups_join_refcodes_and_near_identical_patterns() -> None:
    index = pd.DataFrame({
        "id": ["RUBTAK01_SL", "jz4002345", "RUBTAK02", "other", "same_formula_other_pattern"],
        "reduced_formula": ["ZrC8H4O5", "ZrC8H4O5", "ZrC8H4O5", "CuC4", "ZrC8H4O5"],
        "refcode": ["RUBTAK", "", "RUBTAK", "", ""],
    })
    uio = np.array([1.0, 0.5, 0.2, 0.0])
    profiles = np.stack([uio, uio * 1.01 + 0.01, [0.0, 0.0, 0.0, 1.0], uio, [0.0, 1.0, 0.0, 0.0]])
    groups = material_groups(index, profiles)
    # same refcode stem (RUBTAK01/RUBTAK02) and same formula + same pattern (jz4002345) → one material;
    # an identical pattern with another formula, or the same formula with another pattern, stays apart
    assert groups == ["RUBTAK01_SL", "RUBTAK01_SL", "RUBTAK01_SL", "other", "same_formula_other_pattern"]


def test_material_groups_join_one_lattice_with_one_element_set() -> None:
    # opXRD's stibnite is a partial P1 model (Sb2S3, 5 atoms) in the RRUFF stibnite's cell (Sb8S12);
    # andalusite and sillimanite (Al2SiO5 polymorphs) have cells 3-4 % apart; ZnS2 shares no elements.
    cells = {
        "Sb2S3_1": ("S Sb", 3.8365, 11.2276, 11.3118, 90.0, 90.0, 90.0),
        "Sb2S3_62": ("S Sb", 3.8296, 11.2250, 11.2820, 90.0, 90.0, 90.0),
        "andalusite": ("Al O Si", 5.556, 7.794, 7.899, 90.0, 90.0, 90.0),
        "sillimanite": ("Al O Si", 5.770, 7.486, 7.675, 90.0, 90.0, 90.0),
        "ZnS2": ("S Zn", 3.8365, 11.2276, 11.3118, 90.0, 90.0, 90.0),
    }
    index = pd.DataFrame([{"id": k, "reduced_formula": k, "refcode": "", "elements": v[0],
                           **dict(zip(["a", "b", "c", "alpha", "beta", "gamma"], v[1:]))} for k, v in cells.items()])
    profiles = np.eye(len(index))  # unlike patterns: only the cells can join them
    groups = material_groups(index, profiles)
    assert groups == ["Sb2S3_1", "Sb2S3_1", "andalusite", "sillimanite", "ZnS2"]
    # without the cell columns (an older index) nothing is joined
    assert material_groups(index[["id", "reduced_formula", "refcode"]], profiles) == list(cells)
    # a wider tolerance joins the polymorphs
    assert material_groups(index, profiles, length_tol=0.05)[3] == "andalusite"


def test_overlapping_atoms_are_counted_and_the_entry_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    # opXRD's stibnite: the asymmetric unit in P1 with fractional coordinates divided by the cell lengths
    cell = Lattice.orthorhombic(3.8365, 11.2276, 11.3118)
    true = np.array([[0.25, 0.326, 0.471], [0.75, 0.036, 0.351], [0.25, 0.192, 0.292],
                     [0.75, 0.123, 0.550], [0.75, 0.439, 0.375]])
    broken = Structure(cell, ["Sb", "Sb", "S", "S", "S"], true / np.array(cell.abc))
    assert overlapping_pairs(Crystal.from_structure("broken", broken)) > 0
    assert overlapping_pairs(Crystal.from_structure("true", Structure(cell, broken.species, true))) == 0
    # split sites of a disordered model may sit closer than 0.5 Å
    split = Crystal.from_structure("split", Structure(cell, [{"Sb": 0.5}, {"Sb": 0.5}], [[0, 0, 0], [0.05, 0, 0]]))
    assert overlapping_pairs(split) == 0 and overlapping_pairs(split, distance=0.2) == 0

    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "nacl.cif").write_text(NACL)
    CifWriter(broken).write_file(folder / "Sb2S3_1.cif")
    with caplog.at_level("WARNING"):
        lib = build_library({"source": "folder", "folder": str(folder), "workers": 1}, tmp_path / "lib",
                            progress=False)
    assert lib.ids == ["Sb2S3_1", "nacl"]  # kept: its cell, hence its peak positions, is right
    overlaps = lib.index.set_index("id")["overlaps"]
    assert overlaps["nacl"] == 0 and overlaps["Sb2S3_1"] == overlapping_pairs(Crystal.from_structure("b", broken))
    assert "1 entries have atoms closer than 0.5" in caplog.text and "Sb2S3_1" in caplog.text


_PARSE = library_module._parse_entry


def _parse_or_crash(job: tuple) -> tuple:
    """The worker, dying natively on the entry "cuau" (module level: pool tasks are pickled by name)."""
    if job[0] == "cuau":
        faulthandler.disable()  # pytest's handler would print the crash: expected here
        os.kill(os.getpid(), signal.SIGSEGV)  # what spglib does on a NaN cell
    return _PARSE(job)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_parser_crash_costs_its_cif_only(cif_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           workers: int) -> None:
    # Before: multiprocessing.Pool waited forever for the dead worker (workers 1: the stage died with 139).
    monkeypatch.setattr(library_module, "_parse_entry", _parse_or_crash)
    lib = build_library({"source": "folder", "folder": str(cif_folder), "workers": workers}, tmp_path / "lib",
                        progress=False)
    assert lib.ids == ["nacl"]
    rejects = read_rejects(tmp_path / "lib").set_index("id")["reason"]
    assert "parser crashed" in rejects["cuau"]
    assert set(rejects.index) == {"cuau", *BAD_CIFS}


def test_unreadable_entries_say_why(cif_folder: Path, tmp_path: Path) -> None:
    (cif_folder / "folder.cif").mkdir()
    (cif_folder / "loop.cif").symlink_to(cif_folder / "loop.cif")
    build_library({"source": "folder", "folder": str(cif_folder), "workers": 1}, tmp_path / "lib", progress=False)
    rejects = read_rejects(tmp_path / "lib").set_index("id")["reason"]
    assert rejects["folder"] == "cannot read file: Is a directory"
    assert rejects["loop"] == "cannot read file: Too many levels of symbolic links"


def test_a_parser_crash_among_many_batches_costs_its_cif_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 CIFs: several batches are in flight when the worker dies, and all of them come back
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i in range(300):
        (folder / f"nacl_{i:03d}.cif").write_text(NACL)
    (folder / "cuau.cif").write_bytes((DATA / "partial_occupancy.cif").read_bytes())  # sorts among the first
    monkeypatch.setattr(library_module, "_parse_entry", _parse_or_crash)
    lib = build_library({"source": "folder", "folder": str(folder), "workers": 2}, tmp_path / "lib", progress=False)
    assert lib.ids == sorted(f"nacl_{i:03d}" for i in range(300))
    assert read_rejects(tmp_path / "lib")["id"].tolist() == ["cuau"]


def test_a_grown_library_reuses_unchanged_entries(shared_data: Path, tmp_path: Path, caplog) -> None:
    """Library and simulate re-run on a folder with new and changed CIFs parse and simulate only
    those, and give the same outputs as a fresh build."""
    import logging

    from xrdid.data.patterns import PatternSet, simulate_library
    from xrdid.xrd.diffraction import SimulationSettings

    cifs = sorted((shared_data / "rruff236" / "cif").glob("*.cif"))[:6]
    folder = tmp_path / "cifs"
    folder.mkdir()
    for cif in cifs[:4]:
        shutil.copy(cif, folder / cif.name)
    params = {"source": "folder", "folder": str(folder), "select": "all", "workers": 1}
    settings = SimulationSettings.from_params({"grid": {"two_theta_min": 10, "two_theta_max": 60, "n_points": 501}})
    build_library(params, tmp_path / "grown", progress=False)
    simulate_library(tmp_path / "grown", tmp_path / "grown_patterns", settings, workers=1, progress=False)
    for cif in cifs[4:]:  # two new CIFs, one changed (a comment line: new bytes, same structure)
        shutil.copy(cif, folder / cif.name)
    (folder / cifs[0].name).write_bytes(b"# edited\n" + cifs[0].read_bytes())
    with caplog.at_level(logging.INFO, logger="xrdid.data"):
        grown = build_library(params, tmp_path / "grown", progress=False)
        simulate_library(tmp_path / "grown", tmp_path / "grown_patterns", settings, workers=1, progress=False)
    assert "(3 unchanged CIFs taken from the previous build)" in caplog.text
    assert "3 unchanged entries copied from the previous run" in caplog.text
    fresh = build_library(params, tmp_path / "fresh", progress=False)
    simulate_library(tmp_path / "fresh", tmp_path / "fresh_patterns", settings, workers=1, progress=False)
    pd.testing.assert_frame_equal(grown.index.drop(columns="source"), fresh.index.drop(columns="source"))
    assert_allclose(grown.frac_coords, fresh.frac_coords)
    a, b = PatternSet.load(tmp_path / "grown_patterns"), PatternSet.load(tmp_path / "fresh_patterns")
    assert a.ids == b.ids
    assert_allclose(a.profiles, b.profiles, atol=1e-6)
    assert_allclose(a.two_theta, b.two_theta)
