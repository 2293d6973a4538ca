"""The ``xrdid`` command line: one subcommand per pipeline stage or tool.

Each module listed in ``_COMMAND_MODULES`` exposes ``add_commands(subparsers)``
which adds its subcommands; a subcommand stores a callable under ``func``
that takes the parsed arguments and returns an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from xrdid import __version__
from xrdid.errors import InputError

# Modules that contribute subcommands, in the order they appear in --help.
_COMMAND_MODULES = [
    "xrdid.library",
    "xrdid.diffraction",
    "xrdid.measured",
    "xrdid.denoise",
    "xrdid.noise",
    "xrdid.augment",
    "xrdid.train",
    "xrdid.evaluate",
    "xrdid.tune",
    "xrdid.tracking",
    "xrdid.predict",
    "xrdid.synthetic",
    "xrdid.explain",
    "xrdid.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrdid",
        description="Identify materials from powder X-ray diffraction patterns.",
    )
    parser.add_argument("--version", action="version", version=f"xrdid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        warnings.filterwarnings("ignore")  # pymatgen's CIF warnings would drown the output
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"xrdid: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xrdid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
