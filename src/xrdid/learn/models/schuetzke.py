"""Schuetzke, Szymanski & Reischl (2023) baselines: CNN2, CNN3, CNN6, CNN-BN, ResNet, INC3, INC6 (VGG: wang)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xrdid.learn.models.base import (
    SameConv1d,
    XRDModel,
    _check_length,
    _dense_stack,
    _keras_batchnorm,
    _keras_init,
    _pool_out,
    _same_out,
)


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
