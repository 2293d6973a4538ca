"""Command-line options that the stages and tools share (declared once, here)."""

from __future__ import annotations

import argparse


def add_params(parser: argparse.ArgumentParser, sections: str) -> None:
    """``--params``: the parameter file; ``sections`` names the sections the command reads."""
    parser.add_argument("--params", default="params.yaml", help=f"parameter file (sections {sections})")


def add_out(parser: argparse.ArgumentParser, default: str | None, help: str = "output folder") -> None:
    """``--out``: where the command writes."""
    parser.add_argument("--out", default=default, help=f"{help} (default {default})" if default else help)


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bars (DVC stages and logs)."""
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def add_stage_inputs(parser: argparse.ArgumentParser, *names: str, role: str = "") -> None:
    """Input folders of earlier stages, each with its pipeline default (``data/<name>``)."""
    helps = {"library": ("data/library", "library folder (`xrdid library`)"),
             "patterns": ("data/patterns", "simulated patterns (`xrdid simulate`)"),
             "noise": ("data/noise_bank", "noise bank (`xrdid noise`)"),
             "augmented": ("data/augmented", "augmented splits (`xrdid augment`)"),
             "index": ("data/index", "search index of the library (`xrdid index`)")}
    for name in names:
        default, text = helps[name]
        parser.add_argument(f"--{name}", default=default, help=f"{text}{role}")
