"""The HTML report: one self-contained page (summary table, a section per file) for a batch of predictions."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xrdid.identify.names import DisplayName, format_probability

__all__ = ["html_report"]

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
<td{% if best.name != best.id %} title="{{ best.id }}"{% endif %}>{{ best.name }}
{%- if best.common %} <i>{{ best.common }}</i>{% endif %}</td><td>{{ best.formula }}</td>
<td class="num">{{ best.p_text }}</td>
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
{% for c in e.candidates %}<tr><td class="num">{{ loop.index }}</td>
<td{% if c.name != c.id %} title="{{ c.id }}"{% endif %}>{{ c.name }}{% if c.common %} <i>{{ c.common }}</i>{% endif %}</td>
<td>{{ c.formula }}</td><td class="num">{{ c.p_text }}</td></tr>
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


def _shown(candidate: Mapping[str, Any], names: Mapping[str, DisplayName]) -> dict[str, Any]:
    """A candidate with what the report prints: ``name``, ``common``, ``formula`` and ``p_text``."""
    entry = str(candidate.get("id", ""))
    shown = names.get(entry)
    probability = float(candidate.get("probability", float("nan")))
    return dict(candidate, id=entry, name=shown.name if shown else entry, common=shown.common if shown else "",
                formula=shown.formula if shown else candidate.get("formula", ""), probability=probability,
                p_text=format_probability(probability) if math.isfinite(probability) else "")


def html_report(
    entries: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "xrdid identification report",
    meta: Mapping[str, Any] | None = None,
    names: Mapping[str, DisplayName] | None = None,
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
    meta : shown under the title (e.g. model name and version, wavelength, library hash).
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
    >>> "a&lt;b&gt;.xy" in text, "<b>" in text, text.count("<section")
    (True, False, 2)
    """
    import jinja2

    rows = []
    for e in entries:
        if "file" not in e:
            raise ValueError("every report entry needs a 'file'")
        candidates = [_shown(c, names or {}) for c in e.get("candidates") or []]
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
