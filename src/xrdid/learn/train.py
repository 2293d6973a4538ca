"""Training, prediction and Top-k scoring, independent of any experiment tracking.

Typical use (what ``xrdid train`` does)::

    seed_everything(cfg.seed)
    model = build_model("xrdnet", n_points=4801, n_classes=n)
    train = ArrayDataset(np.load("x_train.npy", mmap_mode="r"), np.load("y_train.npy"))
    val = ArrayDataset(np.load("x_val.npy", mmap_mode="r"), np.load("y_val.npy"))
    history = fit(model, train, val, TrainConfig(epochs=40), checkpoint="ckpt.pt")
    probs = predict_proba(model, x_test)
    topk_accuracy(probs, y_test)            # {1: 0.93, 2: 0.97, ...}

Data sources are objects with ``len()`` (spectra per epoch) and ``batches(batch_size, *,
epoch=None, seed=0)`` yielding ``(X float32 (B, n_points), y int64 (B,))`` tensors:
:class:`ArrayDataset` (numpy arrays, memory-mapped float16 ones included) and
:class:`GeneratorDataset` (fresh augmentations every epoch). ``epoch=None`` means the
evaluation pass: fixed order, same spectra every call. Shuffling and generation use a
generator seeded by ``(seed, epoch)``, so a resumed run sees the same batches.

Each spectrum is divided by its own maximum (:func:`normalize_rows`) inside :func:`fit` and
:func:`predict_proba`; data sources hand over raw intensities.

Threads: PyTorch's default intra-op thread count (one per core) is left alone; set
``torch.set_num_threads`` in the caller, e.g. to share a machine between Optuna workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xrdid.learn.datasets import _as_source, _prefetch
from xrdid.learn.inference import normalize_rows

if TYPE_CHECKING:
    from xrdid.learn.datasets import BatchSource

import copy
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "History",
    "TrainConfig",
    "fit",
    "parse_seeds",
    "seed_everything",
]


# --------------------------------------------------------------------------- config and history


# Settings of the train section that the stage acts on, not the optimiser (TrainConfig ignores them):
# fresh augmentations, several seeds, several seeds' models joined into one (write_ensemble).
STAGE_SETTINGS = ("fresh", "seeds", "ensemble")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (the ``train`` section of ``params.yaml``).

    Defaults follow Schuetzke et al.: Adam 3e-4, batch 128, early stopping on the
    validation loss (patience 25, min_delta 1e-4, best weights restored), learning rate ×
    0.1 after 10 epochs without improvement (same min_delta, absolute, as Keras).

    ``device`` None picks CUDA when available; ``amp`` None means bf16 autocast on CUDA,
    never on CPU. ``deterministic`` asks PyTorch for deterministic kernels (warn only).

    Examples
    --------
    >>> TrainConfig.from_params({"epochs": 5, "lr": 1e-3}).epochs
    5
    """

    epochs: int = 500
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.0
    patience: int = 25
    min_delta: float = 1e-4
    lr_patience: int = 10
    lr_factor: float = 0.1
    seed: int = 0
    deterministic: bool = False
    device: str | None = None
    amp: bool | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` (typos would pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known - set(STAGE_SETTINGS))
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        values = {k: v for k, v in params.items() if k in known}
        for f in fields(cls):  # YAML reads "3e-4" as a string: coerce numbers
            if f.name in values and values[f.name] is not None and type(f.default) in (int, float):
                try:
                    values[f.name] = type(f.default)(values[f.name])
                except (TypeError, ValueError):
                    raise ValueError(f"training setting {f.name}: not a number: {values[f.name]!r}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Per-epoch metrics of :func:`fit`; epochs are numbered from 1.

    ``best_epoch`` is the epoch whose weights the model holds after :func:`fit` (0 when no
    epoch ran); ``stopped_early`` tells whether early stopping ended the run.
    """

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.val_loss)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        return cls(**{f.name: copy.copy(d[f.name]) for f in fields(cls) if f.name in d})


# --------------------------------------------------------------------------- training


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy's global generator and torch (CPU and CUDA).

    ``deterministic`` also calls ``torch.use_deterministic_algorithms(True, warn_only=True)``
    and sets ``CUBLAS_WORKSPACE_CONFIG`` (effective only before CUDA's first use). Call it
    before :func:`~xrdid.learn.models.registry.build_model` so the initial weights are reproducible.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _evaluate(
    model: nn.Module, data: BatchSource, batch_size: int, device: torch.device, amp: bool
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the evaluation pass of ``data``."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.inference_mode():
        for X, y in data.batches(batch_size):
            X, y = normalize_rows(X.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(X)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    if n == 0:
        raise ValueError("the validation data is empty")
    return loss_sum / n, correct / n


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    train_data: BatchSource | tuple[np.ndarray, np.ndarray],
    val_data: BatchSource | tuple[np.ndarray, np.ndarray],
    config: TrainConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[int, History], None] | None = None,
    **overrides: Any,
) -> History:
    """Train ``model`` in place with Adam, LR reduction on plateau and early stopping.

    Parameters
    ----------
    model : any module mapping ``(B, n_points)`` to logits ``(B, n_classes)``.
    train_data, val_data : :class:`BatchSource` objects, or ``(X, y)`` array tuples.
    config : :class:`TrainConfig`; ``**overrides`` replace its fields
        (``fit(m, tr, va, epochs=5, lr=1e-3)``).
    checkpoint : file written after every epoch (model, best weights, optimizer,
        scheduler, history and RNG states; state dicts and plain values only, loadable
        with ``weights_only=True``). If it exists, training resumes after its last epoch;
        a run that had already finished returns at once with the best weights loaded.
    progress : show a tqdm bar per epoch.
    callback : ``callback(epoch, history)`` after every epoch (1-based, after the
        checkpoint is written); its exceptions propagate (Optuna pruning, say).

    Returns
    -------
    History
        Per-epoch metrics. The model holds the weights of ``history.best_epoch`` (lowest
        validation loss, improvements counted only beyond ``min_delta``, as Keras).

    Examples
    --------
    >>> from xrdid.learn.models import build_model
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.random((64, 256)).astype(np.float32), rng.integers(0, 2, 64)
    >>> h = fit(build_model("xrdnet", 256, 2), (X, y), (X, y), epochs=2, progress=False)
    >>> h.epochs, len(h.val_acc)
    (2, 2)
    """
    cfg = replace(config or TrainConfig(), **overrides)
    train, val = _as_source(train_data), _as_source(val_data)
    device = _pick_device(cfg.device)
    amp = bool(cfg.amp if cfg.amp is not None else device.type == "cuda") and device.type == "cuda"
    previous_determinism = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    seed_everything(cfg.seed, cfg.deterministic)

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_patience < 1 or cfg.patience < 1:
        raise ValueError("patience and lr_patience must be at least 1")
    # Keras reduces at the lr_patience-th epoch without improvement, PyTorch one epoch later
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience - 1,
        threshold=cfg.min_delta, threshold_mode="abs",
    )  # fmt: skip
    history = History()
    best_state = _state_copy(model)
    wait = 0  # epochs since the last improvement
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History.from_dict(state["history"])
        best_state, wait = state["best_model"], int(state["wait"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    try:
        for epoch in range(history.epochs + 1, cfg.epochs + 1):
            if history.stopped_early:
                break
            start = time.perf_counter()
            model.train()
            loss_sum, correct, n = 0.0, 0, 0
            bar = tqdm(
                total=len(train), desc=f"epoch {epoch}/{cfg.epochs}", unit="spectra", disable=not progress, leave=False
            )
            for X, y in _prefetch(train.batches(cfg.batch_size, epoch=epoch, seed=cfg.seed)):
                X, y = normalize_rows(X.to(device, non_blocking=True)), y.to(device, non_blocking=True)
                with _autocast(device, amp):
                    logits = model(X)
                loss = nn.functional.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                n += len(y)
                bar.update(len(y))
                bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.3f}")
            bar.close()
            if n == 0:
                raise ValueError("the training data is empty")
            val_loss, val_acc = _evaluate(model, val, cfg.batch_size, device, amp)
            history.train_loss.append(loss_sum / n)
            history.train_acc.append(correct / n)
            history.val_loss.append(val_loss)
            history.val_acc.append(val_acc)
            history.lr.append(optimizer.param_groups[0]["lr"])
            if val_loss < history.best_val_loss - cfg.min_delta:
                history.best_val_loss, history.best_epoch, wait = val_loss, epoch, 0
                best_state = _state_copy(model)
            else:
                wait += 1
            scheduler.step(val_loss)
            history.stopped_early = wait >= cfg.patience
            history.seconds.append(time.perf_counter() - start)
            if progress:
                tqdm.write(
                    f"epoch {epoch}: loss {history.train_loss[-1]:.4f} acc {history.train_acc[-1]:.4f} "
                    f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} lr {history.lr[-1]:.2e} "
                    f"({history.seconds[-1]:.1f} s)"
                )
            if path is not None:
                _save_checkpoint(path, model, best_state, optimizer, scheduler, history, wait, cfg, device)
            if callback is not None:
                callback(epoch, history)
        model.load_state_dict(best_state)
    finally:
        torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])
    return history


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    best_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    history: History,
    wait: int,
    cfg: TrainConfig,
    device: torch.device,
) -> None:
    state = {
        "model": model.state_dict(),
        "best_model": best_state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history.to_dict(),
        "wait": wait,
        "config": cfg.to_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken checkpoint


# --------------------------------------------------------------------------- multi-seed helpers


def parse_seeds(spec: str | int) -> list[int]:
    """Seeds from ``"0-4"``, ``"0,2,5"``, ``"0-2,7"`` or one integer.

    Examples
    --------
    >>> parse_seeds("0-4"), parse_seeds("0,2,5"), parse_seeds("1-2, 7"), parse_seeds(3)
    ([0, 1, 2, 3, 4], [0, 2, 5], [1, 2, 7], [3])
    """
    if isinstance(spec, int):
        return [spec]
    seeds: list[int] = []
    try:
        for part in str(spec).split(","):
            lo, sep, hi = part.strip().partition("-")
            if sep and not lo:  # a lone negative number is not a range
                raise ValueError
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                raise ValueError
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise ValueError(f"invalid seed list {spec!r}: use e.g. '0-4' or '0,2,5'") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed list {spec!r} repeats a seed")
    return seeds
