"""Top-1..5 on the 152 RRUFF-304 measured patterns against library size.

The library is the 304 RRUFF-304 CIFs plus ``N`` distractors: CoRE MOF 2019-ASR structures drawn
with a seed (the paper grew its library from 189 to 1012 entries and kept 96.7 % Top-5). For each
size the RRUFF profile's pipeline (``pipelines/rruff/params.yaml``, overridable below) runs
library → simulate → augment → train → evaluate through the CLI; the noise bank is built once.
Prints a table, writes ``library_size.csv`` and ``library_size.png`` in ``--out``.

Usage::

    python benchmarks/library_size.py --distractors 0 300 1000 [--epochs 20] [--ratio 40]
                                      [--out /tmp/library-size] [--[no-]fresh]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from xrdid.cli import main as xrdid

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDID_SHARED_DATA", REPO.parent / "shared" / "data"))


def _run(*args: str) -> None:
    if xrdid([*args, "--no-progress"]) != 0:
        raise SystemExit(f"xrdid {args[0]} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", type=int, nargs="+", default=[0, 300, 1000])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ratio", type=int, default=40)
    parser.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=None,
                        help="fresh augmentations every epoch (default: the profile's train.fresh)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/library-size")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "pipelines" / "rruff" / "params.yaml").read_text())
    rruff = SHARED_DATA / "rruff304"
    params["augment"]["ratio"] = args.ratio
    params["train"].update({"epochs": args.epochs, "seed": args.seed})
    if args.fresh is not None:
        params["train"]["fresh"] = args.fresh
    params["noise"]["folder"] = str(SHARED_DATA / "noise")
    params["evaluate"]["measured"] = {"labels": str(rruff / "labels.csv"), "folder": None, "default_wavelength": "CuKa"}
    params["evaluate"]["classical"] = []  # the CNN and search-match only: the study is about scaling
    params_path = out / "params.yaml"

    def write_params(folder: Path) -> None:
        params["library"].update({"source": "folder", "folder": str(folder), "select": "all"})
        params_path.write_text(yaml.safe_dump(params))

    write_params(rruff / "cif")
    if not (out / "noise_bank").is_dir():
        _run("noise", "--params", str(params_path), "--out", str(out / "noise_bank"))
    if max(args.distractors) > 0 and not (out / "mof" / "index.csv").is_file():
        mof = {**params, "library": {**params["library"], "source": "core-mof", "dataset": "2019-ASR",
                                     "select": max(args.distractors), "seed": args.seed}}
        (out / "mof.yaml").write_text(yaml.safe_dump(mof))
        _run("library", "--params", str(out / "mof.yaml"), "--out", str(out / "mof"))
    mof_cifs = sorted((out / "mof" / "cif").glob("*.cif")) if max(args.distractors) > 0 else []

    rows = []
    for n in args.distractors:
        run = out / f"n{n}"
        cifs = run / "cif"
        if cifs.exists():
            shutil.rmtree(cifs)
        cifs.mkdir(parents=True)
        for cif in [*sorted((rruff / "cif").glob("*.cif")), *mof_cifs[:n]]:
            (cifs / cif.name).symlink_to(cif.resolve())
        write_params(cifs)
        start = time.perf_counter()
        _run("library", "--params", str(params_path), "--out", str(run / "library"))
        _run("simulate", "--params", str(params_path), "--library", str(run / "library"), "--out", str(run / "patterns"))
        _run("augment", "--params", str(params_path), "--patterns", str(run / "patterns"), "--noise",
             str(out / "noise_bank"), "--library", str(run / "library"), "--out", str(run / "augmented"))
        _run("train", "--params", str(params_path), "--augmented", str(run / "augmented"), "--out", str(run / "models"),
             "--patterns", str(run / "patterns"), "--noise", str(out / "noise_bank"), "--library", str(run / "library"))
        _run("evaluate", "--params", str(params_path), "--model", str(run / "models" / "model.safetensors"),
             "--patterns", str(run / "patterns"), "--augmented", str(run / "augmented"),
             "--library", str(run / "library"), "--metrics", str(run / "metrics.json"), "--plots", str(run / "plots"))
        metrics = json.loads((run / "metrics.json").read_text())
        for method in ("cnn", "search_match", "cnn_search_match"):
            table = metrics["measured"][method]
            rows.append({"library": metrics["n_library"], "method": method, "seconds": round(time.perf_counter() - start),
                         **{f"top{k}": round(table[f"top{k}"], 4) for k in range(1, 6)}})
        print(*(f"{r['library']:6d} {r['method']:18s} " + " ".join(f"{r[f'top{k}']:.3f}" for k in range(1, 6))
                for r in rows[-3:]), sep="\n", flush=True)

    with open(out / "library_size.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, out / "library_size.png")
    print(f"wrote {out / 'library_size.csv'} and {out / 'library_size.png'}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, style), color in zip((("cnn", "o-"), ("search_match", "s--"), ("cnn_search_match", "^-.")),
                                      ("C0", "C1", "C2")):
        sel = [r for r in rows if r["method"] == method]
        sizes = [r["library"] for r in sel]
        ax.plot(sizes, [r["top1"] for r in sel], style, color=color, label=f"{method} Top-1")
        ax.plot(sizes, [r["top5"] for r in sel], style, color=color, alpha=0.4, label=f"{method} Top-5")
    ax.set(xlabel="library entries (304 RRUFF-304 + CoRE MOF distractors)", ylabel="accuracy on 152 measured",
           ylim=(0.5, 1.0), title="Accuracy against library size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
