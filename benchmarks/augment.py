"""Augmentation speed and memory: xrdid.augment against a per-spectrum reference loop.

The inputs are synthetic but MOF-like (no ../shared or data/ needed): ``--entries`` random
triclinic-ish cells with axes of 8–30 Å, every reflection of the 2θ grid ±1° with log-normal
intensities (strongest 100), and a bank of smooth background + noise rows. Measured in one run:

1. the reference: a plain per-spectrum loop (same variations, ``profiles.render`` with a
   pseudo-Voigt of the combined width, ``argpartition`` for the main points, a full permutation of
   a bank row), on ``--reference`` spectra;
2. ``Augmenter.sample`` (the training-time API) in batches of ``--batch``;
3. ``write_augmented`` of ``--spectra`` spectra to a temporary folder in a child process, which
   reports its own peak RSS (``ru_maxrss``) so the numbers above do not count.

Rates are medians over ``--repeats`` runs (the machine may be shared). Usage::

    python benchmarks/augment.py [--entries 500] [--spectra 200000] [--points 4501] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xrdid.config import Grid
from xrdid.data.augment import Augmenter, write_augmented
from xrdid.data.library import Library
from xrdid.data.patterns import PatternSet
from xrdid.xrd.profiles import caglioti_fwhm, render

LAMBDA = 1.54184


def synthetic_inputs(n_entries: int, grid: Grid, seed: int = 0) -> tuple[PatternSet, np.ndarray, Library]:
    """A MOF-like PatternSet, noise bank and Library (lattices only), all in memory."""
    rng = np.random.default_rng(seed)
    lo, hi = max(grid.start - 1, 0.5), grid.stop + 1
    s_lo, s_hi = (np.sin(np.radians(t / 2)) * 2 / LAMBDA for t in (lo, hi))
    lattices, rows = [], []
    for _ in range(n_entries):
        lengths = rng.uniform(8, 30, 3)
        lattice = np.diag(lengths) + np.triu(rng.uniform(-0.15, 0.15, (3, 3)) * lengths[:, None], 1)
        recip = np.linalg.inv(lattice).T
        bound = np.floor(s_hi * np.linalg.norm(lattice, axis=1)).astype(int)
        h, k, l = np.meshgrid(*(np.arange(-b, b + 1) for b in bound), indexing="ij")
        hkl = np.column_stack([h.ravel(), k.ravel(), l.ravel()])
        hkl = hkl[(hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & ((hkl[:, 1] > 0) | ((hkl[:, 1] == 0) & (hkl[:, 2] > 0))))]
        g = np.linalg.norm(hkl @ recip, axis=1)
        keep = (g >= s_lo) & (g <= s_hi)
        hkl, g = hkl[keep], g[keep]
        intensity = rng.lognormal(0, 1.5, len(g)) * np.exp(-2 * g)  # weaker at high angle
        intensity = 100 * intensity / intensity.max()
        order = np.argsort(g)
        lattices.append(lattice)
        rows.append((np.degrees(2 * np.arcsin(LAMBDA * g[order] / 2)), intensity[order], hkl[order], 1 / g[order]))
    offsets = np.r_[0, np.cumsum([len(r[0]) for r in rows])].astype(np.int64)
    ids = [f"syn{i:05d}" for i in range(n_entries)]
    meta = {"ids": ids, "grid": grid.to_dict(), "wavelength": "CuKa", "wavelength_angstrom": LAMBDA,
            "reflection_wavelength_angstrom": LAMBDA, "doublet": False, "profile": "pseudo-voigt", "eta": 0.5,
            "caglioti": {"U": 0.0, "V": 0.0, "W": 0.01}}
    patterns = PatternSet(
        ids=ids, grid=grid, profiles=np.zeros((n_entries, grid.n_points), np.float32), offsets=offsets,
        two_theta=np.concatenate([r[0] for r in rows]).astype(np.float32),
        intensity=np.concatenate([r[1] for r in rows]).astype(np.float32),
        hkl=np.concatenate([r[2] for r in rows]).astype(np.int16),
        multiplicity=np.full(offsets[-1], 2, np.int32),
        d_spacing=np.concatenate([r[3] for r in rows]).astype(np.float32), meta=meta)
    x = np.linspace(0, 1, grid.n_points)
    level = rng.uniform(0.01, 0.15, (64, 1))
    air = rng.uniform(0, 0.3, (64, 1)) * np.exp(-x / 0.05)  # low-angle air scatter
    smooth = level * (1 + rng.uniform(-0.5, 0.5, (64, 1)) * (x - 0.5)) + air
    noise = np.maximum(smooth + rng.normal(0, 1, smooth.shape) * np.sqrt(smooth / 3000), 0).astype(np.float32)
    library = Library(Path("."), None, ids, np.array(lattices), np.zeros(n_entries + 1, np.int64),
                      np.zeros(0, np.int16), np.zeros((0, 3)), np.zeros(0))
    return patterns, noise, library


def reference(patterns: PatternSet, noise: np.ndarray, lattices: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator, p: dict) -> np.ndarray:
    """The plain way: one spectrum at a time, windowed pseudo-Voigts with ``profiles.render``."""
    grid, n = patterns.grid, patterns.grid.n_points
    out = np.empty((len(labels), n), np.float32)
    for row, label in enumerate(labels):
        sl = slice(patterns.offsets[label], patterns.offsets[label + 1])
        strongest = np.argsort(-patterns.intensity[sl])[: p["max_peaks"]]
        hkl = patterns.hkl[sl][strongest].astype(float)
        height = patterns.intensity[sl][strongest].astype(float)
        lo, hi = np.array(p["strain"]).T
        recip = np.linalg.inv(lattices[label] * (1 + rng.uniform(lo, hi))[:, None]).T
        g = hkl @ recip
        sin = LAMBDA * np.linalg.norm(g, axis=1) / 2
        height *= rng.lognormal(0, p["intensity_sigma"], len(height))
        if rng.random() < p["texture_probability"]:
            axis = rng.normal(size=3)
            cos2 = (g @ axis) ** 2 / (np.linalg.norm(g, axis=1) ** 2 * (axis @ axis))
            r = np.exp(rng.uniform(*np.log(p["texture_r"])))
            height *= (r**2 * cos2 + (1 - cos2) / r) ** -1.5
        if rng.random() < p["kalpha2_probability"]:
            sin = np.r_[sin * 1.54056 / LAMBDA, sin * 1.54439 / LAMBDA]
            height = np.r_[height, 0.5 * height]
        ok = sin < 1
        two_theta = np.degrees(2 * np.arcsin(sin[ok])) + rng.uniform(*p["zero_shift"])
        size = 10 * np.exp(rng.uniform(*np.log(p["crystallite_size"])))
        fwhm = np.hypot(caglioti_fwhm(two_theta), np.degrees(0.9 * LAMBDA / (size * np.cos(np.radians(two_theta / 2)))))
        profile = render(two_theta, height[ok], grid, fwhm, "pseudo-voigt", 0.5)
        profile /= profile.max()
        profile[np.argpartition(profile, n - p["main_points"])[: n - p["main_points"]]] = 0
        spectrum = profile + noise[rng.integers(len(noise))][rng.permutation(n)] * rng.uniform(*p["noise_scale"])
        out[row] = spectrum / spectrum.max()
    return out


def _timed(run, repeats: int) -> tuple[float, float]:
    """Median wall and process CPU seconds (all threads) of ``run()`` over ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def _write_child(args: argparse.Namespace) -> None:
    """Child process: build the inputs, write the dataset, print rate, CPU time and own peak RSS as JSON."""
    grid = Grid(5.0, 50.0, args.points)
    patterns, noise, library = synthetic_inputs(args.entries, grid)
    ratio = -(-args.spectra // args.entries)
    import torch

    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        start, start_cpu = time.perf_counter(), time.process_time()
        meta = write_augmented(patterns, noise, library, tmp, {"ratio": ratio, "workers": args.workers}, progress=False)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.npy"))
    count = meta["counts"]["train"] + meta["counts"]["val"]
    print(json.dumps({"count": count, "seconds": elapsed, "cpu_seconds": cpu, "bytes": size,
                      "rss_inputs_mb": rss_inputs,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=500, help="synthetic library entries (default 500)")
    parser.add_argument("--spectra", type=int, default=200_000, help="spectra written by write_augmented")
    parser.add_argument("--points", type=int, default=4501, help="grid points on 5–50° (default 4501)")
    parser.add_argument("--reference", type=int, default=300, help="spectra drawn by the reference loop")
    parser.add_argument("--batch", type=int, default=256, help="batch size of Augmenter.sample")
    parser.add_argument("--samples", type=int, default=20_480, help="spectra drawn by Augmenter.sample per repeat")
    parser.add_argument("--workers", type=int, default=2, help="threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_child:
        _write_child(args)
        return

    grid = Grid(5.0, 50.0, args.points)
    patterns, noise, library = synthetic_inputs(args.entries, grid)
    aug = Augmenter.from_params(patterns, noise, library, {"workers": args.workers})
    counts = np.diff(patterns.offsets)
    print(f"{args.entries} synthetic MOF-like entries, reflections per entry median {int(np.median(counts))} "
          f"(max_peaks {aug.settings['max_peaks']}), grid {grid.n_points} points, {args.workers} workers, "
          f"FFT length {aug._n_fft}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("rates: spectra per wall second (median of repeats) and per CPU second (all threads; the rate "
          "one idle core would give)")

    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.entries, args.reference)
    wall, cpu = _timed(lambda: reference(patterns, noise, library.lattice, labels, rng, aug.settings), args.repeats)
    ref_wall, ref_cpu = args.reference / wall, args.reference / cpu
    print(f"reference loop (profiles.render)      {ref_wall:9.0f} /s wall {ref_cpu:9.0f} /s CPU")

    def draw_batches() -> None:
        for _ in range(args.samples // args.batch):
            aug.sample(rng, args.batch)

    wall, cpu = _timed(draw_batches, args.repeats)
    count = args.samples // args.batch * args.batch
    print(f"Augmenter.sample (batch {args.batch})          {count / wall:9.0f} /s wall {count / cpu:9.0f} /s CPU   "
          f"{count / wall / ref_wall:5.1f}x the reference (wall), {count / cpu / ref_cpu:5.1f}x (CPU)")

    results = []
    for _ in range(args.repeats):
        child = subprocess.run([sys.executable, __file__, "--write-child", "--entries", str(args.entries),
                                "--spectra", str(args.spectra), "--points", str(args.points),
                                "--workers", str(args.workers)], capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    count = results[0]["count"]
    walls = [count / r["seconds"] for r in results]
    cpus = [count / r["cpu_seconds"] for r in results]
    wall_rate, cpu_rate = float(np.median(walls)), float(np.median(cpus))
    print(f"write_augmented ({count} spectra, {results[0]['bytes'] / 1e9:.2f} GB, {args.workers} threads) "
          f"{wall_rate:9.0f} /s wall {cpu_rate:9.0f} /s CPU   {wall_rate / ref_wall:5.1f}x the reference (wall), "
          f"{cpu_rate / ref_cpu:5.1f}x (CPU); runs {', '.join(f'{r:.0f}' for r in walls)} /s wall")
    print(f"  {args.workers} idle cores at the measured CPU cost: ~{args.workers * cpu_rate:.0f} /s "
          f"(the threads hold the GIL only between numpy calls)")
    print(f"peak RSS of the writing process        {max(r['peak_rss_mb'] for r in results):9.0f} MB "
          f"(inputs and imports alone {results[0]['rss_inputs_mb']:.0f} MB); load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
