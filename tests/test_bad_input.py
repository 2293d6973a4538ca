"""The bad-input corpus (tests/bad_input/cases.csv): every file gets its outcome, in one line, never a hang."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

CORPUS = Path(__file__).parent / "bad_input"
GOOD_CIF = Path(__file__).parent / "data" / "nacl.cif"
TIMEOUT = 120  # seconds per command: a hang fails the case instead of the suite
SPECIAL = ("@unreadable", "@directory", "@symlink_loop")


def _cases() -> list[dict[str, str]]:
    with open(CORPUS / "cases.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _xrdid(*args: str, tmp: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``xrdid`` with its own empty temporary folder, which must still be empty afterwards."""
    tmp.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp)}
    result = subprocess.run([sys.executable, "-m", "xrdid", *args], capture_output=True, text=True, timeout=TIMEOUT,
                            cwd=cwd, env=env)
    assert not any(tmp.iterdir()), f"left in the temporary folder: {sorted(p.name for p in tmp.iterdir())}"
    return result


def _materialise(name: str, tmp: Path) -> Path:
    """The file of a case; the special ones are made here because git cannot hold them."""
    if name == "@unreadable":
        if os.geteuid() == 0:
            pytest.skip("running as root: file permissions do not stop reads")
        path = tmp / "unreadable.xy"
        path.write_text("10 1\n11 2\n")
        path.chmod(0)
        return path
    if name == "@directory":
        path = tmp / "directory.xy"
        path.mkdir()
        return path
    if name == "@symlink_loop":
        path = tmp / "loop.xy"
        os.symlink(path, path)
        return path
    return CORPUS / name


def _check_one_line(result: subprocess.CompletedProcess[str], case: dict[str, str], shown: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == int(case["exit"]), (result.returncode, result.stderr[-2000:])
    if int(case["exit"]) == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert shown in lines[0], f"the error does not name {shown}: {lines[0]}"
        assert re.search(case["message"], lines[0]), (case["message"], lines[0])


@pytest.mark.parametrize(
    "case", [c for c in _cases() if c["command"] in ("read", "pattern")], ids=lambda c: f"{c['command']}:{c['file']}"
)
def test_command_outcome(case: dict[str, str], tmp_path: Path) -> None:
    path = _materialise(case["file"], tmp_path)
    result = _xrdid(case["command"], str(path), tmp=tmp_path / "tmp")
    _check_one_line(result, case, path.name)


@pytest.fixture(scope="module")
def corpus_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``library`` stage run over every library case beside good CIFs."""
    root = tmp_path_factory.mktemp("corpus_library")
    folder = root / "cif"
    folder.mkdir()
    for i in range(3):
        shutil.copy(GOOD_CIF, folder / f"good_{i}.cif")
    for case in _cases():
        if case["command"] == "library":
            shutil.copy(CORPUS / case["file"], folder / Path(case["file"]).name)
    (root / "params.yaml").write_text(f"library:\n  source: folder\n  folder: {folder}\n  select: all\n  workers: 2\n")
    result = _xrdid("library", "--params", "params.yaml", "--out", "library", "--no-progress", cwd=root,
                    tmp=root / "tmp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["cif", "library", "params.yaml", "tmp"]  # no .library.tmp-*
    return root / "library"


@pytest.mark.parametrize("case", [c for c in _cases() if c["command"] == "library"], ids=lambda c: c["file"])
def test_library_outcome(case: dict[str, str], corpus_library: Path) -> None:
    entry = Path(case["file"]).stem
    index = pd.read_csv(corpus_library / "index.csv")
    rejects = pd.read_csv(corpus_library / "rejects.csv", keep_default_na=False)
    assert {f"good_{i}" for i in range(3)} <= set(index["id"]), "a bad CIF cost good ones"
    if int(case["exit"]) == 0:
        assert entry in set(index["id"])
    else:
        reasons = rejects.loc[rejects["id"] == entry, "reason"].tolist()
        assert len(reasons) == 1, f"{entry} not recorded in rejects.csv"
        assert re.search(case["message"], reasons[0]), (case["message"], reasons[0])


def test_every_corpus_file_has_a_case() -> None:
    named = {c["file"] for c in _cases()}
    files = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file()} - {"README.md", "cases.csv"}
    assert files <= named, f"files without a row in cases.csv: {sorted(files - named)}"
    assert named - set(SPECIAL) <= files, f"rows without a file: {sorted(named - set(SPECIAL) - files)}"
