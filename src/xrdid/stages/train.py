"""The ``train`` stage: train the CNN of params.yaml on the augmented set.

Reads the ``model`` and ``train`` sections (and ``augment`` with ``train.fresh``, whose spectra
are drawn anew every epoch by the augment stage's generator). One model by default; with
``--seeds`` one per seed (mean ± std), and ``train.ensemble: N`` or ``--ensemble`` joins the
seeds' models into one :class:`~xrdid.learn.models.Ensemble`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.config import load_params
from xrdid.data.augment import Augmenter, load_noise_bank
from xrdid.data.library import Library
from xrdid.data.patterns import PatternSet
from xrdid.data.splits import load_split, read_meta
from xrdid.errors import InputError
from xrdid.learn.datasets import ArrayDataset, GeneratorDataset
from xrdid.learn.inference import predict_proba
from xrdid.learn.metrics import summarize, topk_accuracy
from xrdid.learn.models import (
    build_model,
    count_parameters,
    ensemble,
    load_model,
    read_metadata,
    save_model,
)
from xrdid.learn.train import TrainConfig, fit, parse_seeds, seed_everything
from xrdid.stages.options import add_out, add_params, add_progress, add_stage_inputs

if TYPE_CHECKING:
    from torch import nn

    from xrdid.learn.datasets import BatchSource
    from xrdid.learn.train import History


def train_model(
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
    train_params = dict(params.get("train", {}))
    stored_fresh = bool(train_params.pop("fresh", False))
    fresh = stored_fresh if fresh is None else fresh
    if seed is not None:
        train_params["seed"] = seed
    config = TrainConfig.from_params(train_params)
    X_train, y_train = load_split(augmented_dir, "train")
    X_val, y_val = load_split(augmented_dir, "val")
    meta = read_meta(augmented_dir)
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
    """Join models trained by :func:`train_model` into one :class:`~xrdid.learn.models.ensemble.Ensemble` in ``out_dir``.

    Writes ``model.safetensors`` (the members' weights, the first member's ids and grid),
    ``summary.json`` (validation Top-k of the ensemble; seconds and epochs summed over the
    members) and ``history.json`` (each member's history under ``members``), the files the
    ``register`` stage reads.

    Examples
    --------
    >>> write_ensemble([Path("models/seed-0"), Path("models/seed-1")], "data/augmented", "models")  # doctest: +SKIP
    """

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

    patterns = PatternSet.load(patterns_dir)
    augmenter = Augmenter.from_params(patterns, load_noise_bank(noise_dir, patterns.grid), Library.load(library_dir),
                                      params.get("augment", {}))
    return GeneratorDataset(lambda rng, batch: augmenter.sample(rng, batch), n_per_epoch)


def run(
    params: Mapping[str, Any],
    augmented: str | Path,
    out: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    join: bool = False,
    fresh: bool | None = None,
    patterns: str | Path = "data/patterns",
    noise: str | Path = "data/noise_bank",
    library: str | Path = "data/library",
    progress: bool = True,
) -> dict[str, Any]:
    """Train one model into ``out``, or one per seed into ``out/seed-S`` (``join``: and their ensemble into ``out``).

    Without ``seeds``, ``train.ensemble: N`` trains seeds ``train.seed .. + N - 1`` and joins them.
    Returns the summary of the model in ``out`` (with ``seeds``: ``{"seeds", "val_top"}`` mean ± std,
    also written to ``out/seeds.json``, plus ``"ensemble"``, the ensemble's summary, when joined).
    Raises ``ValueError`` for an ensemble size below 1.
    """
    settings = params.get("train") or {}
    common = dict(fresh=fresh, patterns_dir=patterns, noise_dir=noise, library_dir=library, progress=progress)
    size = int(settings.get("ensemble") or 1)
    if size < 1:
        raise ValueError(f"train.ensemble must be a positive number of models, got {size}")
    if seeds is None and size == 1:
        train_model(params, augmented, out, **common)
        return json.loads(Path(out, "summary.json").read_text())
    if seeds is None:  # train.ensemble: N seeds from train.seed on, joined into one model
        first = int(settings.get("seed", 0))
        seeds, join = list(range(first, first + size)), True
    tops: dict[str, list[float]] = {}
    for seed in seeds:
        train_model(params, augmented, Path(out) / f"seed-{seed}", seed=seed, **common)
        summary = json.loads((Path(out) / f"seed-{seed}" / "summary.json").read_text())
        for key, value in summary["val_top"].items():
            tops.setdefault(key, []).append(value)
    report: dict[str, Any] = {"seeds": list(seeds), "val_top": {key: dict(zip(("mean", "std"), summarize(values)))
                                                               for key, values in tops.items()}}
    Path(out, "seeds.json").write_text(json.dumps(report, indent=1) + "\n")
    if join:
        write_ensemble([Path(out) / f"seed-{seed}" for seed in seeds], augmented, out)
        report["ensemble"] = json.loads(Path(out, "summary.json").read_text())
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params(parser, "model, train, augment")
    add_stage_inputs(parser, "augmented")
    add_out(parser, "models", "output folder for the model")
    parser.add_argument("--seeds", default=None,
                        help="e.g. 0-4: one model per seed under OUT/seed-N, reports mean ± std (default: train.seed)")
    parser.add_argument("--ensemble", action="store_true",
                        help="with --seeds: also join the seeds' models into one (OUT/model.safetensors, mean probability)")
    parser.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=None,
                        help="draw fresh augmentations every epoch (default: train.fresh)")
    add_stage_inputs(parser, "patterns", "noise", "library", role=" (for --fresh)")
    add_progress(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    try:
        seeds = None if args.seeds is None else parse_seeds(args.seeds)
        report = run(params, args.augmented, args.out, seeds=seeds, join=args.ensemble, fresh=args.fresh,
                     patterns=args.patterns, noise=args.noise, library=args.library, progress=args.progress)
    except ValueError as exc:
        raise InputError(args.params, str(exc)) from exc
    if "seeds" not in report:
        print(f"{report['model']['name']}: val " + "  ".join(f"{k} {v:.3f}" for k, v in report["val_top"].items()))
        return 0
    print(f"{len(report['seeds'])} seeds: val "
          + "  ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in report["val_top"].items()))
    if "ensemble" in report:
        print(f"ensemble of {len(report['seeds'])} → {Path(args.out) / 'model.safetensors'}: val "
              + "  ".join(f"{k} {v:.3f}" for k, v in report["ensemble"]["val_top"].items()))
    return 0
