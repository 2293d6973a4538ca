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

import argparse
import copy
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from queue import Full, Queue
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "ArrayDataset",
    "BatchSource",
    "GeneratorDataset",
    "History",
    "TrainConfig",
    "fit",
    "normalize_rows",
    "parse_seeds",
    "predict_proba",
    "seed_everything",
    "summarize",
    "topk_accuracy",
]

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- data


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


class BatchSource(Protocol):
    """What :func:`fit` trains and validates on."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, epoch: int | None = None, seed: int = 0) -> Iterator[Batch]: ...


class ArrayDataset:
    """Batches from arrays ``X (n, n_points)`` and ``y (n,)`` without loading ``X`` whole.

    ``X`` may be a read-only ``np.memmap`` / ``np.load(..., mmap_mode="r")`` array of any
    float dtype (float16 halves the disk and page cache): each batch reads only its rows,
    in sorted order (sequential disk access; the order inside a batch does not matter to
    the loss), and converts them to float32.

    Examples
    --------
    >>> ds = ArrayDataset(np.eye(4, dtype=np.float16), np.arange(4))
    >>> [y.tolist() for _, y in ds.batches(3)]
    [[0, 1, 2], [3]]
    >>> sorted(sum((y.tolist() for _, y in ds.batches(3, epoch=0, seed=1)), []))
    [0, 1, 2, 3]
    """

    def __init__(self, X: np.ndarray, y: np.ndarray | Sequence[int]) -> None:
        y = np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"need X (n, n_points) and y (n,), got {X.shape} and {y.shape}")
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise ValueError("labels must be non-negative integers")
        self.X = X
        self.y = y.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.X.shape[1])

    def batches(self, batch_size: int, *, epoch: int | None = None, seed: int = 0) -> Iterator[Batch]:
        n = len(self)
        order = np.arange(n) if epoch is None else np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if epoch is None:  # contiguous slice: one read; copied, as a memmap slice is a read-only view
                rows = np.array(self.X[start : start + batch_size], dtype=np.float32)
            else:
                idx = np.sort(idx)
                rows = np.asarray(self.X[idx], dtype=np.float32)  # fancy indexing already copies
            yield torch.from_numpy(rows), torch.from_numpy(self.y[idx])


class GeneratorDataset:
    """``n_per_epoch`` spectra per epoch drawn by ``sample_fn(rng, batch_size) -> (X, y)``.

    Training epochs draw fresh spectra from ``np.random.default_rng([self.seed, seed,
    epoch])``; the evaluation pass (``epoch=None``) draws the same spectra every call.

    Examples
    --------
    >>> def draw(rng, b):
    ...     return rng.random((b, 8)), rng.integers(0, 2, b)
    >>> ds = GeneratorDataset(draw, 10, seed=3)
    >>> [x.shape[0] for x, _ in ds.batches(4)]
    [4, 4, 2]
    >>> a, b = (next(ds.batches(4))[0] for _ in range(2))
    >>> bool((a == b).all())
    True
    """

    def __init__(
        self,
        sample_fn: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]],
        n_per_epoch: int,
        seed: int = 0,
    ) -> None:
        if n_per_epoch < 1:
            raise ValueError("n_per_epoch must be positive")
        self.sample_fn = sample_fn
        self.n_per_epoch = int(n_per_epoch)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n_per_epoch

    def batches(self, batch_size: int, *, epoch: int | None = None, seed: int = 0) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed] if epoch is None else [self.seed, seed, epoch])
        for start in range(0, self.n_per_epoch, batch_size):
            X, y = self.sample_fn(rng, min(batch_size, self.n_per_epoch - start))
            yield (
                torch.as_tensor(np.asarray(X, dtype=np.float32)),
                torch.as_tensor(np.asarray(y, dtype=np.int64)),
            )


def _prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Produce batches in a background thread while the model trains on the previous ones.

    numpy's memmap reads, fancy indexing and dtype casts release the GIL, so reading and
    converting the next batch overlaps with the forward/backward pass.
    """
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():  # never block for good: the consumer may be gone
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


def _as_source(data: BatchSource | tuple[np.ndarray, np.ndarray]) -> BatchSource:
    return ArrayDataset(*data) if isinstance(data, tuple) else data


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
    before :func:`~xrdid.models.build_model` so the initial weights are reproducible.
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
    >>> from xrdid.models import build_model
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


# --------------------------------------------------------------------------- prediction and scoring


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


# --------------------------------------------------------------------------- the stage


def train_stage(
    params: Mapping[str, Any],
    augmented_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int | None = None,
    fresh: bool | None = None,
    patterns_dir: str | Path = "data/patterns",
    noise_dir: str | Path = "data/noise_bank",
    library_dir: str | Path = "data/library",
    progress: bool = True,
) -> tuple[nn.Module, History]:
    """Train the model of ``params['model']`` with ``params['train']``; save it to ``out_dir``.

    ``fresh`` (default ``train.fresh``) draws new augmentations every epoch from the same
    generator as the ``augment`` stage instead of reading the stored training split; the
    validation split is always the stored one, so both modes are scored alike.
    Writes ``model.safetensors`` (weights + config), ``history.json`` and ``summary.json``.
    """
    from xrdid.evaluate import load_split
    from xrdid.models import build_model, count_parameters, save_model

    train_params = dict(params.get("train", {}))
    stored_fresh = bool(train_params.pop("fresh", False))
    fresh = stored_fresh if fresh is None else fresh
    if seed is not None:
        train_params["seed"] = seed
    config = TrainConfig.from_params(train_params)
    X_train, y_train = load_split(augmented_dir, "train")
    X_val, y_val = load_split(augmented_dir, "val")
    meta = json.loads(Path(augmented_dir, "meta.json").read_text())
    n_classes = len(meta["ids"])
    model_params = dict(params.get("model", {"name": "xrdnet"}))
    seed_everything(config.seed, config.deterministic)  # the initial weights depend on the seed too
    model = build_model(model_params.pop("name"), X_train.shape[1], n_classes, options=model_params.pop("options", None),
                        **model_params)
    if fresh:
        train_data: BatchSource = _fresh_source(params, patterns_dir, noise_dir, library_dir, len(y_train))
    else:
        train_data = ArrayDataset(X_train, y_train)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    history = fit(model, train_data, ArrayDataset(X_val, y_val), config, progress=progress)
    seconds = time.perf_counter() - start
    val = topk_accuracy(predict_proba(model, X_val), y_val)
    save_model(model, out / "model.safetensors", {"ids": json.dumps(meta["ids"]), "grid": json.dumps(meta["grid"])})
    (out / "history.json").write_text(json.dumps(history.to_dict(), indent=1) + "\n")
    summary = {
        "model": model.config, "parameters": count_parameters(model), "train": config.to_dict(), "fresh": fresh,
        "epochs": history.epochs, "best_epoch": history.best_epoch, "seconds": round(seconds, 1),
        "val_top": {f"top{k}": v for k, v in val.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return model, history


def write_ensemble(member_dirs: list[Path], augmented_dir: str | Path, out_dir: str | Path) -> nn.Module:
    """Join models trained by :func:`train_stage` into one :class:`~xrdid.models.Ensemble` in ``out_dir``.

    Writes ``model.safetensors`` (the members' weights, the first member's ids and grid),
    ``summary.json`` (validation Top-k of the ensemble; seconds and epochs summed over the
    members) and ``history.json`` (each member's history under ``members``), the files the
    ``register`` stage reads.

    Examples
    --------
    >>> write_ensemble([Path("models/seed-0"), Path("models/seed-1")], "data/augmented", "models")  # doctest: +SKIP
    """
    from xrdid.evaluate import load_split
    from xrdid.models import count_parameters, ensemble, load_model, read_metadata, save_model

    member_dirs = [Path(d) for d in member_dirs]
    combined = ensemble([load_model(d / "model.safetensors") for d in member_dirs])
    meta = {k: v for k, v in read_metadata(member_dirs[0] / "model.safetensors").items() if k in ("ids", "grid")}
    summaries = [json.loads((d / "summary.json").read_text()) for d in member_dirs]
    X_val, y_val = load_split(augmented_dir, "val")
    val = topk_accuracy(predict_proba(combined, X_val), y_val)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(combined, out / "model.safetensors", meta)
    summary = {
        "model": combined.config, "parameters": count_parameters(combined), "train": summaries[0]["train"],
        "fresh": summaries[0]["fresh"], "epochs": sum(m["epochs"] for m in summaries),
        "best_epoch": max(m["best_epoch"] for m in summaries), "seconds": round(sum(m["seconds"] for m in summaries), 1),
        "val_top": {f"top{k}": v for k, v in val.items()},
        "members": [{"folder": str(d), "seed": m["train"]["seed"], "val_top": m["val_top"]} for d, m in zip(member_dirs, summaries)],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    histories = [json.loads((d / "history.json").read_text()) for d in member_dirs]
    (out / "history.json").write_text(json.dumps({"members": histories}, indent=1) + "\n")
    return combined


def _fresh_source(params: Mapping[str, Any], patterns_dir: str | Path, noise_dir: str | Path,
                  library_dir: str | Path, n_per_epoch: int) -> GeneratorDataset:
    """Augmentations drawn anew every batch by the augment stage's generator."""
    from xrdid.augment import Augmenter, load_noise_bank
    from xrdid.diffraction import PatternSet
    from xrdid.library import Library

    patterns = PatternSet.load(patterns_dir)
    augmenter = Augmenter.from_params(patterns, load_noise_bank(noise_dir, patterns.grid), Library.load(library_dir),
                                      params.get("augment", {}))
    return GeneratorDataset(lambda rng, batch: augmenter.sample(rng, batch), n_per_epoch)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="stage: train the CNN named in params.yaml on the augmented set")
    p.add_argument("--params", default="params.yaml", help="parameter file (sections model, train, augment)")
    p.add_argument("--augmented", default="data/augmented", help="augmented splits from `xrdid augment`")
    p.add_argument("--out", default="models", help="output folder for the model")
    p.add_argument("--seeds", default=None,
                   help="e.g. 0-4: one model per seed under OUT/seed-N, reports mean ± std (default: train.seed)")
    p.add_argument("--ensemble", action="store_true",
                   help="with --seeds: also join the seeds' models into one (OUT/model.safetensors, mean probability)")
    p.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=None,
                   help="draw fresh augmentations every epoch (default: train.fresh)")
    p.add_argument("--patterns", default="data/patterns", help="simulated patterns (for --fresh)")
    p.add_argument("--noise", default="data/noise_bank", help="noise bank (for --fresh)")
    p.add_argument("--library", default="data/library", help="library (for --fresh)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from xrdid.config import load_params
    from xrdid.errors import InputError

    params = load_params(args.params)
    common = dict(fresh=args.fresh, patterns_dir=args.patterns, noise_dir=args.noise, library_dir=args.library,
                  progress=not args.no_progress)
    settings = params.get("train") or {}
    size = int(settings.get("ensemble") or 1)
    try:
        if size < 1:
            raise ValueError(f"train.ensemble must be a positive number of models, got {size}")
        if args.seeds is None and size == 1:
            train_stage(params, args.augmented, args.out, **common)
            summary = json.loads(Path(args.out, "summary.json").read_text())
            print(f"{summary['model']['name']}: val " + "  ".join(f"{k} {v:.3f}" for k, v in summary["val_top"].items()))
            return 0
        if args.seeds is None:  # train.ensemble: N seeds from train.seed on, joined into one model
            first = int(settings.get("seed", 0))
            seeds, join = list(range(first, first + size)), True
        else:
            seeds, join = parse_seeds(args.seeds), args.ensemble
    except ValueError as exc:
        raise InputError(args.params, str(exc)) from exc
    tops: dict[str, list[float]] = {}
    for seed in seeds:
        train_stage(params, args.augmented, Path(args.out) / f"seed-{seed}", seed=seed, **common)
        summary = json.loads((Path(args.out) / f"seed-{seed}" / "summary.json").read_text())
        for key, value in summary["val_top"].items():
            tops.setdefault(key, []).append(value)
    report = {key: dict(zip(("mean", "std"), summarize(values))) for key, values in tops.items()}
    Path(args.out, "seeds.json").write_text(json.dumps({"seeds": seeds, "val_top": report}, indent=1) + "\n")
    print(f"{len(seeds)} seeds: val " + "  ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in report.items()))
    if join:
        write_ensemble([Path(args.out) / f"seed-{seed}" for seed in seeds], args.augmented, args.out)
        summary = json.loads(Path(args.out, "summary.json").read_text())
        print(f"ensemble of {len(seeds)} → {Path(args.out) / 'model.safetensors'}: val "
              + "  ".join(f"{k} {v:.3f}" for k, v in summary["val_top"].items()))
    return 0
