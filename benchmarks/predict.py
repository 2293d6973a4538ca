"""Prediction throughput and latency of an :class:`xrdid.identify.identifier.Identifier` (file parsing excluded).

Builds an identifier around a freshly initialised network (timings do not depend on the
weights) with the library size and grid of a profile, then times in one process:

* batched ranking of ``--n`` patterns already on the grid (patterns/s; target ≥ 500 on 2 cores),
* the same with the not-in-library check (search-match of every pattern against the library),
* one pattern on a warm model (ms; target < 50 ms),
* the reference: the same ``--n`` patterns ranked one at a time (the naive loop), so the
  batched/one-at-a-time ratio is measured on this machine in this run,
* reading and preprocessing real files (patterns/s), when ``--files`` names a folder.

Usage::

    python benchmarks/predict.py [--model xrdnet] [--n-points 2125] [--classes 236] [--n 2000]
                                 [--threads 2] [--files ../shared/data/rruff236/patterns]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from xrdid.config import Grid
from xrdid.identify.identifier import Identifier, expand_inputs
from xrdid.learn.calibration import NoveltyRule
from xrdid.learn.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xrdnet")
    parser.add_argument("--n-points", type=int, default=2125, help="grid points (RRUFF-236 profile: 2125)")
    parser.add_argument("--two-theta", type=float, nargs=2, default=(5.0, 89.96))
    parser.add_argument("--classes", type=int, default=236, help="library entries")
    parser.add_argument("--n", type=int, default=2000, help="patterns in the batched run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--files", default=None, help="folder of measured files to time reading too")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.n_points, args.classes).eval()
    library = [{"id": f"entry{i}", "formula": "X"} for i in range(args.classes)]
    grid = Grid(args.two_theta[0], args.two_theta[1], args.n_points)
    ident = Identifier(model, library, grid, {"wavelength": "CuKa", "default_wavelength": "CuKa", "denoise": None})
    checked = Identifier(model, library, grid, ident.preprocessing, novelty=NoveltyRule().to_dict(),
                         _profiles=np.random.default_rng(1).random((args.classes, args.n_points), dtype=np.float32))
    X = np.random.default_rng(0).random((args.n, args.n_points), dtype=np.float32)

    ident.rank(X[:64])  # warm-up: allocations, kernels
    start = time.perf_counter()
    ident.rank(X)
    batched = args.n / (time.perf_counter() - start)

    start = time.perf_counter()
    checked.identify(X)
    with_check = args.n / (time.perf_counter() - start)

    single = []
    for row in X[:200]:
        start = time.perf_counter()
        ident.rank(row[None])
        single.append(time.perf_counter() - start)
    one_at_a_time = 1.0 / statistics.mean(single)
    print(f"{args.model}: {args.n_points} points, {args.classes} classes, {args.threads} threads")
    print(f"  batched           {batched:9.0f} patterns/s   (target ≥ 500)")
    print(f"  batched + not-in-library check {with_check:9.0f} patterns/s")
    print(f"  one pattern, warm {1000 * statistics.median(single):9.2f} ms median, "
          f"{1000 * np.percentile(single, 95):.2f} ms p95   (target < 50 ms)")
    print(f"  reference: one at a time {one_at_a_time:9.0f} patterns/s  → batched / reference = "
          f"{batched / one_at_a_time:.1f}×")
    if args.files:
        files = expand_inputs([args.files])
        start = time.perf_counter()
        ok = sum(1 for f in files if _readable(ident, f))
        seconds = time.perf_counter() - start
        print(f"  reading + preprocessing {ok}/{len(files)} files: {len(files) / seconds:.0f} files/s")


def _readable(ident: Identifier, path: Path) -> bool:
    try:
        ident.prepare(path)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
