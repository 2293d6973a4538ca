"""MLflow tracking and the registry on a real SQLite store: the register stage, champion, promote."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from numpy.testing import assert_allclose

from xrdid.cli import main
from xrdid.ops import registry
from xrdid.ops.registry import champion, register
from xrdid.ops.tracking import configure, dvc_hashes, flatten


def test_configure_keeps_artifacts_beside_the_database(tmp_path: Path) -> None:
    experiment_id = configure(f"sqlite:///{tmp_path}/store/mlflow.db", "exp")
    location = mlflow.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "store" / "artifacts").as_uri()
    assert configure(f"sqlite:///{tmp_path}/store/mlflow.db", "exp") == experiment_id  # reused, not duplicated


def test_test_set_counts_library_entries_not_index_columns(tmp_path: Path) -> None:
    metrics = {"validation": {"cnn": {f"top{k}": 0.5 for k in range(1, 6)}}}
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "y.npy").write_bytes(b"labels")

    def key(index: str) -> str:
        (tmp_path / "index.csv").write_text(index)
        return registry.test_set_of({}, metrics, tmp_path, tmp_path)[0]

    before = key("id,sha256\na,1\nb,2\n")
    assert key("id,formula,sha256,a\na,X,1,3.0\nb,Y,2,4.0\n") == before  # a column added to the index
    assert key("id,sha256\na,1\nb,3\n") != before  # a CIF changed
    assert before.startswith("validation:")


def test_dvc_hashes_reads_every_output(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  library:\n    outs:\n    - path: data/library\n      md5: abc.dir\n"
                    "  noise:\n    outs:\n    - path: data/noise_bank\n      md5: def.dir\n")
    assert dvc_hashes(lock) == {"data/library": "abc.dir", "data/noise_bank": "def.dir"}
    assert dvc_hashes(tmp_path / "absent.lock") == {}


def test_register_stage_logs_everything_dvc_shows(registered_pipeline: dict) -> None:
    mlflow.set_tracking_uri(registered_pipeline["uri"])
    result = registered_pipeline["registered"]
    run = mlflow.get_run(result["run_id"])
    metrics = json.loads((registered_pipeline["dir"] / "metrics.json").read_text())
    for key, value in flatten(metrics).items():  # the UI and `dvc metrics show` agree
        assert_allclose(run.data.metrics[key], value, err_msg=key)
    assert run.data.params["grid.n_points"] == "876" and run.data.params["model.name"] == "xrdnet"
    assert len(run.data.tags["git_commit"]) >= 7
    curve = MlflowClient().get_metric_history(run.info.run_id, "curve.val_loss")
    assert [m.step for m in curve] == [1, 2]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/topk.png" in artifacts
    assert run.data.metrics["calibration.temperature"] > 0  # fitted on validation, stored with the model
    calibration = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "calibration")}
    assert {"calibration/reliability.png", "calibration/novelty_rule.json"} <= calibration
    assert result["champion"] and result["version"] == 1
    assert int(champion("xrdid-default").version) == 1
    assert_allclose(result["top1"], metrics["validation"]["cnn"]["top1"])


def test_champion_moves_only_when_a_version_beats_it(registered_pipeline: dict) -> None:
    mlflow.set_tracking_uri(registered_pipeline["uri"])
    uri, name = registered_pipeline["registered"]["model_uri"], "champion-rules"
    first, promoted = register(uri, name, "set-a", {"top1": 0.5, "top5": 0.9})
    assert promoted and int(champion(name).version) == int(first.version)
    _, promoted = register(uri, name, "set-a", {"top1": 0.5, "top5": 0.9})  # a tie does not beat it
    assert not promoted and int(champion(name).version) == int(first.version)
    better, promoted = register(uri, name, "set-a", {"top1": 0.5, "top5": 0.95})  # Top-5 breaks the tie
    assert promoted and int(champion(name).version) == int(better.version)
    _, promoted = register(uri, name, "set-b", {"top1": 1.0, "top5": 1.0})  # another test set: not comparable
    assert not promoted and int(champion(name).version) == int(better.version)
    decision = MlflowClient().get_model_version(name, better.version).tags["champion_decision"]
    assert decision.startswith("beats champion")


def test_promote_by_hand(registered_pipeline: dict, capsys: pytest.CaptureFixture[str]) -> None:
    mlflow.set_tracking_uri(registered_pipeline["uri"])
    uri, name = registered_pipeline["registered"]["model_uri"], "promote-by-hand"
    register(uri, name, "set-a", {"top1": 0.9, "top5": 0.9})
    second, _ = register(uri, name, "set-a", {"top1": 0.1, "top5": 0.1})
    assert main(["promote", name, str(second.version), "--tracking-uri", registered_pipeline["uri"]]) == 0
    assert int(champion(name).version) == int(second.version)
    assert main(["promote", name, "99", "--tracking-uri", registered_pipeline["uri"]]) == 2
    assert f"{name} v99" in capsys.readouterr().err


def test_register_needs_the_pipeline_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "--models", str(tmp_path / "models"), "--metrics", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.safetensors: missing" in err
