"""The ``xrdid`` command line: one subcommand per pipeline stage or tool.

The table :data:`COMMANDS` names, for every subcommand, the function that adds its arguments
(``module:function``) and its help line. Only the chosen command's module is imported, so
``xrdid --help`` and a light command never load torch, pymatgen or MLflow. A command's
function stores a callable under ``func`` that takes the parsed arguments and returns an exit
status; :class:`~xrdid.errors.InputError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from xrdid import __version__
from xrdid.errors import InputError

# command -> (module:function adding its arguments, help); stages first, in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "library": ("xrdid.stages.library:add_arguments", "stage: build the CIF library (index, rejects, parsed structures)"),
    "simulate": ("xrdid.stages.simulate:add_arguments", "stage: simulate every library entry's pattern"),
    "noise": ("xrdid.stages.noise:add_arguments", "stage: build the background + noise bank (data/noise_bank)"),
    "index": ("xrdid.stages.index:add_arguments", "stage: the open-library search index of the simulated library"),
    "augment": ("xrdid.stages.augment:add_arguments", "stage: simulated reflections + noise bank → train/val datasets"),
    "train": ("xrdid.stages.train:add_arguments", "stage: train the CNN named in params.yaml on the augmented set"),
    "evaluate": ("xrdid.stages.evaluate:add_arguments", "stage: Top-1..5 of the model and the baselines; metrics.json, plots"),
    "match": ("xrdid.stages.match:add_arguments", "stage: calibrate and score the open-library identifier"),
    "mixture": ("xrdid.stages.mixture:add_arguments",
                "stage: calibrate the mixture search's per-phase confidence and score it"),
    "register": ("xrdid.stages.register:add_arguments", "stage: log the run to MLflow, register the model, maybe move champion"),
    "register_open": ("xrdid.stages.register_open:add_arguments",
                      "stage: log the open-library identifier to MLflow and register it"),
    "pattern": ("xrdid.cli.measured:add_pattern", "reflections of one CIF (positions, intensities, hkl)"),
    "read": ("xrdid.cli.measured:add_read", "read a measured pattern (xy, xye, xyd, csv, dat, xrdml, brml, raw, rasx)"),
    "denoise": ("xrdid.cli.measured:add_denoise", "FFT-denoise a measured pattern when it is noisy (Wang et al. 2020)"),
    "predict": ("xrdid.cli.predict:add_predict", "identify measured patterns with a registered or pulled model"),
    "pull": ("xrdid.cli.predict:add_pull", "copy a registered model and its library index into a folder for offline use"),
    "promote": ("xrdid.cli.predict:add_promote", "move the champion alias to a registered model version by hand"),
    "explain": ("xrdid.cli.explain:add_arguments", "explanations of a trained model (NCA map of measured patterns)"),
    "tune": ("xrdid.cli.tune:add_arguments",
             "Optuna study over augmentation ratio, epochs, conv depth, learning rate, dropout, batch size"),
    "synthetic": ("xrdid.cli.synthetic:add_arguments", "the universal synthetic spectra benchmark (Schuetzke et al. 2023)"),
    "bench": ("xrdid.cli.bench:add_arguments", "benchmarks: train the model zoo, mean ± std over seeds"),
    "ui": ("xrdid.cli.ui:add_arguments", "a local web page (127.0.0.1) to identify dropped pattern files"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s arguments are added (all of them when ``command`` is ``"*"``)."""
    parser = argparse.ArgumentParser(prog="xrdid", description="Identify materials from powder X-ray diffraction patterns.")
    parser.add_argument("--version", action="version", version=f"xrdid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (target, help) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help, description=help)
        if command in (name, "*"):
            module, function = target.split(":")
            getattr(importlib.import_module(module), function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
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
