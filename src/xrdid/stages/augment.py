"""The ``augment`` stage: augmented train/validation splits.

Reads the ``augment`` section (the grid comes with the simulated patterns). See
:mod:`xrdid.data.augment` for the variations and the merge with the noise bank.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.config import load_params
from xrdid.data.augment import load_noise_bank, write_augmented
from xrdid.data.library import Library
from xrdid.data.patterns import PatternSet
from xrdid.errors import InputError
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs

if TYPE_CHECKING:
    import argparse


def run(params: Mapping[str, Any], patterns: str | Path, noise: str | Path, library: str | Path, out: str | Path,
        progress: bool = True, source: str | Path = "params") -> None:
    """Write ``out/{train,val}`` from the simulated ``patterns``, the ``noise`` bank and the ``library`` cells."""
    if not Path(patterns).is_dir():
        raise InputError(patterns, "patterns folder not found: run `xrdid simulate` (dvc repro simulate)")
    pattern_set = PatternSet.load(patterns)
    bank = load_noise_bank(noise, pattern_set.grid)
    if not Path(library).is_dir():
        raise InputError(library, "library folder not found: run `xrdid library` (dvc repro library)")
    try:
        write_augmented(pattern_set, bank, Library.load(library), out, params.get("augment") or {}, progress=progress,
                        sources={"patterns": str(patterns), "noise": str(noise), "library": str(library)})
    except ValueError as exc:
        raise InputError(source, f"augment section: {exc}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Vary each entry's reflections (strain, shift, texture, size, Kα2), keep the main peaks of "
                          "the drawn profile, merge with shuffled noise-bank rows; write data/augmented/{train,val}.")
    add_params(parser, "augment")
    add_stage_inputs(parser, "patterns", "noise", "library")
    add_out(parser, "data/augmented")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run(load_params(args.params), args.patterns, args.noise, args.library, args.out, progress=args.progress,
        source=args.params)
    return 0
