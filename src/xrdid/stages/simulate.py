"""The ``simulate`` stage: every library entry's reflections and profile on the grid.

Reads the ``grid`` and ``simulate`` sections; writes a :class:`~xrdid.data.patterns.PatternSet`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.config import load_params
from xrdid.data.patterns import PatternSet, simulate_library
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs
from xrdid.xrd.diffraction import SimulationSettings

if TYPE_CHECKING:
    import argparse


def run(params: Mapping[str, Any], library: str | Path, out: str | Path, progress: bool = True) -> PatternSet:
    """Simulate every entry of the library folder ``library`` into ``out``."""
    settings = SimulationSettings.from_params(params)
    workers = int(params["simulate"].get("workers", 2))
    return simulate_library(library, out, settings, workers=workers, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "grid, simulate")
    add_stage_inputs(parser, "library")
    add_out(parser, "data/patterns")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run(load_params(args.params), args.library, args.out, progress=args.progress)
    return 0
