"""Reading ``params.yaml``: profile overlays (``extends``), validation, defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from xrdid.config.sections import Params, _Section
from xrdid.errors import InputError

__all__ = ["DEFAULT_PARAMS", "SECTIONS", "load_params", "load_sections"]

DEFAULT_PARAMS = Path("params.yaml")
SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Params))


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any], schema: type[_Section] = Params) -> dict[str, Any]:
    """``overlay`` deep-merged into ``base``: sections key by key, every other value replaced.

    Open mappings (``model.options``, ``tune.space``, ``tune.pruner_options``, ...) are values:
    an overlay's ``pruner_options`` for another pruner must not keep the base's options.
    """
    merged = dict(base)
    nested = schema.nested()
    for key, value in overlay.items():
        both = key in nested and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = _merge(merged[key], value, nested[key]) if both else value
    return merged


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of ``path`` with its ``extends`` chain merged in (each base validated)."""
    if not path.is_file():
        raise InputError(path, "parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(path, f"expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise InputError(path, f"extends: expected a path relative to this file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise InputError(path, f"extends: {base} not found")
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise InputError(path, f"extends: {base} extends this file again (a cycle)")
    base_raw = _read(base_path, (*chain, path))
    Params.from_dict(base_raw, base_path)  # a problem in the base names the base
    return _merge(base_raw, raw)


def load_sections(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read a parameter file into a :class:`Params` (every section, defaults filled in).

    Parameters
    ----------
    path : the YAML file; it may start with ``extends: <base>`` (a path relative to it):
        see :func:`load_params`.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "p.yaml").write_text("augment: {ratio: 72}")
    >>> p = load_sections(folder / "p.yaml")
    >>> p.augment.ratio, p.augment.val_fraction
    (72, 0.2)
    """
    path = Path(path)
    return Params.from_dict(_read(path), path)


def load_params(path: str | Path = DEFAULT_PARAMS, section: str | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` (or one of its sections) as plain, validated mappings.

    Every section in the file is checked (unknown sections and keys, types, enums, simple
    bounds raise :class:`~xrdid.errors.InputError` naming the file) and comes back with its
    missing keys filled from the defaults; the values the file sets come back unchanged.

    Parameters
    ----------
    path : the YAML file; it may start with ``extends: <base>`` (relative to it): the base
        is read first (recursively) and this file deep-merged into it: sections (and nested
        sections such as ``noise.physical``) key by key; every other value, open mappings
        such as ``model.options`` or ``tune.space`` and ``null`` included, replaced whole.
    section : a section name: that section (its defaults when the file lacks it); None:
        every section the file (or its bases) has.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "base.yaml").write_text("train: {epochs: 5}")
    >>> _ = (folder / "p.yaml").write_text("extends: base.yaml\\ntrain: {lr: 0.01}")
    >>> train = load_params(folder / "p.yaml", "train")
    >>> train["epochs"], train["lr"], train["batch_size"]
    (5, 0.01, 128)
    """
    path = Path(path)
    if section is not None and section not in SECTIONS:
        raise InputError(path, f"unknown section '{section}'")
    raw = _read(path)
    params = Params.from_dict(raw, path)
    if section is not None:
        return getattr(params, section).to_dict()
    return {name: getattr(params, name).to_dict() for name in raw}
