"""1D CNNs for powder XRD patterns: the published baselines and our own ``xrdnet``.

Every model takes ``(batch, n_points)`` or ``(batch, 1, n_points)`` float tensors (each
spectrum divided by its own maximum, see :func:`xrdid.learn.inference.normalize_rows`) and returns
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

The pieces, each importing only those before it:

- :mod:`~xrdid.learn.models.base`: :class:`XRDModel`, the Keras 'same' conv
  :class:`SameConv1d` and the helpers the families share; :func:`count_parameters`.
- :mod:`~xrdid.learn.models.registry`: :data:`MODELS` (filled here from the families) and
  :func:`build_model`.
- the families: :mod:`~xrdid.learn.models.wang` (``wang``, ``vgg``),
  :mod:`~xrdid.learn.models.schuetzke` (``cnn2``, ``cnn3``, ``cnn6``, ``cnn_bn``, ``resnet``,
  ``inc3``, ``inc6``), :mod:`~xrdid.learn.models.xrdnet` (``xrdnet``) and
  :mod:`~xrdid.learn.models.ensemble` (``ensemble``, :func:`ensemble`).
- :mod:`~xrdid.learn.models.io`: :func:`save_model`, :func:`read_metadata`, :func:`load_model`.
"""

from __future__ import annotations

from xrdid.learn.models.base import SameConv1d, XRDModel, count_parameters
from xrdid.learn.models.base import _flops_hint as _flops_hint
from xrdid.learn.models.base import _UnfoldStem as _UnfoldStem
from xrdid.learn.models.ensemble import Ensemble, ensemble
from xrdid.learn.models.io import load_model, read_metadata, save_model
from xrdid.learn.models.registry import MODELS, build_model
from xrdid.learn.models.schuetzke import CNN2, CNN3, CNN6, CNNBN, INC3, INC6, ResNet
from xrdid.learn.models.wang import VGG, Wang, wang_stages
from xrdid.learn.models.xrdnet import XRDNet

__all__ = [
    "CNN2",
    "CNN3",
    "CNN6",
    "CNNBN",
    "INC3",
    "INC6",
    "MODELS",
    "VGG",
    "Ensemble",
    "ResNet",
    "SameConv1d",
    "Wang",
    "XRDModel",
    "XRDNet",
    "build_model",
    "count_parameters",
    "ensemble",
    "load_model",
    "read_metadata",
    "save_model",
    "wang_stages",
]

# registered in this fixed order (``wang`` first, as before the split), so iterating MODELS is unchanged
MODELS.update(
    {cls.name: cls for cls in (Wang, CNN2, CNN3, CNN6, CNNBN, VGG, ResNet, INC3, INC6, XRDNet, Ensemble)}
)
