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
        super().__init__(self.problem if self.path is None else f"{printable(self.path)}: {self.problem}")


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a file name holding a newline stays on one line.

    Examples
    --------
    >>> printable("a\\nb.xy"), printable("Quarz_2θ.xy")
    ('a\\\\nb.xy', 'Quarz_2θ.xy')
    """
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
