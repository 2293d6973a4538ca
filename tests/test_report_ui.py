"""What a chemist sees in a browser (issue 18): the HTML report's structure and the `xrdid ui` page.

The report is checked with an HTML parser (summary rows, anchors, relative plot files, badges,
size) and, where a Chromium binary is on PATH, as a browser renders it (``--dump-dom``); `xrdid
ui` is started as its own process and sent a real RRUFF scan, as a browser's form would.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from _pipeline import scan_of

from xrdid.cli import main
from xrdid.identify.explain import html_report
from xrdid.identify.explain.report import STATUSES

CHAMPION = "models:/xrdid-default@champion"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RRUFF_SCAN = Path("rruff236", "patterns", "Al2O3_167.xy")


class Page(HTMLParser):
    """The parts of a report page the tests check: summary rows, element ids, images, badges, text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}  # id -> tag
        self.rows: list[dict[str, Any]] = []  # summary table rows: cells' text, link, badge
        self.images: list[str] = []
        self.badges: list[str] = []
        self.text: list[str] = []
        self._table: list[str] = []  # ids of the open tables
        self._badge = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids[str(a["id"])] = tag
        if tag == "table":
            self._table.append(a.get("id") or "")
        in_summary = bool(self._table) and self._table[-1] == "summary"
        if in_summary and tag == "tr":
            self.rows.append({"cells": [], "href": None, "badge": None})
        elif in_summary and tag in ("td", "th") and self.rows:
            self.rows[-1]["cells"].append("")
            self.rows[-1]["header"] = tag == "th"
        elif in_summary and tag == "a" and self.rows:
            self.rows[-1]["href"] = a.get("href")
        if tag == "img":
            self.images.append(str(a.get("src")))
        self._badge = tag == "span" and "b" in (a.get("class") or "").split()

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._table and self._table[-1] == "summary" and self.rows and self.rows[-1]["cells"]:
            self.rows[-1]["cells"][-1] += data
            if self._badge:
                self.rows[-1]["badge"] = data
        if self._badge:
            self.badges.append(data)
            self._badge = False

    def summary(self) -> list[dict[str, Any]]:
        """The summary table's data rows (without the header)."""
        return [r for r in self.rows if not r.get("header")]


def _check_report(page: Page, folder: Path, n_files: int) -> None:
    """The report's promises: a row per file linking to its section, short badges, plots as relative files."""
    rows = page.summary()
    assert len(rows) == n_files
    for row in rows:
        assert row["href"] and row["href"].startswith("#"), row
        assert page.ids.get(row["href"][1:]) == "section", f"{row['href']} has no section"
        assert "/" not in row["cells"][1], row  # the file's name, not its path
        assert row["badge"] in STATUSES and len(row["badge"]) <= 16, row
    for src in page.images:
        assert not src.startswith(("data:", "/", "file:", "http")), src[:40]
        assert (folder / urllib.request.url2pathname(src)).is_file(), src


# ---------------------------------------------------------------------- the report, without a model


def test_a_report_of_118_files_stays_small(tmp_path: Path) -> None:
    """118 files with 5 candidates, 5 judged peaks and a plot each: a page of ~100 KB, not 15 MB."""
    plot = tmp_path / "plots" / "p.png"
    plot.parent.mkdir()
    plot.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (1210).to_bytes(4, "big") + (698).to_bytes(4, "big"))
    peak = {"two_theta": 31.234, "height": 81.2, "fwhm": 0.3, "tolerance": 0.33, "simulated": 62.0, "explained": True,
            "reflection": {"two_theta": 31.25, "hkl": [3, -1, 2], "d_spacing": 2.86, "intensity": 62.0}}
    entries = [{"file": f"/data/measured/long_folder_name/Ca3Al2(SiO4)3_{i:03d}.xy", "in_library": i % 9 != 0,
                "warnings": [] if i % 9 else ["strongest peak at 27.5° not explained by X's reflections"],
                "candidates": [{"id": f"Ca3Al2(SiO4)3_{i:03d}_{k}", "formula": "Ca24Al16Si24O96",
                                "probability": 0.9 / (k + 1)} for k in range(5)],
                "evidence": {"candidate": f"Ca3Al2(SiO4)3_{i:03d}_0", "explained": i % 9 != 0, "peaks": [peak] * 5},
                "image": plot} for i in range(118)]  # fmt: skip
    path = html_report(entries, tmp_path / "report.html", meta={"model": "xrdid-default v3"})
    size = path.stat().st_size
    assert size < 150_000, f"{size} bytes"
    page = Page(path.read_text())
    _check_report(page, tmp_path, 118)
    assert 'width="1210" height="698"' in path.read_text()  # space reserved: jumping to a section lands on it
    assert "/data/measured/long_folder_name" in "".join(page.text)  # the shared folder, named once
    assert sum(r["badge"] == "not in library?" for r in page.summary()) == 14


# ---------------------------------------------------------------------- the report of `xrdid predict`


@pytest.fixture
def report(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """`xrdid predict --report` on two scans and a broken file: the report's path."""
    folder = tmp_path / "scans"
    folder.mkdir()
    scan_of(folder, store, 0)
    scan_of(folder, store, 1)
    (folder / "broken.xy").write_text("2theta counts\n10 nan\n")
    path = tmp_path / "out" / "report.html"
    path.parent.mkdir()
    assert main(["predict", str(folder), "--model", CHAMPION, "--report", str(path), "--no-progress"]) == 2
    capsys.readouterr()
    return path


def test_predict_report_structure(report: Path, store: dict) -> None:
    html = report.read_text()
    page = Page(html)
    _check_report(page, report.parent, 3)
    assert "data:image" not in html and len(page.images) == 2
    assert all(src.startswith("report/") for src in page.images)  # the folder beside the page
    rows = {r["cells"][1]: r for r in page.summary()}
    assert set(rows) == {"scan0.xy", "scan1.xy", "broken.xy"} and rows["broken.xy"]["badge"] == "error"
    assert all(re.fullmatch(r"[<>] 0\.\d+|0\.\d{3}", rows[n]["cells"][4].strip()) for n in ("scan0.xy", "scan1.xy"))
    text = " ".join(page.text)
    assert "xrdid-default v1" in text and re.search(r"4 library entries, sha256 [0-9a-f]{12}\b", text)
    assert "2θ 5–40° at CuKa (1.5418 Å)" in text
    assert len(html) < 20_000


def _browser() -> str:
    found = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}; Debian: apt-get install chromium)")
    return found


def _chromium(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a throw-away profile (root needs --no-sandbox)."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:8]}"
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", "--window-size=1300,1400", *args],
                          capture_output=True, text=True, timeout=120)


def test_predict_report_in_a_browser(report: Path, tmp_path: Path) -> None:
    """The DOM Chromium builds holds the summary table, a section per row and the plots; a screenshot is drawn."""
    browser = _browser()
    dom = _chromium(browser, tmp_path, "--dump-dom", report.as_uri()).stdout
    page = Page(dom)
    _check_report(page, report.parent, 3)
    shot = tmp_path / "report.png"
    _chromium(browser, tmp_path, f"--screenshot={shot}", report.as_uri())
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000


# ---------------------------------------------------------------------- xrdid ui


class _Server:
    """`xrdid ui` in its own process on a free port; its URL from the first line it prints."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the server
        self.process = subprocess.Popen([sys.executable, "-m", "xrdid", "ui", "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.process.stdout], daemon=True).start()
        found, seen, deadline = None, [], time.monotonic() + 120
        while found is None and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                if self.process.poll() is not None:  # it exited: no URL will come
                    break
                continue
            found = re.search(r"xrdid ui: http://127\.0\.0\.1:(\d+)/", seen[-1])
        if found is None:
            self.log.seek(0)
            why = self.log.read()[-2000:].decode(errors="replace")
            self.stop()
            raise AssertionError(f"xrdid ui did not start: {seen} {why}")
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)
        self.log.close()


def _multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A browser's ``multipart/form-data`` body and content type."""
    boundary = f"----xrdid{uuid.uuid4().hex}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def ui_upload(registered_pipeline: dict, shared_data: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`xrdid ui` on the tiny pipeline's store, sent a measured RRUFF scan and a broken file as the page's form
    sends them: the server, its start page, the result's URL and HTML, and the server's temporary folder."""
    scratch = tmp_path_factory.mktemp("ui-tmpdir")
    uri = registered_pipeline["uri"]
    server = _Server("--tracking-uri", uri, "--model", CHAMPION,
                     env=dict(os.environ, TMPDIR=str(scratch), MLFLOW_TRACKING_URI=uri))
    try:
        start = urllib.request.urlopen(server.url + "/", timeout=60).read().decode()
        body, content_type = _multipart({"model": CHAMPION, "model_path": ""},
                                        [(RRUFF_SCAN.name, (shared_data / RRUFF_SCAN).read_bytes()),
                                         ("broken.xy", b"2theta counts\n10 nan\n")])
        request = urllib.request.Request(server.url + "/identify", data=body, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=300) as answer:  # 303 to /result/TOKEN, followed
            url, html = answer.geturl(), answer.read().decode()
        yield {"server": server, "start": start, "url": url, "html": html, "scratch": scratch}
    finally:
        server.stop()


def test_ui_identifies_an_uploaded_rruff_scan(ui_upload: dict[str, Any]) -> None:
    """The ranked answers, status, evidence and plot come back; nothing stays in the temporary folder."""
    server = ui_upload["server"]
    assert 'type="file"' in ui_upload["start"] and "xrdid-default @champion (v1)" in ui_upload["start"]  # registry
    assert re.fullmatch(rf"{server.url}/result/[\w-]+", ui_upload["url"]), ui_upload["url"]
    page = Page(ui_upload["html"])
    rows = {r["cells"][1]: r for r in page.summary()}
    assert set(rows) == {RRUFF_SCAN.name, "broken.xy"} and rows["broken.xy"]["badge"] == "error"
    assert rows[RRUFF_SCAN.name]["badge"] in STATUSES and rows[RRUFF_SCAN.name]["cells"][2]  # the ranked answer
    text = " ".join(page.text)
    assert "rank" in text and "Peak check" in text and "xrdid-default v1" in text
    assert len(page.images) == 1
    with urllib.request.urlopen(server.url + page.images[0], timeout=60) as plot:
        assert plot.read(4) == b"\x89PNG"
    assert not list(ui_upload["scratch"].iterdir())  # the uploads and the model's download are deleted


def test_ui_answers_only_to_its_own_host(ui_upload: dict[str, Any]) -> None:
    """A page elsewhere cannot reach the server through a DNS name that resolves to 127.0.0.1."""
    foreign = urllib.request.Request(ui_upload["server"].url + "/", headers={"Host": "attacker.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(foreign, timeout=60)
    assert refused.value.code == 403


def test_ui_result_in_a_browser(ui_upload: dict[str, Any], tmp_path: Path) -> None:
    """Chromium's DOM of the result page: the summary rows and the form for the next upload."""
    dom = Page(_chromium(_browser(), tmp_path, "--dump-dom", ui_upload["url"]).stdout)
    assert {r["cells"][1] for r in dom.summary()} == {RRUFF_SCAN.name, "broken.xy"}
    assert dom.ids.get("up") == "form"


def test_ui_refuses_a_model_folder_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # `xrdid ui` points it at its store: restored after the test
    assert main(["ui", "--model", str(tmp_path / "missing"), "--port", "0",
                 "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xrdid: error: ") and err.count("\n") == 1 and "no such model folder" in err
    assert not (tmp_path / "none.db").exists()  # listing models never creates a store
