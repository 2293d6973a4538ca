"""Saving and loading models as safetensors, with the config in the header metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from xrdid.learn.models.base import XRDModel
from xrdid.learn.models.registry import build_model


def save_model(model: XRDModel, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write the weights as safetensors with the model's config in the header metadata.

    Examples
    --------
    >>> import tempfile, os
    >>> m = build_model("xrdnet", 512, 4)
    >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_model(m, p); load_model(p).config == m.config
    True
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "xrdid_model": json.dumps(model.config)}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # renamed when whole: never a truncated model
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors model file (``xrdid_model``, ``ids``, ``grid``, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> XRDModel:
    """Rebuild a model written by :func:`save_model` and load its weights (eval mode)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if "xrdid_model" not in meta:
        raise ValueError(f"{path}: no xrdid model config in the safetensors metadata")
    model = build_model(**json.loads(meta["xrdid_model"]))
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval()
