"""A model served on localhost by MLflow's scoring server, and a load of valid and malformed requests.

The tests and ``benchmarks/serve_load.py`` share it: the same server start, the same payloads.

Examples
--------
>>> with served("models:/xrdid-default@champion") as url:  # doctest: +SKIP
...     replies = run_load(url, payloads(row, 40), clients=4)
>>> latency_summary(replies)  # doctest: +SKIP
{'n': 24, 'p50_ms': 31.2, 'p95_ms': 70.4}
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(model_uri: str, *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
           timeout: float = 180.0) -> Iterator[str]:
    """``mlflow models serve`` of ``model_uri`` on a free localhost port; yields its base URL.

    The server runs in this interpreter's environment (``--env-manager local``) in its own
    process group, which is stopped on exit. Its log goes to a file, not a pipe (a full pipe
    would block the server); its tail is in the error when it does not start within ``timeout``.
    """
    port = free_port()
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's mlflow
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        tail = log.read().decode(errors="replace")[-2000:]
                        raise RuntimeError(f"the scoring server of {model_uri} did not start:\n{tail}") from None
                    time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 15)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait(30)


@dataclass(frozen=True)
class Payload:
    """One request: its name, body, and whether a correct server answers it with a 200."""

    name: str
    body: bytes
    valid: bool
    top: int | None = None  # candidates asked for (valid requests)


@dataclass(frozen=True)
class Reply:
    """What the server answered to a :class:`Payload`, and how long it took."""

    payload: Payload
    status: int
    seconds: float
    body: Any


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as Python writes them: what a careless client sends


def malformed(n_points: int) -> list[Payload]:
    """Requests a served identifier must refuse with a 4xx: broken JSON, wrong shapes and types, a
    ``top`` that is not an integer of at least 1."""
    row = [1.0] * n_points
    bad = {
        "not_json": b"{inputs: [[1, 2",
        "not_utf8": b"\xff\xfe{\"inputs\": []}",
        "not_an_object": _json([1, 2, 3]),
        "no_inputs": _json({"nothing": 1}),
        "inputs_null": _json({"inputs": None}),
        "empty_list": _json({"inputs": []}),
        "wrong_column_count": _json({"inputs": [[1.0, 2.0]]}),
        "ragged_rows": _json({"inputs": [row, row[:10]]}),
        "three_dimensions": _json({"inputs": [[row]]}),
        "nan": _json({"inputs": [[float("nan")] * n_points]}),
        "infinity": _json({"inputs": [[float("inf")] * n_points]}),
        "strings": _json({"inputs": [["a"] * n_points]}),
        "top_zero": _json({"inputs": [row], "params": {"top": 0}}),
        "top_negative": _json({"inputs": [row], "params": {"top": -3}}),
        "top_float": _json({"inputs": [row], "params": {"top": 2.5}}),
        "top_string": _json({"inputs": [row], "params": {"top": "three"}}),
        "top_bool": _json({"inputs": [row], "params": {"top": True}}),
    }
    return [Payload(name, body, False) for name, body in bad.items()]


def valid(row: np.ndarray) -> list[Payload]:
    """Requests a served identifier answers with a 200: one pattern or three, several ``top`` (huge ones too)."""
    one = np.asarray(row, np.float32).tolist()
    cases = [("one_default_top", {"inputs": [one]}, 5), ("one_top_1", {"inputs": [one], "params": {"top": 1}}, 1),
             ("one_top_3", {"inputs": [one], "params": {"top": 3}}, 3),
             ("three_rows", {"inputs": [one] * 3, "params": {"top": 2}}, 2),
             # a huge top is clamped to the library, as in the CLI (one rule: an integer >= 1)
             ("huge_top", {"inputs": [one], "params": {"top": 10**9}}, 10**9),
             ("top_beyond_int64", {"inputs": [one], "params": {"top": 2**70}}, 2**70)]
    return [Payload(name, _json(body), True, top) for name, body, top in cases]


def payloads(row: np.ndarray, n: int, seed: int = 0) -> list[Payload]:
    """``n`` requests, about half valid and half malformed, in a seeded random order."""
    kinds = valid(row), malformed(len(row))
    rng = np.random.default_rng(seed)
    mix = [kinds[i % 2][(i // 2) % len(kinds[i % 2])] for i in range(n)]  # every kind before any repeats
    return [mix[i] for i in rng.permutation(n)]


def post(url: str, payload: Payload, timeout: float = 60.0) -> Reply:
    """POST ``payload`` to ``url/invocations``; the status, time and decoded body (text when not JSON)."""
    request = urllib.request.Request(f"{url}/invocations", data=payload.body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    seconds = time.perf_counter() - start
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return Reply(payload, status, seconds, body)


def run_load(url: str, requests: Sequence[Payload], clients: int = 1) -> list[Reply]:
    """Send ``requests`` from ``clients`` threads at once (1: one after the other); replies in order."""
    if clients == 1:
        return [post(url, p) for p in requests]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda p: post(url, p), requests))


def latency_summary(replies: Sequence[Reply]) -> dict[str, float]:
    """Count, median and 95th percentile (ms) of the valid requests' latencies."""
    ms = np.array([r.seconds * 1000 for r in replies if r.payload.valid])
    if not len(ms):
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan")}
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def wrong_replies(replies: Sequence[Reply], n_materials: int) -> list[str]:
    """What went wrong: any 5xx, a malformed request not answered 4xx, a valid one without its answers."""
    wrong = []
    for r in replies:
        name = r.payload.name
        if r.status >= 500 or (not r.payload.valid and not 400 <= r.status < 500):
            wrong.append(f"{name}: {r.status} {str(r.body)[:300]}")
        elif r.payload.valid:
            predictions = r.body.get("predictions") if r.status == 200 and isinstance(r.body, dict) else None
            rows = json.loads(r.payload.body)["inputs"]
            want = min(r.payload.top or 5, n_materials)  # one candidate per material
            if (not isinstance(predictions, list) or len(predictions) != len(rows)
                    or any(len(p.get("candidates", [])) != want for p in predictions)):
                wrong.append(f"{name}: {r.status} without {len(rows)} answers of {want} candidates: "
                             f"{str(r.body)[:300]}")
    return wrong
