"""``xrdid explain nca``: the NCA map of measured patterns among the training classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xrdid.config import load_params
from xrdid.errors import InputError
from xrdid.identify.explain import nca_map
from xrdid.stages.options import add_progress

if TYPE_CHECKING:
    import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``xrdid explain nca``."""
    sub = p.add_subparsers(dest="explain_command", metavar="WHAT", required=True)
    q = sub.add_parser("nca", help="NCA map of the measured test patterns (evaluate.measured) in CNN feature space")
    q.add_argument("--model", required=True, help="trained model (safetensors)")
    q.add_argument("--params", default="params.yaml", help="parameter file (grid, evaluate.measured)")
    q.add_argument("--patterns", default="data/patterns", help="simulated patterns (the library's order)")
    q.add_argument("--augmented", default="data/augmented",
                   help="augmented splits: their validation spectra anchor the map when the measured set has "
                        "fewer than two patterns per material")
    q.add_argument("--out", default="nca.png", help="PNG to write")
    q.add_argument("--max-classes", type=int, default=20, help="materials drawn (most patterns first; default 20)")
    q.add_argument("--seed", type=int, default=0)
    add_progress(q)
    q.set_defaults(func=_nca)


def _nca(args: argparse.Namespace) -> int:

    params = load_params(args.params)
    if not ((params.get("evaluate") or {}).get("measured") or {}).get("labels"):
        raise InputError(args.params, "evaluate.measured.labels names no labels file: nothing to map")
    n, k = nca_map(params, args.model, args.patterns, args.augmented, args.out, args.max_classes, args.seed,
                   progress=args.progress)
    print(f"wrote {args.out} ({n} patterns, {k} materials)")
    return 0
