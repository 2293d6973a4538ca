"""Training loop, data sources, prediction, Top-k scoring and the multi-seed helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrdid.learn.datasets import ArrayDataset, GeneratorDataset
from xrdid.learn.inference import normalize_rows, predict_proba
from xrdid.learn.metrics import summarize, topk_accuracy
from xrdid.learn.models import build_model
from xrdid.learn.train import History, TrainConfig, fit, parse_seeds

N_POINTS = 256
CENTERS = np.array([[40, 120], [60, 200], [100, 170], [150, 230]])  # 4 classes, 2 peaks each


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _peaks(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian peaks at class positions, shifted by up to ±6 points, random heights, noise."""
    y = rng.integers(0, len(CENTERS), n)
    pos = CENTERS[y] + rng.integers(-6, 7, (n, 1))
    heights = rng.uniform(0.5, 1.0, (n, 2))
    x = np.arange(N_POINTS)
    X = (heights[:, :, None] * np.exp(-((x - pos[:, :, None]) ** 2) / (2 * 3.0**2))).sum(1)
    X = X * rng.uniform(50, 500, (n, 1)) + rng.uniform(0, 5, (n, N_POINTS))  # raw counts: scale and noise
    return X.astype(np.float32), y


def _small_model(n_classes: int = len(CENTERS)) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("xrdnet", N_POINTS, n_classes, widths=[16, 16], stem_channels=16, bins=16, hidden=32)


def _arrays(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    return _peaks(np.random.default_rng(seed), n)


def test_fit_learns_separable_peaks() -> None:
    model = _small_model()
    train = GeneratorDataset(_peaks, 384, seed=1)
    val = GeneratorDataset(_peaks, 256, seed=2)
    history = fit(model, train, val, epochs=4, lr=3e-3, batch_size=64, progress=False)
    assert history.epochs == 4 and not history.stopped_early
    assert history.val_acc[-1] >= 0.9
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.best_epoch >= 1 and history.val_loss[history.best_epoch - 1] == history.best_val_loss
    X, y = _arrays(3, 200)
    assert topk_accuracy(predict_proba(model, X), y, k=1)[1] >= 0.9


def test_early_stopping_restores_best_weights() -> None:
    model = _small_model()
    snapshots: list[dict[str, torch.Tensor]] = []

    def keep(epoch: int, history: History) -> None:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    # with min_delta this large only the first epoch counts as an improvement
    history = fit(
        model, _arrays(0, 128), _arrays(1, 64), epochs=10, patience=2, min_delta=100.0, lr=1e-2,
        batch_size=32, progress=False, callback=keep,
    )  # fmt: skip
    assert history.stopped_early and history.epochs == 3 and history.best_epoch == 1
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[0][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[-1][k]) for k in final)


def test_lr_is_reduced_on_plateau() -> None:
    history = fit(
        _small_model(), _arrays(0, 64), _arrays(1, 32), epochs=4, lr_patience=1, min_delta=100.0,
        patience=100, lr=1e-3, lr_factor=0.1, batch_size=32, progress=False,
    )  # fmt: skip
    assert history.lr[0] == pytest.approx(1e-3) and history.lr[-1] == pytest.approx(1e-5)


def test_checkpoint_resume_continues_from_saved_epoch(tmp_path) -> None:
    train, val = _arrays(0, 128), _arrays(1, 64)
    kw = dict(lr=3e-3, batch_size=32, progress=False, seed=7)
    straight = fit(_small_model(), train, val, epochs=4, **kw)

    path = tmp_path / "ckpt.pt"
    first = fit(_small_model(), train, val, epochs=2, checkpoint=path, **kw)
    assert path.exists() and first.epochs == 2
    seen: list[int] = []
    resumed_model = _small_model()
    resumed = fit(resumed_model, train, val, epochs=4, checkpoint=path, callback=lambda e, h: seen.append(e), **kw)
    assert seen == [3, 4] and resumed.epochs == 4
    assert resumed.val_loss[:2] == first.val_loss
    np.testing.assert_allclose(resumed.val_loss, straight.val_loss, rtol=1e-5)
    # a finished run resumes to nothing and returns the best weights
    again = fit(_small_model(), train, val, epochs=4, checkpoint=path, callback=lambda e, h: seen.append(e), **kw)
    assert seen == [3, 4] and again.val_loss == resumed.val_loss
    state = torch.load(path, weights_only=True)  # plain state dicts, no pickled objects
    assert set(state) >= {"model", "optimizer", "scheduler", "history", "torch_rng"}


def test_callback_exceptions_propagate() -> None:
    class Prune(Exception):
        pass

    def prune(epoch: int, history: History) -> None:
        raise Prune

    with pytest.raises(Prune):
        fit(_small_model(), _arrays(0, 32), _arrays(1, 32), epochs=3, progress=False, callback=prune)


def test_data_errors_propagate() -> None:
    def broken(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("augmentation broke")

    with pytest.raises(RuntimeError, match="augmentation broke"):
        fit(_small_model(), GeneratorDataset(broken, 64), _arrays(1, 32), epochs=1, progress=False)


def test_array_dataset_over_float16_memmap(tmp_path) -> None:
    X, y = _arrays(0, 50)
    path = tmp_path / "x.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    ds = ArrayDataset(np.load(path, mmap_mode="r"), y)
    assert isinstance(ds.X, np.memmap) and len(ds) == 50 and ds.n_points == N_POINTS

    def collect(**kw):
        xs, ys = zip(*ds.batches(16, **kw))
        assert all(x.dtype == torch.float32 and x.shape[1] == N_POINTS for x in xs)
        assert all(b.dtype == torch.int64 for b in ys)
        return torch.cat(xs), torch.cat(ys)

    xe, ye = collect()  # evaluation pass: file order
    assert torch.equal(ye, torch.from_numpy(y)) and torch.allclose(xe, torch.from_numpy(X), rtol=1e-3, atol=1e-2)
    xa, ya = collect(epoch=1, seed=3)
    xb, yb = collect(epoch=1, seed=3)
    xc, yc = collect(epoch=2, seed=3)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # reproducible per (seed, epoch)
    assert not torch.equal(ya, yc)  # reshuffled every epoch
    assert sorted(ya.tolist()) == sorted(y.tolist())  # each spectrum once
    # rows stay paired with their labels through the shuffle
    label_of = {r.numpy().tobytes(): int(lab) for r, lab in zip(xe, ye)}
    assert all(label_of[r.numpy().tobytes()] == int(lab) for r, lab in zip(xa, ya))
    probs = predict_proba(_small_model(), ds.X, batch_size=16)
    assert probs.shape == (50, len(CENTERS)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_array_dataset_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        ArrayDataset(np.zeros((4, 8)), np.zeros(3, int))
    with pytest.raises(ValueError):
        ArrayDataset(np.zeros((4, 8)), np.array([0, 1, -1, 2]))


def test_generator_dataset_draws_fresh_spectra_each_epoch() -> None:
    ds = GeneratorDataset(_peaks, 40, seed=5)
    assert len(ds) == 40 and [len(y) for _, y in ds.batches(16, epoch=1)] == [16, 16, 8]
    first = torch.cat([x for x, _ in ds.batches(16, epoch=1)])
    assert torch.equal(first, torch.cat([x for x, _ in ds.batches(16, epoch=1)]))
    assert not torch.equal(first, torch.cat([x for x, _ in ds.batches(16, epoch=2)]))
    assert torch.equal(torch.cat([x for x, _ in ds.batches(16)]), torch.cat([x for x, _ in ds.batches(16)]))


def test_normalize_rows() -> None:
    a = np.array([[2.0, 4.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(normalize_rows(a), [[0.5, 1.0, 0.25], [0, 0, 0]])
    t = normalize_rows(torch.tensor(a, dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.tensor([[0.5, 1.0, 0.25], [0, 0, 0]]))


def test_topk_accuracy_hand_computed() -> None:
    scores = np.array(
        [
            [0.1, 0.6, 0.3, 0.0],  # true 1: rank 0
            [0.1, 0.6, 0.3, 0.0],  # true 2: rank 1
            [0.1, 0.6, 0.3, 0.0],  # true 0: rank 2
            [0.1, 0.6, 0.3, 0.0],  # true 3: rank 3
        ]
    )
    acc = topk_accuracy(scores, [1, 2, 0, 3], k=(1, 2, 3, 4, 5))
    assert acc == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 5: 1.0}
    # ties count against the true class, whatever its index
    tied = np.full((2, 3), 1 / 3)
    assert topk_accuracy(tied, [0, 2], k=(1, 2, 3)) == {1: 0.0, 2: 0.0, 3: 1.0}
    assert topk_accuracy(torch.tensor(scores), [1, 1, 1, 1], k=1) == {1: 1.0}
    with pytest.raises(ValueError):
        topk_accuracy(scores, [0, 1, 2, 4])
    with pytest.raises(ValueError):
        topk_accuracy(scores, [0, 1, 2])


def test_train_config_from_params() -> None:
    cfg = TrainConfig.from_params({"epochs": 3, "batch_size": 16})
    assert cfg.epochs == 3 and cfg.lr == 3e-4 and cfg.to_dict()["batch_size"] == 16
    with pytest.raises(ValueError, match="epoch"):
        TrainConfig.from_params({"epoch": 3})


def test_parse_seeds_and_summarize() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds(" 3 ") == [3] and parse_seeds(9) == [9]
    for bad in ("", "4-1", "a", "1,1", "-3"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    mean, std = summarize([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)
    assert summarize([3.0]) == (3.0, 0.0)
