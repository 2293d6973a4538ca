"""Reflection engine speed: xrdid against pymatgen's XRDCalculator on the same CoRE MOF structures.

Both engines run in this process, one after the other, on the same seeded sample of CoRE MOF
2019-ASR structures (parsed once beforehand, parse time reported apart), and the script prints
per-structure medians and the ratio of total times. Usage::

    python benchmarks/simulate.py [--n 200] [--seed 0] [--range 5 50]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from tqdm import tqdm

from xrdid.data.library import core_mof_ids, iter_core_mof
from xrdid.xrd.crystal import Crystal, read_cif
from xrdid.xrd.diffraction import reflections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of structures (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--range", type=float, nargs=2, default=(5.0, 50.0), metavar=("MIN", "MAX"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    ids = core_mof_ids("2019-ASR")
    chosen = set(np.random.default_rng(args.seed).choice(ids, args.n, replace=False).tolist())
    structures, parse_times = [], []
    for entry_id, data in tqdm(iter_core_mof("2019-ASR", chosen), total=args.n, desc="parse"):
        start = time.perf_counter()
        crystal, _ = read_cif(data, id=entry_id)
        parse_times.append(time.perf_counter() - start)
        if crystal is not None:
            structures.append((entry_id, crystal.to_structure()))

    rng = tuple(args.range)
    calc = XRDCalculator("CuKa")
    ref_times, our_times, worst = [], [], 0.0
    for entry_id, structure in tqdm(structures, desc="both engines"):
        crystal = Crystal.from_structure(entry_id, structure)
        start = time.perf_counter()
        ref = calc.get_pattern(structure, two_theta_range=rng)
        ref_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = reflections(crystal, "CuKa", rng)
        our_times.append(time.perf_counter() - start)
        if len(ours) == len(ref.x):
            worst = max(worst, float(np.abs(ours.intensity - np.asarray(ref.y)).max()))
        else:
            worst = float("inf")

    n_atoms = [len(s) for _, s in structures]
    print(f"{len(structures)} CoRE MOF 2019-ASR structures (seed {args.seed}), 2θ {rng[0]}–{rng[1]}°, "
          f"atoms per cell median {int(np.median(n_atoms))}, max {max(n_atoms)}")
    print(f"CIF parse (pymatgen)      median {1e3 * np.median(parse_times):7.2f} ms")
    print(f"pymatgen XRDCalculator    median {1e3 * np.median(ref_times):7.2f} ms   total {sum(ref_times):7.2f} s")
    print(f"xrdid reflections         median {1e3 * np.median(our_times):7.2f} ms   total {sum(our_times):7.2f} s")
    print(f"max |ΔI| (strongest=100)  {worst:.2e}")
    print(f"speed ratio (total)       {sum(ref_times) / sum(our_times):.1f}x")
    print(f"speed ratio (median)      {np.median(ref_times) / np.median(our_times):.1f}x")


if __name__ == "__main__":
    main()
