"""xrdid.tune: ratio subsets, the search space, studies with MLflow, ablations, a killed worker, many workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState

from xrdid.data.splits import split_sizes
from xrdid.ops.tune import (
    TuneSettings,
    make_pruner,
    ratio_rows,
    run_ablation,
    run_study,
    suggest,
)

POSTGRES_URL = os.environ.get("XRDID_TEST_POSTGRES_URL")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def _augmented(folder: Path, n_classes: int = 4, ratio: int = 10, n_points: int = 256, seed: int = 0) -> Path:
    """A tiny augmented set in the augment stage's layout: each split a permutation of per-entry rows."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(20, n_points - 20, (n_classes, 3))
    x = np.arange(n_points)
    n_train, n_val = split_sizes(ratio, 0.2)
    for split, per_entry in (("train", n_train), ("val", n_val)):
        y = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int32), per_entry))
        shift = rng.normal(0, 2, (len(y), 1, 1))
        X = np.exp(-0.5 * ((x - centers[y][:, :, None] - shift) / 3) ** 2).sum(1) + 0.3 * rng.random((len(y), n_points))
        (folder / split).mkdir(parents=True)
        np.save(folder / split / "X.npy", X.astype(np.float16))
        np.save(folder / split / "y.npy", y)
    meta = {"ids": [f"e{i}" for i in range(n_classes)], "ratio": ratio, "params": {"ratio": ratio, "val_fraction": 0.2},
            "grid": {"two_theta_min": 5.0, "two_theta_max": 40.0, "n_points": n_points},
            "counts": {"train_per_entry": n_train, "val_per_entry": n_val}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _params(tmp_path: Path, **tune: object) -> dict:
    section = {"study": "t", "n_trials": 3, "sampler": "tpe", "seed": 0, "pruner": "none", "model": "wang",
               "space": {"ratio": {"low": 5, "high": 10, "step": 5}, "epochs": 2, "conv_layers": {"low": 1, "high": 3},
                         "lr": 1.0e-3, "batch_size": 16},
               "heartbeat_interval": 1, "grace_period": 2, "out": str(tmp_path / "reports")}
    section.update(tune)
    return {"grid": {"two_theta_min": 5.0, "two_theta_max": 40.0, "n_points": 256, "wavelength": "CuKa"},
            "model": {"name": "xrdnet", "options": {}}, "train": {"epochs": 2, "batch_size": 16},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db", "experiment": "tune-test",
                         "model_name": "tune-test"},
            "evaluate": {"measured": {"labels": None}}, "tune": section}


def _cli(tmp_path: Path, params: dict, *args: str) -> subprocess.Popen:
    """``python -m xrdid tune`` (lazy CLI: only the tune modules load) in a subprocess: one torch thread, no MLflow."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPTUNA_STORAGE", None)
    cmd = [sys.executable, "-m", "xrdid", "tune", "--params", str(path), "--augmented", str(tmp_path / "aug"),
           "--threads", "1", "--no-mlflow", "--no-plots", "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --------------------------------------------------------------------------- ratio subsets and space


def test_split_sizes_match_the_augment_stage() -> None:
    assert split_sizes(72, 0.2) == (58, 14)  # Wang et al.: 72 → 58 + 14
    assert split_sizes(40, 0.2) == (32, 8)
    assert split_sizes(300, 0.2) == (240, 60)


def test_ratio_rows_takes_the_first_rows_of_every_entry() -> None:
    rng = np.random.default_rng(1)
    y = rng.permutation(np.repeat(np.arange(7), 12))  # the augment stage's layout
    previous: set[int] = set()
    for k in (1, 3, 12):
        rows = ratio_rows(y, k)
        assert np.all(np.diff(rows) > 0)  # ascending: sequential reads of a memmap
        assert np.bincount(y[rows], minlength=7).tolist() == [k] * 7
        for label in range(7):
            assert rows[y[rows] == label].tolist() == np.flatnonzero(y == label)[:k].tolist()
        assert previous <= set(rows.tolist())  # a smaller ratio's rows are a subset of a larger one's
        previous = set(rows.tolist())
    with pytest.raises(ValueError, match="13 spectra per entry"):
        ratio_rows(y, 13)
    with pytest.raises(ValueError):
        ratio_rows(y, 0)


def test_suggest_and_settings() -> None:
    space = {"ratio": {"low": 5, "high": 40, "step": 5}, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
             "dropout": {"low": 0.0, "high": 0.5}, "batch_size": [32, 64], "epochs": 40}
    trial = optuna.trial.FixedTrial({"ratio": 15, "lr": 2e-3, "dropout": 0.25, "batch_size": 32})
    assert suggest(trial, space) == {"ratio": 15, "lr": 2e-3, "dropout": 0.25, "batch_size": 32, "epochs": 40}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = suggest(study.ask(), space)
    assert isinstance(values["ratio"], int) and values["ratio"] % 5 == 0 and isinstance(values["lr"], float)
    with pytest.raises(ValueError, match="unknown tune settings: ratio"):
        TuneSettings.from_params({"ratio": 5})
    with pytest.raises(ValueError, match="pruner"):
        TuneSettings.from_params({"pruner": "asha"})
    assert make_pruner("hyperband", {}, max_epochs=40)._max_resource == 40


# --------------------------------------------------------------------------- studies in process


class _PruneTrial(optuna.pruners.BasePruner):
    """Prunes one trial (by number) at its first report."""

    def __init__(self, number: int) -> None:
        self.number = number

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == self.number


@pytest.mark.slow
def test_study_logs_mlflow_runs_plots_and_best_model(tmp_path: Path, torch_one_thread: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from xrdid.learn.models import load_model
    from xrdid.ops import registry

    _augmented(tmp_path / "aug")
    params = _params(tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    calls: dict = {}

    def log_identifier(model, ids, library_dir, params, **kwargs):  # the registry has its own tests
        calls["ids"], calls["run"] = ids, mlflow.active_run().info.run_id
        return "runs:/x/model"

    def register(model_uri, name, test_set, scores):
        calls.update(uri=model_uri, name=name, test_set=test_set, scores=scores)
        return type("Version", (), {"version": "1"})(), True

    monkeypatch.setattr(registry, "log_identifier", log_identifier)
    monkeypatch.setattr(registry, "register", register)
    monkeypatch.setattr(registry, "test_set_of", lambda p, m, lib, aug: ("validation:test", m["validation"]["cnn"]))
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "index.csv").write_text("id\n")
    monkeypatch.chdir(tmp_path)

    study = run_study(params, "s1", 3, storage=storage, augmented=tmp_path / "aug", pruner=_PruneTrial(1),
                      register=True, library=tmp_path / "library", patterns=None)

    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["epochs_run"] == 1
    best = study.best_trial
    assert best.value == pytest.approx(best.user_attrs["top1"] + 1e-3 * best.user_attrs["top5"], abs=1e-5)

    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id],
                              "tags.`optuna.study` = 's1'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.run_name)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "tune"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert [c.data.tags["state"] for c in children] == ["complete", "pruned", "complete"]
    for child in children:
        assert {"top1", "top5", "epochs_run"} <= set(child.data.metrics)
        assert child.data.params["trial.epochs"] == "2" and "trial.conv_layers" in child.data.params
    assert children[0].data.metrics["epochs_run"] == 2 and children[1].data.metrics["epochs_run"] == 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/history.png", "study/importance.png", "study/trials.csv", "study/summary.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "best_model")] == [
        "best_model/best_model.safetensors"]
    assert parent.data.tags["best_trial"] == str(best.number)

    out = tmp_path / "reports" / "s1"
    model = load_model(out / "best_model.safetensors")
    assert model.config["options"]["conv_layers"] == best.params["conv_layers"]
    assert calls["run"] == parent.info.run_id and calls["name"] == "tune-test"
    assert calls["ids"] == ["e0", "e1", "e2", "e3"]
    assert calls["scores"]["top1"] == pytest.approx(best.user_attrs["top1"])
    assert parent.data.tags["registered_version"] == "1"

    # the optuna CLI reads the same storage
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    shown = subprocess.run([optuna_cli, "trials", "--study-name", "s1", "--storage", storage, "-f", "json"],
                           capture_output=True, text=True, check=True)
    assert [t["state"] for t in json.loads(shown.stdout)] == ["COMPLETE", "PRUNED", "COMPLETE"]

    # run again with the same total: the study is complete, nothing new is trained
    again = run_study(params, "s1", 3, storage=storage, augmented=tmp_path / "aug", use_mlflow=False)
    assert len(again.trials) == 3


def test_failed_trial_ends_its_run_failed(tmp_path: Path, torch_one_thread: None) -> None:
    import mlflow

    from xrdid.errors import InputError

    _augmented(tmp_path / "aug")
    params = _params(tmp_path, space={"ratio": 10, "epochs": 1, "conv_layers": 12})  # 1..9 only
    with pytest.raises(InputError, match="conv_layers"):
        run_study(params, "bad", 1, storage=f"sqlite:///{tmp_path}/optuna.db", augmented=tmp_path / "aug")
    study = optuna.load_study(study_name="bad", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    runs = mlflow.search_runs(experiment_names=["tune-test"], output_format="list")
    states = sorted((r.data.tags.get("state", "-"), r.info.status) for r in runs)
    assert states == [("-", "FAILED"), ("failed", "FAILED")]  # the parent run and the trial's
    with pytest.raises(InputError, match="stored set has ratio 10"):
        run_study(_params(tmp_path, space={"ratio": [5, 20]}), "big", 1, storage=f"sqlite:///{tmp_path}/optuna.db",
                  augmented=tmp_path / "aug", use_mlflow=False)


def test_measured_objective(tmp_path: Path, torch_one_thread: None) -> None:
    """``objective: measured`` scores the evaluate.measured set; the validation Top-k is still recorded."""
    _augmented(tmp_path / "aug")
    X = np.load(tmp_path / "aug" / "val" / "X.npy").astype(float)
    y = np.load(tmp_path / "aug" / "val" / "y.npy")
    two_theta = np.linspace(5.0, 40.0, 256)
    rows = ["pattern,cif"]
    for i in range(6):  # validation spectra written as measured two-column files
        np.savetxt(tmp_path / f"m{i}.xy", np.column_stack([two_theta, 1000 * X[i]]))
        rows.append(f"m{i}.xy,e{y[i]}.cif")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    params = _params(tmp_path, objective="measured", space={"ratio": 10, "epochs": 1, "conv_layers": 1})
    params["evaluate"]["measured"]["labels"] = str(tmp_path / "labels.csv")
    study = run_study(params, "m", 1, storage=f"sqlite:///{tmp_path}/optuna.db", augmented=tmp_path / "aug",
                      use_mlflow=False, plots=False)
    attrs = study.trials[0].user_attrs
    assert {"top1", "top5", "measured.top1", "measured.top5"} <= set(attrs)
    assert study.trials[0].value == pytest.approx(attrs["measured.top1"] + 1e-3 * attrs["measured.top5"], abs=1e-5)
    params["evaluate"]["measured"]["labels"] = str(tmp_path / "missing.csv")
    from xrdid.errors import InputError

    with pytest.raises(InputError, match="measured"):
        run_study(params, "m2", 1, storage=f"sqlite:///{tmp_path}/optuna.db", augmented=tmp_path / "aug",
                  use_mlflow=False)


@pytest.mark.slow
def test_ablation_writes_csv_and_plot(tmp_path: Path, torch_one_thread: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from xrdid.cli import main

    _augmented(tmp_path / "aug")
    params = _params(tmp_path, ablation={"base": {"ratio": 10, "epochs": 5, "conv_layers": 2, "lr": 1e-3,
                                                  "batch_size": 16}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["tune", "ablation", "--param", "conv_layers", "--values", "1", "3", "--seeds", "0-1", "--set", "epochs=1",
            "--params", str(tmp_path / "params.yaml"), "--storage", f"sqlite:///{tmp_path}/optuna.db",
            "--augmented", str(tmp_path / "aug"), "--out", str(tmp_path / "abl"), "--no-mlflow", "--no-progress"]
    assert main(argv) == 0  # through the real command line
    printed = capsys.readouterr().out
    lines = (tmp_path / "abl" / "conv_layers.csv").read_text().splitlines()
    assert lines[0].startswith("conv_layers,seed,trial,top1") and len(lines) == 5  # 2 values × 2 seeds
    assert (tmp_path / "abl" / "conv_layers.png").stat().st_size > 1000
    rows = run_ablation(params, "conv_layers", [1, 3], seeds=(0, 1), base={"epochs": 1}, use_mlflow=False,
                        storage=f"sqlite:///{tmp_path}/optuna.db", augmented=tmp_path / "aug", out=tmp_path / "abl")
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")) == 1  # same grid: done, nothing re-run
    assert [r["value"] for r in rows] == [1, 3] and [r["n"] for r in rows] == [2, 2]
    assert all(0 <= r["top1"] <= r["top5"] <= 1 and r["epochs_run"] == 1 for r in rows)
    assert printed.splitlines()[0].split()[:2] == ["conv_layers", "top1"]


# --------------------------------------------------------------------------- workers in processes


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_worker_restarts_and_retries_the_trial(tmp_path: Path) -> None:
    _augmented(tmp_path / "aug", ratio=20, n_points=512)
    # 500 epochs, no early stopping: the first trial is surely killed inside (after its first epoch)
    params = _params(tmp_path, space={"ratio": 20, "epochs": 500, "conv_layers": [1, 2], "lr": 1e-3, "batch_size": 8})
    params["train"]["patience"] = 1000
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ("--study", "kill", "--n-trials", "1", "--storage", storage)
    worker = _cli(tmp_path, params, *args)

    def running_trial() -> optuna.trial.FrozenTrial | None:
        try:
            trials = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
        except KeyError:  # the study does not exist yet
            return None
        return next((t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values), None)

    try:
        _wait_for(lambda: running_trial() is not None or worker.poll() is not None, 90, "a running trial")
        killed = running_trial()
        assert killed is not None, worker.communicate()[0]
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    study = optuna.load_study(study_name="kill", storage=storage)
    assert study.trials[killed.number].state == TrialState.RUNNING  # nobody has noticed yet

    # fixed settings come from the params file at run time, searched ones (conv_layers) from the failed trial:
    # a short retry keeps the test fast
    params["tune"]["space"]["epochs"] = 3
    restart = _cli(tmp_path, params, *args)
    output = restart.communicate(timeout=120)[0]
    assert restart.returncode == 0, output
    trials = optuna.load_study(study_name="kill", storage=storage).trials
    assert trials[killed.number].state == TrialState.FAIL
    # the study of one trial is finished by the retry of the killed one, with the same parameters
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == killed.number == 0 and retry.user_attrs["retry_of"] == 0
    assert retry.params == killed.params and retry.user_attrs["epochs_run"] == 3


@pytest.mark.skipif(not POSTGRES_URL, reason="XRDID_TEST_POSTGRES_URL is unset: start a server with "
                                             "scripts/postgres.sh (`make test` does) and export its URL")
@pytest.mark.slow
def test_two_workers_share_a_postgres_study(tmp_path: Path) -> None:
    _augmented(tmp_path / "aug")
    params = _params(tmp_path, space={"ratio": 10, "epochs": 1, "conv_layers": {"low": 1, "high": 3}, "lr": 1e-3,
                                      "batch_size": 16})
    study_name = f"two-workers-{uuid.uuid4().hex[:8]}"
    args = ("--study", study_name, "--n-trials", "4", "--storage", POSTGRES_URL)
    workers = [_cli(tmp_path, params, *args, "--seed", str(i), "--out", str(tmp_path / f"w{i}")) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=180)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    try:
        assert [w.returncode for w in workers] == [0, 0], outputs
        trials = optuna.load_study(study_name=study_name, storage=POSTGRES_URL).trials
        assert sorted(t.number for t in trials) == list(range(4))  # each trial exactly once, none extra
        assert all(t.state in DONE for t in trials)
    finally:
        optuna.delete_study(study_name=study_name, storage=POSTGRES_URL)
