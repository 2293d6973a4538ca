"""Why the network named a material: Grad-CAM, feature maps, explanation plots, HTML reports, NCA maps.

The pieces build on one another:

* :mod:`~xrdid.identify.explain.cam`: :func:`grad_cam`, which 2θ regions drove the score of a
  class (class activation maps: HiResCAM by default, Grad-CAM on request; Wang et al. 2020
  showed CAMs) for any model of :data:`xrdid.learn.models.MODELS`, on the layer
  :func:`cam_layer` picks; :func:`features`, the penultimate activations (the CNN's embedding
  of a pattern);
* :mod:`~xrdid.identify.explain.plots`: :func:`plot_explanation`, a measured pattern coloured
  by its Grad-CAM over the simulated profiles of its best candidates (built by
  :func:`make_candidate`), with their reflections and hkl labels (:func:`format_hkl`), and
  :func:`plot_mixture`, a mixture's phases' fitted profiles stacked under it with the residual;
* :mod:`~xrdid.identify.explain.report`: :func:`html_report`, one HTML page for a batch of
  predictions (a summary table, a section per file) with those plots beside it as PNG files
  (:func:`render_report` renders the page for ``xrdid ui``);
* :mod:`~xrdid.identify.explain.nca`: :func:`nca_plot`, a 2-D neighbourhood-components map of
  feature vectors, and :func:`nca_map` (``xrdid explain nca``), that map for the measured test
  patterns in a trained model's feature space (Wang et al.'s NCA figure).

Heavy libraries (torch, matplotlib, scikit-learn, jinja2) are imported only when a function
needs them, so importing this package stays cheap.

See :mod:`~xrdid.identify.explain.cam` for a runnable example.
"""

from __future__ import annotations

from xrdid.identify.explain.cam import cam_layer, features, grad_cam
from xrdid.identify.explain.nca import nca_map, nca_plot
from xrdid.identify.explain.plots import format_hkl, make_candidate, plot_explanation, plot_mixture
from xrdid.identify.explain.report import html_report, render_report

__all__ = [
    "cam_layer",
    "features",
    "format_hkl",
    "grad_cam",
    "html_report",
    "make_candidate",
    "nca_map",
    "nca_plot",
    "plot_explanation",
    "plot_mixture",
    "render_report",
]
