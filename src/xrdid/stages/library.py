"""The ``library`` stage: CIFs → ``index.csv``, ``rejects.csv`` and ``structures.npz``.

Reads the ``library`` section. See :mod:`xrdid.data.library` for the sources, filters and
reject rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.config import load_params
from xrdid.data.library import Library, build_library
from xrdid.stages.options import add_out, add_params, add_progress

if TYPE_CHECKING:
    import argparse


def run(params: Mapping[str, Any], out: str | Path, progress: bool = True) -> Library:
    """Build the library of ``params['library']`` into ``out``."""
    return build_library(dict(params["library"]), out, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "library")
    add_out(parser, "data/library")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run(load_params(args.params), args.out, progress=args.progress)
    return 0
