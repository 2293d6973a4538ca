"""`xrdid predict` on a batch of 200 good scans mixed with the bad-input corpus: every file gets its line."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from xrdid.cli import main
from xrdid.identify.identifier import MEASURED_SUFFIXES, Identifier

CHAMPION = "models:/xrdid-default@champion"
CORPUS = Path(__file__).parent / "bad_input"
N_GOOD = 200


def _bad_cases() -> list[dict[str, str]]:
    """The corpus's pattern files that ``xrdid read`` refuses, with the reason each must get."""
    with open(CORPUS / "cases.csv", newline="") as fh:
        return [c for c in csv.DictReader(fh)
                if c["command"] == "read" and c["exit"] == "2" and c["file"].startswith("patterns/")]


def _good_scans(folder: Path, store: dict, n: int = N_GOOD) -> list[Path]:
    """``n`` scans of the library's entries: one reading, written again shifted, rescaled and in
    the text dialects the reader takes (.xy, .csv with a header, .xye with an esd, .dat with decimal commas)."""
    from xrdid.data.patterns import PatternSet
    from xrdid.xrd.measured import Pattern

    patterns = PatternSet.load(store["dir"] / "patterns")
    rng = np.random.default_rng(17)
    files = []
    for i in range(n):
        entry = i % len(patterns.profiles)
        first = folder / f"reading_{entry}.xy"
        if not first.exists():  # the reading every copy of this entry starts from
            counts = rng.poisson(1000 * np.asarray(patterns.profiles[entry]) + 50)
            np.savetxt(first, np.column_stack([patterns.grid.values, counts]), fmt="%.4f %d")
        reading = Pattern.read(first)
        x = reading.two_theta + rng.uniform(-0.03, 0.03)
        y = reading.intensity * rng.uniform(0.2, 5.0)
        kind = i % 4
        path = folder / f"good_{i:03d}{('.xy', '.csv', '.xye', '.dat')[kind]}"
        if kind == 0:
            np.savetxt(path, np.column_stack([x, y]), fmt="%.4f %.2f")
        elif kind == 1:
            np.savetxt(path, np.column_stack([x, y]), fmt="%.4f,%.2f", header="2theta,counts", comments="")
        elif kind == 2:
            np.savetxt(path, np.column_stack([x, y, np.sqrt(y)]), fmt="%.4f %.2f %.2f", header="2theta I esd")
        else:
            text = "\n".join(f"{a:.4f};{b:.2f}".replace(".", ",") for a, b in zip(x, y))
            path.write_text(";Rigaku export\n;Target: Cu Ka\n" + text + "\n")
        files.append(path)
    for entry in range(len(patterns.profiles)):
        (folder / f"reading_{entry}.xy").unlink(missing_ok=True)
    return files


def test_batch_answers_every_good_file_and_names_every_bad_one(
    store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    good = {str(p) for p in _good_scans(folder, store)}
    expected: dict[str, str] = {}  # bad file -> regex its error must match
    named = [str(tmp_path / "absent.xy")]  # files given by name beside the folder
    expected[named[0]] = "file not found"
    for case in _bad_cases():
        copy = folder / "bad" / Path(case["file"]).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(CORPUS / case["file"], copy)
        expected[str(copy)] = case["message"]
        if copy.suffix.lower() not in MEASURED_SUFFIXES:  # a folder search skips it: name it
            named.append(str(copy))
    os.symlink(folder / "loop.xy", folder / "loop.xy")
    expected[str(folder / "loop.xy")] = "symlink loop"
    os.symlink(folder / "nowhere.xy", folder / "dangling.xy")
    expected[str(folder / "dangling.xy")] = "broken symbolic link"
    locked = folder / "locked.xy"  # unreadable: root reads anything, so the denial is simulated
    locked.write_text("20 1\n21 2\n")
    expected[str(locked)] = "permission denied"
    real_open = open

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("xrdid.xrd.measured.open", guarded_open, raising=False)
    inside = folder / "scans.xy"  # a folder with a pattern's name is searched, not reported
    inside.mkdir()
    shutil.copy(sorted(good)[0], inside / "copy.xy")
    good.add(str(inside / "copy.xy"))

    summary = tmp_path / "summary.csv"
    status = main(["predict", str(folder), *named, "--model", CHAMPION, "--json", "--no-progress",
                   "--csv", str(summary)])
    out, err = capsys.readouterr()

    assert status == 2  # the convention: any failed file makes the batch exit 2, after answering the rest
    lines = [json.loads(line) for line in out.splitlines()]
    by_file = {r["file"]: r for r in lines}
    assert len(lines) == len(by_file) == len(good) + len(expected)
    assert set(by_file) == good | set(expected)
    for name in good:
        assert "error" not in by_file[name], (name, by_file[name].get("error"))
        assert by_file[name]["candidates"], name
    for name, pattern in expected.items():
        assert re.search(pattern, by_file[name].get("error", "")), (name, pattern, by_file[name])

    errors = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(errors) == len(expected)
    assert all(line.startswith("xrdid: error: ") for line in errors)

    rows = list(csv.DictReader(open(summary, newline="")))
    assert [r["file"] for r in rows] == [r["file"] for r in lines]
    for row in rows:
        if row["file"] in good:
            assert row["id"] and not row["error"]
        else:
            assert not row["id"] and re.search(expected[row["file"]], row["error"])


def test_an_unexpected_failure_costs_one_file_not_the_batch(
    store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader bug (any exception, not only InputError) is that file's error; the others are answered."""
    folder = tmp_path / "batch"
    folder.mkdir()
    files = _good_scans(folder, store, 4)
    prepare = Identifier.prepare

    def flaky(self: Identifier, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        if Path(path) == files[1]:
            raise RuntimeError("reader bug\nwith a second line")
        return prepare(self, path)

    monkeypatch.setattr(Identifier, "prepare", flaky)
    status = main(["predict", *map(str, files), "--model", CHAMPION, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 2 and [r["file"] for r in lines] == list(map(str, files))
    assert lines[1]["error"] == "unexpected error: RuntimeError: reader bug with a second line"
    assert all(r["candidates"] for n, r in enumerate(lines) if n != 1)
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_unwritable_csv_is_one_line_after_the_answers(store: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    files = _good_scans(tmp_path, store, 2)
    summary = tmp_path / "no" / "such" / "folder" / "summary.csv"
    status = main(["predict", *map(str, files), "--model", CHAMPION, "--json", "--no-progress", "--csv", str(summary)])
    out, err = capsys.readouterr()
    assert status == 2 and len(out.splitlines()) == 2  # the answers came first
    assert err.strip() == f"xrdid: error: {summary}: cannot write the CSV summary: No such file or directory"
