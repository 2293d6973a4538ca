"""Grad-CAM and feature maps: which 2θ regions drove a class score, and a pattern's CNN embedding.

* :func:`cam_layer`: the layer whose maps are explained (the model's last convolutional stage);
* :func:`grad_cam`: class activation maps (HiResCAM by default, Grad-CAM on request) for any
  model of :data:`xrdid.learn.models.MODELS` or an ensemble of them;
* :func:`features`: the penultimate activations (the input of the last ``nn.Linear``).

Examples
--------
>>> from xrdid.learn.models import build_model
>>> model = build_model("wang", 256, 3, conv_layers=2)
>>> grad_cam(model, np.random.default_rng(0).random((2, 256))).shape
(2, 256)
>>> features(model, np.random.default_rng(0).random((2, 256))).shape
(2, 84)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["cam_layer", "features", "grad_cam"]


def cam_layer(model: nn.Module) -> nn.Module:
    """The module whose output :func:`grad_cam` explains: the model's last convolutional stage.

    In order of precedence:

    1. ``model.cam_layer`` (a module, or the name of a submodule) when the model defines one;
    2. the last child of ``model.features`` (an ``nn.Sequential``) that contains an
       ``nn.Conv1d``, extended over the pointwise layers right after it (activation, norm):
       the rectified maps of the last conv layer, and for composite blocks the block's output
       (a ResNet block after its shortcut sum, an Inception block's concatenated branches,
       rather than whichever branch conv happens to come last in ``model.modules()``);
    3. otherwise the last ``nn.Conv1d`` in ``model.modules()``.

    Examples
    --------
    >>> from xrdid.learn.models import build_model
    >>> cam_layer(build_model("wang", 256, 3, conv_layers=2))
    ReLU()
    >>> type(cam_layer(build_model("inc3", 256, 3))).__name__
    '_Inception'
    """
    from torch import nn

    pointwise = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.BatchNorm1d, nn.GroupNorm, nn.Identity, nn.Dropout)
    own = getattr(model, "cam_layer", None)
    if isinstance(own, nn.Module):
        return own
    if isinstance(own, str):
        return model.get_submodule(own)
    stack = getattr(model, "features", None)
    if isinstance(stack, nn.Sequential):
        children = list(stack)
        convs = [i for i, m in enumerate(children) if any(isinstance(s, nn.Conv1d) for s in m.modules())]
        if convs:
            j = convs[-1]
            while j + 1 < len(children) and isinstance(children[j + 1], pointwise):
                j += 1
            return children[j]
    last = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no Conv1d layer to explain")
    return last[-1]


def _rows(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    from xrdid.learn.inference import normalize_rows

    t = X.detach().float() if isinstance(X, torch.Tensor) else torch.from_numpy(np.array(X, dtype=np.float32, ndmin=2))
    if t.dim() != 2:
        raise ValueError(f"need spectra (n, n_points), got shape {tuple(t.shape)}")
    return normalize_rows(t)


def grad_cam(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    target: int | Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    method: str = "hirescam",
) -> np.ndarray:
    """Class activation map of each spectrum for a class: ``(n, n_points)`` in [0, 1], 1 = most important.

    With ``A (C, L)`` the feature maps of :func:`cam_layer` and ``G = ∂y/∂A`` the gradient of
    the target class's logit ``y``:

    ``"hirescam"`` (default; Draelos & Carin 2020)
        ``ReLU(Σ_c G_cl A_cl)``: each position weighted by its own gradient.
    ``"gradcam"`` (Selvaraju et al. 2017)
        ``ReLU(Σ_c mean_l(G_cl) A_cl)``: one weight per channel.

    Every model here ends in a *position-specific* dense head (flatten, or xrdnet's position
    bins), not a global average pool, and Grad-CAM's average over positions throws away just
    the position information that head uses: on a three-class toy problem (one shared peak,
    one peak per class) Grad-CAM maps of a trained ``wang`` model were all zero and those of
    ``xrdnet`` peaked at the class's own peak in 63 % of the spectra, against 100 % for both
    with HiResCAM, which is exact for such heads (the map sums to the logit's linear part).

    The map is rectified, linearly interpolated to the input length (the layers' 'same'
    padding keeps positions centred) and divided by each row's maximum (a row with no positive
    evidence stays 0). Runs in eval mode (dropout off, batch-norm statistics frozen), batched;
    parameter gradients are not touched.

    Parameters
    ----------
    model : an :class:`xrdid.learn.models.XRDModel` (or any module with a Conv1d layer); for an
        :class:`~xrdid.learn.models.Ensemble` the mean of its members' maps for the ensemble's class.
    X : raw spectra (n, n_points); each row is divided by its maximum as in training.
    target : class index for all rows, one per row, or None for each row's predicted class.
    batch_size : spectra per forward/backward pass.
    method : ``"hirescam"`` or ``"gradcam"``.

    Examples
    --------
    >>> from xrdid.learn.models import build_model
    >>> cam = grad_cam(build_model("xrdnet", 512, 4), np.random.default_rng(1).random((3, 512)), target=2)
    >>> cam.shape, bool(cam.min() >= 0 and cam.max() <= 1)
    ((3, 512), True)
    """
    import torch
    import torch.nn.functional as F

    if method not in ("gradcam", "hirescam"):
        raise ValueError(f"method must be 'gradcam' or 'hirescam', got {method!r}")
    rows = _rows(X)
    n, n_points = rows.shape
    if target is None:
        targets = None
    else:
        targets = torch.as_tensor(np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy())
        n_classes = getattr(model, "n_classes", None)
        if len(targets) and (targets.min() < 0 or (n_classes is not None and targets.max() >= n_classes)):
            raise ValueError(f"target class out of range 0..{n_classes}")
    members = getattr(model, "members", None)
    if isinstance(members, torch.nn.ModuleList):  # an ensemble: its members' maps for its class, averaged
        if targets is None:
            was_training = model.training
            with torch.inference_mode():
                targets = model.eval()(rows.to(next(model.parameters()).device)).argmax(1).cpu()
            model.train(was_training)
        mean = np.mean([grad_cam(m, rows, targets.numpy(), batch_size, method) for m in members], axis=0)
        top = mean.max(axis=1, keepdims=True)
        return (mean / np.where(top > 0, top, 1.0)).astype(np.float32)
    layer = cam_layer(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros((n, n_points), np.float32)
    try:
        with torch.enable_grad():
            for start in range(0, n, batch_size):
                captured.clear()
                xb = rows[start : start + batch_size].to(device).requires_grad_(True)  # a graph even if frozen
                logits = model(xb)
                maps = captured[-1]
                if maps.dim() != 3:
                    raise ValueError(f"the CAM layer gives {tuple(maps.shape)}, not (batch, channels, length)")
                t = logits.argmax(1) if targets is None else targets[start : start + batch_size].to(device)
                score = logits.gather(1, t[:, None]).sum()  # rows are independent: one backward for the batch
                (grads,) = torch.autograd.grad(score, maps)
                weights = grads.mean(dim=2, keepdim=True) if method == "gradcam" else grads
                cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=n_points, mode="linear", align_corners=False)[:, 0]
                top = cam.amax(dim=1, keepdim=True)
                out[start : start + len(xb)] = (cam / torch.where(top > 0, top, 1.0)).detach().cpu().numpy()
    finally:
        handle.remove()
        model.train(was_training)
    return out


def features(model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Penultimate activations ``(n, d)``: the input of the model's last ``nn.Linear`` (eval mode).

    Examples
    --------
    >>> from xrdid.learn.models import build_model
    >>> features(build_model("xrdnet", 512, 4), np.ones((3, 512))).shape
    (3, 256)
    """
    import torch
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    rows = _rows(X)
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach()))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                captured.clear()
                model(rows[start : start + batch_size].to(device))
                chunks.append(captured[-1].flatten(1).float().cpu().numpy())
    finally:
        handle.remove()
        model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, linears[-1].in_features), np.float32)
