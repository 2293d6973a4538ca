"""Command-line options that the stages and tools share (declared once, here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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


def report_registration(result: dict[str, Any], out: str | None) -> int:
    """The end of a ``register`` stage: the registration as JSON in ``out`` (when given) and one line."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    state = "champion" if result["champion"] else "not champion"
    print(f"registered {result['name']} v{result['version']} ({state}); top1 {result['top1']:.3f} on {result['test_set']}")
    return 0
