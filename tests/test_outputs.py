"""Stage outputs appear whole or not at all; readers refuse incomplete folders with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xrdid.data.patterns import PatternSet
from xrdid.data.splits import load_split, read_meta
from xrdid.errors import InputError
from xrdid.outputs import atomic_dir, require
from xrdid.xrd.noise import NoiseBank

ROOT = Path(__file__).resolve().parents[1]


def test_interrupted_writer_leaves_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "augmented"
    with atomic_dir(out) as tmp:
        (tmp / "meta.json").write_text('{"ids": ["a"]}')
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        np.save(tmp / "X.npy", np.zeros((0, 5)))  # the zero-row X.npy that train used to accept
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["augmented"]  # no temporary folder left


def test_a_completed_writer_replaces_the_output(tmp_path: Path) -> None:
    out = tmp_path / "patterns"
    out.mkdir()
    (out / "stale.npy").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]


def test_temporary_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".library.tmp-{dead.stdout.strip()}"
    stale.mkdir()
    live = tmp_path / f".library.tmp-{os.getppid()}"  # a running process: maybe another writer
    live.mkdir()
    with atomic_dir(tmp_path / "library") as tmp:
        (tmp / "structures.npz").write_bytes(b"")
    assert not stale.exists()
    assert live.exists()


@pytest.mark.parametrize(
    ("read", "producer"),
    [(PatternSet.load, "xrdid simulate"), (NoiseBank.load, "xrdid noise"), (read_meta, "xrdid augment"),
     (lambda folder: load_split(folder, "train"), "xrdid augment")],
)
def test_readers_refuse_a_folder_without_its_marker(tmp_path: Path, read, producer: str) -> None:  # noqa: ANN001
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "profiles.npy").write_bytes(b"")
    with pytest.raises(InputError, match=rf"out: incomplete or not made by `{producer}` \(no meta\.json\)"):
        read(folder)
    with pytest.raises(InputError, match=rf"missing: not found; run `{producer}` first"):
        read(tmp_path / "missing")


def test_require_returns_the_folder(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"ids": []}))
    assert require(tmp_path, "meta.json", "xrdid augment") == tmp_path


def test_train_without_meta_json_is_one_line(tmp_path: Path) -> None:
    # Before: a KeyError/FileNotFoundError traceback from the train stage.
    (tmp_path / "augmented" / "train").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "xrdid", "train", "--params", str(ROOT / "params.yaml"), "--augmented",
                             str(tmp_path / "augmented"), "--out", str(tmp_path / "models"), "--no-progress"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no meta.json" in lines[0], lines
