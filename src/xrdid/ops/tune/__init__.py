"""Optuna studies over the augmentation ratio, the epochs and the conv depth (``xrdid tune``).

The search space is the ``tune`` section of ``params.yaml``. A trial draws an augmentation
ratio, training settings (epochs, learning rate, batch size) and model options (the ``wang``
network's ``conv_layers``, its dropout), trains on the stored augmented set and returns its
validation Top-1 with ties broken by Top-5 (``top1 + tie_break * top5``), or the same on the
measured test set of ``evaluate.measured`` (``tune.objective: measured``).

The pieces, each importing only those before it:

- :mod:`~xrdid.ops.tune.data`: the stored augmented set, opened once per worker
  (:class:`TuneData`), and a ratio's subset of it (:func:`ratio_rows`): the first spectra of
  every entry, scored on the whole validation split, the same yardstick for every trial.
- :mod:`~xrdid.ops.tune.space`: the ``tune`` settings (:class:`TuneSettings`) and drawing a
  configuration from the space (:func:`suggest`).
- :mod:`~xrdid.ops.tune.storage`: the Optuna RDB storage (SQLite ``optuna.db`` by default,
  PostgreSQL for workers on several machines) with heartbeats, so a dead worker's trial is
  failed after ``grace_period`` s and queued again with the same parameters; samplers, pruners
  and the lock that serialises trial creation between workers, so ``--n-trials`` is the study's
  exact total of complete and pruned trials (a killed study restarted with the same command
  finishes it).
- :mod:`~xrdid.ops.tune.objective`: one trial (:class:`Objective`): train, report every epoch
  to the pruner, score; one nested MLflow run per trial; and the loop that runs trials.
- :mod:`~xrdid.ops.tune.study`: :func:`run_study`: one MLflow parent run per invocation (per
  worker), then the plots, the trials table and the best trial's model, which ``register``
  adds to the model registry (``champion`` moves only if it wins).
- :mod:`~xrdid.ops.tune.ablation`: :func:`run_ablation`: one parameter on a grid, the others
  fixed; CSV and plot.

Importing the package stays light: torch, optuna, mlflow, matplotlib, sqlalchemy and the
modules that pull them in (``xrdid.learn``, ``xrdid.ops.registry``, ``xrdid.data.measured_set``)
are imported inside the functions that need them. Everything logs to the ``xrdid.tune`` logger.

Examples
--------
Python, on a folder written by ``xrdid augment``::

    params = load_params("params.yaml")
    study = run_study(params, "depth", n_trials=20, augmented="data/augmented")
    study.best_params                   # {'ratio': 35, 'epochs': 40, 'conv_layers': 7, ...}

Shell::

    xrdid tune --study depth --n-trials 20                        # SQLite optuna.db
    xrdid tune --study depth --n-trials 40 --storage postgresql+psycopg2://xrdid:xrdid@db:5432/xrdid
    optuna trials --study-name depth --storage sqlite:///optuna.db
    optuna-dashboard sqlite:///optuna.db
    xrdid tune ablation --param conv_layers --values 1 3 5 7 9
"""

from __future__ import annotations

from xrdid.ops.tune.ablation import ABLATION_PARAMS, ablation_study_name, run_ablation
from xrdid.ops.tune.data import TuneData, ratio_rows
from xrdid.ops.tune.objective import Objective
from xrdid.ops.tune.space import DATA_PARAMS, TuneSettings, suggest
from xrdid.ops.tune.storage import (
    DEFAULT_STORAGE,
    make_pruner,
    make_sampler,
    make_storage,
    storage_url,
)
from xrdid.ops.tune.study import run_study

__all__ = [
    "ABLATION_PARAMS",
    "DATA_PARAMS",
    "DEFAULT_STORAGE",
    "Objective",
    "TuneData",
    "TuneSettings",
    "ablation_study_name",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "ratio_rows",
    "run_ablation",
    "run_study",
    "storage_url",
    "suggest",
]
