"""The HTML report: a compact summary table, then a section per file, its plots as PNG files beside it.

A batch of 118 files gives a page of some tens of KB that opens at once: the summary row of a
file is one line (its name, the answer, the reduced formula, the probability and a one-word
status badge) and links to the file's section, where the details are: the warnings in full, the
peak evidence, the top-5 table and the explanation plot. The plots are PNG files referenced by
relative paths (never inlined: 118 inline plots made a 15 MB page); copy the HTML together with
its folder of plots.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from xrdid.identify.names import DisplayName, format_probability

__all__ = ["STATUSES", "html_report", "render_report", "status_of"]

# badge text -> (css class, what it means: the badge's tooltip and the page's legend)
STATUSES: dict[str, tuple[str, str]] = {
    "ok": ("ok", "the strongest measured peaks are explained by the answer's reflections"),
    "note": ("note", "an answer with a note (e.g. the scan covers little of the range): read the file's section"),
    "not in library?": ("flag", "the answer does not fit well: the material may not be in the library"),
    "unchecked": ("plain", "the model carries no not-in-library rule and no peak check: an unverified ranking"),
    "error": ("fail", "the file could not be read"),
}

_REPORT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1250px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:.2em 0}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #ddd;padding:.2em .7em;text-align:left;white-space:nowrap;vertical-align:top}
th{background:#f3f3f3}
#summary td:first-child,#summary td:nth-child(5),.c td:first-child,.c td:nth-child(4),.e td:nth-child(-n+2),.e td:nth-child(4){text-align:right}
#summary td:nth-child(2){white-space:normal;overflow-wrap:anywhere;max-width:24em}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.5em 0;font-size:.9em}
dl.meta dt{color:#666}dl.meta dd{margin:0}
.b{display:inline-block;padding:0 .55em;border-radius:.8em;font-size:.85em;line-height:1.5;border:1px solid}
.b.ok{color:#1a7f37;background:#dafbe1;border-color:#4ac26b}.b.note{color:#7d4e00;background:#fff8c5;border-color:#d4a72c}
.b.flag{color:#953800;background:#fff1e5;border-color:#fb8f44}.b.fail{color:#cf222e;background:#ffebe9;border-color:#ff8182}
.b.plain{color:#555;background:#f3f3f3;border-color:#bbb}
section{border-top:2px solid #888;margin-top:1.8em;padding-top:.4em;scroll-margin-top:.5em}
section:target{background:#fffbe6;box-shadow:0 0 0 .5em #fffbe6}
ul.w{background:#fff8c5;border:1px solid #d4a72c;padding:.4em 2em;margin:.4em 0}ul.w.fail{background:#ffebe9;border-color:#cf222e}
.path,.legend,.up{color:#666;font-size:.85em}.up{float:right}
.x{color:#1a7f37}.m{color:#cf222e}
img{max-width:100%;height:auto;display:block}
</style></head><body>
<h1 id="top">{{ title }}</h1>
{{ prelude }}
{% if meta %}<dl class="meta">{% for k, v in meta.items() %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>{% endif %}
<p>{{ entries|length }} file{{ "s" if entries|length != 1 }}{% if folder %} in <span class="path">{{ folder }}</span>{% endif %}:
{% for s, n in counts %} <span class="b {{ statuses[s][0] }}">{{ s }}</span> {{ n }}{{ " ·" if not loop.last }}{% endfor %}</p>
<table id="summary">
<tr><th>#</th><th>file</th><th>answer</th><th>formula</th><th>probability</th><th>status</th></tr>
{% for e in entries %}
{% set best = e.candidates[0] if e.candidates else {} %}
<tr><td>{{ loop.index }}<td><a href="#{{ e.anchor }}">{{ e.name }}</a><td{% if best.name != best.id %} title="{{ best.id }}"{% endif %}>{{ best.name }}
{%- if best.common %} <i>{{ best.common }}</i>{% endif %}<td>{{ best.formula }}<td>{{ best.p_text }}<td><span class="b {{ statuses[e.status][0] }}">{{ e.status }}</span>
{% endfor %}
</table>
<p class="legend">{% for s, (c, why) in statuses.items() %}<span class="b {{ c }}">{{ s }}</span> {{ why }}{{ "; " if not loop.last else "." }} {% endfor %}</p>
{% for e in entries %}
<section id="{{ e.anchor }}"><a class="up" href="#summary">↑ summary</a>
<h2>{{ loop.index }}. {{ e.name }} <span class="b {{ statuses[e.status][0] }}">{{ e.status }}</span></h2>
{% if e.error %}<ul class="w fail"><li>could not be read: {{ e.error }}</ul>
{% endif %}
{% if e.warnings %}<ul class="w">{% for w in e.warnings %}<li>{{ w }}{% endfor %}</ul>
{% endif %}
{% if e.candidates %}
<table class="c"><tr><th>rank<th>library entry<th>formula<th>probability
{% for c in e.candidates %}<tr><td>{{ loop.index }}<td{% if c.name != c.id %} title="{{ c.id }}"{% endif %}>{{ c.name }}
{%- if c.common %} <i>{{ c.common }}</i>{% endif %}<td>{{ c.formula }}<td>{{ c.p_text }}
{% endfor %}</table>
{% endif %}
{% if e.evidence %}{% set ev = e.evidence %}
{% if ev.explained %}
<p>Peak check: <b class="x">the {{ ev.peaks|length }} strongest measured peaks are all explained</b> by reflections of {{ ev.name }}:
{% for p in ev.peaks %} {{ p.two_theta }}° ({{ p.hkl }}){{ "," if not loop.last else "." }}{% endfor %}</p>
{% else %}
<p>Peak check: <b class="m">not all of the {{ ev.peaks|length }} strongest measured peaks are explained</b> by reflections of {{ ev.name }}{{ ":" if ev.peaks else " (no peak found)." }}</p>
{% if ev.peaks %}<table class="e"><tr><th>measured 2θ<th>height<th>nearest reflection<th>at 2θ<th>verdict
{% for p in ev.peaks %}<tr><td>{{ p.two_theta }}°<td>{{ p.height }} %<td>{{ p.hkl }}<td>{{ p.at }}
{%- if p.explained %}<td class="x">✓ explained{% else %}<td class="m">✗ {{ p.why }}{% endif %}

{% endfor %}</table>
{% endif %}
{% endif %}
{% endif %}
{% if e.image %}<img src="{{ e.image }}"{% if e.size %} width="{{ e.size[0] }}" height="{{ e.size[1] }}"{% endif %} loading="lazy" alt="explanation plot">
{% endif %}
{% if e.phases is not none %}
<h3>Phases</h3>
{% if e.phases %}<table class="c"><tr><th>phase<th>library entry<th>weight fraction<th>confidence
{% for p in e.phases %}<tr><td>{{ p.formula }}<td>{{ p.id }}<td>{{ "%.0f"|format(100 * p.weight_fraction) }} %<td>{{ "%.2f"|format(p.confidence) }}
{% endfor %}</table>
{% else %}<p>No phase found.</p>
{% endif %}
<p>{{ "%.0f"|format(100 * e.residual_share) }} % of the signal unexplained by these phases.</p>
{% if e.phases_image %}<img src="{{ e.phases_image }}"{% if e.phases_size %} width="{{ e.phases_size[0] }}" height="{{ e.phases_size[1] }}"{% endif %} loading="lazy" alt="the phases' fitted profiles stacked under the measured pattern, and the residual">
{% endif %}
{% endif %}
</section>
{% endfor %}
</body></html>
"""


def status_of(entry: Mapping[str, Any]) -> str:
    """The one-word verdict of a report entry: a key of :data:`STATUSES`.

    Examples
    --------
    >>> status_of({"error": "unknown format"}), status_of({"in_library": False, "warnings": ["low confidence"]})
    ('error', 'not in library?')
    >>> status_of({"in_library": True}), status_of({"in_library": True, "warnings": ["covers 30%"]}), status_of({})
    ('ok', 'note', 'unchecked')
    """
    if entry.get("error"):
        return "error"
    if entry.get("in_library") is False:
        return "not in library?"
    if entry.get("warnings"):
        return "note"
    explained = (entry.get("evidence") or {}).get("explained")
    return "ok" if entry.get("in_library") is True or explained else "unchecked"


def _hkl(hkl: Sequence[int]) -> str:
    """Miller indices as text with overbars (combining U+0305) for negatives: ``31̅2``."""
    parts = ["".join(d + "\u0305" for d in str(-int(h))) if h < 0 else str(int(h)) for h in hkl]
    return (" " if any(abs(int(h)) >= 10 for h in hkl) else "").join(parts)


def _evidence(evidence: Mapping[str, Any] | None, names: Mapping[str, DisplayName]) -> dict[str, Any] | None:
    """The peak check as the report prints it: each judged peak with its reflection's hkl and 2θ."""
    if not evidence or "peaks" not in evidence:
        return None
    shown = names.get(str(evidence.get("candidate", "")))
    peaks = []
    for p in evidence["peaks"]:
        ref = p.get("reflection") or {}
        off = float(ref["two_theta"]) - float(p["two_theta"]) if "two_theta" in ref else None
        if off is None:
            why = "no reflection near"
        elif abs(off) > float(p.get("tolerance", math.inf)):
            why = f"{off:+.2f}° away (tolerance ±{float(p['tolerance']):.2f}°)"
        else:
            why = f"too weak in the simulation ({float(p.get('simulated', 0)):.0f} %)"
        peaks.append({"two_theta": f"{float(p['two_theta']):.2f}", "height": f"{float(p.get('height', 0)):.0f}",
                      "explained": bool(p.get("explained")), "hkl": _hkl(ref["hkl"]) if ref.get("hkl") else "",
                      "at": f"{float(ref['two_theta']):.2f}°" if off is not None else "", "why": why})
    return {"name": shown.name if shown else evidence.get("candidate", ""),
            "explained": bool(evidence.get("explained")), "peaks": peaks}


def _shown(candidate: Mapping[str, Any], names: Mapping[str, DisplayName]) -> dict[str, Any]:
    """A candidate with what the report prints: ``name``, ``common``, ``formula`` and ``p_text``."""
    entry = str(candidate.get("id", ""))
    shown = names.get(entry)
    probability = float(candidate.get("probability", float("nan")))
    return dict(candidate, id=entry, name=shown.name if shown else entry, common=shown.common if shown else "",
                formula=shown.formula if shown else candidate.get("formula", ""), probability=probability,
                p_text=format_probability(probability) if math.isfinite(probability) else "")


def _short_names(files: Sequence[str]) -> tuple[list[str], str]:
    """Each file relative to the folder all of them share (its bare name for one folder), and that folder.

    Names that would still collide, or paths with no common folder, are kept as given.
    """
    parents = [str(PurePath(f).parent) for f in files]
    try:
        folder = os.path.commonpath(parents) if parents else ""
    except ValueError:  # absolute and relative paths mixed
        return list(files), ""
    short = [os.path.relpath(f, folder) if folder else f for f in files]
    if len(set(short)) < len(set(files)):
        return list(files), ""
    return short, "" if folder in ("", ".") else folder


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's header: the page reserves the plot's space before it loads."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def render_report(
    entries: Sequence[Mapping[str, Any]],
    title: str = "xrdid identification report",
    meta: Mapping[str, Any] | None = None,
    names: Mapping[str, DisplayName] | None = None,
    image_src: Callable[[int, Any], str | None] | None = None,
    prelude: str = "",
) -> str:
    """The report's HTML text; :func:`html_report` writes it with its plots beside it.

    Parameters
    ----------
    entries, title, meta, names : as for :func:`html_report`.
    image_src : ``(index, image) -> src`` for each entry that has an ``image``, e.g. a relative
        file path; None leaves the plots out.
    prelude : trusted HTML put under the title as it is (``xrdid ui`` puts its upload form there).

    Examples
    --------
    >>> page = render_report([{"file": "/data/a.xy", "candidates": [{"id": "Ag_225", "formula": "Ag",
    ...                        "probability": 0.9}], "in_library": True}])
    >>> '<a href="#entry-1">a.xy</a>' in page, '<span class="b ok">ok</span>' in page
    (True, True)
    """
    import jinja2
    from markupsafe import Markup

    names = names or {}
    files = []
    for e in entries:
        if "file" not in e:
            raise ValueError("every report entry needs a 'file'")
        files.append(str(e["file"]))
    short, folder = _short_names(files)
    def picture(i: int, image: Any) -> tuple[str | None, tuple[int, int] | None]:
        """An entry's image as (src, pixel size)."""
        src = image_src(i, image) if image is not None and image_src is not None else None
        if isinstance(image, bytes):
            return src, _png_size(image[:24])
        if isinstance(image, (str, Path)) and src is not None:
            try:
                with open(image, "rb") as handle:
                    return src, _png_size(handle.read(24))
            except OSError:
                pass
        return src, None

    rows = []
    for i, (e, name) in enumerate(zip(entries, short)):
        src, size = picture(i, e.get("image"))
        phases_src, phases_size = picture(i, e.get("phases_image"))
        rows.append({
            "file": files[i], "name": name, "anchor": f"entry-{i + 1}", "status": status_of(e),
            "candidates": [_shown(c, names) for c in e.get("candidates") or []],
            "warnings": [str(w) for w in e.get("warnings") or []], "error": e.get("error"),
            "evidence": _evidence(e.get("evidence"), names), "image": src, "size": size,
            "phases": e.get("phases"), "residual_share": e.get("residual_share", 0.0),
            "phases_image": phases_src, "phases_size": phases_size,
        })  # fmt: skip
    counts = [(s, n) for s in STATUSES if (n := sum(r["status"] == s for r in rows))]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.from_string(_REPORT).render(title=title, entries=rows, meta=dict(meta or {}), folder=folder,
                                           counts=counts, statuses=STATUSES, prelude=Markup(prelude))


def html_report(
    entries: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "xrdid identification report",
    meta: Mapping[str, Any] | None = None,
    names: Mapping[str, DisplayName] | None = None,
) -> Path:
    """Write the HTML report: a header, a one-line-per-file summary table, then one section per file.

    The summary row gives the file's name (relative to the folder all files share, which the
    header names once), the best candidate, its reduced formula, its probability and a status
    badge (:func:`status_of`: ``ok``, ``note``, ``not in library?``, ``unchecked``, ``error``) and
    links to the file's section (``id="entry-N"``), which holds the full warnings, the peak
    evidence, the top-k table and the plot. Plots are referenced by paths relative to ``path``;
    plots given as bytes are written to the folder ``path`` without its suffix.

    Parameters
    ----------
    entries : one mapping per file, in order:

        ``file`` (str, shown as given and HTML-escaped), ``candidates`` (best first, dicts with
        ``id``, ``formula``, ``probability``: the top-k table), ``image`` (a PNG path or PNG
        bytes, e.g. from :func:`plot_explanation`; optional), ``warnings`` (list of str: not in
        the library, low coverage, ...; optional), ``in_library`` (the not-in-library verdict;
        optional), ``evidence`` (the peak check of :func:`~xrdid.identify.evidence.peak_evidence`;
        optional) and ``error`` (why the file could not be read; optional, then no candidates
        are needed); with ``xrdid predict --mixture``, ``phases`` (dicts ``id``, ``formula``,
        ``weight_fraction``, ``confidence``), ``residual_share`` and ``phases_image`` (a PNG
        path, from :func:`plot_mixture`): a phases table and the stacked plot.
    path : HTML file to write.
    title : page title.
    meta : shown under the title, one line per key (e.g. model name and version, wavelength and
        2θ range, library size and hash).
    names : library id → how to show it (:func:`~xrdid.identify.names.display_names`: short id,
        reduced formula, mineral); the full id becomes the cell's tooltip. Without it (or for an
        id it lacks) the id and ``formula`` are shown as given. Probabilities are shown by
        :func:`~xrdid.identify.names.format_probability` (``> 0.99``, never ``1.000``).

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
    >>> "a&lt;b&gt;.xy" in text, "<b>.xy" in text, text.count("<section"), "data:image" in text
    (True, False, 2, False)
    """
    path = Path(path)
    plots = path.with_suffix("")

    def image_src(index: int, image: str | Path | bytes) -> str:
        if isinstance(image, bytes):  # written beside the page, as predict's plots are
            plots.mkdir(parents=True, exist_ok=True)
            (plots / f"{index + 1:04d}.png").write_bytes(image)
            image = plots / f"{index + 1:04d}.png"
        relative = os.path.relpath(Path(image).resolve(), path.parent.resolve())
        return quote(PurePath(relative).as_posix())

    path.write_text(render_report(entries, title, meta, names, image_src), encoding="utf-8")
    return path
