"""The package's layers: imports only go downward, no cycles, light imports stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _imports import LAYERS, PACKAGE, closure, imports, layer, modules


def test_every_module_sits_in_a_layer() -> None:
    loose = [m for m in modules() if layer(m) is None and m not in ("xrdid", "xrdid.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS) - {"errors", "outputs"}


def test_imports_only_go_down() -> None:
    upward = [f"{m} -> {t}" for m in modules() for t in imports(m)
              if layer(m) and layer(t) and LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    def cycle_from(start: str) -> list[str] | None:  # depth-first search for a path back to start
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in imports(node):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in modules() if (c := cycle_from(m))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_physics_layer_needs_no_torch() -> None:
    heavy = {m for m in modules() if layer(m) in ("errors", "outputs", "config", "xrd")}
    assert all(layer(m) in ("errors", "outputs", "config", "xrd") or m == "xrdid" for m in set().union(*map(closure, heavy)))
    code = "import sys, xrdid.xrd.diffraction, xrdid.xrd.noise, xrdid.xrd.denoise; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["read", "--help"], ["pattern", "--help"]])
def test_cli_imports_only_what_the_command_needs(argv: list[str]) -> None:
    code = ("import sys\nfrom xrdid.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'mlflow', 'optuna'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
