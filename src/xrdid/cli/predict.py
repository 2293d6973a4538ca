"""``xrdid predict``, ``pull`` and ``promote``: identify measured patterns with a registered model."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xrdid.errors import InputError, printable
from xrdid.identify.explain import (
    grad_cam,
    html_report,
    make_candidate,
    plot_explanation,
)
from xrdid.identify.identifier import Identifier, check_top, expand_inputs
from xrdid.ops.registry import load_identifier, promote, pull
from xrdid.ops.tracking import configure
from xrdid.stages.options import add_progress

if TYPE_CHECKING:
    import argparse
    from typing import Any


def _promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    configure(args.tracking_uri)
    try:
        promote(args.name, args.version)
    except MlflowException as exc:
        raise InputError(f"{args.name} v{args.version}", str(exc).splitlines()[0]) from exc
    print(f"{args.name}: champion is now v{args.version}")
    return 0


def add_predict(p: argparse.ArgumentParser) -> None:
    """``xrdid predict``: the JSON-lines contract, CSV, explanations and the HTML report."""
    p.add_argument("inputs", nargs="+", metavar="FILE", help="measured pattern files or folders of them")
    p.add_argument("--model", required=True,
                   help="models:/NAME@champion, runs:/RUN/model, an MLflow model folder or a pulled folder")
    p.add_argument("--top", type=int, default=5, help="candidates per file (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line and file (the contract)")
    p.add_argument("--csv", metavar="PATH", help="also write a CSV summary (file, rank 1 id, probability, error)")
    p.add_argument("--explain", metavar="DIR",
                   help="save one PNG per file: the pattern with its class activation map over the best candidates")
    p.add_argument("--report", metavar="HTML", help="write an HTML report (top-5 table, plot, warnings per file)")
    add_progress(p)
    p.set_defaults(func=_predict)


def add_pull(p: argparse.ArgumentParser) -> None:
    """``xrdid pull``: a registered model and its library index, copied for offline use."""
    p.add_argument("--model", required=True, help="models:/NAME@champion, models:/NAME/VERSION or runs:/RUN/model")
    p.add_argument("--to", required=True, help="destination folder (new or empty)")
    p.set_defaults(func=_pull)


def _predict(args: argparse.Namespace) -> int:
    check_top(args.top, "--top")  # the served model's rule and message too
    identifier = load_identifier(args.model)
    files = expand_inputs(args.inputs)
    if not files:
        raise InputError(args.inputs[0], "no measured pattern files found")
    explain = Path(args.explain) if args.explain else (Path(args.report).with_suffix("") if args.report else None)
    if explain is not None:
        explain.mkdir(parents=True, exist_ok=True)
    failed = 0
    summary = []
    results = identifier.predict_files(files, args.top, progress=args.progress and len(files) > 1,
                                       keep_rows=explain is not None)
    for result in results:
        if "error" in result:
            failed += 1
            print(f"xrdid: error: {printable(result['file'])}: {result['error']}", file=sys.stderr)
        elif explain is not None:
            result["image"] = str(_explain(identifier, result, explain, len(summary)))
        public = {k: v for k, v in result.items() if k not in ("row", "covered")}
        if args.json:
            print(json.dumps(public), flush=True)
        elif "candidates" in result:
            best = "  ".join(f"{c['id']} ({c['formula']}) {c['probability']:.3f}" for c in result["candidates"][:3])
            flag = "" if result.get("in_library") is not False else "  [not in library?]"
            print(f"{printable(result['file'])}: {best}{flag}")
        summary.append(public)
    if args.csv:
        _write_summary(Path(args.csv), summary)
    if args.report:

        p = identifier.provenance
        meta = {"model": f"{p.get('model_name', args.model)} v{p.get('model_version', '?')}",
                "library": f"{len(identifier.library)} entries, sha256 {p.get('library_sha256', '')[:12]}",
                "temperature": f"{identifier.temperature:.2f}"}
        for entry in summary:
            if entry.get("in_library") is False:
                entry["warnings"] = ["NOT IN LIBRARY? " + "; ".join(entry["warnings"])]
        html_report(summary, args.report, meta=meta)
    return 2 if failed else 0


def _explain(identifier: Identifier, result: dict[str, Any], folder: Path, number: int) -> Path:
    """Grad-CAM of the best candidate over the pattern, with the top-3 candidates' profiles and hkl."""

    patterns = identifier.patterns()
    top = result["candidates"][:3]
    best = identifier.ids.index(top[0]["id"])
    cam = grad_cam(identifier.model, result["row"][None], target=best)[0]
    rows = patterns.rows([c["id"] for c in top])
    candidates = [make_candidate(patterns, int(r), c["probability"], c["formula"]) for r, c in zip(rows, top)]
    path = folder / f"{number:04d}_{Path(result['file']).stem}.png"
    verdict = "" if result.get("in_library") is not False else "  [not in library?]"
    plot_explanation(identifier.grid, result["row"], result["covered"], cam, candidates, path,
                     f"{Path(result['file']).name}{verdict}")
    return path


def _pull(args: argparse.Namespace) -> int:
    folder = pull(args.model, args.to)
    ident = Identifier.from_folder(folder)
    p = ident.provenance
    print(f"pulled {p.get('model_name', args.model)} v{p.get('model_version', '?')} "
          f"({len(ident.library)} library entries) to {folder}")
    return 0


def _write_summary(path: Path, results: list[dict[str, Any]]) -> None:
    """One row per file: its best candidate, or its error."""
    try:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "id", "formula", "probability", "error"])
            for r in results:
                best = (r.get("candidates") or [{}])[0]
                writer.writerow([r["file"], best.get("id", ""), best.get("formula", ""), best.get("probability", ""),
                                 r.get("error", "")])
    except OSError as exc:  # the answers are printed already; say why the CSV is missing in one line
        raise InputError(path, f"cannot write the CSV summary: {exc.strerror or exc}") from exc


def add_promote(p: argparse.ArgumentParser) -> None:
    """``xrdid promote``: move the champion alias by hand."""
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="version number")
    p.add_argument("--tracking-uri", default=None, help="tracking store (default: MLFLOW_TRACKING_URI or mlruns/)")
    p.set_defaults(func=_promote)
