"""`xrdid predict`, `xrdid pull` and the served pyfunc on a real registered model."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _pipeline import scan_of

from xrdid.cli import main
from xrdid.identify.identifier import expand_inputs
from xrdid.ops.registry import load_identifier

CHAMPION = "models:/xrdid-default@champion"


def _predict(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    status = main(["predict", *args, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_predict_contract_from_the_registry(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = scan_of(tmp_path, store)
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
        scan_of(folder, store, entry)
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
    scan = scan_of(tmp_path, store, 1)
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
    status, _, err = _predict(capsys, str(scan_of(tmp_path, store)), "--model", model)
    assert status == 2 and err.strip().count("\n") == 0 and model in err


def test_expand_inputs_takes_folders_and_files(tmp_path: Path) -> None:
    (tmp_path / "a.xy").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.xrdml").write_text("")
    (tmp_path / "notes.md").write_text("")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.xy", "b.xrdml"]


@pytest.fixture(scope="module")
def served_champion(registered_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the champion on localhost, for this module's tests; its URL."""
    from xrdid.ops.serving import served

    with served(CHAMPION, env={"MLFLOW_TRACKING_URI": registered_pipeline["uri"]},
                cwd=tmp_path_factory.mktemp("serve")) as url:
        yield url


def _post(url: str, body: dict) -> tuple[int, dict]:
    from xrdid.ops.serving import Payload, post

    reply = post(url, Payload("test", json.dumps(body).encode(), valid=True))
    return reply.status, reply.body


@pytest.mark.slow
def test_served_champion_answers_rest(store: dict, served_champion: str, shared_data: Path) -> None:
    """`mlflow models serve` on the champion: a real RRUFF pattern in, ranked ids out; bad payloads → 4xx."""
    identifier = load_identifier(CHAMPION)
    real = sorted((shared_data / "rruff236" / "patterns").glob("*.xy"))[0]
    row, _ = identifier.prepare(real)
    status, body = _post(served_champion, {"inputs": [row.tolist()], "params": {"top": 2}})
    assert status == 200
    assert body["predictions"][0]["candidates"] == identifier.rank(row[None], 2)[0]
    pure = np.asarray(identifier.patterns().profiles[0], np.float32)  # an entry of the tiny library
    status, body = _post(served_champion, {"inputs": [pure.tolist()], "params": {"mixture": True, "max_phases": 2}})
    assert status == 200 and 1 <= len(body["predictions"][0]["phases"]) <= 2  # the REST answer carries phases
    assert {"id", "formula", "weight_fraction", "confidence"} <= set(body["predictions"][0]["phases"][0])
    for bad in ({"inputs": [[1.0, 2.0]]}, {"nothing": 1}, {"inputs": [[float("nan")] * len(row)]},
                {"inputs": [row.tolist()], "params": {"top": 0}}):
        status, body = _post(served_champion, bad)
        assert 400 <= status < 500 and body["error_code"], bad


@pytest.mark.slow
def test_served_champion_under_load(store: dict, served_champion: str) -> None:
    """100 requests, half malformed, from one client and then from 4 at once: no 5xx at all, every
    malformed request a 4xx, every valid one a 200 with its answers (latencies printed, not judged)."""
    from xrdid.ops.serving import latency_summary, payloads, run_load, wrong_replies

    identifier = load_identifier(CHAMPION)
    row = identifier.profiles()[0]
    n_materials = len({entry.get("material") or entry["id"] for entry in identifier.library})
    for clients, n in ((1, 40), (4, 60)):
        requests = payloads(row, n, seed=clients)
        assert sum(not p.valid for p in requests) >= n // 2 - 1
        replies = run_load(served_champion, requests, clients)
        assert not wrong_replies(replies, n_materials), clients
        print(f"served champion, {clients} client(s): valid-request latency {latency_summary(replies)}")


def test_blank_holder_is_not_in_library(store: dict, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = sorted((shared_data / "noise" / "blanks").iterdir())[0]
    status, lines, _ = _predict(capsys, str(blank), "--model", CHAMPION)
    assert status == 0
    assert lines[0]["in_library"] is False and any("signal" in w for w in lines[0]["warnings"])


def test_report_and_explanations(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    scan_of(folder, store, 0)
    scan_of(folder, store, 2)
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
    assert "data:image" not in html  # plots are files beside the page, referenced relative to it
    assert html.count('<img src="png/0001_scan0.png"') == 1 and html.count('<img src="png/0002_scan2.png"') == 1


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


def _edit_library(folder: Path, edit: str) -> None:
    """Change ``folder/library.csv`` as a user might: one id renamed, two ids swapped, a formula fixed."""
    with open(folder / "library.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if edit == "renamed_id":
        rows[1]["id"] += "_edited"
    elif edit == "swapped_ids":
        rows[0]["id"], rows[1]["id"] = rows[1]["id"], rows[0]["id"]
    else:
        rows[0]["formula"] = "NaCl"
    with open(folder / "library.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(("edit", "message"), [
    ("renamed_id", "1 of 4 ids differ from the model's classes (first: row 2 is"),
    ("swapped_ids", "2 of 4 ids differ from the model's classes (first: row 1 is"),
    ("formula", "recorded in identifier.json: the file was changed after the model was built"),
], ids=["renamed_id", "swapped_ids", "formula"])
def test_pulled_model_with_an_edited_library_is_refused(store: dict, tmp_path: Path, edit: str, message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An edited library.csv used to crash (KeyError) or, ids swapped, rename the answers while the
    provenance still named the original library: now one line naming the file and the difference."""
    pulled = tmp_path / "pulled"
    assert main(["pull", "--model", CHAMPION, "--to", str(pulled)]) == 0
    _edit_library(pulled, edit)
    capsys.readouterr()
    status, lines, err = _predict(capsys, str(scan_of(tmp_path, store)), "--model", str(pulled))
    assert status == 2 and not lines
    assert err.strip().count("\n") == 0 and f"{pulled / 'library.csv'}: " in err and message in err, err


def test_served_model_refuses_a_bad_top_like_the_cli(store: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The pyfunc used to clamp top <= 0 to 1 where the CLI refused it: one rule and message now,
    raised as the MLflow error that the scoring server answers with a 400."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from xrdid.identify.pyfunc_model import IdentifierModel

    status, _, err = _predict(capsys, str(scan_of(tmp_path, store)), "--model", CHAMPION, "--top", "0")
    assert status == 2 and "--top: must be an integer of at least 1, got 0" in err
    served = mlflow.pyfunc.load_model(CHAMPION)  # as the scoring server loads it: with the params schema
    direct = IdentifierModel()  # and without it, as a caller of the class gets it
    direct.identifier = load_identifier(CHAMPION)
    row = np.ones((1, direct.identifier.grid.n_points), np.float32)
    for top in (0, -3, 2.5, "three", True):
        with pytest.raises(MlflowException) as by_server:
            served.predict(row, params={"top": top})
        with pytest.raises(MlflowException) as by_class:
            direct.predict(None, row, {"top": top})
        assert by_server.value.get_http_status_code() == by_class.value.get_http_status_code() == 400, top
        assert f"top: must be an integer of at least 1, got {top!r}" in by_class.value.message
        if top in (0, -3):  # non-integers stop at MLflow's params schema first
            assert f"top: must be an integer of at least 1, got {top}" in by_server.value.message
    assert len(served.predict(row, params={"top": 10**9})[0]["candidates"]) == 4  # huge: the whole library


def test_predict_from_the_registry_leaves_no_temporary_files(store: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `predict --model models:/...` used to leave its ~4 MB download in the temporary directory."""
    import tempfile

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this process has already read TMPDIR
    status, lines, _ = _predict(capsys, str(scan_of(tmp_path, store)), "--model", CHAMPION,
                                "--report", str(tmp_path / "report.html"))  # explanations: the patterns too
    assert status == 0 and lines[0]["candidates"] and (tmp_path / "report").is_dir()
    assert not list(scratch.iterdir())
    (tmp_path / "empty").mkdir()
    status, _, err = _predict(capsys, str(tmp_path / "empty"), "--model", CHAMPION)  # fails after loading
    assert status == 2 and "no measured pattern files" in err
    assert not list(scratch.iterdir())
