"""The ``noise`` stage: the noise bank (background + noise rows on the grid).

Reads the ``grid`` and ``noise`` sections. From the measured patterns of ``noise.folder`` the
peaks are removed and background + noise kept; with ``noise.folder`` null a physical noise model
stands in (see :mod:`xrdid.xrd.noise`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.config import Grid, load_params
from xrdid.errors import InputError
from xrdid.stages.options import add_out, add_params, add_progress
from xrdid.xrd.measured import wavelength_angstrom
from xrdid.xrd.noise import NoiseBank, build_noise_bank

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)


def run(params: Mapping[str, Any], out: str | Path, progress: bool = True, source: str | Path = "params") -> NoiseBank:
    """Build the noise bank of ``params['noise']`` on ``params['grid']`` into ``out``.

    ``source`` names the parameter file in error messages.
    """
    grid_params = params.get("grid") or {}
    try:
        grid = Grid.from_params(grid_params)
        wavelength = grid_params.get("wavelength", "CuKa")
        wavelength_angstrom(wavelength)
    except (KeyError, ValueError) as exc:
        raise InputError(source, f"grid section: {exc}") from exc
    bank = build_noise_bank(dict(params.get("noise") or {}), grid, wavelength, out, progress=progress)
    log.info("noise bank: %d %s rows × %d points, %d rejected → %s", bank.noise.shape[0], bank.kind,
             bank.noise.shape[1], len(bank.rejects), out)
    return bank


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Remove the peaks of measured patterns (params noise.folder) and keep background + noise on "
                          "the model grid; with noise.folder null, draw rows from a physical noise model.")
    add_params(parser, "grid, noise")
    add_out(parser, "data/noise_bank")
    parser.add_argument("--folder", help="override noise.folder (a folder of measured patterns)")
    parser.add_argument("--physical", action="store_true", help="ignore noise.folder: use the physical model")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    noise = dict(params.get("noise") or {})
    if args.folder:
        noise["folder"] = args.folder
    if args.physical:
        noise["folder"] = None
    run({**params, "noise": noise}, args.out, progress=args.progress, source=args.params)
    return 0
