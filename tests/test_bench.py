"""The synthetic benchmark runner (xrdid.bench): results, outputs, MLflow runs and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from xrdid import cli
from xrdid.data.synthetic import DATASET500_PROCEDURE, SyntheticConfig, make_config
from xrdid.errors import InputError
from xrdid.ops.bench import _subset, format_table, run_benchmark, summarize_rows

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes on 600 points: 200 train, 40 val, 36 test spectra."""
    return make_config(4, 600, boundary=80, seed=3).to_json(tmp_path_factory.mktemp("cfg") / "tiny.json")


@pytest.mark.slow
def test_cli_writes_table_csv_summary_and_mlflow_runs(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path}/ml/mlflow.db"
    out = tmp_path / "out"
    argv = ["bench", "synthetic", "--config", str(tiny), "--models", "xrdnet,vgg", "--seeds", "0-1",
            "--epochs", "1", "--out", str(out), "--tracking-uri", uri, "--experiment", "t", "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["model", "params", "misclassified"]
    assert "of 36" in printed and "4 runs in" in printed

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["seed"]) for r in rows] == [("xrdnet", "0"), ("xrdnet", "1"), ("vgg", "0"), ("vgg", "1")]
    for r in rows:
        wrong, n = int(r["misclassified"]), int(r["n_test"])
        assert n == 36 and 0 <= wrong <= n and float(r["test_accuracy"]) == pytest.approx(1 - wrong / n)
        assert r["epochs"] == "1" and float(r["seconds"]) > 0 and r["run_id"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_classes"], summary["n_test"], summary["seeds"], summary["max_epochs"]) == (4, 36, [0, 1], 1)
    vgg = [int(r["misclassified"]) for r in rows if r["model"] == "vgg"]
    assert summary["summary"]["vgg"]["misclassified_mean"] == pytest.approx(sum(vgg) / 2)
    assert (out / "results.md").read_text().count("\n| ") == 3  # header + two models
    history = json.loads((out / "runs" / "vgg-seed-1.json").read_text())["history"]
    assert len(history["val_loss"]) == 1

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["t"])
    assert len(runs) == 5
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(children) == 4
    (parent_id,) = parent["run_id"]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert set(children["run_id"]) == {r["run_id"] for r in rows}
    p = parent.iloc[0]
    assert p["params.n_classes"] == "4" and p["params.seeds"] == "0,1" and p["params.models"] == "xrdnet,vgg"
    assert p["params.config_fingerprint"] == SyntheticConfig.from_json(tiny).fingerprint
    assert p["metrics.vgg.misclassified_mean"] == pytest.approx(sum(vgg) / 2)
    assert p["tags.git_commit"]
    child = children[children["tags.mlflow.runName"] == "vgg-seed-1"].iloc[0]
    assert child["metrics.misclassified"] == vgg[1] and child["params.seed"] == "1"
    curve = mlflow.MlflowClient().get_metric_history(child["run_id"], "val_loss")
    assert [m.step for m in curve] == [1]


def test_api_reduced_classes_and_options(tiny: Path) -> None:
    rows = run_benchmark(tiny, ["xrdnet"], [2], epochs=1, n_classes=2, progress=False, tracking=False,
                         model_options={"xrdnet": {"bins": 10, "hidden": 32}})
    assert len(rows) == 1 and rows[0]["n_test"] == 18 and rows[0]["seed"] == 2 and rows[0]["run_id"] == ""
    table = format_table(summarize_rows(rows))
    assert "of 18" in table and "xrdnet" in table


def test_subset_keeps_published_special_cases(shared_data: Path) -> None:
    config = SyntheticConfig.from_json(shared_data / "schuetzke2022" / "dataset500.json")
    subset, procedure = _subset(config, 10)
    assert subset.n_classes == 10 and subset.positions == config.positions[:10]
    assert dict(procedure.class_shift) == {8: 17} and not procedure.class_height
    assert procedure.test_grid == DATASET500_PROCEDURE.test_grid


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "xrdnet,nope"], "--models: unknown model 'nope'"),
        (["--seeds", "3-1"], "--seeds: invalid seed list"),
        (["--seeds", "x"], "--seeds: invalid seed list"),
        (["--classes", "9"], "--classes: must be within 1..4"),
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--model-options", "{bad"], "--model-options: invalid JSON"),
        (["--model-options", '{"xrdnet": {"wings": 2}}'], "--model-options: xrdnet:"),
        (["--model-options", '{"vgg": {}}'], "not among the models"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tiny: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["bench", "synthetic", "--config", str(tiny), "--models", "xrdnet", "--no-track", "--no-progress"]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "config file not found"), ("{not json", "invalid JSON"), ('{"datapoints": 10}', "missing key 'spectra'")],
)
def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
                            message: str) -> None:
    path = tmp_path / "cfg.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["bench", "synthetic", "--config", str(path), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err


def test_api_raises_input_error(tiny: Path) -> None:
    with pytest.raises(InputError, match="repeats a seed"):
        run_benchmark(tiny, ["xrdnet"], [0, 0], tracking=False)
