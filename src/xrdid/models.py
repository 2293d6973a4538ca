"""1D CNNs for powder XRD patterns: the published baselines and our own ``xrdnet``.

Every model takes ``(batch, n_points)`` or ``(batch, 1, n_points)`` float tensors (each
spectrum divided by its own maximum, see :func:`xrdid.train.normalize_rows`) and returns
logits ``(batch, n_classes)``; the softmax lives in the loss. Models are built by name::

    model = build_model("wang", n_points=4801, n_classes=1012, conv_layers=7)
    same = build_model(**model.config)          # rebuilds it (weights not included)

Registered names (see :data:`MODELS`):

``wang``
    Wang et al. 2020, with the number of conv layers ``conv_layers`` (1..9) as a parameter
    (see :class:`Wang` for the depth rule); 7 layers are the paper's best.
``cnn2``, ``cnn3``, ``cnn6``, ``cnn_bn``, ``vgg``, ``resnet``, ``inc3``, ``inc6``
    The eight networks of Schuetzke, Szymanski & Reischl (2023), as in their Keras code:
    'same' conv padding (also for strided convs), 'valid' pooling, Glorot-uniform weights
    and zero biases, Keras batch-norm constants.
``xrdnet``
    Ours: strided stem, dilated residual stages without batch norm, coarse position bins
    and a small dense head (:class:`XRDNet`).
``ensemble``
    Trained networks of one grid and library answering as one (the mean of their
    probabilities); built from trained models with :func:`ensemble` (:class:`Ensemble`).

The flatten sizes are computed from ``n_points`` with the layers' length formulas, so a
model can be rebuilt from its config and loaded from safetensors without a dummy forward
(:func:`save_model`, :func:`load_model`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODELS",
    "Ensemble",
    "XRDModel",
    "build_model",
    "count_parameters",
    "ensemble",
    "load_model",
    "read_metadata",
    "save_model",
]


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
    (mapping that to ``(B, n_classes)``). :func:`build_model` sets ``config``.
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


# --------------------------------------------------------------------------- Wang 2020 / VGG


def wang_stages(conv_layers: int) -> list[list[int]]:
    """Filters of each stage of :class:`Wang` for a conv depth of 1..9.

    Depth 1..4 adds one-conv stages with 6, 16, 32, 64 filters (4 = the paper's base);
    5..7 give stages 4, 3, 2 (in that order) a second conv of the same width (7 = the
    VGG variant); 8 and 9 add a fifth stage with one or two 128-filter convs.

    Examples
    --------
    >>> wang_stages(4), wang_stages(7)
    ([[6], [16], [32], [64]], [[6], [16, 16], [32, 32], [64, 64]])
    >>> wang_stages(9)[-1]
    [128, 128]
    """
    if not 1 <= conv_layers <= 9:
        raise ValueError(f"conv_layers must be within 1..9, got {conv_layers}")
    stages = [[f] for f in (6, 16, 32, 64)[: min(conv_layers, 4)]]
    for i in range(min(max(conv_layers - 4, 0), 3)):
        stages[3 - i].append(stages[3 - i][0])
    if conv_layers > 7:
        stages.append([128] * (conv_layers - 7))
    return stages


class Wang(XRDModel):
    """Wang et al. 2020 (J. Chem. Inf. Model. 60, 2004) with the conv depth as a parameter.

    Each stage is ``conv_layers`` convs (kernel ``kernel_size``, stride 1, 'same', ReLU)
    followed by MaxPool(2, 2) and Dropout(``dropout``); the filters per stage follow
    :func:`wang_stages` (depth 4: 6-16-32-64 as in the paper, depth 7: VGG-like
    6 | 16 16 | 32 32 | 64 64, the paper's best). Then flatten and dense ``dense`` layers
    (ReLU, as LeNet) with ``dense_dropout`` before each, and the output layer.

    Examples
    --------
    >>> m = build_model("wang", 512, 10, conv_layers=4)
    >>> m(torch.zeros(2, 512)).shape
    torch.Size([2, 10])
    """

    name = "wang"

    def __init__(
        self,
        n_points: int,
        n_classes: int,
        *,
        conv_layers: int = 7,
        kernel_size: int = 5,
        dropout: float = 0.2,
        dense: Sequence[int] = (120, 84),
        dense_activation: bool = True,
        dense_dropout: float = 0.0,
    ) -> None:
        super().__init__(n_points, n_classes)
        layers: list[nn.Module] = []
        channels, length = 1, n_points
        for stage in wang_stages(conv_layers):
            for filters in stage:
                layers += [SameConv1d(channels, filters, kernel_size), nn.ReLU()]
                channels = filters
            layers.append(nn.MaxPool1d(2, 2))
            length = _pool_out(length, 2, 2)
            if dropout:
                layers.append(nn.Dropout(dropout))
        _check_length(self.name, n_points, length)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = _dense_stack(channels * length, dense, n_classes, dense_dropout, dense_activation)
        _keras_init(self)


class VGG(Wang):
    """Schuetzke's 'VGG' (the Wang network, 7 conv layers): linear dense 120, 84, 186.

    Examples
    --------
    >>> build_model("vgg", 512, 3)(torch.zeros(2, 512)).shape
    torch.Size([2, 3])
    """

    name = "vgg"

    def __init__(
        self,
        n_points: int,
        n_classes: int,
        *,
        dropout: float = 0.2,
        dense: Sequence[int] = (120, 84, 186),
        dense_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            n_points, n_classes, conv_layers=7, kernel_size=5, dropout=dropout, dense=dense,
            dense_activation=False, dense_dropout=dense_dropout,
        )  # fmt: skip


# --------------------------------------------------------------------------- Schuetzke zoo


def _conv_pool_stack(
    specs: Sequence[tuple[int, int, int, int, int]], n_points: int, activation: Callable[[], nn.Module] = nn.ReLU
) -> tuple[list[nn.Module], int, int]:
    """Layers for (filters, kernel, stride, pool size, pool stride) rows; channels, length."""
    layers: list[nn.Module] = []
    channels, length = 1, n_points
    for filters, kernel, stride, pool, pool_stride in specs:
        layers += [SameConv1d(channels, filters, kernel, stride), activation(), nn.MaxPool1d(pool, pool_stride)]
        channels, length = filters, _pool_out(_same_out(length, stride), pool, pool_stride)
    return layers, channels, length


class _PlainCNN(XRDModel):
    """Conv/pool stack then flatten and the Schuetzke dense stack."""

    specs: ClassVar[tuple[tuple[int, int, int, int, int], ...]] = ()
    dense_activation: ClassVar[bool] = False

    def __init__(self, n_points: int, n_classes: int, *, dense: Sequence[int], dropout: float) -> None:
        super().__init__(n_points, n_classes)
        layers, channels, length = _conv_pool_stack(self.specs, n_points)
        _check_length(self.name, n_points, length)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = _dense_stack(channels * length, dense, n_classes, dropout, self.dense_activation)
        _keras_init(self)


class CNN2(_PlainCNN):
    """CNN2 (Lee et al. 2020): Conv(64,k50,s2) MP(3,s2) Conv(64,k25,s3) MP(2,s3); linear dense."""

    name = "cnn2"
    specs = ((64, 50, 2, 3, 2), (64, 25, 3, 2, 3))

    def __init__(
        self, n_points: int, n_classes: int, *, dense: Sequence[int] = (2000, 500), dropout: float = 0.3
    ) -> None:
        super().__init__(n_points, n_classes, dense=dense, dropout=dropout)


class CNN3(_PlainCNN):
    """CNN3 (Lee et al. 2020): Conv(64,k20) MP(3,s3) Conv(64,k15) MP(2,s3) Conv(64,k10,s2) MP(1,s2)."""

    name = "cnn3"
    specs = ((64, 20, 1, 3, 3), (64, 15, 1, 2, 3), (64, 10, 2, 1, 2))

    def __init__(
        self, n_points: int, n_classes: int, *, dense: Sequence[int] = (2500, 1000), dropout: float = 0.3
    ) -> None:
        super().__init__(n_points, n_classes, dense=dense, dropout=dropout)


class CNN6(_PlainCNN):
    """CNN6 (Szymanski et al. 2021): six Conv(64) k35..k10, ReLU dense 3100, 1200, dropout 0.7."""

    name = "cnn6"
    specs = (
        (64, 35, 1, 3, 2), (64, 30, 1, 3, 2), (64, 25, 1, 2, 2),
        (64, 20, 1, 1, 2), (64, 15, 1, 1, 2), (64, 10, 1, 1, 2),
    )  # fmt: skip
    dense_activation = True

    def __init__(
        self, n_points: int, n_classes: int, *, dense: Sequence[int] = (3100, 1200), dropout: float = 0.7
    ) -> None:
        super().__init__(n_points, n_classes, dense=dense, dropout=dropout)


class CNNBN(XRDModel):
    """CNN-BN (Liu et al. 2017): 3 × [Conv, BatchNorm, LeakyReLU(0.1), MP2]; linear dense 2048."""

    name = "cnn_bn"

    def __init__(
        self, n_points: int, n_classes: int, *, dense: Sequence[int] = (2048,), dropout: float = 0.5
    ) -> None:
        super().__init__(n_points, n_classes)
        layers: list[nn.Module] = []
        channels, length = 1, n_points
        for filters, kernel in ((16, 21), (32, 11), (64, 5)):
            layers += [SameConv1d(channels, filters, kernel), _keras_batchnorm(filters), nn.LeakyReLU(0.1)]
            layers.append(nn.MaxPool1d(2, 2))
            channels, length = filters, _pool_out(length, 2, 2)
        _check_length(self.name, n_points, length)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = _dense_stack(channels * length, dense, n_classes, dropout)
        _keras_init(self)


class _ResidualBlock(nn.Module):
    """Ho et al.'s block: conv-BN-ReLU, conv-BN, + shortcut (1×1 strided conv-BN if downsampling), ReLU."""

    def __init__(self, in_channels: int, filters: int, kernel_size: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.main = nn.Sequential(
            SameConv1d(in_channels, filters, kernel_size, stride), _keras_batchnorm(filters), nn.ReLU(),
            SameConv1d(filters, filters, kernel_size), _keras_batchnorm(filters),
        )  # fmt: skip
        self.shortcut = (
            nn.Sequential(SameConv1d(in_channels, filters, 1, stride), _keras_batchnorm(filters))
            if downsample or in_channels != filters
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class ResNet(XRDModel):
    """ResNet (Ho et al. 2019): Conv(64,k5)+BN, 6 stages × 2 residual blocks of 100 filters k5.

    The first block of each stage has stride 2; then flatten, Dropout(0.5), output layer.
    """

    name = "resnet"

    def __init__(
        self,
        n_points: int,
        n_classes: int,
        *,
        filters: int = 100,
        stages: int = 6,
        blocks: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(n_points, n_classes)
        layers: list[nn.Module] = [SameConv1d(1, 64, 5), _keras_batchnorm(64)]  # linear stem, as published
        channels, length = 64, n_points
        for _ in range(stages):
            for b in range(blocks):
                layers.append(_ResidualBlock(channels, filters, 5, downsample=b == 0))
                channels = filters
            length = _same_out(length, 2)
        _check_length(self.name, n_points, length)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = _dense_stack(channels * length, (), n_classes, dropout)
        _keras_init(self)


class _Inception(nn.Module):
    """Inception-v1 block: 1×1 | 1×1→k3 | 1×1→k5 | avgpool3→1×1, each conv ReLU, concatenated."""

    def __init__(self, in_channels: int, f: Sequence[int]) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(SameConv1d(cin, cout, k), nn.ReLU())

        self.b1 = conv(in_channels, f[0], 1)
        self.b3 = nn.Sequential(conv(in_channels, f[1], 1), conv(f[1], f[2], 3))
        self.b5 = nn.Sequential(conv(in_channels, f[3], 1), conv(f[3], f[4], 5))
        # Keras 'same' average pooling leaves the padding out of the mean
        self.bp = nn.Sequential(nn.AvgPool1d(3, 1, 1, count_include_pad=False), conv(in_channels, f[5], 1))
        self.out_channels = f[0] + f[2] + f[4] + f[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


_INCEPTION_FILTERS = (
    (22, 32, 42, 6, 12, 10), (28, 43, 56, 7, 14, 14), (37, 56, 73, 9, 18, 19),
    (49, 74, 96, 12, 24, 25), (65, 97, 126, 16, 32, 32), (85, 128, 166, 19, 38, 43),
)  # fmt: skip


class _InceptionNet(XRDModel):
    """The CNN3 conv stem, ``blocks`` Inception-v1 blocks, flatten, linear dense stack."""

    blocks: ClassVar[int] = 3

    def __init__(self, n_points: int, n_classes: int, *, dense: Sequence[int], dropout: float) -> None:
        super().__init__(n_points, n_classes)
        layers, channels, length = _conv_pool_stack(CNN3.specs, n_points)
        for filters in _INCEPTION_FILTERS[: self.blocks]:
            block = _Inception(channels, filters)
            layers.append(block)
            channels = block.out_channels
        _check_length(self.name, n_points, length)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = _dense_stack(channels * length, dense, n_classes, dropout)
        _keras_init(self)


class INC3(_InceptionNet):
    """INC3: CNN3 stem + 3 Inception blocks; linear dense 3700, 740; dropout 0.3."""

    name = "inc3"
    blocks = 3

    def __init__(
        self, n_points: int, n_classes: int, *, dense: Sequence[int] = (3700, 740), dropout: float = 0.3
    ) -> None:
        super().__init__(n_points, n_classes, dense=dense, dropout=dropout)


class INC6(_InceptionNet):
    """INC6: CNN3 stem + 6 Inception blocks; linear dense 4000, 400; dropout 0.3."""

    name = "inc6"
    blocks = 6

    def __init__(
        self, n_points: int, n_classes: int, *, dense: Sequence[int] = (4000, 400), dropout: float = 0.3
    ) -> None:
        super().__init__(n_points, n_classes, dense=dense, dropout=dropout)


# --------------------------------------------------------------------------- XRDNet (ours)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    raise ValueError(f"norm must be 'none', 'group' or 'batch', got {kind!r}")


class _DilatedBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(conv_dilated(act(x)))).

    The second conv starts at zero, so every block starts as the identity: deep stacks
    train without batch norm (as Fixup/ReZero).
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, norm: str) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            _norm(norm, channels), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, padding="same", dilation=dilation),
            _norm(norm, channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 1),
        )  # fmt: skip
        self.zero_last()

    def zero_last(self) -> None:
        nn.init.zeros_(self.branch[-1].weight)
        nn.init.zeros_(self.branch[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class XRDNet(XRDModel):
    """Our network: small, several times faster than the baselines, shift tolerant, aware of
    absolute peak positions.

    Layout (defaults, 4801 points)::

        stem    Conv(1→32, k16, s8) ReLU                                  601 positions, 0.08°
        stage   per width w in ``widths`` (32, 48): 1×1 conv to w if it changes, ``depth``
                pre-activation residual blocks [ReLU, Conv(k5, dilation 1, 2, ...), ReLU,
                Conv 1×1], MaxPool(2)                                     → 150 positions, 0.32°
        bins    ReLU, Conv 1×1 to ``bin_channels`` (32) ReLU, AdaptiveMaxPool to ``bins`` (75)
        head    Dropout, Linear(32·75 → ``hidden`` 256) ReLU, Dropout, Linear(→ classes)

    Why:

    - the strided stem cuts the resolution eight-fold before any wide conv (most of the
      baselines' cost is at full resolution), and its 32 overlapping 16-point filters keep
      peaks a few points apart distinguishable in the channels;
    - dilated convs reach a receptive field of ~3° (300 points) with few parameters, so
      neighbouring peaks' spacings and heights are seen together;
    - max pooling only by 2 per stage, so nearby peaks merge late;
    - the final max pooling to ``bins`` position bins (0.64° at 4801 points) absorbs the
      ±0.5° shifts of the augmentation yet keeps the absolute positions that identify a
      phase (a global pooling would lose them); the head stays small because the bins are
      few and thin, and its size does not depend on ``n_points``;
    - no batch norm by default (``norm``: 'none', 'group', 'batch'): the residual branches
      start at zero, so the network trains without it.

    On the Schuetzke challenge set (27 classes, 200 spectra per class, 15 epochs, CPU) it
    reached validation loss 0.38 (accuracy 0.86) against 0.52 (0.79) for ``wang`` (7 conv
    layers), with a third of the parameters and 2.5x its training throughput (one CPU
    thread; ``benchmarks/train.py``).

    Examples
    --------
    >>> m = build_model("xrdnet", 4801, 500)
    >>> m(torch.zeros(2, 4801)).shape
    torch.Size([2, 500])
    """

    name = "xrdnet"

    def __init__(
        self,
        n_points: int,
        n_classes: int,
        *,
        stem_channels: int = 32,
        stem_kernel: int = 16,
        stem_stride: int = 8,
        widths: Sequence[int] = (32, 48),
        depth: int = 2,
        kernel_size: int = 5,
        bins: int = 75,
        bin_channels: int = 32,
        hidden: int = 256,
        dropout: float = 0.3,
        norm: str = "none",
    ) -> None:
        super().__init__(n_points, n_classes)
        _norm(norm, 8)  # validate early
        layers: list[nn.Module] = [_UnfoldStem(1, stem_channels, stem_kernel, stem_stride), nn.ReLU()]
        channels, length = stem_channels, _same_out(n_points, stem_stride)
        for width in widths:
            if width != channels:
                layers.append(nn.Conv1d(channels, width, 1))
                channels = width
            layers += [_DilatedBlock(channels, kernel_size, 2**i, norm) for i in range(depth)]
            layers.append(nn.MaxPool1d(2, 2))
            length = _pool_out(length, 2, 2)
        _check_length(self.name, n_points, length)
        bins = min(bins, length)
        layers += [nn.ReLU(), nn.Conv1d(channels, bin_channels, 1), nn.ReLU(), nn.AdaptiveMaxPool1d(bins), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(bin_channels * bins, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, n_classes),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, _DilatedBlock):
                m.zero_last()


# --------------------------------------------------------------------------- ensembles


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


# --------------------------------------------------------------------------- registry


MODELS: dict[str, type[XRDModel]] = {
    cls.name: cls for cls in (Wang, CNN2, CNN3, CNN6, CNNBN, VGG, ResNet, INC3, INC6, XRDNet, Ensemble)
}
"""Model classes by name; :func:`build_model` is the way to instantiate them."""


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_model(
    name: str, n_points: int, n_classes: int, options: Mapping[str, Any] | None = None, **kwargs: Any
) -> XRDModel:
    """Build a registered model; ``build_model(**model.config)`` rebuilds one.

    Parameters
    ----------
    name : a key of :data:`MODELS`.
    n_points : input length (the 2θ grid's number of points).
    n_classes : number of outputs.
    options, **kwargs : constructor options of that model (merged, kwargs win); unknown
        options raise ``ValueError``. The model's ``config`` records every option with its
        value, defaults included.

    Examples
    --------
    >>> m = build_model("wang", 1626, 12, conv_layers=5)
    >>> m.config["name"], m.config["n_points"], m.config["options"]["conv_layers"], m.config["options"]["dense"]
    ('wang', 1626, 5, [120, 84])
    >>> build_model(**m.config).config == m.config
    True
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    opts = {**(options or {}), **kwargs}
    try:
        bound = inspect.signature(cls.__init__).bind(None, n_points, n_classes, **opts)
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    bound.apply_defaults()
    resolved = {k: _jsonable(v) for k, v in bound.arguments.items() if k not in ("self", "n_points", "n_classes")}
    model = cls(int(n_points), int(n_classes), **resolved)
    model._config = {"name": name, "n_points": int(n_points), "n_classes": int(n_classes), "options": resolved}
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters.

    Examples
    --------
    >>> count_parameters(build_model("wang", 512, 10, conv_layers=1))
    195490
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
    save_file(state, str(path), metadata=meta)


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
