"""Training batches: spectra held in memory or memory-mapped, or drawn anew by a generator."""

from __future__ import annotations

import threading
from queue import Full, Queue
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

# One batch: spectra (float32, rows max-normalised) and their labels.
Batch = tuple[torch.Tensor, torch.Tensor]


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
