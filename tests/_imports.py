"""The import graph of ``src/xrdid``, read from the source (every import, at any depth)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "xrdid"

# Lowest first: a module may import only from its own layer or a lower one.
LAYERS = ("errors", "outputs", "config", "xrd", "data", "learn", "identify", "ops", "stages", "cli")


def module_name(path: Path) -> str:
    """``src/xrdid/data/library.py`` → ``xrdid.data.library`` (a package's ``__init__`` is the package)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    """The layer of ``xrdid.<layer>...``; None for the package facade ``xrdid`` and ``xrdid.__main__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _resolve(name: str) -> str | None:
    """The project module that an imported dotted name lands in (a package or module), else None."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports(module: str) -> frozenset[str]:
    """Project modules that ``module`` imports, at module level, in functions or under TYPE_CHECKING."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from xrdid.data import library`` imports the submodule; ``from x import name`` the module x
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("xrdid") else None
            if target and target != module:
                found.add(target)
    return frozenset(found)


def closure(module: str) -> set[str]:
    """Every project module that importing ``module`` can load (its transitive imports), itself included."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(imports(current))
        parent = current.rpartition(".")[0]
        if parent:  # importing a submodule runs its packages' __init__ first
            todo.append(parent)
    return seen
