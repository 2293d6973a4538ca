"""Wang et al. 2020 with the conv depth as a parameter (``wang``) and Schuetzke's ``vgg``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from xrdid.learn.models.base import (
    SameConv1d,
    XRDModel,
    _check_length,
    _dense_stack,
    _keras_init,
    _pool_out,
)


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
    >>> import torch
    >>> from xrdid.learn.models import build_model
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
    >>> import torch
    >>> from xrdid.learn.models import build_model
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
