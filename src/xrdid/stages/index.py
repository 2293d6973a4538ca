"""The ``index`` stage: the open-library search index of the simulated library.

Reads the ``match`` section's search keys; writes a :class:`~xrdid.identify.search.LibraryIndex`
(seconds for 25,000 entries). Adding CIFs to a library is ``library`` + ``simulate`` + ``index``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.config import load_params
from xrdid.data.library import read_index
from xrdid.data.patterns import PatternSet
from xrdid.identify.search import LibraryIndex, SearchSettings
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)


def run(params: Mapping[str, Any], library: str | Path, patterns: str | Path, out: str | Path) -> LibraryIndex:
    """Index the patterns in ``patterns`` (formulas and materials from ``library``) into ``out``."""
    index = LibraryIndex.build(PatternSet.load(patterns), read_index(library),
                               SearchSettings.from_dict(params.get("match")))
    index.save(out)
    log.info("index: %d entries (%d materials) written to %s", len(index),
             len({row["material"] for row in index.rows}), out)
    return index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "match")
    add_stage_inputs(parser, "library", "patterns")
    add_out(parser, "data/index")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run(load_params(args.params), args.library, args.patterns, args.out)
    return 0
