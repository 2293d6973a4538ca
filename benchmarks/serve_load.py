"""Latency of a served identifier under a mix of valid and malformed requests (localhost, bounded).

Starts MLflow's scoring server for ``--model`` (``mlflow models serve --env-manager local``), then
sends ``--requests`` requests from one client, one after the other, and ``--requests`` more from
``--clients`` threads at once; about half are malformed (broken JSON, wrong shapes, NaN, strings,
``top`` = 0, ...: :func:`xrdid.ops.serving.malformed`). It prints the median and 95th percentile
latency of the valid requests per phase, and every reply that is wrong: any 5xx, a malformed
request not answered with a 4xx, a valid one without its answers (exit status 1 if any).

Usage::

    python benchmarks/serve_load.py --model models:/xrdid-default@champion \\
        [--tracking-uri sqlite:///mlruns/mlflow.db] [--requests 50] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from xrdid.ops.registry import load_identifier
from xrdid.ops.serving import latency_summary, payloads, run_load, served, wrong_replies
from xrdid.ops.tracking import resolve_uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN/model")
    parser.add_argument("--tracking-uri", default=None, help="tracking store (default: MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--requests", type=int, default=50, help="requests per phase (default 50)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the second phase (default 4)")
    args = parser.parse_args()

    os.environ["MLFLOW_TRACKING_URI"] = resolve_uri(args.tracking_uri)  # the server's too: it resolves the URI
    identifier = load_identifier(args.model)
    profiles = identifier.profiles()  # a simulated pattern is a request the model answers
    row = profiles[0] if profiles is not None else np.ones(identifier.grid.n_points, np.float32)
    n_materials = len({entry.get("material") or entry["id"] for entry in identifier.library})

    print(f"{args.model}: {len(identifier.library)} entries, {identifier.grid.n_points} points; "
          f"{os.cpu_count()} CPU cores")
    wrong: list[str] = []
    start = time.perf_counter()
    with served(args.model) as url:
        print(f"server ready in {time.perf_counter() - start:.1f} s at {url}")
        print(f"{'clients':>7} {'requests':>8} {'valid':>5} {'p50 ms':>7} {'p95 ms':>7} {'wall s':>6} {'wrong':>5}")
        for phase, clients in enumerate((1, args.clients)):
            requests = payloads(row, args.requests, seed=phase)
            began = time.perf_counter()
            replies = run_load(url, requests, clients)
            wall = time.perf_counter() - began
            stats = latency_summary(replies)
            bad = wrong_replies(replies, n_materials)
            wrong += bad
            print(f"{clients:>7} {len(requests):>8} {stats['n']:>5} {stats['p50_ms']:>7.1f} {stats['p95_ms']:>7.1f} "
                  f"{wall:>6.2f} {len(bad):>5}")
    for line in wrong:
        print("wrong:", line)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
