"""``xrdid tune`` and ``xrdid tune ablation``: Optuna studies from the command line."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING

from xrdid.config import load_params
from xrdid.errors import InputError
from xrdid.learn.train import parse_seeds
from xrdid.ops.tune import ABLATION_PARAMS, TuneSettings, run_ablation, run_study
from xrdid.ops.tune.objective import _fmt
from xrdid.stages.options import add_params, add_progress

if TYPE_CHECKING:
    from typing import Any

    import optuna


def _common(p: argparse.ArgumentParser) -> None:
    add_params(p, "tune, train, model, tracking")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: OPTUNA_STORAGE, else tune.storage, else sqlite:///optuna.db in "
                        "the working directory); postgresql+psycopg2://user:pw@host:port/db for several workers")
    p.add_argument("--augmented", default="data/augmented", help="augmented set at the largest ratio searched")
    p.add_argument("--patterns", default="data/patterns", help="simulated patterns (go with a registered model)")
    p.add_argument("--library", default="data/library", help="library (index of a registered model)")
    p.add_argument("--out", default=None, help="local outputs (default: tune.out/STUDY)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: tune.seed)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this worker (default: tune.threads, else PyTorch's default)")
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True,
                   help="log a parent run and one nested run per trial (default: on)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="history/importance plots at the end (default: on; extra workers may skip them)")
    add_progress(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``xrdid tune`` and ``xrdid tune ablation``."""
    p.description = ("Run (or resume) an Optuna study until it holds N complete or pruned trials. Several workers "
                    "on one storage share the study. `xrdid tune ablation --help`: one-parameter sweeps. "
                    "Options of `ablation` go after the word ablation.")
    p.add_argument("--study", default=None, help="study name (default: tune.study)")
    p.add_argument("--n-trials", type=int, default=None,
                   help="complete + pruned trials the study should hold, all workers together (default: tune.n_trials)")
    p.add_argument("--register", action=argparse.BooleanOptionalAction, default=None,
                   help="register the best trial's model; champion moves only if it wins (default: tune.register)")
    _common(p)
    p.set_defaults(func=_tune)
    sub = p.add_subparsers(dest="tune_command", metavar="{ablation}")
    a = sub.add_parser("ablation", help="sweep one parameter on a grid, the others fixed; CSV + PNG",
                       description="Train every value (× seed) once with the others at tune.ablation.base; write "
                                   "OUT/PARAM.csv, OUT/PARAM_summary.csv and OUT/PARAM.png (default OUT: "
                                   "tune.out/ablation).")
    a.add_argument("--param", required=True, choices=ABLATION_PARAMS, help="the parameter swept")
    a.add_argument("--values", nargs="+", type=int, default=None,
                   help="its values (default: tune.ablation.values.PARAM)")
    a.add_argument("--seeds", default="0", help="training seeds per value, e.g. 0-2 (mean ± std)")
    a.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override fixed settings of tune.ablation.base, e.g. epochs=10 ratio=20")
    a.add_argument("--study", default=None, help="study name (default: derived from the grid and the data)")
    _common(a)
    a.set_defaults(func=_ablation)


def _setup(args: argparse.Namespace) -> tuple[dict[str, Any], TuneSettings]:
    import torch

    params = load_params(args.params)
    try:
        settings = TuneSettings.from_params(params.get("tune"))
    except (TypeError, ValueError) as exc:
        raise InputError(args.params, f"tune section: {exc}") from exc
    threads = args.threads if args.threads is not None else settings.threads
    if threads:
        torch.set_num_threads(int(threads))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # xrdid.tune logs one fuller line per trial
    return params, settings


def _tune(args: argparse.Namespace) -> int:
    params, settings = _setup(args)
    study = run_study(params, args.study, args.n_trials, storage=args.storage, augmented=args.augmented,
                      out=args.out, seed=args.seed, use_mlflow=args.mlflow, register=args.register,
                      library=args.library, patterns=args.patterns, progress=args.progress, plots=args.plots)
    _print_summary(study)
    return 0


def _print_summary(study: optuna.Study) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = Counter(t.state.name.lower() for t in trials)
    print(f"study {study.study_name}: " + ", ".join(f"{n} {s}" for s, n in sorted(count.items())))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: t.value)
        tops = "  ".join(f"top{k} {best.user_attrs.get(f'top{k}', float('nan')):.3f}" for k in range(1, 6))
        print(f"best trial {best.number}: {tops}  " + " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))


def _ablation(args: argparse.Namespace) -> int:
    import yaml

    params, _ = _setup(args)
    base = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(item, "--set takes KEY=VALUE")
        base[key] = yaml.safe_load(value)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        raise InputError("--seeds", str(exc)) from exc
    rows = run_ablation(params, args.param, args.values, seeds, study_name=args.study, base=base, out=args.out,
                        storage=args.storage, augmented=args.augmented, seed=args.seed, use_mlflow=args.mlflow,
                        library=args.library, patterns=args.patterns, progress=args.progress,
                        plots=args.plots)
    print(f"{args.param:>12}  " + "  ".join(f"top{k:<7}" for k in range(1, 6)) + "  epochs  seconds")
    for r in rows:
        tops = "  ".join(f"{r[f'top{k}']:.3f}±{r[f'top{k}_std']:.2f}" for k in range(1, 6))
        print(f"{r['value']:>12}  {tops}  {r['epochs_run']:>6.1f}  {r['seconds']:>7.1f}")
    return 0
