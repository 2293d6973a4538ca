"""Time xrdid.data.synthetic against a straightforward implementation of the published procedure.

Renders the full 500-class benchmark (25,000 train + 5,000 val + 4,500 test spectra of 5,000
points) twice in one process: with :func:`xrdid.data.synthetic.generate` and with a per-spectrum loop
(scalar random draws, ``scan[pos] = heights``, ``gaussian_filter1d(mode="constant")``, float64
arrays, max-normalisation) as in the authors' ``spectra_from_config.py`` + training script. Prints
both times, the ratio, the peak memory of ours and checks that the deterministic test splits agree.

Usage::

    .venv/bin/python benchmarks/synthetic.py [--config PATH] [--repeat 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from xrdid.data.synthetic import SPLITS, SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDID_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CONFIG = SHARED_DATA / "schuetzke2022" / "dataset500.json"


def reference(cfg: SyntheticConfig, seed: int = 2022) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The published procedure, one spectrum at a time (special cases of dataset500 hard-coded)."""
    rng = np.random.default_rng(seed)
    n = cfg.n_points
    n_train, n_val, n_test = 50, 10, 9
    k = cfg.n_classes
    out = {
        "train": (np.zeros((n_train * k, n)), np.zeros(n_train * k)),
        "val": (np.zeros((n_val * k, n)), np.zeros(n_val * k)),
        "test": (np.zeros((n_test * k, n)), np.zeros(n_test * k)),
    }

    def vary(pos: np.ndarray, hts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new_pos = np.clip(np.array([rng.integers(p - 50, p + 50) for p in pos]), 0, n - 1)
        new_h = np.clip(np.array([rng.uniform(h - 0.05, h + 0.05) for h in hts]), 0, 2)
        return new_pos, new_h

    for c in range(k):
        pos, hts = np.array(cfg.positions[c]), np.array(cfg.heights[c])
        for split, count in (("train", n_train), ("val", n_val)):
            X, y = out[split]
            for j in range(count):
                scan = np.zeros(n)
                p, h = vary(pos, hts)
                scan[p] = h
                X[c * count + j] = gaussian_filter1d(scan, rng.uniform(2, 5), mode="constant")
            y[c * count : (c + 1) * count] = c
        shift = 17 if c in (8, 318) else 30
        dh = 0.025 if c in (164, 281, 219, 347) else 0.04
        left, right = np.clip(pos - shift, 0, n - 1), np.clip(pos + shift, 0, n - 1)
        up = np.clip(np.where(hts == 1.0, hts, hts + dh), 0, 2)
        down = np.clip(np.where(hts == 1.0, hts, hts - dh), 0, 2)
        scan = np.zeros((n_test, n))
        layout = [(pos, hts), (left, hts), (right, hts), (pos, up), (left, up), (right, up)]
        layout += [(pos, down), (left, down), (right, down)]
        for row, (p, h) in enumerate(layout):
            scan[row, p] = h
        X, y = out["test"]
        for j in range(n_test):
            X[c * n_test + j] = gaussian_filter1d(scan[j], 2, mode="constant")
        y[c * n_test : (c + 1) * n_test] = c
    for X, _ in out.values():
        X /= X.max(axis=1, keepdims=True)  # the published training script normalises on load
    return out


def ours(cfg: SyntheticConfig, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: generate(cfg, split, seed) for split in SPLITS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours (best is reported)")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference loop")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"config {args.config} not found (set XRDID_SHARED_DATA or pass --config)", file=sys.stderr)
        return 2
    cfg = SyntheticConfig.from_json(args.config)
    total = cfg.n_classes * (50 + 10 + 9)
    print(f"config {args.config.name}: {cfg.n_classes} classes × {cfg.n_points} points, {total} spectra, "
          f"{os.cpu_count()} CPUs")

    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        data = ours(cfg)
        times.append(time.perf_counter() - t0)
        del data
    t_ours = min(times)
    print(f"xrdid.data.synthetic.generate: {t_ours:.2f} s best of {len(times)} ({', '.join(f'{t:.2f}' for t in times)})")

    tracemalloc.start()
    data = ours(cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out_bytes = sum(X.nbytes + y.nbytes for X, y in data.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak traced memory {peak / 2**20:.0f} MiB (output arrays {out_bytes / 2**20:.0f} MiB); "
          f"process max RSS so far {rss:.0f} MiB")

    if args.no_reference:
        return 0
    t0 = time.perf_counter()
    ref = reference(cfg)
    t_ref = time.perf_counter() - t0
    print(f"reference per-spectrum loop: {t_ref:.2f} s")
    print(f"speed-up: {t_ref / t_ours:.1f}× (best run), {t_ref / times[0]:.1f}× (first, cold run)")
    diff = np.abs(ref["test"][0] - data["test"][0]).max()
    print(f"test split (deterministic) max |ours − reference| = {diff:.2e}")
    for split in ("train", "val"):
        a, b = ref[split][0], data[split][0]
        print(f"{split}: mean spectrum max |Δ| = {np.abs(a.mean(0) - b.mean(0)).max():.2e} (different random draws)")
    return 0 if diff < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
