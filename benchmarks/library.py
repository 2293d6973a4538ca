"""Library stage speed: CIFs read by gemmi against pymatgen's CifParser, the whole stage each time.

Builds the same library twice in this run, once per ``library.parser``, with the same workers,
and prints both wall times and their ratio; then simulates the gemmi-built library on the default
grid. ``--n all`` takes every CoRE MOF 2019-ASR CIF (12,020; the pymatgen pass then takes ~10 min
on 2 cores, skip it with ``--only gemmi``); ``--folder`` takes a folder of CIFs instead. Usage::

    python benchmarks/library.py [--n 500] [--seed 0] [--workers 2] [--folder DIR] [--only gemmi]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from xrdid.config import load_params
from xrdid.data.library import build_library
from xrdid.data.patterns import simulate_library
from xrdid.xrd.diffraction import SimulationSettings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="500", help="CoRE MOF CIFs: a number (seeded sample) or 'all' (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folder", type=Path, help="a folder of CIFs instead of CoRE MOF")
    parser.add_argument("--only", choices=["gemmi", "pymatgen"], help="time one parser only (no ratio)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    if args.folder:
        source = {"source": "folder", "folder": str(args.folder), "select": "all"}
    else:
        source = {"source": "core-mof", "dataset": "2019-ASR",
                  "select": "all" if args.n == "all" else int(args.n), "seed": args.seed}
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.only] if args.only else ["gemmi", "pymatgen"]:
            start = time.perf_counter()
            library = build_library({**source, "workers": args.workers, "parser": name}, Path(tmp) / name)
            times[name] = time.perf_counter() - start
            print(f"library, parser {name}: {len(library)} entries in {times[name]:.1f} s")
        first = args.only or "gemmi"
        params = load_params(ROOT / "params.yaml")
        settings = SimulationSettings.from_params(params)
        start = time.perf_counter()
        simulate_library(Path(tmp) / first, Path(tmp) / "patterns", settings, workers=args.workers)
        simulate = time.perf_counter() - start
    print(f"simulate ({params['grid']['n_points']}-point grid): {simulate:.1f} s; "
          f"library + simulate with {first}: {times[first] + simulate:.1f} s ({args.workers} workers)")
    if len(times) == 2:
        print(f"ratio pymatgen / gemmi (library stage): {times['pymatgen'] / times['gemmi']:.1f}×")


if __name__ == "__main__":
    main()
