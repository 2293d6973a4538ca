"""A trained network's outputs on spectra: logits and probabilities, batched, rows max-normalised."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from torch import nn


def normalize_rows(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Divide each spectrum (last axis) by its own maximum; rows with max <= 0 stay as they are.

    Examples
    --------
    >>> normalize_rows(np.array([[1.0, 4.0], [0.0, 0.0]]))
    array([[0.25, 1.  ],
           [0.  , 0.  ]])
    """
    if isinstance(x, torch.Tensor):
        top = x.amax(dim=-1, keepdim=True)
        return x / torch.where(top > 0, top, torch.ones_like(top))
    top = np.max(x, axis=-1, keepdims=True)
    return x / np.where(top > 0, top, 1)


def predict_proba(
    model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 256, device: str | torch.device | None = None
) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` (float32) for raw spectra ``X (n, n_points)``.

    Rows are normalized by their maximum, as in training; ``X`` may be a float16 memmap
    (read batch by batch). Runs on ``device`` or else on the model's device, in eval mode.

    Examples
    --------
    >>> from xrdid.models import build_model
    >>> p = predict_proba(build_model("xrdnet", 256, 3), np.random.rand(5, 256))
    >>> p.shape, bool(np.allclose(p.sum(1), 1, atol=1e-5))
    ((5, 3), True)
    """
    if device is None:
        device = next(model.parameters()).device
    else:
        device = torch.device(device)
        model.to(device)
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            chunk = X[start : start + batch_size]
            if isinstance(chunk, torch.Tensor):
                xb = chunk.float()
            else:
                xb = torch.from_numpy(np.array(chunk, dtype=np.float32))  # a copy: memmap slices are read-only
            logits = model(normalize_rows(xb.to(device)))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    n_classes = getattr(model, "n_classes", 0)
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def predict_logits(
    model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 256, device: str | torch.device | None = None
) -> np.ndarray:
    """Logits ``(n, n_classes)`` (float32) of raw spectra ``X (n, n_points)``, in eval mode.

    Rows are divided by their maximum first, as in :func:`xrdid.train.predict_proba` (whose
    probabilities are ``softmax(predict_logits(...))``); ``X`` may be a float16 memmap.

    Examples
    --------
    >>> from xrdid.models import build_model
    >>> predict_logits(build_model("xrdnet", 256, 3), np.random.rand(5, 256)).shape
    (5, 3)
    """
    import torch

    from xrdid.learn.inference import normalize_rows

    device = next(model.parameters()).device if device is None else torch.device(device)
    model.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            chunk = X[start : start + batch_size]
            xb = chunk.float() if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk, np.float32))
            chunks.append(model(normalize_rows(xb.to(device))).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, getattr(model, "n_classes", 0)), np.float32)
