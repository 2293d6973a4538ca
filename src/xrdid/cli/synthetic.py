"""``xrdid synthetic``: the universal synthetic dataset (Schuetzke et al. 2023)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdid.config import DEFAULT_PARAMS, SyntheticSection, load_params
from xrdid.data.synthetic import (
    SPLITS,
    Procedure,
    SyntheticConfig,
    make_config,
    procedure_for,
    write_dataset,
)
from xrdid.errors import InputError
from xrdid.stages.options import add_params

if TYPE_CHECKING:
    import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``xrdid synthetic generate`` and ``xrdid synthetic make-config``."""
    parser.description = "Render or create class configs of the universal synthetic spectra benchmark."
    sub = parser.add_subparsers(dest="synthetic_command", metavar="COMMAND", required=True)

    gen = sub.add_parser("generate", help="render train/val/test spectra of a class config into a folder")
    add_params(gen, "synthetic: the defaults of --config, --out, --seed and --dtype")
    gen.add_argument("--config", type=Path, help="class config JSON (e.g. dataset500.json)")
    gen.add_argument("--out", type=Path, help="output folder: x_/y_{train,val,test}.npy, meta.json")
    gen.add_argument("--seed", type=int, help="seed of the train/val draws")
    gen.add_argument("--dtype", choices=("float32", "float16"), help="dtype of the spectra")
    gen.add_argument("--chunk", type=int, default=None, help="spectra rendered at a time (memory bound)")
    gen.add_argument(
        "--no-special-cases",
        action="store_true",
        help="ignore the authors' per-class test special cases even for the published configs",
    )
    gen.set_defaults(func=_generate)

    mk = sub.add_parser("make-config", help="draw a new class config with the authors' rules")
    mk.add_argument("--classes", required=True, type=int, help="number of classes")
    mk.add_argument("--points", type=int, default=5000, help="points per spectrum (default 5000)")
    mk.add_argument("--out", required=True, type=Path, help="JSON file to write")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--min-peaks", type=int, default=2)
    mk.add_argument("--max-peaks", type=int, default=10)
    mk.add_argument("--boundary", type=int, default=100, help="no peak closer than this to either edge")
    mk.add_argument("--distribution", choices=("gamma", "uniform"), default="gamma", help="peaks per class")
    mk.set_defaults(func=_make_config)


def _generate(args: argparse.Namespace) -> int:
    # a params file named on the command line must exist; the default one may be absent
    explicit = args.params != DEFAULT_PARAMS.name
    section = load_params(args.params, "synthetic") if explicit or Path(args.params).is_file() else \
        SyntheticSection().to_dict()
    for key in ("config", "out", "seed", "dtype"):
        if getattr(args, key) is None:
            setattr(args, key, Path(section[key]) if key in ("config", "out") else section[key])
    config = SyntheticConfig.from_json(args.config)
    proc = Procedure() if args.no_special_cases else procedure_for(config)
    if args.seed < 0 or (args.chunk is not None and args.chunk < 1):
        raise InputError(args.config, "--seed must be ≥ 0 and --chunk ≥ 1")
    t0 = time.perf_counter()
    out = write_dataset(
        config, args.out, args.seed, procedure=proc, dtype=args.dtype, chunk=args.chunk, source=str(args.config)
    )
    n = sum(len(np.load(out / f"y_{s}.npy", mmap_mode="r")) for s in SPLITS)
    took = time.perf_counter() - t0
    print(f"{n} spectra of {config.n_classes} classes × {config.n_points} points → {out} ({took:.1f} s)")
    return 0


def _make_config(args: argparse.Namespace) -> int:
    try:
        config = make_config(
            args.classes,
            args.points,
            peaks_per_class=(args.min_peaks, args.max_peaks),
            seed=args.seed,
            boundary=args.boundary,
            distribution=args.distribution,
        )
    except ValueError as exc:
        raise InputError(args.out, str(exc)) from exc
    config.to_json(args.out)
    print(f"{config.n_classes} classes, {int(config.n_peaks.sum())} peaks → {args.out}")
    return 0
