"""``xrdid ui``: a local web page to identify measured patterns: drop files, pick a model, read the answers.

The page is served by the standard library's HTTP server on 127.0.0.1 only (requests naming any
other host are refused, so a web site cannot reach it through DNS rebinding). Uploaded files are
written to a temporary folder, identified exactly as ``xrdid predict --report`` does (ranked
answers, status badge, warnings, peak evidence, explanation plot) and the folder is deleted;
the answers of the last :data:`KEPT` uploads stay in memory, nothing is written elsewhere and
nothing leaves the machine.

Examples
--------
.. code-block:: console

    $ xrdid ui                                   # models:/<tracking.model_name>@champion of ./params.yaml
    $ xrdid ui --model pulled/ --port 9000       # a pulled or local identifier folder
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrdid.errors import InputError

if TYPE_CHECKING:
    import argparse

    from xrdid.identify.identifier import Identifier
    from xrdid.identify.names import DisplayName

__all__ = ["UI", "add_arguments", "default_model", "parse_multipart", "registered_models"]

log = logging.getLogger(__name__)
HOST = "127.0.0.1"  # never another interface: the page has no login
KEPT = 20  # uploads whose answers stay viewable (in memory)
MAX_UPLOAD = 64 * 2**20  # bytes of one upload: far above any batch of scans, far below the machine's memory

_FORM = """<style>
form.upload{{border:1px solid #ccc;border-radius:.5em;padding:.8em 1em;margin:.6em 0 1em;background:#fafafa}}
.drop{{display:block;border:2px dashed #999;border-radius:.5em;padding:1.2em;text-align:center;margin-bottom:.6em}}
.drop.on{{border-color:#1a7f37;background:#dafbe1}}form.upload label{{margin-right:1em}}
form.upload select,form.upload input[type=text]{{min-width:22em}}.err{{color:#cf222e;font-weight:bold}}
</style>
<form class="upload" method="post" action="/identify" enctype="multipart/form-data" id="up">
<label class="drop" id="drop">Drop measured pattern files here, or choose them:
<input type="file" name="files" multiple required accept="{accept}"></label>
<label>model <select name="model">{options}</select></label>
<label>or a model folder / URI <input type="text" name="model_path" placeholder="pulled/ or models:/NAME/3"></label>
<button type="submit">Identify</button>
{error}</form>
<script>
const drop = document.getElementById("drop"), input = drop.querySelector("input");
for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, e => {{ e.preventDefault(); drop.classList.add("on"); }});
for (const t of ["dragleave", "drop"]) drop.addEventListener(t, e => {{ e.preventDefault(); drop.classList.remove("on"); }});
drop.addEventListener("drop", e => {{ input.files = e.dataTransfer.files; }});
document.getElementById("up").addEventListener("submit", e => {{
  const b = e.target.querySelector("button"); b.disabled = true; b.textContent = "identifying…"; }});
</script>
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xrdid: identify powder patterns</title>
<style>body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1250px;
color:#222;padding:0 1em}}h1{{font-size:1.5em}}.note{{color:#666;font-size:.9em}}</style></head><body>
<h1>xrdid: identify powder patterns</h1>
{form}
<p class="note">Files are read on this machine only: each upload is identified in a temporary folder that is then
deleted. Formats: {formats}.</p>
</body></html>
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``xrdid ui``: the local identification page."""
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.add_argument("--model", default=None,
                   help="preselected model: models:/NAME@champion, models:/NAME/VERSION, runs:/RUN/model or an "
                        "identifier folder (default: models:/<tracking.model_name>@champion of ./params.yaml)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store listing the registered models (default: params.yaml's tracking.uri, "
                        "MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    p.set_defaults(func=_ui)


def default_model(params: str | Path = "params.yaml") -> str | None:
    """``models:/<tracking.model_name>@champion`` of ``params`` when that file exists, else None.

    Examples
    --------
    >>> default_model("no/such/params.yaml") is None
    True
    """
    if not Path(params).is_file():
        return None
    from xrdid.config import load_params

    return f"models:/{load_params(params, 'tracking')['model_name']}@champion"


def _tracking_uri(given: str | None, params: str | Path = "params.yaml") -> str:
    """``given``, else params.yaml's ``tracking.uri``, else MLFLOW_TRACKING_URI or the default store."""
    from xrdid.ops.tracking import resolve_uri

    if given is None and Path(params).is_file():
        from xrdid.config import load_params

        given = load_params(params, "tracking").get("uri")
    return resolve_uri(given)


def registered_models(tracking_uri: str, versions: int = 5) -> list[tuple[str, str]]:
    """``(uri, label)`` of each registered model's aliases and newest ``versions`` versions.

    A SQLite store that does not exist lists nothing (and is not created); a store that cannot
    be read lists nothing either: the page then offers the preselected model and a path field.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return []
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = []
        for model in client.search_registered_models():
            for alias, version in sorted((model.aliases or {}).items()):
                found.append((f"models:/{model.name}@{alias}", f"{model.name} @{alias} (v{version})"))
            numbers = sorted((int(v.version) for v in client.search_model_versions(f"name='{model.name}'")),
                             reverse=True)
            found += [(f"models:/{model.name}/{n}", f"{model.name} v{n}") for n in numbers[:versions]]
    except Exception as exc:  # an unreachable or foreign store: the page still works with a path
        log.warning("cannot list the registered models of %s: %s", tracking_uri, str(exc).splitlines()[0])
        return []
    return found


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """A ``multipart/form-data`` body → its text fields and its files ``(file name, content)``.

    Examples
    --------
    >>> body = (b'--X\\r\\nContent-Disposition: form-data; name="model"\\r\\n\\r\\nm1\\r\\n'
    ...         b'--X\\r\\nContent-Disposition: form-data; name="files"; filename="a.xy"\\r\\n\\r\\n'
    ...         b'10 5\\r\\n--X--\\r\\n')
    >>> parse_multipart("multipart/form-data; boundary=X", body)
    ({'model': 'm1'}, [('a.xy', b'10 5')])
    """
    if not content_type.startswith("multipart/form-data"):
        raise InputError("upload", f"expected multipart/form-data, got {content_type or 'no content type'}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise InputError("upload", "the form data could not be read")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            if filename or payload:  # a file input left empty sends one nameless, empty part
                files.append((filename, payload))
        elif name:
            fields[str(name)] = payload.decode("utf-8", "replace")
    return fields, files


def _safe_name(name: str) -> str:
    """The last component of an uploaded file's name, without characters a file system may refuse."""
    base = re.split(r"[\\/]", name)[-1]
    base = re.sub(r"[\x00-\x1f<>:\"|?*]", "_", base).strip(" .") or "upload"
    return base[:200]


@dataclass
class _Loaded:
    identifier: Identifier
    names: dict[str, DisplayName]
    model: str
    conditions: str


@dataclass
class UI:
    """The page's state: the preselected model, loaded identifiers and the answers of recent uploads.

    Examples
    --------
    >>> ui = UI(model=None, tracking_uri="sqlite:///no/such/mlflow.db")
    >>> "<select" in ui.index_page() and 'name="model_path"' in ui.index_page()
    True
    """

    model: str | None
    tracking_uri: str
    _loaded: dict[str, _Loaded] = field(default_factory=dict)
    _results: OrderedDict[str, tuple[str, list[bytes | None]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, uri: str) -> _Loaded:
        """The identifier of ``uri``, loaded once (a registered model is downloaded the first time only)."""
        if uri not in self._loaded:
            from xrdid.cli.predict import _describe
            from xrdid.identify.names import display_names
            from xrdid.ops.registry import load_identifier

            identifier = load_identifier(uri)
            model, conditions = _describe(identifier, uri)
            self._loaded[uri] = _Loaded(identifier, display_names(identifier.library), model, conditions)
        return self._loaded[uri]

    def form(self, selected: str | None = None, error: str = "") -> str:
        """The upload form; ``selected`` preselected among the registered models (added when absent)."""
        from xrdid.xrd.measured import SUPPORTED_SUFFIXES

        selected = selected or self.model
        choices = registered_models(self.tracking_uri)
        if selected and selected not in [uri for uri, _ in choices]:
            choices.insert(0, (selected, selected))
        options = "".join(f'<option value="{escape(uri)}"{" selected" if uri == selected else ""}>{escape(label)}'
                          "</option>" for uri, label in choices) or '<option value="">(no registered model)</option>'
        return _FORM.format(accept=",".join(SUPPORTED_SUFFIXES), options=options,
                            error=f'<p class="err">{escape(error)}</p>' if error else "")

    def index_page(self, error: str = "", selected: str | None = None) -> str:
        """The start page: the form and what happens to the files."""
        from xrdid.xrd.measured import SUPPORTED_SUFFIXES

        return _PAGE.format(form=self.form(selected, error), formats=", ".join(SUPPORTED_SUFFIXES))

    def identify(self, uri: str, uploads: list[tuple[str, bytes]]) -> str:
        """Identify ``uploads`` with model ``uri`` in a temporary folder (deleted after); the answers' token."""
        from xrdid.cli.predict import _explain
        from xrdid.identify.explain import render_report

        if not uploads:
            raise InputError("upload", "no file chosen")
        with self._lock:  # one identification at a time: the model and its caches are not shared across threads
            loaded = self.load(uri)
            results: list[dict[str, Any]] = []
            images: list[bytes | None] = []  # per file: its plot, served at /result/TOKEN/N.png
            with tempfile.TemporaryDirectory(prefix="xrdid-ui-") as tmp:
                paths = []
                for i, (name, data) in enumerate(uploads):
                    folder = Path(tmp, f"{i:04d}")  # one folder each: two uploads may share a name
                    folder.mkdir()
                    paths.append(folder / _safe_name(name))
                    paths[-1].write_bytes(data)
                found = loaded.identifier.predict_files(paths, top=5, keep_rows=True)
                for n, ((name, _), result) in enumerate(zip(uploads, found), start=1):
                    shown = {k: v for k, v in result.items() if k not in ("row", "covered", "provenance")}
                    shown["file"] = name  # the name the user knows, not the temporary path
                    images.append(None)
                    if "candidates" in result:
                        try:
                            png = _explain(loaded.identifier, result, Path(tmp), n, loaded.names)
                            images[-1] = shown["image"] = png.read_bytes()
                        except Exception as exc:  # the answer stands without its plot
                            log.debug("explanation of %s failed", name, exc_info=True)
                            shown["warnings"] = [*shown.get("warnings", []), f"no explanation plot ({exc})"]
                    results.append(shown)
            token = secrets.token_urlsafe(12)
            p = loaded.identifier.provenance
            meta = {"model": loaded.model, "conditions": loaded.conditions,
                    "library": f"{len(loaded.identifier.library)} entries, sha256 {p.get('library_sha256', '')[:12]}",
                    "uploads": "identified in a temporary folder, then deleted"}
            page = render_report(results, f"xrdid: {len(results)} file{'s' if len(results) != 1 else ''} identified",
                                 meta, loaded.names, lambda i, _: f"/result/{token}/{i + 1}.png",
                                 prelude=self.form(uri))
            self._results[token] = (page, images)
            while len(self._results) > KEPT:
                self._results.popitem(last=False)
        return token

    def result(self, token: str) -> tuple[str, list[bytes | None]] | None:
        """The page and plots of an upload, or None when unknown or no longer kept."""
        return self._results.get(token)


def _handler(ui: UI, port: int) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``ui``; only ``Host: 127.0.0.1:PORT`` or ``localhost:PORT`` is served."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "xrdid-ui"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _host_ok(self) -> bool:
            host = (self.headers.get("Host") or "").lower()
            if host in (f"127.0.0.1:{port}", f"localhost:{port}"):
                return True
            self._send(HTTPStatus.FORBIDDEN, b"xrdid ui answers only to 127.0.0.1 and localhost\n", "text/plain")
            return False

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self._host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(HTTPStatus.OK, ui.index_page().encode())
                return
            match = re.fullmatch(r"/result/([\w-]+)(?:/(\d+)\.png)?", path)
            found = ui.result(match.group(1)) if match else None
            if found is None:
                message = (f"not found; answers are kept in memory for the last {KEPT} uploads only"
                           if match else "not found")
                self._send(HTTPStatus.NOT_FOUND, ui.index_page(message).encode())
            elif match.group(2) is None:
                self._send(HTTPStatus.OK, found[0].encode())
            elif 1 <= int(match.group(2)) <= len(found[1]) and found[1][int(match.group(2)) - 1] is not None:
                self._send(HTTPStatus.OK, found[1][int(match.group(2)) - 1] or b"", "image/png")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"no such plot\n", "text/plain")

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802
            if not self._host_ok():
                return
            if self.path != "/identify":
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           ui.index_page(f"upload of {length / 2**20:.0f} MB refused: at most "
                                         f"{MAX_UPLOAD // 2**20} MB at once").encode())
                self.close_connection = True  # the body is not read
                return
            model = None
            try:
                fields, files = parse_multipart(self.headers.get("Content-Type", ""), self.rfile.read(length))
                model = fields.get("model_path", "").strip() or fields.get("model", "").strip() or ui.model
                if not model:
                    raise InputError("model", "choose a registered model or give a model folder")
                token = ui.identify(model, files)
            except InputError as exc:
                self._send(HTTPStatus.BAD_REQUEST, ui.index_page(str(exc), model).encode())
                return
            except Exception as exc:  # e.g. a registry that cannot be reached: say so on the page
                log.debug("identification failed", exc_info=True)
                message = f"{model}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, ui.index_page(message, model).encode())
                return
            self._send(HTTPStatus.SEE_OTHER, b"", headers={"Location": f"/result/{token}"})

    return Handler


def serve(ui: UI, port: int) -> ThreadingHTTPServer:
    """The server for ``ui`` on 127.0.0.1:``port`` (0: a free port), not yet serving.

    Examples
    --------
    >>> server = serve(UI(model=None, tracking_uri="sqlite:///no/such/mlflow.db"), 0)
    >>> server.server_address[0]
    '127.0.0.1'
    >>> server.server_close()
    """
    try:
        server = ThreadingHTTPServer((HOST, port), _handler(ui, port))
    except OSError as exc:
        raise InputError(f"--port {port}", f"cannot listen on {HOST}:{port} ({exc.strerror or exc})") from exc
    if port == 0:  # the handler checks the Host header against the real port
        server.RequestHandlerClass = _handler(ui, server.server_address[1])
    server.daemon_threads = True
    return server


def _ui(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}", "a port is 0..65535")
    tracking_uri = _tracking_uri(args.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # models:/ URIs resolve in this store
    ui = UI(model=args.model or default_model(), tracking_uri=tracking_uri)
    if args.model:  # named on the command line: a wrong one fails now, in one line
        ui.load(args.model)
    server = serve(ui, args.port)
    print(f"xrdid ui: http://{HOST}:{server.server_address[1]}/ (model {ui.model or 'none preselected'}; "
          f"registered models from {tracking_uri}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("xrdid ui: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
