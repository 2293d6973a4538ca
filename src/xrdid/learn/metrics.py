"""Scores of a ranking: Top-k accuracy, the rank of the true entry, mean ± std over seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def check_labels(scores: np.ndarray, y: np.ndarray) -> None:
    """Raise ValueError unless ``scores`` is (n, n_classes) and ``y`` holds n labels in range."""
    if scores.ndim != 2 or y.shape != (scores.shape[0],):
        raise ValueError(f"need scores (n, n_classes) and y (n,), got {scores.shape} and {y.shape}")
    if y.size == 0:
        raise ValueError("no samples to score")
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError("labels out of range of the score columns")


def topk_accuracy(
    scores: np.ndarray | torch.Tensor, y: np.ndarray | Sequence[int], k: int | Sequence[int] = (1, 2, 3, 4, 5)
) -> dict[int, float]:
    """Top-k accuracy of scores or probabilities ``(n, n_classes)`` against labels ``y``.

    A spectrum is a hit at ``k`` when fewer than ``k`` other classes score at least as high
    as its true class: ties count against the true class (a constant scorer gets 0 rather
    than whatever an argsort's tie order would give).

    Examples
    --------
    >>> s = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    >>> topk_accuracy(s, [2, 0, 0], k=(1, 2, 3))
    {1: 0.3333333333333333, 2: 1.0, 3: 1.0}
    >>> topk_accuracy(s, [2, 0, 0], k=1)   # row 3: class 0 ties with class 1 -> miss
    {1: 0.3333333333333333}
    """
    ks = [k] if isinstance(k, int) else list(k)
    if any(kk < 1 for kk in ks):
        raise ValueError("k must be >= 1")
    rank = true_rank(scores, y)
    return {kk: float(np.mean(rank <= kk)) for kk in ks}


def true_rank(scores: np.ndarray | torch.Tensor, y: np.ndarray | Sequence[int]) -> np.ndarray:
    """Rank (1 = best) of each row's true class: 1 + the other classes scoring at least as high.

    Ties count against the true class, as in :func:`topk_accuracy`.

    Examples
    --------
    >>> true_rank(np.array([[0.1, 0.7, 0.2], [0.4, 0.4, 0.2]]), [2, 0]).tolist()
    [2, 2]
    """
    scores = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    y = np.asarray(y, dtype=np.int64)
    check_labels(scores, y)
    rank = np.empty(len(y), dtype=np.int64)
    for start in range(0, len(y), 4096):  # chunks bound the (rows, classes) comparison
        s, t = scores[start : start + 4096], y[start : start + 4096]
        rank[start : start + len(t)] = (s >= s[np.arange(len(t)), t][:, None]).sum(axis=1)
    return rank


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value).

    Examples
    --------
    >>> summarize([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values to summarize")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


TOP_K = (1, 2, 3, 4, 5)


def topk_table(scores: np.ndarray, y: np.ndarray, groups: list[str] | None = None) -> dict[str, Any]:
    """Top-1..5 of ``scores`` against ``y`` (rows with y = -1 excluded), overall and per group."""
    y = np.asarray(y)
    known = y >= 0
    table: dict[str, Any] = {f"top{k}": v for k, v in topk_accuracy(scores[known], y[known], TOP_K).items()}
    table["n"] = int(known.sum())
    if groups is not None:
        labels = np.asarray(groups)
        for group in sorted(set(labels[known])):
            if group:
                rows = known & (labels == group)
                table[group] = {f"top{k}": v for k, v in topk_accuracy(scores[rows], y[rows], TOP_K).items()}
                table[group]["n"] = int(rows.sum())
    return table
