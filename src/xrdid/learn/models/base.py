"""The model base class, Keras-compatible conv layers and the helpers every family shares."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- building blocks


def _same_out(length: int, stride: int) -> int:
    """Output length of a Keras 'same' conv: ``ceil(length / stride)``."""
    return -(-length // stride)


def _pool_out(length: int, size: int, stride: int) -> int:
    """Output length of a 'valid' pooling window."""
    return (length - size) // stride + 1


class SameConv1d(nn.Conv1d):
    """``nn.Conv1d`` with Keras 'same' padding for any stride and dilation.

    Keras pads ``max((ceil(L/s) - 1) s + d (k - 1) + 1 - L, 0)`` zeros in total, the odd
    one on the right; for stride 1 this is PyTorch's ``padding='same'``, which PyTorch
    refuses for strided convs, so the padding is worked out from the input length.

    Examples
    --------
    >>> SameConv1d(1, 4, 25, stride=3)(torch.zeros(2, 1, 100)).shape
    torch.Size([2, 4, 34])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, stride = x.shape[-1], self.stride[0]
        span = self.dilation[0] * (self.kernel_size[0] - 1) + 1
        total = max((_same_out(length, stride) - 1) * stride + span - length, 0)
        left = total // 2
        if total == 2 * left:  # symmetric: let the conv kernel pad (no copy)
            return F.conv1d(x, self.weight, self.bias, stride, left, self.dilation)
        return F.conv1d(F.pad(x, (left, total - left)), self.weight, self.bias, stride, 0, self.dilation)


class _UnfoldStem(SameConv1d):
    """A one-input-channel :class:`SameConv1d` computed as unfold + matmul (same result).

    PyTorch's CPU convolution backward is pathologically slow for single-channel inputs with
    long kernels when it uses more than one thread (about 2 s instead of 5 ms for a batch
    of 128 × 4801 points, kernel 16); a matmul over the unfolded windows is not. The
    parameters keep the Conv1d shapes, so state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels != 1 or self.dilation[0] != 1 or x.shape[1] != 1:
            return super().forward(x)
        length, stride, kernel = x.shape[-1], self.stride[0], self.kernel_size[0]
        total = max((_same_out(length, stride) - 1) * stride + kernel - length, 0)
        windows = F.pad(x[:, 0], (total // 2, total - total // 2)).unfold(-1, kernel, stride)  # (B, n, k)
        out = windows @ self.weight.view(self.out_channels, kernel).t()
        if self.bias is not None:
            out = out + self.bias
        return out.transpose(1, 2).contiguous()


def _keras_batchnorm(channels: int) -> nn.BatchNorm1d:
    # Keras: momentum 0.99 of the running mean (PyTorch counts the other way), eps 1e-3
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform weights, zero biases (PyTorch's are smaller)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _dense_stack(
    in_features: int, hidden: Sequence[int], n_classes: int, dropout: float, activation: bool = False
) -> nn.Sequential:
    """Schuetzke's head: [Dropout, Dense(, ReLU)] per hidden layer, Dropout, Dense(classes)."""
    layers: list[nn.Module] = []
    for width in hidden:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_features, width))
        if activation:
            layers.append(nn.ReLU())
        in_features = width
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, n_classes))
    return nn.Sequential(*layers)


def _check_length(name: str, n_points: int, length: int) -> None:
    if length < 1:
        raise ValueError(f"{name}: {n_points} points are too few for this architecture")


# --------------------------------------------------------------------------- base class


class XRDModel(nn.Module):
    """Base class: shape handling, the input-length check and the rebuildable config.

    Subclasses set ``features`` (a module mapping ``(B, 1, L)`` to anything) and ``head``
    (mapping that to ``(B, n_classes)``). :func:`~xrdid.learn.models.build_model` sets ``config``.
    """

    name: ClassVar[str] = ""

    def __init__(self, n_points: int, n_classes: int) -> None:
        super().__init__()
        if n_points < 1 or n_classes < 1:
            raise ValueError(f"n_points and n_classes must be positive, got {n_points}, {n_classes}")
        self.n_points = int(n_points)
        self.n_classes = int(n_classes)
        self._config: dict[str, Any] = {}

    @property
    def config(self) -> dict[str, Any]:
        """``{"name", "n_points", "n_classes", "options"}``; ``build_model(**config)`` rebuilds."""
        return json.loads(json.dumps(self._config))  # a deep, JSON-safe copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[-1] != self.n_points:
            raise ValueError(
                f"{self.name} expects (batch, {self.n_points}) or (batch, 1, {self.n_points}) input, "
                f"got {tuple(x.shape)}"
            )
        return self.head(self.features(x))


# --------------------------------------------------------------------------- measures


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters.

    Examples
    --------
    >>> from xrdid.learn.models import build_model
    >>> count_parameters(build_model("wang", 512, 10, conv_layers=1))
    195490
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _flops_hint(model: XRDModel) -> float:  # pragma: no cover - used by the benchmark only
    """Multiply-accumulates per spectrum of the conv and linear layers (forward)."""
    total = 0.0
    hooks = []

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv1d):
            total += out.shape[-1] * m.out_channels * m.in_channels // m.groups * m.kernel_size[0]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, model.n_points))
    for h in hooks:
        h.remove()
    return total
