"""`xrdid predict`, `xrdid pull` and the served pyfunc on a real registered model."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from xrdid.cli import main
from xrdid.identify.identifier import expand_inputs
from xrdid.ops.registry import load_identifier

CHAMPION = "models:/xrdid-default@champion"


@pytest.fixture
def store(registered_pipeline: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_pipeline["uri"])
    return registered_pipeline


def _measurement(folder: Path, store: dict, entry: int = 0) -> Path:
    """A two-column scan: entry ``entry``'s simulated profile with counts and a background."""
    from xrdid.data.patterns import PatternSet

    patterns = PatternSet.load(store["dir"] / "patterns")
    rng = np.random.default_rng(entry)
    counts = rng.poisson(1000 * np.asarray(patterns.profiles[entry]) + 50)
    path = folder / f"scan{entry}.xy"
    np.savetxt(path, np.column_stack([patterns.grid.values, counts]))
    return path


def _predict(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    status = main(["predict", *args, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_predict_contract_from_the_registry(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = _measurement(tmp_path, store)
    status, lines, _ = _predict(capsys, str(scan), "--model", CHAMPION, "--top", "3")
    assert status == 0 and len(lines) == 1
    result = lines[0]
    assert result["file"] == str(scan)
    probabilities = [c["probability"] for c in result["candidates"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    library = {row["id"]: row["formula"] for row in csv.DictReader(open(store["dir"] / "library" / "index.csv"))}
    assert all(library[c["id"]] == c["formula"] for c in result["candidates"])
    assert result["provenance"]["model_name"] == "xrdid-default" and result["provenance"]["model_version"] == "1"
    assert result["provenance"]["library_sha256"]


def test_batch_goes_on_past_bad_files(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    for entry in range(3):
        _measurement(folder, store, entry)
    (folder / "broken.xy").write_text("2theta counts\n10 nan\n11 5\n")
    status, lines, err = _predict(capsys, str(folder), "--model", CHAMPION, "--csv", str(tmp_path / "summary.csv"))
    assert status == 2  # something failed; everything else was still identified
    assert [Path(r["file"]).name for r in lines] == ["broken.xy", "scan0.xy", "scan1.xy", "scan2.xy"]
    assert "error" in lines[0] and all(len(r["candidates"]) == 4 for r in lines[1:])  # 4-entry library
    assert err.strip().count("\n") == 0 and "broken.xy" in err
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert len(rows) == 4 and rows[0]["error"] and all(r["id"] for r in rows[1:])


def test_pull_then_predict_offline(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _measurement(tmp_path, store, 1)
    _, online, _ = _predict(capsys, str(scan), "--model", CHAMPION)
    assert main(["pull", "--model", CHAMPION, "--to", str(tmp_path / "pulled")]) == 0
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nowhere/none.db")  # no registry now
    status, offline, _ = _predict(capsys, str(scan), "--model", str(tmp_path / "pulled"))
    assert status == 0 and offline[0]["candidates"] == online[0]["candidates"]
    assert offline[0]["provenance"]["model_version"] == "1"
    assert (tmp_path / "pulled" / "patterns" / "profiles.npy").is_file()
    assert main(["pull", "--model", CHAMPION, "--to", str(tmp_path / "pulled")]) == 2  # not empty


@pytest.mark.parametrize("model", ["models:/no-such-model@champion", "no/such/folder"])
def test_bad_model_is_one_line(store: dict, tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _predict(capsys, str(_measurement(tmp_path, store)), "--model", model)
    assert status == 2 and err.strip().count("\n") == 0 and model in err


def test_expand_inputs_takes_folders_and_files(tmp_path: Path) -> None:
    (tmp_path / "a.xy").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.xrdml").write_text("")
    (tmp_path / "notes.md").write_text("")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.xy", "b.xrdml"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_served_champion_answers_rest(store: dict, tmp_path: Path, shared_data: Path) -> None:
    """`mlflow models serve` on the champion: a real RRUFF pattern in, ranked ids out; bad payloads → 4xx."""
    identifier = load_identifier(CHAMPION)
    real = sorted((shared_data / "rruff304" / "patterns").glob("*.xy"))[0]
    row, _ = identifier.prepare(real)
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        status, body = _post(port, {"inputs": [row.tolist()], "params": {"top": 2}})
        assert status == 200
        assert body["predictions"][0]["candidates"] == identifier.rank(row[None], 2)[0]
        for bad in ({"inputs": [[1.0, 2.0]]}, {"nothing": 1}, {"inputs": [[float("nan")] * len(row)]}):
            status, body = _post(port, bad)
            assert 400 <= status < 500 and body["error_code"], bad
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def test_blank_holder_is_not_in_library(store: dict, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = sorted((shared_data / "noise" / "blanks").iterdir())[0]
    status, lines, _ = _predict(capsys, str(blank), "--model", CHAMPION)
    assert status == 0
    assert lines[0]["in_library"] is False and any("signal" in w for w in lines[0]["warnings"])


def test_report_and_explanations(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    _measurement(folder, store, 0)
    _measurement(folder, store, 2)
    (folder / "a<b>.xy").write_text("not a pattern\n")
    report = tmp_path / "report.html"
    status, lines, _ = _predict(capsys, str(folder), "--model", CHAMPION, "--report", str(report),
                                "--explain", str(tmp_path / "png"))
    assert status == 2
    assert all(isinstance(r["in_library"], bool) for r in lines[1:])
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == ["0001_scan0.png", "0002_scan2.png"] and pngs[0].stat().st_size > 10_000
    html = report.read_text()
    assert html.count("<section") == 3 and "a&lt;b&gt;.xy" in html and "<b>.xy" not in html
    assert html.count("data:image/png;base64") == 2


def test_a_candidate_with_overlapping_atoms_is_flagged(store: dict) -> None:
    import dataclasses

    from xrdid.data.patterns import PatternSet

    identifier = load_identifier(CHAMPION)
    patterns = PatternSet.load(store["dir"] / "patterns")
    row = np.asarray(patterns.profiles[patterns.rows([identifier.ids[0]])], dtype=np.float32)
    best = identifier.identify(row)[0]["candidates"][0]
    assert "unreliable_intensities" not in best
    broken = [dict(entry, overlaps="3" if entry["id"] == best["id"] else "0") for entry in identifier.library]
    result = dataclasses.replace(identifier, library=broken).identify(row)[0]
    assert result["candidates"][0]["unreliable_intensities"] is True
    assert any(f"the CIF of {best['id']} has overlapping atoms" in w for w in result["warnings"])
