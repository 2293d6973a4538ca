"""Stage outputs that appear whole or not at all, and readers that refuse anything less.

A stage writes its folder under a temporary sibling (``.NAME.tmp-PID``) and renames it into
place only when every file is written, so an interrupted run (Ctrl-C, a killed job, a full disk)
leaves the previous output untouched, or none, never a half-written one that the next stage would
read. :func:`require` is the readers' side: a folder without its marker file is refused with a
one-line :class:`~xrdid.errors.InputError`.

Examples
--------
>>> import pathlib, tempfile
>>> out = pathlib.Path(tempfile.mkdtemp()) / "patterns"
>>> with atomic_dir(out) as tmp:
...     _ = (tmp / "meta.json").write_text("{}")
>>> sorted(p.name for p in out.iterdir())
['meta.json']
>>> require(out.parent / "missing", "meta.json", "xrdid simulate")
Traceback (most recent call last):
...
xrdid.errors.InputError: ...missing: not found; run `xrdid simulate` first
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xrdid.errors import InputError


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out`` that replaces ``out`` when the block ends normally.

    On an exception the temporary folder is removed and ``out`` is left as it was. Temporary
    folders of earlier runs that died (their process is gone) are removed first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def require(folder: str | Path, marker: str, producer: str) -> Path:
    """``folder`` as a Path when it holds ``marker`` (the file its writer finishes with), else InputError.

    ``producer`` is the command that makes the folder, named in the message.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"not found; run `{producer}` first" if not folder.exists() else "not a folder")
    if not (folder / marker).is_file():
        raise InputError(folder, f"incomplete or not made by `{producer}` (no {marker}); run it again")
    return folder


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not ours: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
