"""``xrdid pattern``, ``read`` and ``denoise``: one CIF or one measured pattern on the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdid.config import DEFAULT_PARAMS, Grid, load_params
from xrdid.errors import InputError
from xrdid.xrd.crystal import Crystal
from xrdid.xrd.denoise import DEFAULT_CUTOFF, DEFAULT_THRESHOLD, fft_denoise
from xrdid.xrd.diffraction import reflections
from xrdid.xrd.measured import Pattern, wavelength_angstrom

if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_read(parser: argparse.ArgumentParser) -> None:
    """``xrdid read``: a measured pattern as JSON or a summary."""
    parser.add_argument("file", help="the pattern file")
    parser.add_argument("--wavelength", help="Å or a name (CuKa, CoKa1): used when the file records none")
    parser.add_argument("--json", action="store_true", help="print the pattern as JSON")
    parser.add_argument(
        "--grid", action="store_true", help="resample onto the params grid (2θ converted to grid.wavelength)"
    )
    parser.add_argument("--params", default="params.yaml", help="parameter file for --grid (default params.yaml)")
    parser.set_defaults(func=_read)


def _read(args: argparse.Namespace) -> int:
    pattern = Pattern.read(args.file, wavelength=args.wavelength)
    covered = None
    if args.grid:
        grid_params = load_params(args.params, "grid")
        grid = Grid.from_params(grid_params)
        try:
            target = wavelength_angstrom(grid_params.get("wavelength", "CuKa"))
        except ValueError as exc:
            raise InputError(args.params, f"grid.wavelength: {exc}") from exc
        values, covered = pattern.to_grid(grid, target)
        pattern = replace(pattern, two_theta=grid.values, intensity=values, wavelength=target, wavelength_from="grid")
    if args.json:
        out: dict[str, Any] = {
            "file": str(args.file),
            "two_theta": pattern.two_theta.tolist(),
            "intensity": pattern.intensity.tolist(),
            "wavelength": pattern.wavelength,
        }
        if covered is not None:
            out["covered"] = covered.tolist()
        print(json.dumps(out))
        return 0
    x, y = pattern.two_theta, pattern.intensity
    wavelength = "unknown" if pattern.wavelength is None else f"{pattern.wavelength:.5f} Å ({pattern.wavelength_from})"
    line = (
        f"{args.file}: {x.size} points, 2θ {x[0]:.3f}–{x[-1]:.3f}° (step {np.median(np.diff(x)):.4f}°), "
        f"intensity {y.min():.4g}–{y.max():.4g}, wavelength {wavelength}"
    )
    if covered is not None:
        line += f", grid coverage {covered.mean():.1%}"
    print(line)
    return 0


def add_denoise(parser: argparse.ArgumentParser) -> None:
    """``xrdid denoise``: the FFT rule of Wang et al. 2020 on one measured pattern."""
    parser.description = ("Low-pass a measured pattern by FFT when the mean magnitude of its components past "
                          "--cutoff exceeds --threshold. Defaults from params.yaml (denoise) when present.")
    parser.add_argument("file", help="the pattern file")
    parser.add_argument("--cutoff", type=int, help="rfft components kept (published 200)")
    parser.add_argument("--threshold", type=float, help="noise level above which it is denoised")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--relative", dest="relative", action="store_true", default=None,
                      help="threshold is the noise σ as a fraction of the maximum (scale-free)")
    mode.add_argument("--absolute", dest="relative", action="store_false",
                      help="threshold is the published mean |rfft| past the cutoff (raw units × √N)")
    parser.add_argument("--no-detrend", dest="detrend", action="store_false", default=None,
                        help="FFT the pattern as is (the published rule)")
    parser.add_argument("--wavelength", help="Å or a name, reported when the file records none")
    parser.add_argument("--out", help="write the result as two columns (.xy)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="parameter file (default params.yaml)")
    parser.set_defaults(func=_denoise)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """CLI options over params.yaml's ``denoise`` over the published defaults."""
    settings: dict[str, Any] = {"cutoff": DEFAULT_CUTOFF, "threshold": DEFAULT_THRESHOLD, "relative": False,
                                "detrend": True}
    if Path(args.params).is_file() or args.params != str(DEFAULT_PARAMS):
        denoise = load_params(args.params).get("denoise") or {}
        settings.update({k: v for k, v in denoise.items() if k in settings})
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return settings


def _denoise(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pattern = Pattern.read(args.file, wavelength=args.wavelength)
    try:
        result = fft_denoise(pattern.intensity, int(settings["cutoff"]), float(settings["threshold"]),
                             relative=bool(settings["relative"]), detrend=bool(settings["detrend"]))
    except ValueError as exc:
        raise InputError(args.file, str(exc)) from exc
    if args.out:
        np.savetxt(args.out, np.column_stack([pattern.two_theta, result.values]), fmt="%.6f")
    summary = {"file": str(args.file), "denoised": result.denoised, "noise_level": result.level, **settings,
               "points": int(pattern.two_theta.size)}
    if args.json:
        print(json.dumps({**summary, "two_theta": pattern.two_theta.tolist(), "intensity": result.values.tolist(),
                          "wavelength": pattern.wavelength}))
        return 0
    verdict = "denoised" if result.denoised else "left as is"
    kind = "relative" if settings["relative"] else "absolute"
    print(f"{args.file}: {verdict}: noise level {result.level:.4g} vs threshold {settings['threshold']:g} "
          f"({kind}, cutoff {settings['cutoff']}, {pattern.two_theta.size} points)"
          + (f"; written to {args.out}" if args.out else ""))
    return 0


def _pattern(args: argparse.Namespace) -> int:

    try:
        wavelength = wavelength_angstrom(args.wavelength)
    except ValueError as exc:
        raise InputError(None, str(exc)) from exc
    if not 0 <= args.two_theta_min < args.two_theta_max <= 180:
        raise InputError(None, f"invalid 2θ range {args.two_theta_min}–{args.two_theta_max}")
    crystal = Crystal.from_cif(args.cif)
    try:
        refl = reflections(crystal, wavelength, (args.two_theta_min, args.two_theta_max), {"*": args.b_iso})
    except ValueError as exc:
        raise InputError(args.cif, str(exc)) from exc
    records = refl.to_records()
    if args.json:
        print(json.dumps(records))
    else:
        print(f"{crystal.id}: {len(records)} reflections, λ = {wavelength} Å")
        print(f"{'2θ':>10} {'I':>8}  {'hkl':<14} {'mult':>4} {'d (Å)':>9}")
        for r in records:
            print(f"{r['two_theta']:10.4f} {r['intensity']:8.2f}  {str(tuple(r['hkl'])):<14} "
                  f"{r['multiplicity']:4d} {r['d_spacing']:9.4f}")
    return 0


def add_pattern(parser: argparse.ArgumentParser) -> None:
    """``xrdid pattern``: the reflections of one CIF (the contract other tools rely on)."""
    parser.add_argument("cif", help="CIF file")
    parser.add_argument("--wavelength", default="CuKa", help="Å or a name such as CuKa, CuKa1, MoKa (default CuKa)")
    parser.add_argument("--min", dest="two_theta_min", type=float, default=5.0, help="lowest 2θ in degrees (default 5)")
    parser.add_argument("--max", dest="two_theta_max", type=float, default=90.0, help="highest 2θ in degrees (default 90)")
    parser.add_argument("--b-iso", type=float, default=0.0, help="isotropic Debye–Waller B in Å² for every element")
    parser.add_argument("--json", action="store_true", help="print the reflections as JSON")
    parser.set_defaults(func=_pattern)
