"""dvc.yaml against the code: each stage depends on what its module imports; profiles are generated;
the views (`dvc plots show`, `make metrics`) work for the default pipeline and each profile."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _imports import SRC, closure, layer, modules

REPO = SRC.parent
sys.path.insert(0, str(REPO / "scripts"))
from metrics_table import absent, format_table, report
from profile_dvc import _plot_files, _profile_plot, profile_dvc

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Package facades carry no stage logic (a docstring, lazy names); depending on them would re-run everything.
FACADES = {"xrdid", "xrdid.stages"}


def _covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_its_import_closure(stage: str) -> None:
    deps = [REPO / d for d in STAGES[stage]["deps"] if d.startswith("src/")]
    needed = {modules()[m] for m in closure(f"xrdid.stages.{stage}") if m not in FACADES}
    missing = sorted(str(p.relative_to(REPO)) for p in needed if not _covered(p, deps))
    assert not missing, f"stage {stage} imports code its dvc.yaml deps do not list: {missing}"
    unused = [str(d.relative_to(REPO)) for d in deps if not any(_covered(p, [d]) for p in needed)]
    assert not unused, f"stage {stage} lists deps it does not import: {unused}"
    assert all(layer(f"xrdid.{d.relative_to(SRC / 'xrdid').with_suffix('').as_posix().replace('/', '.')}")
               for d in deps), "deps name layers or modules of src/xrdid"


def test_each_stage_has_its_module_and_params() -> None:
    for stage, spec in STAGES.items():
        assert (SRC / "xrdid" / "stages" / f"{stage}.py").is_file(), stage
        assert spec["cmd"].startswith(f"xrdid {stage} --params params.yaml"), stage


@pytest.mark.parametrize("profile", sorted(p.parent.name for p in (REPO / "pipelines").glob("*/params.yaml")))
def test_profile_dvc_yaml_is_generated_from_the_root(profile: str) -> None:
    committed = (REPO / "pipelines" / profile / "dvc.yaml").read_text()
    assert committed == profile_dvc(Path("pipelines") / profile), \
        f"pipelines/{profile}/dvc.yaml is stale: run `python scripts/profile_dvc.py pipelines/{profile}`"


def _top(top1: float, n: int) -> dict:
    return {**{f"top{k}": min(1.0, top1 + 0.05 * (k - 1)) for k in range(1, 6)}, "n": n}


METRICS = {"n_library": 3, "validation": {"cnn": _top(0.9, 400), "logistic_regression": _top(0.5, 20)},
           "measured": {"cnn": {**_top(0.75, 8), "RRUFF": _top(0.5, 4)}}}


def test_metrics_table_rows_are_methods_columns_k() -> None:
    lines = format_table(METRICS).splitlines()
    assert lines[0].split() == ["set", "method", "n", "top1", "top2", "top3", "top4", "top5"]
    assert lines[1].split() == ["measured", "cnn", "8", "0.750", "0.800", "0.850", "0.900", "0.950"]
    assert lines[2].split() == ["validation", "cnn", "400", "0.900", "0.950", "1.000", "1.000", "1.000"]
    assert lines[3].split()[:3] == ["logistic_regression", "20", "0.500"]  # set named once per block
    assert len({len(line) for line in lines}) == 1  # aligned: numbers right-justified to one width


def test_metrics_report_says_how_to_produce_an_absent_profile(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    for name in ("done", "todo"):
        (tmp_path / "pipelines" / name).mkdir(parents=True)
        (tmp_path / "pipelines" / name / "dvc.yaml").write_text("stages: {}\n")
    done = {"validation": METRICS["validation"]}
    (tmp_path / "pipelines" / "done" / "metrics.json").write_text(json.dumps(done))
    (tmp_path / "Makefile").write_text("todo: venv ## run the todo profile\n")
    text = report(tmp_path)
    assert text.startswith("default pipeline: metrics.json (3 library entries)\nset ")
    assert "pipelines/done: pipelines/done/metrics.json\nset " in text
    assert text.endswith("pipelines/todo: no pipelines/todo/metrics.json yet; "
                         "run `make todo` (or `cd pipelines/todo && dvc repro`)")
    assert absent("plots/topk.csv", tmp_path)[0].startswith("default pipeline: no plots/topk.csv yet")


# A 1x1 PNG: dvc plots show copies images into its output folder as they are.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5"
                       "ErkJggg==")


def test_dvc_plots_show_writes_html_beside_a_profile_not_run(tmp_path: Path) -> None:
    """The root plot definitions in a DVC project whose profile's dvc.lock records plots that are absent.

    That profile's ``plots`` folder is neither in the workspace nor in the cache (not run here, a
    clone not pulled): with its files as plot ids DVC raised while resolving them and wrote no HTML.
    """
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site")}

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path / "repo", env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    repo, profile = tmp_path / "repo", tmp_path / "repo" / "pipelines" / "p"
    profile.mkdir(parents=True)
    assert dvc("init", "--no-scm", "-q").returncode == 0
    (repo / ".dvc" / "plots").mkdir(exist_ok=True)
    (repo / ".dvc" / "plots" / "topk.json").write_text((REPO / ".dvc" / "plots" / "topk.json").read_text())
    plots = [p for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"] if _plot_files(p) == {"plots"}]
    stage = {"evaluate": {"cmd": "true", "outs": ["plots"]}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stage, "plots": plots}))
    (profile / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": stage, "plots": [_profile_plot(p, "pipelines/p") for p in plots]}))
    out = {"path": "plots", "hash": "md5", "md5": "0" * 32 + ".dir", "size": 1, "nfiles": 2}
    (profile / "dvc.lock").write_text(yaml.safe_dump(
        {"schema": "2.0", "stages": {"evaluate": {"cmd": "true", "outs": [out]}}}))
    (repo / "plots").mkdir()
    # as xrdid.stages.evaluate writes it (tests/test_evaluate.py), without importing torch here
    (repo / "plots" / "topk.csv").write_text("set,method,k,accuracy\n" + "".join(
        f"{s},{m},{k},{table[f'top{k}']}\n" for s in ("validation", "measured")
        for m, table in METRICS[s].items() for k in range(1, 6)))
    (repo / "plots" / "topk.png").write_bytes(PNG)

    shown = dvc("plots", "show", "-o", "html")
    assert shown.returncode == 0, shown.stderr
    html = (repo / "html" / "index.html").read_text()
    assert '"field": "method"' in html and '"method": "logistic_regression"' in html  # a line per method
    assert "Top-k accuracy (default pipeline)" in html and '"set": "measured"' in html
    assert (repo / "html" / "static" / "workspace_plots_topk.png").read_bytes() == PNG
    errors = json.loads(dvc("plots", "show", "--json").stdout)["errors"]
    assert {e["source"] for e in errors} == {"pipelines/p/plots/topk.csv", "pipelines/p/plots/topk.png"}
    assert {e["name"] for e in errors} == {"pipelines/p/dvc.yaml::topk", "pipelines/p/plots/topk.png"}  # labelled
