"""``xrdid bench synthetic``: the Schuetzke et al. benchmark, one MLflow run per model and seed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xrdid.data.synthetic import SyntheticConfig
from xrdid.errors import InputError
from xrdid.ops.bench import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODELS,
    PUBLISHED_EPOCHS,
    format_table,
    reference_for,
    run_benchmark,
    summarize_rows,
)
from xrdid.stages.options import add_progress

if TYPE_CHECKING:
    import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``xrdid bench synthetic``."""
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "synthetic",
        help="the universal synthetic spectra benchmark (Schuetzke et al. 2023) over the model zoo",
        description="Generate the benchmark's spectra from a class config once, train each model once per seed "
        "with the published settings and report misclassified test spectra (mean ± std over seeds).",
    )
    p.add_argument("--config", required=True, type=Path, help="class config JSON (dataset500.json, challenge27.json)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names (default: all 9)")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2,5 (default 0-4, as published)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"maximum epochs (default {PUBLISHED_EPOCHS}, as published; early stopping always on)")
    p.add_argument("--classes", type=int, default=None, help="keep the first N classes (reduced runs)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/val draws (default 0)")
    p.add_argument("--model-options", default=None, metavar="JSON",
                   help='constructor options per model, e.g. \'{"xrdnet": {"bins": 150}}\'')
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's)")
    p.add_argument("--out", type=Path, default=None, help="folder for results.csv, summary.json, results.md")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI or mlruns/)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    add_progress(p)
    p.set_defaults(func=_synthetic)


def _synthetic(args: argparse.Namespace) -> int:
    options = None
    if args.model_options:
        try:
            options = json.loads(args.model_options)
        except json.JSONDecodeError as exc:
            raise InputError("--model-options", f"invalid JSON: {exc}") from None
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads", f"must be ≥ 1, not {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run_benchmark(
        args.config, args.models, args.seeds, epochs=args.epochs, n_classes=args.classes, data_seed=args.data_seed,
        model_options=options, device=args.device, out=args.out, progress=args.progress,
        tracking=not args.no_track, tracking_uri=args.tracking_uri, experiment=args.experiment,
    )  # fmt: skip
    config = SyntheticConfig.from_json(args.config)
    full = args.classes is None or args.classes == config.n_classes  # published means are for all 500
    print(format_table(summarize_rows(rows), reference=reference_for(config.fingerprint) if full else None))
    where = f"; results in {args.out}" if args.out else ""
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s{where}")
    return 0
