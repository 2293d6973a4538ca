"""A trained network's outputs on spectra: logits and probabilities, batched, rows max-normalised."""

from __future__ import annotations

from collections.abc import Iterator
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
    >>> from xrdid.learn.models import build_model
    >>> p = predict_proba(build_model("xrdnet", 256, 3), np.random.rand(5, 256))
    >>> p.shape, bool(np.allclose(p.sum(1), 1, atol=1e-5))
    ((5, 3), True)
    """
    probs = [torch.softmax(logits, dim=1).cpu().numpy() for logits in _logit_batches(model, X, batch_size, device)]
    return np.concatenate(probs) if probs else np.zeros((0, getattr(model, "n_classes", 0)), np.float32)


def predict_logits(
    model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 256, device: str | torch.device | None = None
) -> np.ndarray:
    """Logits ``(n, n_classes)`` (float32) of raw spectra ``X (n, n_points)``, in eval mode.

    Rows are divided by their maximum first, as in :func:`predict_proba` (whose
    probabilities are ``softmax(predict_logits(...))``); ``X`` may be a float16 memmap.

    Examples
    --------
    >>> from xrdid.learn.models import build_model
    >>> predict_logits(build_model("xrdnet", 256, 3), np.random.rand(5, 256)).shape
    (5, 3)
    """
    logits = [batch.cpu().numpy() for batch in _logit_batches(model, X, batch_size, device)]
    return np.concatenate(logits) if logits else np.zeros((0, getattr(model, "n_classes", 0)), np.float32)


def _logit_batches(
    model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int, device: str | torch.device | None
) -> Iterator[torch.Tensor]:
    """float32 logits of ``X`` batch by batch, rows max-normalised, in eval mode on ``device`` (or the model's)."""
    if device is None:
        device = next(model.parameters()).device
    else:
        device = torch.device(device)
        model.to(device)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            chunk = X[start : start + batch_size]
            if isinstance(chunk, torch.Tensor):
                xb = chunk.float()
            else:
                xb = torch.from_numpy(np.array(chunk, dtype=np.float32))  # a copy: memmap slices are read-only
            yield model(normalize_rows(xb.to(device))).float()
