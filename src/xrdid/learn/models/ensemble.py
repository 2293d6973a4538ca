"""Ensembles: trained networks of one grid and library answering as one (:class:`Ensemble`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrdid.learn.models.base import XRDModel
from xrdid.learn.models.registry import build_model


class Ensemble(XRDModel):
    """Networks of one grid and library answering as one: the mean of their probabilities.

    The logits are ``log(mean_m softmax(z_m))``, so softmax, Top-k, temperature calibration,
    saving and the registry treat an ensemble like any model. Networks trained from different
    seeds fail on different measured patterns, which averaging repairs in part. Build one from
    trained models with :func:`ensemble`; ``members`` holds each one's ``{"name", "options"}``.

    Examples
    --------
    >>> m = ensemble([build_model("xrdnet", 512, 4), build_model("cnn2", 512, 4)])
    >>> m(torch.rand(3, 512)).softmax(1).sum(1).allclose(torch.ones(3))
    True
    """

    name = "ensemble"

    def __init__(self, n_points: int, n_classes: int, members: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(n_points, n_classes)
        if not members or any(m.get("name") in (None, self.name) for m in members):
            raise ValueError("ensemble: members must list at least one model's {name, options}, none an ensemble")
        self.members = nn.ModuleList(build_model(m["name"], n_points, n_classes, m.get("options")) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = torch.stack([F.log_softmax(member(x).float(), dim=1) for member in self.members])
        return torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(self.members))))


def ensemble(models: Sequence[XRDModel]) -> Ensemble:
    """One :class:`Ensemble` holding copies of trained ``models`` (same grid length and classes).

    Examples
    --------
    >>> ensemble([build_model("xrdnet", 512, 4)] * 2).config["options"]["members"][0]["name"]
    'xrdnet'
    """
    if not models:
        raise ValueError("ensemble: no models")
    shapes = {(m.n_points, m.n_classes) for m in models}
    if len(shapes) > 1:
        raise ValueError(f"ensemble: models differ in (n_points, n_classes): {sorted(shapes)}")
    n_points, n_classes = shapes.pop()
    members = [{"name": m.config["name"], "options": m.config["options"]} for m in models]
    combined = build_model("ensemble", n_points, n_classes, members=members)
    for target, source in zip(combined.members, models):
        target.load_state_dict(source.state_dict())
    return combined.eval()
