"""Top-1..5 of the default pipeline and of each profile, one table each: ``python scripts/metrics_table.py``.

``dvc metrics show`` flattens every metrics.json into one column per key (per set, per method,
per source of the measured patterns): a few lines thousands of characters wide. This reads
``metrics.json`` and each ``pipelines/<name>/metrics.json`` and prints, per folder, a row per
method of each scored set (``validation``, ``measured``, ``measured_material``) and a column per k.
A folder whose metrics.json is absent gets one line saying what to run. ``--absent FILE`` prints
only those lines for the folders lacking ``FILE`` (``make plots``: which plots will be missing).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOP_K = (1, 2, 3, 4, 5)
# The scored sets of xrdid.stages.evaluate, the measured ones (the real test) first.
SETS = ("measured", "measured_material", "validation")


def folders(root: Path = ROOT) -> list[tuple[str, Path]]:
    """The default pipeline (``root``) and each profile (``pipelines/<name>/dvc.yaml``), labelled."""
    found = [("default pipeline", root)]
    found += [(p.parent.relative_to(root).as_posix(), p.parent) for p in sorted(root.glob("pipelines/*/dvc.yaml"))]
    return found


def how_to_run(folder: Path, root: Path = ROOT) -> str:
    """What produces ``folder``'s outputs: its make target where the Makefile has one, else dvc repro there."""
    if folder == root:
        return "run `make run` (dvc repro in the repository root)"
    where = folder.relative_to(root).as_posix()
    repro = f"`cd {where} && dvc repro`"
    makefile = root / "Makefile"
    if makefile.is_file() and re.search(rf"^{re.escape(folder.name)}:", makefile.read_text(), re.MULTILINE):
        return f"run `make {folder.name}` (or {repro})"
    return f"run {repro}"


def format_table(metrics: dict[str, Any]) -> str:
    """Aligned rows ``set, method, n, top1..top5`` of a metrics.json's scored sets.

    Examples
    --------
    >>> print(format_table({"validation": {"cnn": {"top1": 0.5, "top2": 0.75, "top3": 1.0,
    ...                                            "top4": 1.0, "top5": 1.0, "n": 4}}}))
    set         method  n   top1   top2   top3   top4   top5
    validation  cnn     4  0.500  0.750  1.000  1.000  1.000
    """
    header = ["set", "method", "n", *(f"top{k}" for k in TOP_K)]
    rows = []
    for dataset in SETS:
        for i, (method, table) in enumerate((metrics.get(dataset) or {}).items()):
            rows.append([dataset if i == 0 else "", method, str(table.get("n", "")),
                         *(f"{table[f'top{k}']:.3f}" for k in TOP_K)])
    if not rows:
        return "(no Top-k tables in this metrics.json)"
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    text = 2  # set and method align left, the numbers right

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j < text else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def report(root: Path = ROOT) -> str:
    """A titled table per folder of :func:`folders`; one line for a folder without metrics.json."""
    parts = []
    for label, folder in folders(root):
        path = folder / "metrics.json"
        shown = path.relative_to(root).as_posix()
        if not path.is_file():
            parts.append(f"{label}: no {shown} yet; {how_to_run(folder, root)}")
            continue
        metrics = json.loads(path.read_text())
        sizes = [f"{metrics[key]} {name}" for key, name in (("n_library", "library entries"),
                                                           ("n_materials", "materials")) if key in metrics]
        parts.append(f"{label}: {shown}" + (f" ({', '.join(sizes)})" if sizes else "") + "\n"
                     + format_table(metrics))
    return "\n\n".join(parts)


def absent(relative: str, root: Path = ROOT) -> list[str]:
    """A line per folder of :func:`folders` lacking ``relative`` (a path inside the folder)."""
    return [f"{label}: no {(folder / relative).relative_to(root).as_posix()} yet, so its plots are missing; "
            f"{how_to_run(folder, root)}"
            for label, folder in folders(root) if not (folder / relative).exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--absent", metavar="FILE",
                        help="only list the folders without FILE (relative to each folder), e.g. plots/topk.csv")
    args = parser.parse_args(argv)
    if args.absent:
        for line in absent(args.absent):
            print(line)
    else:
        print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
