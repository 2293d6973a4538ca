"""Training and inference throughput of the models: ``wang`` (7 conv layers) against ``xrdnet``.

Both models run in this process on the same random batch (raw spectra, normalized as in
``fit``), taking turns step by step; a training step is forward + backward + Adam step with
cross-entropy, as in :func:`xrdid.learn.train.fit`. Prints spectra/s per model (median step) and
the xrdnet/wang ratios. Usage::

    python benchmarks/train.py [--device cuda] [--n-points 4801] [--batch 128] [--classes 500]
                               [--steps 8] [--models wang xrdnet cnn6 ...] [--inference-only]

``--models all`` times the whole zoo (slow on CPU: the published models cost up to 30× more).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from xrdid.learn.inference import normalize_rows
from xrdid.learn.models import MODELS, _flops_hint, build_model, count_parameters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _steps(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, dict[str, Callable[[], None]]]:
    """The model and its inference and training step on one fixed random batch."""
    torch.manual_seed(0)
    options = {"conv_layers": 7} if name == "wang" else {}
    model = build_model(name, args.n_points, args.classes, **options).to(device)
    amp = device.type == "cuda" and not args.no_amp
    gen = torch.Generator().manual_seed(0)
    X = (torch.rand(args.batch, args.n_points, generator=gen) * 1000).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def train() -> None:
        model.train()
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            logits = model(normalize_rows(X))
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            model(normalize_rows(X))

    return model, {"infer": infer, "train": train}


def _interleaved(steps: dict[str, Callable[[], None]], device: torch.device, n: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each model, the models' steps taken in turn.

    Taking turns spreads any change of machine load (other processes) over all models,
    so their ratio stays fair on a shared machine.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-points", type=int, default=4801)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--models", nargs="+", default=["wang", "xrdnet"], help="names, or 'all'")
    parser.add_argument("--inference-only", action="store_true")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = sorted(MODELS) if args.models == ["all"] else args.models

    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.n_points} points, batch {args.batch}, "
          f"{args.classes} classes, median of {args.steps} steps, models taking turns")  # fmt: skip
    load = os.getloadavg()[0]
    if device.type == "cpu" and load > 1 and torch.get_num_threads() > 1:
        print(f"note: load average {load:.1f} before the run: other processes share the CPU; "
              "OpenMP threads then wait on each other; --threads 1 gives steadier numbers")  # fmt: skip
    header = f"{'model':8s} {'params':>12s} {'MMAC/spec':>10s} {'infer ms':>9s} {'infer sp/s':>11s}"
    print(header + ("" if args.inference_only else f" {'train ms':>9s} {'train sp/s':>11s}"))
    models, infer_steps, train_steps = {}, {}, {}
    for name in names:
        models[name], step = _steps(name, args, device)
        infer_steps[name], train_steps[name] = step["infer"], step["train"]
    infer = _interleaved(infer_steps, device, args.steps, args.warmup)
    train = {} if args.inference_only else _interleaved(train_steps, device, args.steps, args.warmup)
    results = {}
    for name, model in models.items():
        macs = _flops_hint(model.to("cpu")) if device.type == "cpu" else float("nan")
        r = results[name] = {"params": count_parameters(model), "infer_sps": args.batch / infer[name]}
        line = f"{name:8s} {r['params']:12,d} {macs / 1e6:10.1f} {infer[name] * 1e3:9.1f} {r['infer_sps']:11.0f}"
        if train:
            r["train_sps"] = args.batch / train[name]
            line += f" {train[name] * 1e3:9.1f} {r['train_sps']:11.0f}"
        print(line, flush=True)
    if "wang" in results and "xrdnet" in results:
        a, b = results["xrdnet"], results["wang"]
        ratios = f"xrdnet / wang throughput: inference {a['infer_sps'] / b['infer_sps']:.2f}x"
        if not args.inference_only:
            ratios += f", training {a['train_sps'] / b['train_sps']:.2f}x"
        print(ratios + f", parameters {a['params'] / b['params']:.2f}x")


if __name__ == "__main__":
    main()
