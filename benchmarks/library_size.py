"""Top-1..5 on the 118 RRUFF-236 measured patterns against library size.

The library is the 236 RRUFF-236 CIFs plus ``N`` distractors: CoRE MOF 2019-ASR structures drawn
with a seed (the paper grew its library from 189 to 1012 entries and kept 96.7 % Top-5). For each
size the RRUFF profile's pipeline (``pipelines/rruff236/params.yaml``, overridable below) runs
library → simulate → augment → train → evaluate through the CLI; the noise bank is built once.
Each size is trained once per seed; prints the mean ± std table, writes ``library_size.csv`` (one
row per size, method and seed) and ``library_size.png`` in ``--out``.

Usage::

    python benchmarks/library_size.py --distractors 0 300 1000 [--epochs 20] [--ratio 40] [--seeds 0-1]
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

import numpy as np
import yaml

from xrdid.cli import main as xrdid
from xrdid.learn.train import parse_seeds

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRDID_SHARED_DATA", REPO.parent / "shared" / "data"))
METHODS = ("cnn", "search_match", "cnn_search_match")


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
    parser.add_argument("--seeds", default="0", help="training seeds, e.g. 0-1 (mean ± std over them)")
    parser.add_argument("--distractor-seed", type=int, default=0, help="seed of the CoRE MOF draw")
    parser.add_argument("--out", default="/tmp/library-size")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "pipelines" / "rruff236" / "params.yaml").read_text())
    params["extends"] = str(REPO / "params.yaml")  # absolute: the overlay is rewritten under --out
    rruff = SHARED_DATA / "rruff236"
    params["augment"]["ratio"] = args.ratio
    params["train"]["epochs"] = args.epochs
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
                                     "select": max(args.distractors), "seed": args.distractor_seed}}
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
        data = {name: str(run / name) for name in ("library", "patterns", "augmented")}
        _run("library", "--params", str(params_path), "--out", data["library"])
        _run("simulate", "--params", str(params_path), "--library", data["library"], "--out", data["patterns"])
        _run("augment", "--params", str(params_path), "--patterns", data["patterns"], "--noise",
             str(out / "noise_bank"), "--library", data["library"], "--out", data["augmented"])
        for seed in parse_seeds(args.seeds):
            start = time.perf_counter()
            _run("train", "--params", str(params_path), "--augmented", data["augmented"], "--out", str(run / "models"),
                 "--seeds", str(seed), "--patterns", data["patterns"], "--noise", str(out / "noise_bank"),
                 "--library", data["library"])
            result = run / f"seed-{seed}"
            _run("evaluate", "--params", str(params_path), "--model", str(run / "models" / f"seed-{seed}" / "model.safetensors"),
                 "--patterns", data["patterns"], "--augmented", data["augmented"], "--library", data["library"],
                 "--metrics", str(result / "metrics.json"), "--plots", str(result / "plots"))
            metrics = json.loads((result / "metrics.json").read_text())
            for method in METHODS:
                table = metrics["measured"][method]
                rows.append({"library": metrics["n_library"], "method": method, "seed": seed,
                             "seconds": round(time.perf_counter() - start),
                             **{f"top{k}": round(table[f"top{k}"], 4) for k in range(1, 6)}})
                print(f"{rows[-1]['library']:6d} seed {seed} {method:18s} "
                      + " ".join(f"{rows[-1][f'top{k}']:.3f}" for k in range(1, 6)), flush=True)

    with open(out / "library_size.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = _summarize(rows)
    print("entries method              Top-1 (mean ± std)  Top-5 (mean ± std)  seeds")
    for r in summary:
        print(f"{r['library']:7d} {r['method']:18s}  {r['top1']:.3f} ± {r['top1_std']:.3f}      "
              f"{r['top5']:.3f} ± {r['top5_std']:.3f}       {r['seeds']}")
    _plot(summary, out / "library_size.png")
    print(f"wrote {out / 'library_size.csv'} and {out / 'library_size.png'}")


def _summarize(rows: list[dict]) -> list[dict]:
    """Mean and population std over seeds of each (library size, method)."""
    summary = []
    for size in sorted({r["library"] for r in rows}):
        for method in METHODS:
            sel = [r for r in rows if r["library"] == size and r["method"] == method]
            entry = {"library": size, "method": method, "seeds": len(sel)}
            for k in (1, 5):
                values = np.array([r[f"top{k}"] for r in sel])
                entry.update({f"top{k}": float(values.mean()), f"top{k}_std": float(values.std())})
            summary.append(entry)
    return summary


def _plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style, color in zip(METHODS, ("o-", "s--", "^-."), ("C0", "C1", "C2")):
        sel = [r for r in summary if r["method"] == method]
        sizes = [r["library"] for r in sel]
        for k, alpha in ((1, 1.0), (5, 0.4)):
            ax.errorbar(sizes, [r[f"top{k}"] for r in sel], yerr=[r[f"top{k}_std"] for r in sel], fmt=style,
                        color=color, alpha=alpha, capsize=3, label=f"{method} Top-{k}")
    ax.set(xlabel="library entries (236 RRUFF-236 + CoRE MOF distractors)",
           ylabel="accuracy on 118 measured (mean ± std over seeds)", ylim=(0.5, 1.0),
           title="Accuracy against library size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
