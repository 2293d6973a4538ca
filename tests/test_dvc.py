"""dvc.yaml against the code: each stage depends on what its module imports; profiles are generated."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from _imports import SRC, closure, layer, modules

REPO = SRC.parent
sys.path.insert(0, str(REPO / "scripts"))
from profile_dvc import profile_dvc

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
