"""``xrdid predict``, ``pull`` and ``promote``: identify measured patterns with a registered model."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xrdid.errors import InputError, printable
from xrdid.identify.chemistry import parse_elements
from xrdid.identify.explain import (
    grad_cam,
    html_report,
    make_candidate,
    plot_explanation,
    plot_mixture,
)
from xrdid.identify.identifier import Identifier, check_top, expand_inputs
from xrdid.identify.open import load_folder
from xrdid.identify.names import (
    DisplayName,
    display_names,
    format_probability,
    wavelength_label,
)
from xrdid.ops.registry import load_identifier, promote, pull
from xrdid.ops.tracking import configure
from xrdid.stages.options import add_progress

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
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
    p.add_argument("--library", metavar="DIR",
                   help="with an open-library model: rank the library in DIR (the library, simulate and index "
                        "stages' outputs: DIR/library, DIR/patterns, DIR/index) instead of the one it carries")
    p.add_argument("--top", type=int, default=5, help="candidates per file (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line and file (the contract)")
    p.add_argument("--csv", metavar="PATH",
                   help="also write a CSV summary: one row per file (rank-1 id, name, reduced formula, probability, "
                        "in_library, the top ids joined by ';', warnings, error)")
    p.add_argument("--explain", metavar="DIR",
                   help="save one PNG per file: the pattern with its class activation map over the best candidates "
                        "(with --mixture also a second: the phases' fitted profiles stacked, and the residual)")
    p.add_argument("--report", metavar="HTML", help="write an HTML report (top-5 table, plot, warnings per file)")
    p.add_argument("--mixture", action="store_true",
                   help="also name every phase of a multi-phase sample with its weight fraction and confidence "
                        "(JSON: \"phases\", \"residual_share\"; needs the library's simulated patterns)")
    p.add_argument("--max-phases", type=int, default=4, help="with --mixture: most phases per file (default 4)")
    p.add_argument("--elements", metavar="LIST",
                   help="chemistry filter: rank only the library entries made of these elements, e.g. 'Fe,C,O,H' "
                        "(list every element the samples may hold, light ones too: EDS does not see H or Li)")
    p.add_argument("--require-elements", metavar="LIST",
                   help="chemistry filter: rank only the entries that hold every one of these elements")
    add_progress(p)
    p.set_defaults(func=_predict)


def add_pull(p: argparse.ArgumentParser) -> None:
    """``xrdid pull``: a registered model and its library index, copied for offline use."""
    p.add_argument("--model", required=True, help="models:/NAME@champion, models:/NAME/VERSION or runs:/RUN/model")
    p.add_argument("--to", required=True, help="destination folder (new or empty)")
    p.set_defaults(func=_pull)


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    check_top(args.top, "--top")  # the served model's rule and message too
    identifier = load_identifier(args.model)
    if args.library:
        from xrdid.identify.open import OpenIdentifier

        if not isinstance(identifier, OpenIdentifier):
            raise InputError(args.library, f"--library needs an open-library model (xrdid match); {args.model} is "
                                           f"a classifier of the {len(identifier.library)} entries it was trained on")
        identifier.use_library(args.library)
    entries = f"{len(identifier.library)} library entries"
    chemistry = parse_elements(args.elements), parse_elements(args.require_elements, "--require-elements")
    if any(chemistry):
        identifier.restrict(*chemistry)
        kept = len(identifier.library) if identifier.allowed is None else int(identifier.allowed.sum())
        entries = f"{kept} of {entries} pass the chemistry filter"
    mixture = _mixture(identifier, args).restrict(*chemistry) if args.mixture else None
    files = expand_inputs(args.inputs)
    if not files:
        raise InputError(args.inputs[0], "no measured pattern files found")
    explain = Path(args.explain) if args.explain else (Path(args.report).with_suffix("") if args.report else None)
    if explain is not None:
        explain.mkdir(parents=True, exist_ok=True)
    names = display_names(identifier.library)
    model, conditions = _describe(identifier, args.model)
    progress = args.progress and len(files) > 1

    def say(text: str) -> None:
        """A line for the chemist, above any progress bar; none with --json (stdout: JSON, stderr: errors)."""
        if not args.json:
            tqdm.write(text, file=sys.stdout)

    say(f"model {model} ({entries}) · {conditions}")
    failed = 0
    summary = []
    results = identifier.predict_files(files, args.top, progress=progress,
                                       keep_rows=explain is not None or mixture is not None)
    plots = None  # opened at the first plot, so that it sits below the reading bar
    for result in results:
        if "error" in result:
            failed += 1
            print(f"xrdid: error: {printable(result['file'])}: {result['error']}", file=sys.stderr)
        elif explain is not None:
            if plots is None:  # the slow part (~0.6 s a file): its own per-file bar
                plots = tqdm(total=len(files) - len(summary), desc="explain", unit="file", disable=not progress)
            result["image"] = str(_explain(identifier, result, explain, len(summary), names))
        if plots is not None:
            plots.update(1)
        if mixture is not None and "candidates" in result:
            found = mixture.fit(result["row"], result["covered"], profiles=explain is not None)[0]
            result.update(phases=found["phases"], residual_share=found["residual_share"], phases_why=found["why"])
            if explain is not None:
                path = explain / f"{len(summary):04d}_{Path(result['file']).stem}_phases.png"
                plot_mixture(identifier.grid, found["signal"], result["covered"], found["phases"], found["profiles"],
                             path, Path(result["file"]).name,
                             wavelength_label(identifier.preprocessing.get("wavelength", "CuKa")))
                result["phases_image"] = str(path)
        public = {k: v for k, v in result.items() if k not in ("row", "covered")}
        if args.json:
            print(json.dumps(public), flush=True)
        elif "candidates" in result:
            say(_answer(result, names))
        if "phases" in result:
            say(_phases_line(result))
        summary.append(public)
    if plots is not None:
        plots.close()
    if args.csv:
        _write_summary(Path(args.csv), summary, names)
        say(f"CSV written to {args.csv}")
    flagged = sum(entry.get("in_library") is False for entry in summary)
    if args.report:
        p = identifier.provenance
        meta = {"model": model, "conditions": conditions,
                "library": f"{entries}, sha256 {p.get('library_sha256', '')[:12]}",
                "temperature": f"{identifier.temperature:.2f}",
                "flagged": f"{flagged} of {len(summary)} files not in the library?"}
        html_report(summary, args.report, meta=meta, names=names)
        counts = f"{len(summary)} files, {flagged} flagged" + (f", {failed} failed" if failed else "")
        say(f"report written to {args.report} ({counts}); its plots in {explain}")
    elif args.explain:
        say(f"explanations written to {explain} ({len(summary) - failed} plots)")
    return 2 if failed else 0


def _mixture(identifier: Identifier, args: argparse.Namespace) -> Any:
    """The mixture search over the identifier's library (structures from ``--library`` when it holds them)."""
    from xrdid.identify.mixture import MixtureSearch

    library = Path(args.library) / "library" if args.library else None
    return MixtureSearch.for_identifier(identifier, args.max_phases, library)


def _phases_line(result: Mapping[str, Any]) -> str:
    """``  phases: ZrO2 41 % (0.93), SnO2 35 % (0.88) · 12 % of the signal unexplained``: weight fraction (confidence)."""
    shown = ", ".join(f"{p['formula']} {p['weight_fraction']:.0%} ({p['confidence']:.2f})" for p in result["phases"])
    return f"  phases: {shown or 'none found'} · {result['residual_share']:.0%} of the signal unexplained"


def _describe(identifier: Identifier, uri: str) -> tuple[str, str]:
    """The header's two parts: the model's name and version; the wavelength and 2θ range patterns are compared at.

    A scan is converted through d-spacing from the wavelength its file records, else from the
    default wavelength: a chemist checks both against the instrument.
    """
    p, pre, grid = identifier.provenance, identifier.preprocessing, identifier.grid
    model = f"{p['model_name']} v{p.get('model_version', '?')}" if p.get("model_name") else str(uri)
    conditions = (f"2θ {grid.start:g}–{grid.stop:g}° at {wavelength_label(pre.get('wavelength', 'CuKa'))}; "
                  f"scans that record no wavelength: {pre.get('default_wavelength', 'CuKa')}")
    return model, conditions


def _answer(result: dict[str, Any], names: Mapping[str, DisplayName]) -> str:
    """A file's terminal answer: its best three candidates, then a line with the reason of any flag or warning.

    The reason is the not-in-library rule's evidence in words (``low confidence (top probability
    0.12 < 0.45)``, ``little diffraction signal ...``), the measured peaks the top candidate does
    not explain (``strongest peaks at 26.5°, 37.4° not explained by VEHLIE's reflections``), or a
    note (overlapping atoms, low coverage).
    """
    shown = [f"{_label(c, names)} {format_probability(c['probability'])}" for c in result["candidates"][:3]]
    line = f"{printable(result['file'])}: {' | '.join(shown)}"
    warnings = [printable(w) for w in result.get("warnings") or []]
    if result.get("in_library") is False:
        why = "; ".join(warnings) or "flagged by the not-in-library rule"
        return f"{line}  [not in library?]\n  why: {why}"
    return f"{line}\n  note: {'; '.join(warnings)}" if warnings else line


def _label(candidate: Mapping[str, Any], names: Mapping[str, DisplayName]) -> str:
    shown = names.get(candidate["id"])
    return printable(shown.label() if shown else f"{candidate['id']} ({candidate.get('formula', '')})")


def _explain(identifier: Identifier, result: dict[str, Any], folder: Path, number: int,
             names: Mapping[str, DisplayName]) -> Path:
    """Grad-CAM of the best candidate over the pattern, with the top-3 candidates' profiles and hkl."""

    patterns = identifier.patterns()
    top = result["candidates"][:3]
    best = identifier.ids.index(top[0]["id"])
    if identifier.model is None:  # open library: where the measured and the strained simulated peaks coincide
        cam = identifier.contribution(result["row"], top[0]["id"], top[0].get("strain", 0.0))
    else:
        cam = grad_cam(identifier.model, result["row"][None], target=best)[0]
    rows = patterns.rows([c["id"] for c in top])
    candidates = []
    for r, c in zip(rows, top):
        shown = names.get(c["id"])
        candidate = make_candidate(patterns, int(r), c["probability"], shown.formula if shown else c["formula"])
        candidates.append(dict(candidate, name=f"{shown.name} {shown.common}".strip() if shown else c["id"]))
    path = folder / f"{number:04d}_{Path(result['file']).stem}.png"
    verdict = "" if result.get("in_library") is not False else "  [not in library?]"
    plot_explanation(identifier.grid, result["row"], result["covered"], cam, candidates, path,
                     f"{Path(result['file']).name}{verdict}",
                     wavelength=wavelength_label(identifier.preprocessing.get("wavelength", "CuKa")))
    return path


def _pull(args: argparse.Namespace) -> int:
    folder = pull(args.model, args.to)
    ident = load_folder(folder)
    p = ident.provenance
    print(f"pulled {p.get('model_name', args.model)} v{p.get('model_version', '?')} "
          f"({len(ident.library)} library entries) to {folder}")
    return 0


CSV_FIELDS = ("file", "id", "name", "formula", "probability", "in_library", "top_ids", "warnings", "error")


def _write_summary(path: Path, results: list[dict[str, Any]], names: Mapping[str, DisplayName]) -> None:
    """One row per file (columns :data:`CSV_FIELDS`, LF line ends): its best candidate, or its error.

    ``id`` is the rank-1 entry's full library id, ``name`` and ``formula`` how a chemist reads it
    (short id, reduced formula), ``probability`` the full float, ``in_library`` ``true``/``false``
    (empty without a not-in-library rule), ``top_ids`` the full ids of ranks 1..k joined by ``;``
    (one column whatever ``--top`` is) and ``warnings`` the reasons joined by ``; ``.
    """
    try:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")  # csv's default is CRLF
            writer.writerow(CSV_FIELDS)
            for r in results:
                candidates = r.get("candidates") or []
                best = candidates[0] if candidates else {}
                shown = names.get(best.get("id", ""))
                verdict = {True: "true", False: "false"}.get(r.get("in_library"), "")
                writer.writerow([r["file"], best.get("id", ""), shown.name if shown else best.get("id", ""),
                                 shown.formula if shown else best.get("formula", ""), best.get("probability", ""),
                                 verdict, ";".join(c["id"] for c in candidates), "; ".join(r.get("warnings") or []),
                                 r.get("error", "")])
    except OSError as exc:  # the answers are printed already; say why the CSV is missing in one line
        raise InputError(path, f"cannot write the CSV summary: {exc.strerror or exc}") from exc


def add_promote(p: argparse.ArgumentParser) -> None:
    """``xrdid promote``: move the champion alias by hand."""
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="version number")
    p.add_argument("--tracking-uri", default=None, help="tracking store (default: MLFLOW_TRACKING_URI or mlruns/)")
    p.set_defaults(func=_promote)
