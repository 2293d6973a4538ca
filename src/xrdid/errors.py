"""Errors that the CLI turns into one line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: a file that cannot be read or used.

    The message always names the file and the problem, so the CLI can print
    it as one line.

    Examples
    --------
    >>> str(InputError("a.cif", "empty file"))
    'a.cif: empty file'
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")
