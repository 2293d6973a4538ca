"""One trial (:class:`Objective`) and the loop that runs trials until a study holds enough.

A trial draws a configuration, trains on its ratio's subset of the stored augmented set,
reports the validation Top-1 every epoch to the pruner and returns ``top1 + tie_break * top5``
(validation, or the measured set with ``tune.objective: measured``). With MLflow on, each trial
is a nested run of the invocation's parent run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.errors import InputError
from xrdid.ops.tune.data import TuneData
from xrdid.ops.tune.space import TuneSettings, _route, suggest
from xrdid.ops.tune.storage import _ClaimLock, _fail_stale

if TYPE_CHECKING:
    import optuna

    from xrdid.learn.train import History

log = logging.getLogger("xrdid.tune")  # one logger for the whole package, as before the split


class Objective:
    """One trial: draw a configuration, train, score; report every epoch to the pruner.

    Parameters
    ----------
    data : the stored splits (:class:`TuneData`).
    params : the whole ``params.yaml`` (``train`` and ``model`` give the fixed settings).
    settings : the ``tune`` section.
    space : the search space (default ``settings.space``).
    lock : the claim lock, released as soon as the trial exists.
    out : where models are kept when MLflow is off.
    use_mlflow : log a nested MLflow run per trial (a parent run must be active).
    progress : per-epoch progress bars.
    """

    def __init__(self, data: TuneData, params: Mapping[str, Any], settings: TuneSettings, *,
                 space: Mapping[str, Any] | None = None, lock: _ClaimLock | None = None, out: str | Path = ".",
                 use_mlflow: bool = False, progress: bool = False) -> None:
        self.data, self.params, self.settings = data, params, settings
        self.space = dict(settings.space if space is None else space)
        self.lock = lock or _ClaimLock("sqlite:///:memory:", "local")
        self.out, self.use_mlflow, self.progress = Path(out), use_mlflow, progress
        self.train_base = dict(params.get("train") or {})  # TrainConfig ignores the stage settings
        model = dict(params.get("model") or {})
        self.model_base = dict(model.get("options") or {}) if model.get("name") == settings.model else {}

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        self.lock.release()
        frozen = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number), None)
        if frozen is not None and "failed_trial" in frozen.system_attrs:  # set by the retry callback
            trial.set_user_attr("retry_of", frozen.system_attrs["failed_trial"])
        values = suggest(trial, self.space)
        trial.set_user_attr("config", dict(values))  # fixed entries too: trial.params holds only searched ones
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        run = self._start_run(trial, values)
        state = "failed"  # also on KeyboardInterrupt: Optuna marks the trial failed
        try:
            value = self._train(trial, values, run)
            state = "complete"
            return value
        except optuna.TrialPruned:
            state = "pruned"
            raise
        finally:
            trial.set_user_attr("state", state)
            if run is not None:
                import mlflow

                mlflow.set_tag("state", state)
                mlflow.end_run("FAILED" if state == "failed" else "FINISHED")

    def _start_run(self, trial: optuna.Trial, values: Mapping[str, Any]) -> Any:
        if not self.use_mlflow:
            return None
        import mlflow

        tags = {"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number), "state": "running"}
        if "retry_of" in trial.user_attrs:
            tags["optuna.retry_of"] = str(trial.user_attrs["retry_of"])
        run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        data, train, model = _route(values)
        mlflow.log_params({**{f"train.{k}": v for k, v in {**self.train_base, **train}.items()},
                           **{f"model.{k}": v for k, v in {**self.model_base, **model}.items()},
                           "model.name": self.settings.model, **{f"augment.{k}": v for k, v in data.items()},
                           **{f"trial.{k}": v for k, v in values.items()}})
        return run

    def _train(self, trial: optuna.Trial, values: Mapping[str, Any], run: Any) -> float:
        import optuna

        from xrdid.learn.models import build_model
        from xrdid.learn.train import TrainConfig, fit, seed_everything

        data_values, train_values, model_values = _route(values)
        ratio = int(data_values.get("ratio", self.data.max_ratio))
        try:
            config = TrainConfig.from_params({**self.train_base, **train_values})
            train = self.data.train(ratio)
            seed_everything(config.seed, config.deterministic)  # the initial weights depend on the seed too
            model = build_model(self.settings.model, self.data.X_val.shape[1], len(self.data.ids),
                                options={**self.model_base, **model_values})
        except ValueError as exc:
            raise InputError("tune section", str(exc)) from exc
        trial.set_user_attr("train_per_entry", self.data.train_per_entry(ratio))

        def report(epoch: int, history: History) -> None:
            trial.report(history.val_acc[-1], epoch)
            if run is not None:
                import mlflow

                mlflow.log_metrics({"curve.val_acc": history.val_acc[-1], "curve.val_loss": history.val_loss[-1],
                                    "curve.train_loss": history.train_loss[-1]}, step=epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs_run", epoch)
                raise optuna.TrialPruned(f"epoch {epoch}: validation Top-1 {history.val_acc[-1]:.4f}")

        start = time.perf_counter()
        try:
            history = fit(model, train, self.data.val(), config, progress=self.progress, callback=report)
        except optuna.TrialPruned:
            self._log_scores(trial, model, run, time.perf_counter() - start)  # of the weights when pruned
            raise
        trial.set_user_attr("epochs_run", history.epochs)
        trial.set_user_attr("best_epoch", history.best_epoch)
        scores = self._log_scores(trial, model, run, time.perf_counter() - start)
        value = scores["objective"]
        self._keep_model(trial, model, value, run)
        log.info("tune: trial %d: %s → top1 %.4f top5 %.4f (%d epochs, %.0f s)", trial.number,
                 ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()), scores["top1"], scores["top5"],
                 history.epochs, time.perf_counter() - start)
        return value

    def _log_scores(self, trial: optuna.Trial, model: Any, run: Any, seconds: float) -> dict[str, float]:
        """Top-1..5 on the validation split (and the measured set); user attrs and MLflow metrics."""
        from xrdid.learn.inference import predict_proba
        from xrdid.learn.metrics import topk_accuracy, topk_table

        val = topk_accuracy(predict_proba(model, self.data.X_val), self.data.y_val)
        scores = {f"top{k}": v for k, v in val.items()}
        metrics = dict(scores)
        if self.data.measured is not None:
            table = topk_table(predict_proba(model, self.data.measured.X), self.data.measured.y)
            metrics.update({f"measured.top{k}": float(table[f"top{k}"]) for k in range(1, 6)})
        chosen = ({k: metrics[f"measured.{k}"] for k in scores} if self.settings.objective == "measured"
                  else scores)
        scores["objective"] = chosen["top1"] + self.settings.tie_break * chosen["top5"]
        metrics["objective"] = scores["objective"]
        metrics["seconds"] = seconds
        for key, value in metrics.items():
            trial.set_user_attr(key, round(float(value), 6))
        if run is not None:
            import mlflow

            epochs = trial.user_attrs.get("epochs_run")
            extra = {"epochs_run": epochs} if epochs is not None else {}
            best = trial.user_attrs.get("best_epoch")
            mlflow.log_metrics({**metrics, **extra, **({"best_epoch": best} if best is not None else {})})
        return {**scores, **{k: v for k, v in metrics.items() if k.startswith("measured.")}}

    def _keep_model(self, trial: optuna.Trial, model: Any, value: float, run: Any) -> None:
        """The model of a complete trial: an artifact of its MLflow run, or a local file if it leads."""
        from xrdid.learn.models import save_model

        meta = {"ids": json.dumps(self.data.ids), "grid": json.dumps(self.data.grid)}
        if run is not None:
            import mlflow

            with tempfile.TemporaryDirectory(prefix="xrdid-tune-") as tmp:
                path = Path(tmp) / "model.safetensors"
                save_model(model, path, meta)
                mlflow.log_artifact(str(path), artifact_path="model")
            return
        try:
            best = trial.study.best_value
        except ValueError:  # no complete trial yet
            best = -math.inf
        if value > best:  # without MLflow only leaders are kept: a few files, not one per trial
            folder = self.out / "trials"
            folder.mkdir(parents=True, exist_ok=True)
            save_model(model, folder / f"trial-{trial.number}.safetensors", meta)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _mark_mlflow_failed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A dead worker's runs stay RUNNING in MLflow: end its trial run and its parent run as FAILED."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        client.set_tag(run_id, "state", "failed")
        client.set_terminated(run_id, "FAILED")
        parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).info.status == "RUNNING":  # its worker is gone with the trial
            client.set_tag(parent, "ended_by", f"stale trial {trial.number}")
            client.set_terminated(parent, "FAILED")
    except Exception as exc:  # the tracking store may differ or be unreachable; the trial is what counts
        log.warning("tune: could not mark MLflow run %s of trial %d failed: %s", run_id, trial.number, exc)


def _run_trials(study: optuna.Study, objective: Objective, n_trials: int,
                sampler_factory: Callable[[int], optuna.samplers.BaseSampler], poll: float) -> None:
    """Run trials until ``study`` holds ``n_trials`` complete or pruned ones, whoever ran them.

    A new trial is created only while complete + pruned + running + waiting trials are fewer
    than ``n_trials``; a waiting one (a retry) is always taken. When every remaining trial is
    running elsewhere, the worker waits: either they finish, or their worker died, they go
    stale and come back as waiting retries. The sampler is re-seeded per trial from the
    number of trials before it, so restarted and parallel workers do not redraw the same points
    and one worker on a fresh study is reproducible.
    """
    from optuna.trial import TrialState

    lock = objective.lock
    while True:
        lock.acquire()
        try:
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            count = Counter(t.state for t in trials)
            done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
            if done >= n_trials:
                return
            if done + count[TrialState.RUNNING] + count[TrialState.WAITING] < n_trials or count[TrialState.WAITING]:
                study.sampler = sampler_factory(len(trials))
                study.optimize(objective, n_trials=1)  # the objective releases the lock once its trial exists
                continue
        finally:
            lock.release()
        time.sleep(poll)
