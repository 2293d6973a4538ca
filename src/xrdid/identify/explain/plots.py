"""The explanation plot: a measured pattern coloured by its Grad-CAM over its best candidates' profiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.identify.names import format_probability

if TYPE_CHECKING:
    from xrdid.config.grid import Grid
    from xrdid.data.patterns import PatternSet

__all__ = ["format_hkl", "make_candidate", "plot_explanation"]


def format_hkl(hkl: Sequence[int]) -> str:
    """Miller indices as matplotlib mathtext, negatives with an overbar: ``$1\\bar{1}0$``.

    Examples
    --------
    >>> format_hkl([1, -1, 0]), format_hkl([10, 0, -2])
    ('$1\\\\bar{1}0$', '$10\\\\,0\\\\,\\\\bar{2}$')
    """
    parts = [rf"\bar{{{-int(h)}}}" if h < 0 else str(int(h)) for h in hkl]
    sep = r"\," if any(abs(int(h)) >= 10 for h in hkl) else ""
    return "$" + sep.join(parts) + "$"


def make_candidate(patterns: PatternSet, index: int, probability: float, formula: str = "") -> dict[str, Any]:
    """The candidate dict of :func:`plot_explanation` for library entry ``index`` of ``patterns``.

    Examples
    --------
    A one-entry pattern set built in memory (``PatternSet.load`` reads the ``simulate`` stage's):

    >>> from xrdid.config.grid import Grid
    >>> from xrdid.data.patterns import PatternSet
    >>> patterns = PatternSet(ids=["Ag_225"], grid=Grid(30.0, 80.0, 501), profiles=np.zeros((1, 501), np.float32),
    ...                       offsets=np.array([0, 2]), two_theta=np.array([38.1, 44.3]),
    ...                       intensity=np.array([100.0, 47.0]), hkl=np.array([[1, 1, 1], [2, 0, 0]]),
    ...                       multiplicity=np.array([8, 6]), d_spacing=np.array([2.36, 2.04]), meta={})
    >>> c = make_candidate(patterns, 0, 0.93, "Ag")
    >>> sorted(c)
    ['formula', 'hkl', 'id', 'intensity', 'peaks', 'probability', 'profile']
    >>> c["hkl"]
    ['$111$', '$200$']
    """
    sl = slice(int(patterns.offsets[index]), int(patterns.offsets[index + 1]))
    return {
        "id": patterns.ids[index],
        "formula": formula,
        "probability": float(probability),
        "profile": np.asarray(patterns.profiles[index], dtype=np.float32),
        "peaks": np.asarray(patterns.two_theta[sl], dtype=float),
        "intensity": np.asarray(patterns.intensity[sl], dtype=float),
        "hkl": [format_hkl(h) for h in patterns.hkl[sl]],
    }


def _p_text(p: float) -> str:
    """``= 0.420``, ``> 0.99``: the legend's probability, never a false ``1.000``."""
    text = format_probability(p)
    return text if text[0] in "<>" else f"= {text}"


def _label_positions(peaks: np.ndarray, strength: np.ndarray, n_label: int, min_gap: float) -> np.ndarray:
    """Indices of the strongest peaks to label, skipping one closer than ``min_gap`` to a stronger one."""
    chosen: list[int] = []
    for i in np.argsort(-strength, kind="stable"):
        if len(chosen) == n_label:
            break
        if all(abs(peaks[i] - peaks[j]) >= min_gap for j in chosen):
            chosen.append(int(i))
    return np.array(chosen, dtype=int)


def plot_explanation(
    grid: Grid,
    pattern: np.ndarray,
    covered: np.ndarray | None,
    cam: np.ndarray,
    candidates: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "",
    n_label: int = 8,
    wavelength: str | None = None,
) -> None:
    """The measured pattern coloured by its Grad-CAM, over its best candidates' simulated patterns; PNG.

    Top: the measured pattern (covered points only; unmeasured ranges shaded) with the area
    under it and a strip below it, labelled "peaks that drove the answer", coloured by the
    Grad-CAM (dark red = what drove the top candidate's score). Below, offset, one trace per
    candidate, best first: its simulated profile, its reflections as ticks under the trace and
    the hkl of its strongest ``n_label`` peaks, tagged with its rank; the legend above gives id,
    formula and probability. The y axis is the normalised intensity; the x axis names the
    wavelength when ``wavelength`` is given.

    Parameters
    ----------
    grid : the model grid.
    pattern, covered : the measured row on the grid (n_points) and its covered mask (or None).
    cam : (n_points,) Grad-CAM in [0, 1] (:func:`grad_cam`), usually for the top candidate.
    candidates : best first; dicts with ``id``, ``formula``, ``probability``, ``profile``
        (n_points) and optionally ``name`` (shown instead of ``id``), ``peaks`` (2θ of the
        reflections), ``hkl`` (one label per peak, e.g. from :func:`format_hkl`) and ``intensity``
        (picks the strongest; else the profile's height at each peak). :func:`make_candidate`
        builds them.
    path : PNG file to write.
    title : figure title (e.g. the file name).
    n_label : hkl labels per candidate.
    wavelength : the X-ray wavelength the 2θ axis is at, for its label (e.g. ``"CuKa (1.5418 Å)"``
        from :func:`~xrdid.identify.names.wavelength_label`); None: no wavelength in the label.

    Examples
    --------
    In use, ``candidates`` come from :func:`make_candidate` for a model's top classes and ``cam``
    from ``grad_cam(model, X[:1])[0]``; here both are made up:

    >>> import os, tempfile
    >>> from xrdid.config.grid import Grid
    >>> grid = Grid(30.0, 80.0, 501)
    >>> peak = lambda at: np.exp(-0.5 * ((grid.values - at) / 0.2) ** 2)
    >>> measured = peak(38.1) + 0.5 * peak(44.3)
    >>> covered = grid.values < 75
    >>> cands = [{"id": "Ag_225", "formula": "Ag", "probability": 0.93, "profile": peak(38.1) + 0.47 * peak(44.3),
    ...           "peaks": [38.1, 44.3], "hkl": [format_hkl((1, 1, 1)), format_hkl((2, 0, 0))]},
    ...          {"id": "Au_225", "formula": "Au", "probability": 0.05, "profile": peak(38.2) + 0.52 * peak(44.4)}]
    >>> out = os.path.join(tempfile.mkdtemp(), "scan.png")
    >>> plot_explanation(grid, measured, covered, measured / measured.max(), cands, out, "scan.xy",
    ...                  wavelength="CuKa (1.5418 Å)")
    >>> open(out, "rb").read(4)
    b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    x = grid.values
    y = np.asarray(pattern, dtype=float)
    covered = np.ones(y.shape, bool) if covered is None else np.asarray(covered, bool)
    cam = np.clip(np.asarray(cam, dtype=float), 0, 1)
    if y.shape != x.shape or covered.shape != x.shape or cam.shape != x.shape:
        raise ValueError(f"pattern, covered and cam need {x.size} points each")
    if covered.any():
        low = y[covered].min()
        span = y[covered].max() - low
        y = (y - low) / (span if span > 0 else 1.0)
    k = len(candidates)
    gap, height = 1.35, 0.85  # offset between traces (room for the hkl labels); profile height
    cmap = LinearSegmentedColormap.from_list("cam", ["#f4f4f4", "#fdd49e", "#fc8d59", "#d7301f", "#7f0000"])
    colors = plt.get_cmap("tab10").colors

    labels = [f"#{i}  {c.get('name') or c['id']}" + (f"  ({c['formula']})" if c.get("formula") else "")
              + f"   p {_p_text(c['probability'])}" for i, c in enumerate(candidates, start=1)]
    ncols = 2 if max(map(len, labels), default=0) < 60 else 1
    rows = -(-(k + 1) // ncols)
    header, body = 0.45 + 0.2 * rows, 1.9 + 1.2 * k  # inches: title + legend + colour bar; the traces
    fig = plt.figure(figsize=(11, header + body), layout="constrained")
    grid_spec = fig.add_gridspec(2, 1, height_ratios=[header, body])
    head, ax = fig.add_subplot(grid_spec[0]), fig.add_subplot(grid_spec[1])
    head.axis("off")
    span = x[-1] - x[0]
    boxed = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5}
    # area under the measured curve coloured by the CAM: an image clipped to the filled area
    fill = ax.fill_between(x, 0, np.where(covered, y, 0), color="none", lw=0)
    image = ax.imshow(cam[None], extent=(x[0], x[-1], 0, 1), aspect="auto", cmap=cmap, vmin=0, vmax=1,
                      interpolation="bilinear", origin="lower", zorder=1)
    if fill.get_paths():
        image.set_clip_path(fill.get_paths()[0], transform=ax.transData)
    ax.imshow(cam[None], extent=(x[0], x[-1], -0.16, -0.05), aspect="auto", cmap=cmap, vmin=0, vmax=1,
              interpolation="bilinear", zorder=1)
    handles = ax.plot(x, np.where(covered, y, np.nan), color="k", lw=0.8, zorder=3, label="measured")
    # the strip's meaning in words, under its left end (a chemist need not know "class activation map")
    ax.text(x[0] + 0.003 * span, -0.19, "▲ peaks that drove the answer (darker: more)", ha="left", va="top",
            fontsize=7, color="0.3", zorder=5, bbox=boxed)
    # shade what the scan did not measure
    edges = np.flatnonzero(np.diff(np.r_[0, (~covered).astype(int), 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        ax.axvspan(x[a] - grid.step / 2, x[b - 1] + grid.step / 2, color="0.85", alpha=0.6, lw=0, zorder=0)
        ax.text((x[a] + x[b - 1]) / 2, 0.5, "not measured", ha="center", va="center", fontsize=7, color="0.45")

    min_gap = 0.012 * span
    for i, cand in enumerate(candidates, start=1):
        base = -0.3 - gap * i
        color = colors[(i - 1) % len(colors)]
        profile = np.asarray(cand["profile"], dtype=float)
        top = profile.max()
        profile = profile / top if top > 0 else profile
        handles += ax.plot(x, base + height * profile, color=color, lw=0.9, zorder=3, label=labels[i - 1])
        ax.text(x[0] + 0.003 * span, base + 0.04, f"#{i}", ha="left", va="bottom", fontsize=8, color=color,
                fontweight="bold", zorder=5, bbox=boxed)  # rank tag on the trace itself
        peaks = np.asarray(cand.get("peaks", ()), dtype=float)
        inside = (peaks >= x[0]) & (peaks <= x[-1])
        if not inside.any():
            continue
        pk = peaks[inside]
        ax.vlines(pk, base - 0.12, base - 0.02, color=color, lw=0.7, zorder=3)
        hkl = cand.get("hkl")
        if hkl is None or len(hkl) != len(peaks) or n_label <= 0:
            continue
        hkl_text = np.asarray(hkl, dtype=object)[inside]
        at = np.interp(pk, x, profile)
        strength = np.asarray(cand["intensity"], dtype=float)[inside] if "intensity" in cand else at
        for j in _label_positions(pk, strength, n_label, min_gap):
            ax.text(pk[j], base + height * at[j] + 0.03, hkl_text[j], rotation=90, ha="center", va="bottom",
                    fontsize=7, color=color, zorder=4, clip_on=True)
    ax.set(xlim=(x[0], x[-1]), ylim=(-0.3 - gap * k - 0.2, 1.1), yticks=[],
           xlabel=f"2θ (°) at {wavelength}" if wavelength else "2θ (°)",
           ylabel="intensity (normalised)")
    head.text(0, 1, title, ha="left", va="top", fontsize=10, transform=head.transAxes)
    head.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, -0.05), ncols=ncols, fontsize=8,
                frameon=False, handlelength=1.6, columnspacing=2.5, borderaxespad=0)
    ax.spines[["left", "right", "top"]].set_visible(False)
    ax.tick_params(axis="x", which="both", top=False)
    ax.minorticks_on()
    ax.tick_params(axis="y", which="both", left=False)
    cax = head.inset_axes((0.84, 0.1, 0.16, 0.16 * 1.2 / header))
    bar = fig.colorbar(image, cax=cax, orientation="horizontal", ticks=[0, 1])
    bar.ax.set_xticklabels(["low", "high"], fontsize=7)
    bar.ax.set_title("peaks that drove the answer (#1)", fontsize=7.5, pad=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mixture(
    grid: Grid,
    signal: np.ndarray,
    covered: np.ndarray | None,
    phases: Sequence[Mapping[str, Any]],
    profiles: np.ndarray,
    path: str | Path,
    title: str = "",
    wavelength: str | None = None,
) -> None:
    """The measured pattern with each found phase's fitted profile stacked under it, and the residual; PNG.

    Top: the background-subtracted measured pattern (black) over the phases' fitted profiles,
    stacked as coloured areas (largest weight fraction at the bottom), so that where black rises
    above colour the fit leaves signal unexplained. Bottom: the residual (measured − sum of the
    phases), on the same scale. The legend gives each phase's formula, id, weight fraction and
    confidence (:meth:`xrdid.identify.mixture.MixtureSearch.fit` with ``profiles=True`` gives
    ``signal``, ``phases`` and ``profiles``).

    Examples
    --------
    >>> import os, tempfile
    >>> from xrdid.config.grid import Grid
    >>> grid = Grid(20.0, 60.0, 401)
    >>> peak = lambda at: np.exp(-0.5 * ((grid.values - at) / 0.2) ** 2)
    >>> parts = np.stack([peak(30) + 0.4 * peak(45), 0.6 * peak(38)])
    >>> phases = [{"id": "mp-1", "formula": "ZrO2", "weight_fraction": 0.6, "confidence": 0.95},
    ...           {"id": "mp-2", "formula": "SnO2", "weight_fraction": 0.4, "confidence": 0.8}]
    >>> out = os.path.join(tempfile.mkdtemp(), "mix.png")
    >>> plot_mixture(grid, parts.sum(0) + 0.3 * peak(52), None, phases, parts, out, "scan.xrdml")
    >>> open(out, "rb").read(4)
    b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = grid.values
    y = np.asarray(signal, dtype=float)
    covered = np.ones(y.shape, bool) if covered is None else np.asarray(covered, bool)
    profiles = np.asarray(profiles, dtype=float).reshape(len(phases), -1)
    if y.shape != x.shape or profiles.shape[1] != x.size:
        raise ValueError(f"signal and profiles need {x.size} points each")
    top = y[covered].max() if covered.any() and y[covered].max() > 0 else 1.0
    y, profiles = y / top, profiles / top
    model = profiles.sum(axis=0)
    fig, (ax, low) = plt.subplots(2, 1, figsize=(11, 5.6), sharex=True, height_ratios=[3, 1], layout="constrained")
    colors = plt.get_cmap("tab10").colors
    labels = [f"{p['formula']} ({p['id']})  {p['weight_fraction']:.0%} by weight, confidence "
              f"{p['confidence']:.2f}" for p in phases]
    if len(phases):
        ax.stackplot(x, np.where(covered, profiles, 0), colors=colors[:len(phases)], alpha=0.55, labels=labels, lw=0)
    ax.plot(x, np.where(covered, y, np.nan), color="k", lw=0.7, label="measured (background removed)")
    ax.set_ylabel("intensity (normalised)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    residual = np.where(covered, y - model, np.nan)
    share = float(np.clip(y - model, 0, None)[covered].sum() / max(y[covered].sum(), 1e-12))
    low.plot(x, residual, color="0.3", lw=0.7)
    low.axhline(0, color="0.6", lw=0.5)
    low.set_ylabel("residual")
    low.text(0.995, 0.95, f"{share:.0%} of the signal unexplained", transform=low.transAxes, ha="right", va="top",
             fontsize=8, color="0.3")
    low.set_xlabel(f"2θ (°) at {wavelength}" if wavelength else "2θ (°)")
    low.set_xlim(x[0], x[-1])
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
