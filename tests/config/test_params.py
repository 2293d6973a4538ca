"""params.yaml through xrdid.config: sections, checks, defaults, overlays (``extends``)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from xrdid.config import (
    SECTIONS,
    Grid,
    GridSection,
    Params,
    TrainSection,
    load_params,
    load_sections,
)
from xrdid.errors import InputError

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "params.yaml"
RRUFF = REPO / "pipelines" / "rruff236" / "params.yaml"
STAGE_ONLY = {"fresh": False, "seeds": None}  # train keys of the stage that the root file leaves out


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _merge(base: dict, overlay: dict, schema: type = Params) -> dict:
    out, nested = dict(base), schema.nested()
    for key, value in overlay.items():
        if key in nested and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, nested[key])
        else:
            out[key] = value
    return out


def _plain(path: Path) -> dict:
    """The old reading (plain YAML), with an ``extends`` chain merged by hand."""
    raw = yaml.safe_load(path.read_text())
    base = raw.pop("extends", None)
    return raw if base is None else _merge(_plain(path.parent / base), raw)


def _assert_same(old: Any, new: Any, where: str) -> None:
    """Equal and of the same Python type all the way down (an int stays an int)."""
    assert type(new) is type(old), f"{where}: {old!r} came back as {new!r}"
    if isinstance(old, dict):
        assert list(new) == list(old), where
        for key in old:
            _assert_same(old[key], new[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert len(new) == len(old), where
        for i, (a, b) in enumerate(zip(old, new)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert new == old, where


def _diff(full: dict, base: dict, schema: type = Params) -> dict:
    """What an overlay of ``base`` must set to give ``full``."""
    out, nested = {}, schema.nested()
    for key, value in full.items():
        if key in nested and isinstance(value, dict) and isinstance(base.get(key), dict):
            if sub := _diff(value, base[key], nested[key]):
                out[key] = sub
        elif key not in base or base[key] != value or type(base[key]) is not type(value):
            out[key] = value
    return out


# --------------------------------------------------------------------------- values reach the pipeline unchanged


def test_every_value_round_trips(path: Path = ROOT) -> None:
    old, new = _plain(path), load_params(path)
    assert list(new) == list(old)
    for section in old:
        _assert_same(old[section], {k: new[section][k] for k in old[section]}, section)
        added = {k: v for k, v in new[section].items() if k not in old[section]}
        assert added == ({k: v for k, v in STAGE_ONLY.items() if k not in old[section]} if section == "train" else {})


@pytest.mark.parametrize("path", [ROOT, RRUFF], ids=["root", "rruff236"])
def test_sections_alone_round_trip(path: Path) -> None:
    whole = load_params(path)
    for section in SECTIONS:
        assert load_params(path, section) == whole[section]


def test_defaults_are_the_root_params() -> None:
    root = _plain(ROOT)
    defaults = Params().to_dict()
    assert list(defaults) == list(root) == list(SECTIONS)
    _assert_same(root, {s: {k: defaults[s][k] for k in root[s]} for s in root}, "defaults")
    assert {k: defaults["train"][k] for k in STAGE_ONLY} == STAGE_ONLY
    assert Params.from_dict(defaults) == Params()


def test_rruff_profile_is_an_overlay_of_the_root() -> None:
    overlay, root, loaded = yaml.safe_load(RRUFF.read_text()), _plain(ROOT), load_params(RRUFF)
    assert overlay.pop("extends") == "../../params.yaml" and "extends" not in loaded
    assert "simulate" not in overlay and loaded["simulate"] == load_params(ROOT, "simulate")
    def arrives(values: dict, into: dict, where: str) -> None:  # every key the profile sets, as written
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(into[key], dict):
                arrives(value, into[key], f"{where}.{key}")
            else:
                _assert_same(value, into[key], f"{where}.{key}")

    for section, values in overlay.items():
        arrives(values, loaded[section], section)
        untouched = {k: v for k, v in root[section].items() if k not in values}
        _assert_same(untouched, {k: loaded[section][k] for k in untouched}, section)


# --------------------------------------------------------------------------- errors


def test_unknown_key_named_with_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", "augment: {ratio: 10, ratoi: 72}\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: unknown key 'augment.ratoi'")):
        load_params(path)
    with pytest.raises(InputError, match="unknown key 'augment.ratoi'"):
        load_params(path, "grid")  # the whole file is checked, whichever section is asked for
    nested = _write(tmp_path / "n.yaml", "noise:\n  physical: {humps: [0, 1]}\n")
    with pytest.raises(InputError, match=re.escape("unknown key 'noise.physical.humps'")):
        load_sections(nested)


def test_unknown_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", "trian: {epochs: 3}\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: unknown section 'trian'")):
        load_params(path)
    with pytest.raises(InputError, match="unknown section 'trian'"):
        load_params(_write(tmp_path / "q.yaml", "train: {epochs: 3}\n"), "trian")


@pytest.mark.parametrize(("text", "problem"), [
    ("library: {source: cod}", "library.source: expected 'core-mof' | 'folder', got 'cod'"),
    ("library: {partial_occupancy: drop}", "library.partial_occupancy: expected 'keep' | 'reject'"),
    ("tune: {pruner: asha}", "tune.pruner: expected 'median' | 'hyperband' | 'none'"),
    ("augment: {texture_direction: any}", "augment.texture_direction: expected 'low-index' | 'random'"),
    ("augment: {shuffle: [permute, shake]}", "augment.shuffle: expected"),
])
def test_bad_enum_value(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path / "p.yaml", text)
    with pytest.raises(InputError, match=re.escape(f"{path}: {problem}")):
        load_params(path)


@pytest.mark.parametrize(("text", "problem"), [
    ("augment: {ratio: -1}", "augment.ratio: must be ≥ 1, got -1"),
    ("augment: {ratio: 2.5}", "augment.ratio: expected an integer, got 2.5"),
    ("augment: {ratio: true}", "augment.ratio: expected an integer"),
    ("augment: {zero_shift: [0.1, -0.1]}", "augment.zero_shift: low > high in [0.1, -0.1]"),
    ("augment: {zero_shift: [0.1]}", "augment.zero_shift: expected [lo, hi]"),
    ("augment: {strain: [[0, 0.01], [0.02, 0.01], [0, 0]]}", "augment.strain: low > high"),
    ("augment: {strain: [[0, 0.01], [0, 0.01]]}", "augment.strain: expected [lo, hi] or"),
    ("augment: {val_fraction: 1.5}", "augment.val_fraction: must be ≤ 1"),
    ("augment: {shuffle: []}", "augment.shuffle: expected at least one mode"),
    ("grid: {two_theta_min: 50, two_theta_max: 10}", "grid.two_theta_min: must be below two_theta_max"),
    ("grid: {n_points: 1}", "grid.n_points: must be ≥ 2"),
    ("train: {lr: fast}", "train.lr: expected a number, got 'fast'"),
    ("train: {epochs: 0}", "train.epochs: must be ≥ 1"),
    ("train: 3", "train: expected a mapping"),
    ("noise: {physical: {count_level: [0, 10]}}", "noise.physical.count_level: must be > 0"),
    ("library: {select: 0}", "library.select: must be 'all', a positive number"),
    ("library: {source: folder}", "library.folder: source 'folder' needs a folder"),
    ("model: {options: [1, 2]}", "model.options: expected a mapping"),
    ("evaluate: {measured: {labels: 3}}", "evaluate.measured.labels: expected a string or null"),
    ("tune: {threads: 0}", "tune.threads: must be ≥ 1"),
])
def test_bad_value(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path / "p.yaml", text)
    with pytest.raises(InputError, match=re.escape(f"{path}: {problem}")):
        load_params(path)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "parameter file not found"),
    ("grid: [", "invalid YAML"),
    ("- grid", "expected a mapping of sections, got list"),
])
def test_unreadable_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "p.yaml"
    if text:
        _write(path, text)
    with pytest.raises(InputError, match=problem):
        load_params(path)


# --------------------------------------------------------------------------- accepted forms and defaults


def test_absent_section_gives_its_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", "train: {epochs: 3}\nlibrary:\n")
    assert load_params(path, "grid") == GridSection().to_dict()
    params = load_params(path)
    assert list(params) == ["train", "library"]  # the sections the file has, each filled in
    assert params["train"] == {**TrainSection().to_dict(), "epochs": 3}
    assert params["library"]["select"] == 50


def test_accepted_forms(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", """
library: {source: folder, folder: cifs, select: [ABC, 1000001], dataset: 2014}
augment: {shuffle: [permute, keep], strain: [[-0.01, 0.01], [0, 0], [0, 0.02]], crystallite_size: null}
train: {lr: 3e-4, seeds: 0-4, amp: true}
model: {name: wang, options: {conv_layers: 7}}
simulate: {debye_waller: {"*": 1.5}}
noise: {blank_ratio: [0.01, 0.1]}
tune: {space: null}
""")
    params = load_params(path)
    assert params["library"]["select"] == ["ABC", 1000001] and params["library"]["dataset"] == 2014
    assert params["augment"]["shuffle"] == ["permute", "keep"]
    assert params["augment"]["strain"] == [[-0.01, 0.01], [0, 0], [0, 0.02]]
    assert params["augment"]["crystallite_size"] is None
    assert params["train"]["lr"] == 3e-4 and isinstance(params["train"]["lr"], float)  # YAML read "3e-4" as text
    assert params["train"]["seeds"] == "0-4"
    assert params["model"]["options"] == {"conv_layers": 7}
    assert params["simulate"]["debye_waller"] == {"*": 1.5}
    assert params["noise"]["blank_ratio"] == [0.01, 0.1]
    assert params["tune"]["space"] == {}  # null clears an open mapping


def test_load_sections(tmp_path: Path) -> None:
    params = load_sections(_write(tmp_path / "p.yaml", "grid: {two_theta_min: 5.0, two_theta_max: 40.0, n_points: 876}"))
    assert isinstance(params, Params)
    assert params.grid.grid() == Grid(5.0, 40.0, 876)
    assert params.augment.zero_shift == (-0.1, 0.1) and params.tune.ablation.values["ratio"] == (5, 10, 20, 40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.grid.n_points = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- overlays


def test_overlay_deep_merge(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", """
grid: {two_theta_min: 5.0, two_theta_max: 60.0, n_points: 1101}
augment: {ratio: 10, noise_scale: [0.5, 1.0], shuffle: [permute, keep]}
model: {name: wang, options: {conv_layers: 7, dropout: 0.2}}
train: {epochs: 3}
""")
    path = _write(tmp_path / "profile" / "params.yaml", """
extends: ../base.yaml
augment: {ratio: 72, shuffle: segments}
model: {options: {conv_layers: 5}}
library: {select: all}
""")
    params = load_params(path)
    assert list(params) == ["grid", "augment", "model", "train", "library"]
    assert params["grid"]["n_points"] == 1101 and params["train"]["epochs"] == 3  # from the base
    assert params["augment"]["ratio"] == 72 and params["augment"]["noise_scale"] == [0.5, 1.0]
    assert params["augment"]["shuffle"] == "segments"  # a list is replaced, not merged
    assert params["model"] == {"name": "wang", "options": {"conv_layers": 5}}  # an open mapping is a value
    assert params["library"]["select"] == "all" and params["library"]["max_atoms"] == 5000
    assert "extends" not in params


def test_overlay_chain(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "base.yaml", "train: {epochs: 3, lr: 0.01}\naugment: {ratio: 10, seed: 1}\n")
    _write(tmp_path / "b" / "mid.yaml", "extends: ../a/base.yaml\ntrain: {epochs: 5}\naugment: {seed: 2}\n")
    top = _write(tmp_path / "c" / "d" / "top.yaml", "extends: ../../b/mid.yaml\ntrain: {batch_size: 8}\n")
    params = load_params(top)
    assert {k: params["train"][k] for k in ("epochs", "lr", "batch_size")} == {"epochs": 5, "lr": 0.01, "batch_size": 8}
    assert (params["augment"]["ratio"], params["augment"]["seed"]) == (10, 2)
    assert load_sections(top).train.epochs == 5


def test_overlay_errors(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", "train: {epoch: 3}\n")
    overlay = _write(tmp_path / "p.yaml", "extends: base.yaml\ntrain: {epochs: 4}\n")
    with pytest.raises(InputError, match=re.escape(f"{base}: unknown key 'train.epoch'")):
        load_params(overlay)  # the base is named, not the overlay
    with pytest.raises(InputError, match=re.escape(f"{overlay}: extends: missing.yaml not found")):
        load_params(_write(overlay, "extends: missing.yaml\n"))
    _write(tmp_path / "x.yaml", "extends: y.yaml\n")
    with pytest.raises(InputError, match="a cycle"):
        load_params(_write(tmp_path / "y.yaml", "extends: x.yaml\n"))
    with pytest.raises(InputError, match="extends: expected a path"):
        load_params(_write(overlay, "extends: [base.yaml]\n"))


# --------------------------------------------------------------------------- the grid


def test_grid() -> None:
    grid = Grid(5.0, 50.0, 4501)
    assert grid.step == pytest.approx(0.01)
    np.testing.assert_allclose(grid.values[[0, 1, -1]], [5.0, 5.01, 50.0])
    assert Grid.from_params(grid.to_dict()) == grid
    assert Grid.from_params(load_params(ROOT, "grid")) == load_sections(ROOT).grid.grid() == Grid(2.0, 50.0, 4801)


@pytest.mark.parametrize("args", [(50.0, 5.0, 100), (0.0, 50.0, 100), (5.0, 180.0, 100), (5.0, 50.0, 1)])
def test_grid_rejects(args: tuple[float, float, int]) -> None:
    with pytest.raises(ValueError, match="invalid 2θ grid"):
        Grid(*args)
