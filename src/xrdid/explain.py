"""Why the network named a material: Grad-CAM, feature maps, explanation plots and HTML reports.

* :func:`grad_cam`: which 2θ regions drove the score of a class (gradient-weighted class
  activation maps: HiResCAM by default, Grad-CAM on request; Wang et al. 2020 showed CAMs),
  for any model of :data:`xrdid.models.MODELS`;
* :func:`features`: the penultimate activations (the CNN's embedding of a pattern);
* :func:`plot_explanation`: a measured pattern coloured by its Grad-CAM over the simulated
  profiles of its best candidates, with their reflections and hkl labels;
* :func:`html_report`: one self-contained HTML file for a batch of predictions;
* :func:`nca_plot` and ``xrdid explain nca``: a 2-D neighbourhood-components map of the
  measured test patterns in the CNN's feature space (Wang et al.'s NCA figure).

Examples
--------
>>> from xrdid.models import build_model
>>> model = build_model("wang", 256, 3, conv_layers=2)
>>> grad_cam(model, np.random.default_rng(0).random((2, 256))).shape
(2, 256)
>>> features(model, np.random.default_rng(0).random((2, 256))).shape
(2, 84)
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrdid.errors import InputError

if TYPE_CHECKING:
    import argparse

    import torch
    from torch import nn

    from xrdid.config import Grid
    from xrdid.diffraction import PatternSet

log = logging.getLogger(__name__)

__all__ = [
    "cam_layer",
    "features",
    "format_hkl",
    "grad_cam",
    "html_report",
    "make_candidate",
    "nca_plot",
    "plot_explanation",
]


# --------------------------------------------------------------------------- Grad-CAM and features


def cam_layer(model: nn.Module) -> nn.Module:
    """The module whose output :func:`grad_cam` explains: the model's last convolutional stage.

    In order of precedence:

    1. ``model.cam_layer`` (a module, or the name of a submodule) when the model defines one;
    2. the last child of ``model.features`` (an ``nn.Sequential``) that contains an
       ``nn.Conv1d``, extended over the pointwise layers right after it (activation, norm):
       the rectified maps of the last conv layer, and for composite blocks the block's output
       (a ResNet block after its shortcut sum, an Inception block's concatenated branches,
       rather than whichever branch conv happens to come last in ``model.modules()``);
    3. otherwise the last ``nn.Conv1d`` in ``model.modules()``.

    Examples
    --------
    >>> from xrdid.models import build_model
    >>> cam_layer(build_model("wang", 256, 3, conv_layers=2))
    ReLU()
    >>> type(cam_layer(build_model("inc3", 256, 3))).__name__
    '_Inception'
    """
    from torch import nn

    pointwise = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.BatchNorm1d, nn.GroupNorm, nn.Identity, nn.Dropout)
    own = getattr(model, "cam_layer", None)
    if isinstance(own, nn.Module):
        return own
    if isinstance(own, str):
        return model.get_submodule(own)
    stack = getattr(model, "features", None)
    if isinstance(stack, nn.Sequential):
        children = list(stack)
        convs = [i for i, m in enumerate(children) if any(isinstance(s, nn.Conv1d) for s in m.modules())]
        if convs:
            j = convs[-1]
            while j + 1 < len(children) and isinstance(children[j + 1], pointwise):
                j += 1
            return children[j]
    last = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no Conv1d layer to explain")
    return last[-1]


def _rows(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    from xrdid.train import normalize_rows

    t = X.detach().float() if isinstance(X, torch.Tensor) else torch.from_numpy(np.array(X, dtype=np.float32, ndmin=2))
    if t.dim() != 2:
        raise ValueError(f"need spectra (n, n_points), got shape {tuple(t.shape)}")
    return normalize_rows(t)


def grad_cam(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    target: int | Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    method: str = "hirescam",
) -> np.ndarray:
    """Class activation map of each spectrum for a class: ``(n, n_points)`` in [0, 1], 1 = most important.

    With ``A (C, L)`` the feature maps of :func:`cam_layer` and ``G = ∂y/∂A`` the gradient of
    the target class's logit ``y``:

    ``"hirescam"`` (default; Draelos & Carin 2020)
        ``ReLU(Σ_c G_cl A_cl)``: each position weighted by its own gradient.
    ``"gradcam"`` (Selvaraju et al. 2017)
        ``ReLU(Σ_c mean_l(G_cl) A_cl)``: one weight per channel.

    Every model here ends in a *position-specific* dense head (flatten, or xrdnet's position
    bins), not a global average pool, and Grad-CAM's average over positions throws away just
    the position information that head uses: on a three-class toy problem (one shared peak,
    one peak per class) Grad-CAM maps of a trained ``wang`` model were all zero and those of
    ``xrdnet`` peaked at the class's own peak in 63 % of the spectra, against 100 % for both
    with HiResCAM, which is exact for such heads (the map sums to the logit's linear part).

    The map is rectified, linearly interpolated to the input length (the layers' 'same'
    padding keeps positions centred) and divided by each row's maximum (a row with no positive
    evidence stays 0). Runs in eval mode (dropout off, batch-norm statistics frozen), batched;
    parameter gradients are not touched.

    Parameters
    ----------
    model : an :class:`xrdid.models.XRDModel` (or any module with a Conv1d layer); for an
        :class:`~xrdid.models.Ensemble` the mean of its members' maps for the ensemble's class.
    X : raw spectra (n, n_points); each row is divided by its maximum as in training.
    target : class index for all rows, one per row, or None for each row's predicted class.
    batch_size : spectra per forward/backward pass.
    method : ``"hirescam"`` or ``"gradcam"``.

    Examples
    --------
    >>> from xrdid.models import build_model
    >>> cam = grad_cam(build_model("xrdnet", 512, 4), np.random.default_rng(1).random((3, 512)), target=2)
    >>> cam.shape, bool(cam.min() >= 0 and cam.max() <= 1)
    ((3, 512), True)
    """
    import torch
    import torch.nn.functional as F

    if method not in ("gradcam", "hirescam"):
        raise ValueError(f"method must be 'gradcam' or 'hirescam', got {method!r}")
    rows = _rows(X)
    n, n_points = rows.shape
    if target is None:
        targets = None
    else:
        targets = torch.as_tensor(np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy())
        n_classes = getattr(model, "n_classes", None)
        if len(targets) and (targets.min() < 0 or (n_classes is not None and targets.max() >= n_classes)):
            raise ValueError(f"target class out of range 0..{n_classes}")
    members = getattr(model, "members", None)
    if isinstance(members, torch.nn.ModuleList):  # an ensemble: its members' maps for its class, averaged
        if targets is None:
            was_training = model.training
            with torch.inference_mode():
                targets = model.eval()(rows.to(next(model.parameters()).device)).argmax(1).cpu()
            model.train(was_training)
        mean = np.mean([grad_cam(m, rows, targets.numpy(), batch_size, method) for m in members], axis=0)
        top = mean.max(axis=1, keepdims=True)
        return (mean / np.where(top > 0, top, 1.0)).astype(np.float32)
    layer = cam_layer(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((n, n_points), np.float32)
    try:
        with torch.enable_grad():
            for start in range(0, n, batch_size):
                captured.clear()
                xb = rows[start : start + batch_size].to(device).requires_grad_(True)  # a graph even if frozen
                logits = model(xb)
                maps = captured[-1]
                if maps.dim() != 3:
                    raise ValueError(f"the CAM layer gives {tuple(maps.shape)}, not (batch, channels, length)")
                t = logits.argmax(1) if targets is None else targets[start : start + batch_size].to(device)
                score = logits.gather(1, t[:, None]).sum()  # rows are independent: one backward for the batch
                (grads,) = torch.autograd.grad(score, maps)
                weights = grads.mean(dim=2, keepdim=True) if method == "gradcam" else grads
                cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=n_points, mode="linear", align_corners=False)[:, 0]
                top = cam.amax(dim=1, keepdim=True)
                out[start : start + len(xb)] = (cam / torch.where(top > 0, top, 1.0)).detach().cpu().numpy()
    finally:
        handle.remove()
        model.train(was_training)
    return out


def features(model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Penultimate activations ``(n, d)``: the input of the model's last ``nn.Linear`` (eval mode).

    Examples
    --------
    >>> from xrdid.models import build_model
    >>> features(build_model("xrdnet", 512, 4), np.ones((3, 512))).shape
    (3, 256)
    """
    import torch
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    rows = _rows(X)
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach()))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                captured.clear()
                model(rows[start : start + batch_size].to(device))
                chunks.append(captured[-1].flatten(1).float().cpu().numpy())
    finally:
        handle.remove()
        model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, linears[-1].in_features), np.float32)


# --------------------------------------------------------------------------- explanation plot


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
    >>> c = make_candidate(patterns, 17, 0.93, "Al2ZnO4")  # doctest: +SKIP
    >>> sorted(c)  # doctest: +SKIP
    ['formula', 'hkl', 'id', 'intensity', 'peaks', 'probability', 'profile']
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
) -> None:
    """The measured pattern coloured by its Grad-CAM, over its best candidates' simulated patterns; PNG.

    Top: the measured pattern (covered points only; unmeasured ranges shaded) with the area
    under it and a strip below it coloured by the Grad-CAM (dark red = what drove the top
    candidate's score). Below, offset, one trace per candidate, best first: its simulated
    profile, its reflections as ticks under the trace and the hkl of its strongest ``n_label``
    peaks, tagged with its rank; the legend above gives id, formula and probability.

    Parameters
    ----------
    grid : the model grid.
    pattern, covered : the measured row on the grid (n_points) and its covered mask (or None).
    cam : (n_points,) Grad-CAM in [0, 1] (:func:`grad_cam`), usually for the top candidate.
    candidates : best first; dicts with ``id``, ``formula``, ``probability``, ``profile``
        (n_points) and optionally ``peaks`` (2θ of the reflections), ``hkl`` (one label per
        peak, e.g. from :func:`format_hkl`) and ``intensity`` (picks the strongest; else the
        profile's height at each peak). :func:`make_candidate` builds them.
    path : PNG file to write.
    title : figure title (e.g. the file name).
    n_label : hkl labels per candidate.

    Examples
    --------
    >>> cands = [make_candidate(patterns, j, probs[0, j], formula[j]) for j in order[0, :3]]  # doctest: +SKIP
    >>> cam = grad_cam(model, X[:1])[0]  # doctest: +SKIP
    >>> plot_explanation(grid, X[0], covered[0], cam, cands, "scan.png", "scan.xy")  # doctest: +SKIP
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

    labels = [f"#{i}  {c['id']}" + (f"  ({c['formula']})" if c.get("formula") else "")
              + f"   p = {float(c['probability']):.3f}" for i, c in enumerate(candidates, start=1)]
    ncols = 2 if max(map(len, labels), default=0) < 60 else 1
    rows = -(-(k + 1) // ncols)
    header, body = 0.45 + 0.2 * rows, 1.9 + 1.2 * k  # inches: title + legend + colour bar; the traces
    fig = plt.figure(figsize=(11, header + body), layout="constrained")
    grid_spec = fig.add_gridspec(2, 1, height_ratios=[header, body])
    head, ax = fig.add_subplot(grid_spec[0]), fig.add_subplot(grid_spec[1])
    head.axis("off")
    span = x[-1] - x[0]
    boxed = dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5)
    # area under the measured curve coloured by the CAM: an image clipped to the filled area
    fill = ax.fill_between(x, 0, np.where(covered, y, 0), color="none", lw=0)
    image = ax.imshow(cam[None], extent=(x[0], x[-1], 0, 1), aspect="auto", cmap=cmap, vmin=0, vmax=1,
                      interpolation="bilinear", origin="lower", zorder=1)
    if fill.get_paths():
        image.set_clip_path(fill.get_paths()[0], transform=ax.transData)
    ax.imshow(cam[None], extent=(x[0], x[-1], -0.16, -0.05), aspect="auto", cmap=cmap, vmin=0, vmax=1,
              interpolation="bilinear", zorder=1)
    handles = ax.plot(x, np.where(covered, y, np.nan), color="k", lw=0.8, zorder=3, label="measured")
    ax.text(x[0] - 0.004 * span, -0.105, "CAM", ha="right", va="center", fontsize=7, color="0.3")
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
    ax.set(xlim=(x[0], x[-1]), ylim=(-0.3 - gap * k - 0.2, 1.1), yticks=[], xlabel="2θ (°)")
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
    bar.ax.set_title("class activation: what drove #1", fontsize=7.5, pad=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- HTML report

_REPORT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .8em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
section { border-top: 2px solid #888; margin-top: 2.2em; padding-top: .4em; }
.ok { color: #1a7f37; } .warn { color: #9a6700; } .fail { color: #cf222e; }
ul.warnings { background: #fff8c5; border: 1px solid #d4a72c; padding: .5em 2em; }
ul.warnings.fail { background: #ffebe9; border-color: #cf222e; }
img { max-width: 100%; }
.meta { color: #666; font-size: .85em; }
</style></head><body>
<h1>{{ title }}</h1>
{% if meta %}
<p class="meta">{% for k, v in meta.items() %}{{ k }}: {{ v }}{{ " · " if not loop.last }}{% endfor %}</p>
{% endif %}
<table>
<tr><th>#</th><th>file</th><th>best candidate</th><th>formula</th><th>probability</th><th>status</th></tr>
{% for e in entries %}
<tr><td class="num">{{ loop.index }}</td><td><a href="#entry-{{ loop.index }}">{{ e.file }}</a></td>
{% if e.error %}<td colspan="3"></td><td class="fail">failed: {{ e.error }}</td>
{% else %}{% set best = e.candidates[0] if e.candidates else {} %}
<td>{{ best.id }}</td><td>{{ best.formula }}</td>
<td class="num">{{ "%.3f"|format(best.probability) if best.probability is number }}</td>
<td class="{{ 'warn' if e.warnings else 'ok' }}">
{%- if e.warnings %}⚠ {{ e.warnings[0]|truncate(70) }}
{%- if e.warnings|length > 1 %} (+{{ e.warnings|length - 1 }} more){% endif %}
{%- else %}ok{% endif %}</td>
{% endif %}</tr>
{% endfor %}
</table>
{% for e in entries %}
<section id="entry-{{ loop.index }}">
<h2>{{ loop.index }}. {{ e.file }}</h2>
{% if e.error %}<ul class="warnings fail"><li>could not be read: {{ e.error }}</li></ul>{% endif %}
{% if e.warnings %}<ul class="warnings">{% for w in e.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% endif %}
{% if e.candidates %}
<table><tr><th>rank</th><th>id</th><th>formula</th><th>probability</th></tr>
{% for c in e.candidates %}<tr><td class="num">{{ loop.index }}</td><td>{{ c.id }}</td><td>{{ c.formula }}</td>
<td class="num">{{ "%.3f"|format(c.probability) }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if e.image %}<img src="{{ e.image }}" alt="explanation of {{ e.file }}">{% endif %}
</section>
{% endfor %}
</body></html>
"""


def _image_src(image: str | Path | bytes | None) -> str | None:
    """A data URI of a PNG (file or bytes), so the report is one self-contained file."""
    if image is None:
        return None
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def html_report(
    entries: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "xrdid identification report",
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained HTML report: a summary table, then one section per file.

    Parameters
    ----------
    entries : one mapping per file, in order:

        ``file`` (str, shown as given and HTML-escaped), ``candidates`` (best first, dicts with
        ``id``, ``formula``, ``probability``: the top-5 table), ``image`` (a PNG path or PNG
        bytes, e.g. from :func:`plot_explanation`; embedded as base64; optional), ``warnings``
        (list of str: not in the library, low coverage, ...; optional) and ``error`` (why the
        file could not be read; optional, then no candidates are needed).
    path : HTML file to write.
    title : page title.
    meta : shown under the title (e.g. model name and version, library hash).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "report.html")
    >>> _ = html_report([{"file": "a<b>.xy", "candidates": [{"id": "Ag_225", "formula": "Ag", "probability": 0.9}]},
    ...                  {"file": "bad.raw", "error": "unknown format"}], out)
    >>> text = open(out).read()
    >>> "a&lt;b&gt;.xy" in text, "<b>" in text, text.count("<section")
    (True, False, 2)
    """
    import jinja2

    rows = []
    for e in entries:
        if "file" not in e:
            raise ValueError("every report entry needs a 'file'")
        candidates = [dict(c, probability=float(c.get("probability", float("nan")))) for c in e.get("candidates") or []]
        rows.append({
            "file": str(e["file"]),
            "candidates": candidates,
            "warnings": [str(w) for w in e.get("warnings") or []],
            "error": e.get("error"),
            "image": _image_src(e.get("image")),
        })  # fmt: skip
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    html = env.from_string(_REPORT).render(title=title, entries=rows, meta=dict(meta or {}))
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- NCA map


def nca_plot(
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    path: str | Path,
    names: Mapping[Any, str] | Sequence[str] | None = None,
    seed: int = 0,
    *,
    reference: tuple[np.ndarray, Sequence[Any] | np.ndarray] | None = None,
    title: str = "",
) -> np.ndarray:
    """A 2-D neighbourhood components analysis (NCA) map of feature vectors, coloured by material; PNG.

    NCA learns a linear projection under which each point's nearest neighbours share its
    class. A point whose class has no other member cannot have such a neighbour and would only
    add noise to the fit, so the projection is fitted on the points of the classes with at
    least two members, then applied to all:

    * ``reference`` (e.g. the CNN features of validation spectra of the same materials) joins
      the fit: a measured test set often holds one pattern per material (RRUFF-304 does), and
      the reference gives each such pattern neighbours of its own material. Reference points
      are drawn small and faint, the ``features`` large;
    * points whose class still has a single member are projected only and drawn hollow.

    When fewer than two classes have two members, PCA replaces NCA (said in the title).
    Features are standardised first (fitted on the same points). Up to 20 classes get a
    legend (``names`` maps labels to display names); more are drawn without one.

    Parameters
    ----------
    features : (n, d) e.g. :func:`features` of the measured patterns.
    labels : (n,) class of each row (ints or strings).
    path : PNG file to write.
    names : display names by label (mapping, or sequence indexed by integer labels).
    seed : NCA's random state.
    reference : optional ``(features_ref (m, d), labels_ref (m,))`` fitted along.
    title : figure title.

    Returns
    -------
    np.ndarray
        (n, 2) the embedded ``features``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> F = np.r_[rng.normal(0, 1, (10, 5)), rng.normal(3, 1, (10, 5))]
    >>> import tempfile, os
    >>> nca_plot(F, [0] * 10 + [1] * 10, os.path.join(tempfile.mkdtemp(), "nca.png")).shape
    (20, 2)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NeighborhoodComponentsAnalysis
    from sklearn.preprocessing import StandardScaler

    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if F.ndim != 2 or y.shape != (len(F),):
        raise ValueError(f"need features (n, d) and labels (n,), got {F.shape} and {y.shape}")
    if len(F) < 2:
        raise ValueError("need at least two feature vectors")
    if reference is not None:
        F_ref, y_ref = np.asarray(reference[0], dtype=np.float64), np.asarray(reference[1])
        if F_ref.ndim != 2 or F_ref.shape[1] != F.shape[1] or y_ref.shape != (len(F_ref),):
            raise ValueError("reference features must be (m, d) with m labels, d as the features")
    else:
        F_ref, y_ref = np.zeros((0, F.shape[1])), y[:0]
    F_all, y_all = np.r_[F_ref, F], np.r_[y_ref, y]
    classes, counts = np.unique(y_all, return_counts=True)
    fitted = np.isin(y_all, classes[counts >= 2])
    if (counts >= 2).sum() >= 2:
        method = "NCA"
        scaler = StandardScaler().fit(F_all[fitted])
        projection = NeighborhoodComponentsAnalysis(n_components=2, random_state=seed, max_iter=100)
        projection.fit(scaler.transform(F_all[fitted]), y_all[fitted])
    else:
        method = "PCA (NCA needs two classes with two or more points)"
        scaler = StandardScaler().fit(F_all)
        projection = PCA(n_components=2, random_state=seed).fit(scaler.transform(F_all))
    Z_all = projection.transform(scaler.transform(F_all))
    R, Z = Z_all[: len(F_ref)], Z_all[len(F_ref) :]
    single = ~fitted[len(F_ref) :]

    shown = list(dict.fromkeys(y.tolist() + y_ref.tolist()))
    cmap = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    color = {c: cmap(i % cmap.N) for i, c in enumerate(shown)}

    def name(c: Any) -> str:
        if names is None:
            return str(c)
        if isinstance(names, Mapping):
            return str(names.get(c, c))
        return str(names[int(c)])

    fig, ax = plt.subplots(figsize=(8.5 if len(shown) <= 20 else 6.5, 6), layout="constrained")
    if len(R):
        ax.scatter(R[:, 0], R[:, 1], s=8, c=[color[c] for c in y_ref.tolist()], alpha=0.35, lw=0)
    big = len(R) > 0
    for c in shown:
        rows = y == c
        if not rows.any():
            continue
        filled, hollow = rows & ~single, rows & single
        ax.scatter(Z[filled, 0], Z[filled, 1], c=[color[c]], s=60 if big else 36,
                   edgecolors="k" if big else "none", lw=0.8, label=name(c))  # fmt: skip
        if hollow.any():
            ax.scatter(Z[hollow, 0], Z[hollow, 1], facecolors="none", edgecolors=[color[c]], s=60 if big else 36,
                       lw=1.5, label=name(c) if not filled.any() else "_single")  # fmt: skip
    axis = method.split(" ")[0]
    ax.set(xlabel=f"{axis} 1", ylabel=f"{axis} 2")
    note = " · large: measured, small: reference" if big else ""
    note += " · hollow: only point of its class" if single.any() else ""
    ax.set_title((title + "\n" if title else "") + f"{method}{note}", fontsize=9)
    if len(shown) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Z


# --------------------------------------------------------------------------- CLI


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="explanations of a trained model (NCA map of measured patterns)")
    sub = p.add_subparsers(dest="explain_command", metavar="WHAT", required=True)
    q = sub.add_parser("nca", help="NCA map of the measured test patterns (evaluate.measured) in CNN feature space")
    q.add_argument("--model", required=True, help="trained model (safetensors)")
    q.add_argument("--params", default="params.yaml", help="parameter file (grid, evaluate.measured)")
    q.add_argument("--patterns", default="data/patterns", help="simulated patterns (the library's order)")
    q.add_argument("--augmented", default="data/augmented",
                   help="augmented splits: their validation spectra anchor the map when the measured set has "
                        "fewer than two patterns per material")
    q.add_argument("--out", default="nca.png", help="PNG to write")
    q.add_argument("--max-classes", type=int, default=20, help="materials drawn (most patterns first; default 20)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=_cmd_nca)


def _model_ids(path: str | Path, n_classes: int, fallback: list[str]) -> list[str]:
    """Class ids stored with a trained model (``ids`` metadata), else the library order."""
    from xrdid.models import read_metadata

    meta = read_metadata(path)
    ids = json.loads(meta["ids"]) if "ids" in meta else fallback
    if len(ids) != n_classes:
        raise InputError(path, f"model has {n_classes} classes but {len(ids)} library ids")
    return list(ids)


def _cmd_nca(args: argparse.Namespace) -> int:
    from xrdid.config import load_params

    params = load_params(args.params)
    if not ((params.get("evaluate") or {}).get("measured") or {}).get("labels"):
        raise InputError(args.params, "evaluate.measured.labels names no labels file: nothing to map")
    n, k = nca_map(params, args.model, args.patterns, args.augmented, args.out, args.max_classes, args.seed,
                   progress=not args.no_progress)
    print(f"wrote {args.out} ({n} patterns, {k} materials)")
    return 0


def nca_map(
    params: Mapping[str, Any],
    model_path: str | Path,
    patterns_dir: str | Path,
    augmented_dir: str | Path,
    out: str | Path,
    max_classes: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> tuple[int, int]:
    """The NCA map of the measured test set (``evaluate.measured``) in the model's feature space.

    Draws the ``max_classes`` materials with most patterns (seeded ties) and writes ``out``;
    returns (patterns drawn, materials drawn).
    """
    from xrdid.diffraction import PatternSet
    from xrdid.evaluate import MeasuredSet, load_split
    from xrdid.models import load_model

    measured = ((params.get("evaluate") or {}).get("measured") or {})
    labels = measured.get("labels")
    if not labels or not Path(labels).is_file():
        raise InputError(labels or "evaluate.measured.labels", "no measured labels file: nothing to map")
    patterns = PatternSet.load(patterns_dir)
    try:
        model = load_model(model_path)
    except (OSError, ValueError) as exc:
        raise InputError(model_path, f"cannot load the model ({exc})") from exc
    ids = _model_ids(model_path, model.n_classes, patterns.ids)
    test = MeasuredSet.from_folder(measured.get("folder") or Path(labels).parent, labels, ids, patterns.grid,
                                   params["grid"].get("wavelength", "CuKa"), measured.get("default_wavelength", "CuKa"),
                                   progress=progress)
    test = test.subset(test.y >= 0)
    if len(test.y) < 2:
        raise InputError(labels, "fewer than two measured patterns of library materials")
    # The materials with most patterns first, ties in a seeded random order.
    classes, counts = np.unique(test.y, return_counts=True)
    tie = np.random.default_rng(seed).permutation(len(classes))
    chosen = classes[np.lexsort((tie, -counts))][: max(max_classes, 1)]
    test = test.subset(np.isin(test.y, chosen))
    F = features(model, test.X)
    reference = None
    if (np.unique(test.y, return_counts=True)[1] >= 2).sum() < 2:
        try:
            X_val, y_val = load_split(augmented_dir, "val")
        except InputError:
            log.warning("explain: no augmented validation split at %s; the map falls back to PCA", augmented_dir)
        else:
            rows = np.flatnonzero(np.isin(y_val, chosen))
            rows = np.sort(np.concatenate([rows[y_val[rows] == c][:30] for c in chosen]))
            reference = (features(model, np.asarray(X_val[rows], np.float32)), y_val[rows])
    formula = {}
    index_csv = Path(patterns_dir).parent / "library" / "index.csv"
    if index_csv.is_file():
        import pandas as pd

        index = pd.read_csv(index_csv, dtype=str, keep_default_na=False)
        formula = dict(zip(index["id"], index.get("reduced_formula", index.get("formula", index["id"]))))
    names = {}
    for c in chosen:  # the formula helps where the id does not already start with it (CSD refcodes)
        extra = formula.get(ids[c], "")
        names[int(c)] = ids[c] if not extra or ids[c].startswith(extra) else f"{ids[c]} ({extra})"
    nca_plot(F, test.y, out, names, seed, reference=reference,
             title=f"{len(test.y)} measured patterns of {len(chosen)} materials, CNN features ({model.name})")
    return len(test.y), len(chosen)
