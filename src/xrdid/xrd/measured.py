"""Measured powder patterns: reading files, wavelength conversion and resampling onto the model grid.

Supported formats
-----------------
- Two-column text: ``.xy``, ``.xye``, ``.xyd``, ``.txt``, ``.csv``, ``.dat`` (Rigaku ``.DAT``
  included). Columns may be separated by whitespace, commas or semicolons; a line whose first
  character is one of ``# ; ! % * / @ '`` is a comment (Rigaku headers start with ``;``), and
  any other line whose first two fields are not numbers is a header and skipped. Columns after
  the second (an esd) are ignored. A decimal comma is accepted when the columns are separated
  by ``;``, tabs or spaces (``12,5;340``, ``12,5<TAB>340``). UTF-8 (with or without a
  byte-order mark), UTF-16/32 with a byte-order mark, UTF-16 without one, and Latin-1 are read.
  Once the data has begun, a line that is not two numbers followed by more data (``12 x``,
  ``abc 3``) or a lone number (a truncated last row) is refused with its line number; comment
  lines anywhere and text after the last data row (a footer) are allowed.
- Instrument files through ``fairmat-readers-xrd``: PANalytical ``.xrdml``, Bruker ``.brml``
  and ``.raw`` (RAW v4), Rigaku ``.rasx``; single 2θ line scans only.

Wavelength, in order of precedence
----------------------------------
1. recorded in the file: the instrument file's Kα1/Kα2 (their weighted mean
   ``(Kα1 + r Kα2) / (1 + r)`` when Kα2 and the ratio r are recorded, else Kα1), or a text
   header line such as ``# wavelength = 1.5406`` or ``;Target: Cu Ka1``;
2. a hint in the file *name*: an anode + line such as ``Cu-Ka1``, ``Co-Ka1``, ``CuKa``
   (the naming of the measured patterns in ``../shared/data/noise``);
3. the ``wavelength`` argument of :meth:`Pattern.read`.
The origin is kept in :attr:`Pattern.wavelength_from` (``file``, ``name``, ``parameter``).

Refused (:class:`~xrdid.errors.InputError`, one line naming the file)
---------------------------------------------------------------------
A path that is missing, a directory, a broken symlink or a symlink loop, unreadable (the
operating system's reason is given) or not a regular file (a pipe would block the read); a
file over 256 MiB; empty, binary or non-numeric content; NaN, infinite or overflowing values;
intensities that are negative or above 1e30 (not counts); 2θ repeated, decreasing or outside
0–180°; and 2θ that never exceeds π with 10 or more points: almost certainly radians, and a
scan that really stays below 3.2° 2θ holds too little to identify a phase anyway. A scan
outside the model grid is readable; :meth:`Pattern.to_grid` refuses it.

Examples
--------
>>> p = Pattern(np.array([10.0, 20.0, 30.0]), np.array([1.0, 4.0, 2.0]), wavelength=1.54056)
>>> p.normalized().intensity.tolist()
[0.25, 1.0, 0.5]
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import logging
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.analysis.diffraction.xrd import WAVELENGTHS

from xrdid.config import Grid
from xrdid.errors import InputError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".xy", ".xye", ".xyd", ".txt", ".csv", ".dat")
INSTRUMENT_SUFFIXES = (".xrdml", ".brml", ".raw", ".rasx")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + INSTRUMENT_SUFFIXES

_COMMENT_START = tuple("#;!%*/@'\"")
_FIELD_SEP = re.compile(r"[\s,;]+")
# "Cu-Ka1", "CoKa", "Cu Kα1", "cu_kalpha"; not inside a longer word ("Cuka" in "Cukaite").
_LINE_NAME = re.compile(
    r"(?<![A-Za-z])(Cu|Co|Mo|Fe|Cr|Ag)[\s_-]*K[\s_-]*(alpha|beta|a|b|α|β)[\s_-]*([12]?)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_WAVELENGTH_KEY = re.compile(
    r"(?:wave\s*length|lambda|λ|alpha1|alpha_?1|kα1)[^0-9=:]{0,20}[=:]?\s*([0-9]*\.[0-9]+)", re.IGNORECASE
)
# An interior gap wider than this many median scan steps is reported as uncovered.
_GAP_STEPS = 5.0
# A pattern file is at most a few MB; refuse before reading (or unzipping) a disk image into memory.
_MAX_FILE_BYTES = 256 * 2**20
# Far above any detector's counts; beyond it the column is garbage (and sums overflow near 1e308).
_MAX_INTENSITY = 1e30
# 2θ never above π in a scan this long: radians, not degrees.
_RADIAN_POINTS = 10
# Bruker RAW v4: the intensities start here (fairmat_readers_xrd.bruker_raw_parser).
_RAW4_DATA_OFFSET = 0x051F
_SPACE_SEP = re.compile(r"[\s;]+")
# C0 control characters other than tab, newline, vertical tab, form feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16: its mark starts with UTF-16 LE's
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8-sig"),
)
_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory, not a pattern file",
    errno.ELOOP: "symlink loop (too many levels of symbolic links)",
    errno.ENOENT: "file not found",
    errno.ENOTDIR: "file not found (a part of the path is not a folder)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error while reading",
}
_WAVELENGTHS_LOWER = {name.lower(): value for name, value in WAVELENGTHS.items()}


def wavelength_angstrom(value: str | float) -> float:
    """Wavelength in Å from a number or an X-ray line name.

    Names are those of pymatgen's ``WAVELENGTHS`` (``CuKa`` weighted Kα, ``CuKa1``, ``CuKa2``,
    ``CuKb1``, likewise Mo, Cr, Fe, Co, Ag), matched case-insensitively and ignoring ``-``, ``_``
    and spaces; ``Kα``/``Kalpha`` spell ``Ka``, ``Kb``/``Kβ`` mean ``Kb1``, and a bare anode
    (``Cu``) means its weighted Kα.

    Parameters
    ----------
    value : Å as a number or numeric string, or a line name.

    Raises
    ------
    ValueError
        Unknown name, or a number that is not a positive finite length.

    Examples
    --------
    >>> wavelength_angstrom("CuKa1"), wavelength_angstrom("Co-Kα1"), wavelength_angstrom(1.5)
    (1.54056, 1.78896, 1.5)
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None:
            key = re.sub(r"[\s_-]", "", text).lower()
            key = key.replace("alpha", "a").replace("α", "a").replace("beta", "b").replace("β", "b")
            if re.fullmatch(r"[a-z]{2}", key):
                key += "ka"
            if key.endswith("kb"):
                key += "1"
            if key not in _WAVELENGTHS_LOWER:
                raise ValueError(f"unknown wavelength {value!r}; use Å or one of {', '.join(WAVELENGTHS)}")
            return _WAVELENGTHS_LOWER[key]
    else:
        number = float(value)
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"invalid wavelength {value!r}; expected a positive length in Å")
    return number


@dataclass(frozen=True, eq=False)
class Pattern:
    """A measured powder pattern: 2θ (degrees, increasing) and intensity.

    Attributes
    ----------
    two_theta : 2θ in degrees, strictly increasing.
    intensity : intensity (counts or counts/s), same length.
    wavelength : Å, or None when unknown.
    source : the file it was read from, if any.
    wavelength_from : where the wavelength came from: ``file``, ``name``, ``parameter`` or None.

    Examples
    --------
    >>> p = Pattern(np.array([20.0, 40.0]), np.array([1.0, 3.0]), wavelength=1.5406)
    >>> p.normalized().intensity.max()
    np.float64(1.0)
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    wavelength: float | None = None
    source: Path | None = None
    wavelength_from: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "two_theta", np.asarray(self.two_theta, dtype=float))
        object.__setattr__(self, "intensity", np.asarray(self.intensity, dtype=float))
        if self.two_theta.shape != self.intensity.shape or self.two_theta.ndim != 1:
            raise ValueError("two_theta and intensity must be 1D arrays of the same length")

    @classmethod
    def read(cls, path: str | Path, wavelength: str | float | None = None) -> Pattern:
        """Read a measured pattern file (format from the extension, case-insensitive).

        Parameters
        ----------
        path : the file.
        wavelength : Å or a line name, used when neither the file nor its name records one.

        Raises
        ------
        InputError
            A path that cannot be read (the reason: missing, a directory, a symlink loop,
            permission denied, ...), an empty, binary or broken file, unknown format, one
            column, a non-numeric row inside the data, NaN or overflowing values, negative or
            absurd intensities, 2θ not increasing, outside 0–180° or in radians, fewer than
            two points, or an unparsable instrument file.

        Examples
        --------
        >>> Pattern.read("../shared/data/noise/d8/RMS-D8-ADS-15-LynxEyeXE-bkgr.xy", "CuKa")  # doctest: +SKIP
        """
        path = Path(path)
        fallback = None
        if wavelength is not None:  # checked even when the file records its own
            try:
                fallback = wavelength_angstrom(wavelength)
            except ValueError as exc:
                raise InputError(path, str(exc)) from exc
        size = _regular_file_size(path)
        suffix = path.suffix.lower()
        lines = None
        if suffix in TEXT_SUFFIXES:
            two_theta, intensity, recorded, lines = _read_text(path)
        elif suffix in INSTRUMENT_SUFFIXES:
            two_theta, intensity, recorded = _read_instrument(path, size)
        else:
            raise InputError(
                path, f"unknown format '{path.suffix or path.name}' (supported: {', '.join(SUPPORTED_SUFFIXES)})"
            )
        _check(path, two_theta, intensity, lines)
        origin = None
        if recorded is not None:
            origin = "file"
        else:
            match = _LINE_NAME.search(path.name)
            if match:
                recorded, origin = _line_wavelength(match), "name"
            elif fallback is not None:
                recorded, origin = fallback, "parameter"
        return cls(two_theta, intensity, recorded, path, origin)

    def normalized(self) -> Pattern:
        """A copy scaled so that the maximum intensity is 1.

        Raises
        ------
        InputError
            All intensities are zero (or the pattern is empty).
        """
        peak = float(self.intensity.max()) if self.intensity.size else 0.0
        if not peak > 0:
            raise InputError(self.source, "all intensities are zero; cannot normalise")
        return replace(self, intensity=self.intensity / peak)

    def to_grid(self, grid: Grid, wavelength: str | float) -> tuple[np.ndarray, np.ndarray]:
        """Resample onto ``grid`` for radiation ``wavelength``, converting 2θ through d-spacing.

        Each 2θ is moved to ``2θ' = 2 asin(λ' sin θ / λ)`` (same d, new λ'; points with no
        reflection at λ' are dropped), then resampled: linear interpolation, except when the
        scan step is at most half the grid step, where each grid value is the mean of the
        (piecewise-linear) scan over the grid point's bin, so no points are skipped.

        Uncovered grid points are masked (``mask`` False) and filled so the row stays usable:
        beyond the ends of the scan with the nearest covered value (constant extension); inside
        gaps wider than 5 median scan steps by linear interpolation across the gap.

        Parameters
        ----------
        grid : the target 2θ grid.
        wavelength : the target radiation (Å or a line name).

        Returns
        -------
        values : float array (grid.n_points,).
        mask : bool array, True where the scan covers the grid point.

        Raises
        ------
        InputError
            The pattern's wavelength is unknown, or the scan does not overlap the grid.

        Examples
        --------
        >>> p = Pattern(np.linspace(10, 20, 101), np.ones(101), wavelength=1.54056)
        >>> values, mask = p.to_grid(Grid(15.0, 25.0, 11), 1.54056)
        >>> mask.tolist()
        [True, True, True, True, True, True, False, False, False, False, False]
        """
        if self.wavelength is None:
            raise InputError(self.source, "wavelength unknown: give it (e.g. --wavelength CuKa)")
        target = wavelength_angstrom(wavelength)
        x, y = _convert_two_theta(self.two_theta, self.intensity, self.wavelength, target)
        g = grid.values
        if x.size < 2 or x[-1] < grid.start or x[0] > grid.stop:
            span = f"{x[0]:.3g}–{x[-1]:.3g}°" if x.size else "nothing"
            raise InputError(
                self.source,
                f"no overlap with the grid {grid.start:g}–{grid.stop:g}° 2θ: "
                f"the scan covers {span} at {target:.5g} Å",
            )
        lo, hi = x[0], x[-1]
        mask = (g >= lo) & (g <= hi)
        dx = np.diff(x)
        step = float(np.median(dx))
        if step <= grid.step / 2:
            values = _bin_mean(x, y, np.clip(g - grid.step / 2, lo, hi), np.clip(g + grid.step / 2, lo, hi))
        else:
            values = np.interp(g, x, y)
        # Interior gaps: grid points inside a scan segment much longer than the usual step.
        segment = np.clip(np.searchsorted(x, g, side="right") - 1, 0, x.size - 2)
        mask &= dx[segment] <= _GAP_STEPS * step
        inside = (g >= lo) & (g <= hi)
        values[g < lo] = values[inside][0]
        values[g > hi] = values[inside][-1]
        return values, mask


def _line_wavelength(match: re.Match[str]) -> float:
    """Å of a matched line name (``Cu``, ``a``, ``1`` → CuKa1)."""
    anode, line, number = match.groups()
    line = "a" if line.lower() in ("a", "alpha", "α") else "b"
    return wavelength_angstrom(f"{anode}K{line}{number}")


def _os_reason(exc: OSError) -> str:
    """The operating system's reason a path cannot be read, in words."""
    if exc.errno in _OS_REASONS:
        return _OS_REASONS[exc.errno]
    return (exc.strerror or type(exc).__name__).lower()


def _regular_file_size(path: Path) -> int:
    """Size of ``path`` when it is a regular file that can be read; InputError with the real reason otherwise."""
    try:
        info = path.stat()  # follows symlinks: a loop or a dangling link fails here
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(path, f"broken symbolic link (to {os.readlink(path)})") from None
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, _os_reason(exc)) from exc
    except ValueError as exc:  # a NUL byte in the name
        raise InputError(path, f"invalid path ({exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, "is a directory, not a pattern file")
    if not stat.S_ISREG(info.st_mode):  # reading a FIFO would block forever
        raise InputError(path, "not a regular file (a pipe, socket or device)")
    if info.st_size > _MAX_FILE_BYTES:
        raise InputError(path, f"{info.st_size / 2**20:.0f} MiB is too large for a pattern file (limit "
                               f"{_MAX_FILE_BYTES // 2**20} MiB)")
    return info.st_size


def _read_bytes(path: Path, limit: int = -1) -> bytes:
    """The file's bytes (the first ``limit`` when given), an OSError turned into InputError."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError as exc:
        raise InputError(path, _os_reason(exc)) from exc


def _decode(path: Path, raw: bytes) -> str:
    """Text of a pattern file: byte-order marks honoured, UTF-16 without one detected, else UTF-8 or Latin-1."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise InputError(path, f"not valid {codec.upper().removesuffix('-SIG')} text after its "
                                       f"byte-order mark (byte {exc.start})") from exc
    # UTF-16 without a mark: digits and spaces are ASCII, so every other byte is NUL.
    if len(raw) >= 4 and len(raw) % 2 == 0:
        for codec, zeros, chars in (("utf-16-le", raw[1::2], raw[0::2]), ("utf-16-be", raw[0::2], raw[1::2])):
            if not zeros.strip(b"\x00") and b"\x00" not in chars:
                return raw.decode(codec, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _binary_kind(raw: bytes) -> str:
    """What a binary file probably is, for the error message."""
    kinds = {b"PK\x03\x04": " (a zip archive: .brml or .rasx?)", b"RAW": " (a Bruker RAW file: .raw?)",
             b"\x89PNG": " (a PNG image)", b"%PDF": " (a PDF)", b"\x89HDF": " (an HDF5/NeXus file)"}
    return next((kind for magic, kind in kinds.items() if raw.startswith(magic)), "")


def _fields(line: str) -> list[str]:
    """The fields of a data line; a decimal comma is read when ``;``, tabs or spaces separate the columns."""
    if "," in line and "." not in line:
        parts = _SPACE_SEP.split(line)
        if len(parts) >= 2:  # "12,5;340", "12,5\t340", "10, 1"
            return [part.strip(",").replace(",", ".") for part in parts]
    return _FIELD_SEP.split(line)


def _excerpt(line: str, width: int = 40) -> str:
    return repr(line if len(line) <= width else line[: width - 1] + "…")


def _read_text(path: Path) -> tuple[np.ndarray, np.ndarray, float | None, np.ndarray]:
    """Two columns of numbers from a text file, a wavelength found in its header, and each row's line number."""
    raw = _read_bytes(path)
    if not raw.strip():
        raise InputError(path, "empty file")
    text = _decode(path, raw)
    if "\x00" in text or len(_CONTROL.findall(text[:65536])) > 0.01 * min(len(text), 65536):
        raise InputError(path, f"binary content in a {path.suffix} file{_binary_kind(raw)}; "
                               "expected two columns of text")
    if text.lstrip().startswith("<"):
        raise InputError(path, f"XML or HTML in a {path.suffix} file (an .xrdml export?); "
                               "expected two columns of text")
    pairs: list[tuple[float, float]] = []
    numbers: list[int] = []
    headers: list[str] = []
    one_column = 0
    footer: tuple[int, str] | None = None  # the first non-data line after the data began
    for number, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith(_COMMENT_START):
            headers.append(s)
            continue
        fields = _fields(s)
        first = _number(fields[0])
        second = _number(fields[1]) if len(fields) > 1 else None
        if first is not None and second is not None:
            if footer is not None:  # text between data rows: a row that lost its numbers
                raise InputError(path, f"line {footer[0]}: non-numeric row {_excerpt(footer[1])} inside the data")
            pairs.append((first, second))
            numbers.append(number)
        elif not pairs:  # before the data: a header, or a column of single numbers
            if len(fields) == 1 and first is not None:
                one_column += 1
            else:
                headers.append(s)
        elif first is not None:  # a data row cut short or with a broken intensity
            if len(fields) == 1:
                raise InputError(path, f"line {number}: one value {_excerpt(s)} where 2θ and intensity are "
                                       "expected (truncated file?)")
            raise InputError(path, f"line {number}: non-numeric field {_excerpt(fields[1])} inside the data")
        elif footer is None:
            footer = (number, s)
    if not pairs:
        if one_column:
            raise InputError(path, "only one column of numbers; expected 2θ and intensity columns")
        raise InputError(path, "no numeric data (expected 2θ and intensity columns)")
    data = np.array(pairs, dtype=float)
    lines = np.array(numbers)
    bad = ~np.isfinite(data)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        shown = _fields(text.splitlines()[lines[row] - 1].strip())[column]
        overflow = not np.isnan(data[row, column]) and "inf" not in shown.lower()
        why = "overflows a float (above 1.8e308)" if overflow else "is NaN or infinite"
        name = "2θ" if column == 0 else "intensity"
        raise InputError(path, f"line {lines[row]}: {name} {_excerpt(shown)} {why}; "
                               f"{int(bad.any(axis=1).sum())} such row(s)")
    return data[:, 0], data[:, 1], _header_wavelength(headers), lines


def _number(text: str) -> float | None:
    """``text`` as a float, or None."""
    try:
        return float(text)
    except ValueError:
        return None


def _header_wavelength(headers: list[str]) -> float | None:
    """A wavelength recorded in header lines: ``wavelength = 1.54`` or a line name (``Cu Ka1``)."""
    for line in headers:
        match = _WAVELENGTH_KEY.search(line)
        if match and 0.1 < float(match.group(1)) < 5:
            return float(match.group(1))
    for line in headers:
        match = _LINE_NAME.search(line)
        if match:
            return _line_wavelength(match)
    return None


class _Collect(logging.Handler):
    """Keeps the messages of the records it gets."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_readers() -> Iterator[list[str]]:
    """Silence the instrument readers (their log lines and prints would break the one-line error and
    the JSON on stdout); yield the error messages they logged, the only reason some of them give."""
    logger = logging.getLogger("fairmat_readers_xrd")
    handler, propagate = _Collect(logging.ERROR), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _sniff_instrument(path: Path, size: int) -> None:
    """Refuse an instrument file whose first bytes are not its format, before a reader guesses."""
    suffix = path.suffix.lower()
    if size == 0:
        raise InputError(path, "empty file")
    head = _read_bytes(path, _RAW4_DATA_OFFSET)
    if suffix in (".brml", ".rasx"):
        if not head.startswith(b"PK\x03\x04"):
            raise InputError(path, f"not a zip archive (a {suffix} file is one); damaged or renamed?")
        try:
            with zipfile.ZipFile(path) as archive:
                unpacked = sum(member.file_size for member in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InputError(path, f"damaged zip archive ({exc})") from exc
        if unpacked > _MAX_FILE_BYTES:
            raise InputError(path, f"unpacks to {unpacked / 2**20:.0f} MiB, too large for a pattern file")
    elif suffix == ".raw":
        if head.startswith(b"RAW") and not head.startswith(b"RAW4.00"):
            version = head[:7].decode("latin-1").rstrip("\x00")
            raise InputError(path, f"Bruker RAW version '{version}' is not supported (only RAW v4); "
                                   "export the scan as .xy or .brml")
        if not head.startswith(b"RAW4.00"):
            raise InputError(path, "not a Bruker RAW file (no RAW4.00 header)")
        if size <= _RAW4_DATA_OFFSET:
            raise InputError(path, f"truncated Bruker RAW file: {size} bytes, the header alone is "
                                   f"{_RAW4_DATA_OFFSET}")
        points = int.from_bytes(head[0x01C3:0x01C5], "little")  # where the reader finds the count
        stored = (size - _RAW4_DATA_OFFSET) // 8  # (intensity, unknown) float32 pairs
        if stored < points:
            raise InputError(path, f"truncated Bruker RAW file: the header gives {points} points, the data "
                                   f"holds {stored}")
    elif suffix == ".xrdml" and not head.decode("utf-8", "ignore").lstrip("\ufeff\x00 \t\r\n").startswith("<"):
        raise InputError(path, "not an XML file (an .xrdml file is XML)")


def _parse_reason(exc: Exception) -> str:
    """A reader's exception as a short reason."""
    from xml.etree.ElementTree import ParseError

    if isinstance(exc, ParseError) or type(exc).__name__ == "ExpatError":  # xmltodict raises expat's own
        return f"malformed or truncated XML ({exc})"
    if isinstance(exc, zipfile.BadZipFile):
        return f"damaged zip archive ({exc})"
    if isinstance(exc, KeyError):
        missing = str(exc.args[0]) if exc.args else ""
        if missing.startswith("There is no item named"):  # zipfile's wording
            name = missing.removeprefix("There is no item named").removesuffix(" in the archive")
            return f"the archive has no{name}"
        return f"expected entry {missing!r} missing"
    if isinstance(exc, ValueError) and "could not be read to its end" in str(exc):
        return "non-numeric values in the data"
    if isinstance(exc, AttributeError | TypeError | IndexError):
        return f"an expected element is missing or empty ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _read_instrument(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """2θ, intensity and wavelength of an instrument file via ``fairmat-readers-xrd``."""
    from fairmat_readers_xrd import readers  # imports pint: only when needed

    reader = {
        ".xrdml": readers.read_panalytical_xrdml,
        ".brml": readers.read_bruker_brml,
        ".raw": readers.read_bruker_raw,
        ".rasx": readers.read_rigaku_rasx,
    }[path.suffix.lower()]
    _sniff_instrument(path, size)
    with _quiet_readers() as logged:
        try:
            data = reader(str(path))
        except NotImplementedError as exc:
            raise InputError(path, f"unsupported scan ({exc}); expected a single 2θ line scan") from exc
        except OSError as exc:
            raise InputError(path, _os_reason(exc)) from exc
        except Exception as exc:  # the readers raise anything from XML, zip and struct errors
            raise InputError(path, f"cannot parse {path.suffix} file: {_parse_reason(exc)}") from exc
    if data is None:  # read_bruker_raw reports failure this way, its reason only logged
        reason = logged[0] if logged else "only Bruker RAW v4 is supported"
        raise InputError(path, f"cannot parse .raw file: {reason}")
    two_theta, intensity = data.get("2Theta"), data.get("intensity")
    if two_theta is None or intensity is None:
        raise InputError(path, "no 2θ axis or no intensities in the file")
    scan = (data.get("metadata") or {}).get("scan_type")
    try:
        two_theta = np.asarray(_magnitude(two_theta, "degree"), dtype=float)
        intensity = np.asarray(_magnitude(intensity), dtype=float)
    except (TypeError, ValueError) as exc:  # ragged scans of different lengths
        raise InputError(path, f"not a single 2θ line scan (scan type {scan}: {exc})") from exc
    if intensity.size == 1 and two_theta.size > 1:  # the readers collapse a constant column to one value
        raise InputError(path, f"every intensity is {float(intensity.ravel()[0]):g}: a blank or damaged scan")
    if two_theta.ndim != 1 or intensity.ndim != 1:
        raise InputError(path, f"not a single 2θ line scan (scan type {scan}, 2θ shape {two_theta.shape})")
    if two_theta.size == 1 and intensity.size > 1:
        raise InputError(path, f"2θ fixed at {two_theta[0]:g}°: not a 2θ scan")
    if two_theta.shape != intensity.shape:
        raise InputError(path, f"{two_theta.size} 2θ positions but {intensity.size} intensities "
                               "(truncated or damaged file?)")
    source = (data.get("metadata") or {}).get("source") or {}
    k1, k2 = (_magnitude(source.get(key), "angstrom") for key in ("kAlpha1", "kAlpha2"))
    ratio = _magnitude(source.get("ratioKAlpha2KAlpha1"))
    wavelength = None
    if _positive(k1):
        wavelength = float(k1)
        if _positive(k2) and _positive(ratio):
            wavelength = (float(k1) + float(ratio) * float(k2)) / (1 + float(ratio))
    return two_theta, intensity, wavelength


def _magnitude(value: Any, unit: str | None = None) -> Any:
    """Plain numbers from a pint quantity (converted to ``unit``), a number or None."""
    if value is None or isinstance(value, str | list | dict):
        return None  # missing entries are [] in the ikz readers
    if unit is not None and hasattr(value, "to"):
        try:
            value = value.to(unit)
        except Exception:  # dimensionless or unknown unit: keep the number
            pass
    return getattr(value, "magnitude", value)


def _positive(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        return False


def _check(path: Path, two_theta: np.ndarray, intensity: np.ndarray, lines: np.ndarray | None = None) -> None:
    """Raise InputError for a pattern that cannot be used; ``lines`` are the text file's line numbers of the rows."""

    def where(i: int) -> str:
        return f"line {lines[i]}" if lines is not None else f"point {i + 1}"

    if two_theta.size < 2:
        raise InputError(path, f"only {two_theta.size} data point(s); need at least 2")
    bad = ~(np.isfinite(two_theta) & np.isfinite(intensity))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(path, f"{int(bad.sum())} NaN/infinite value(s), first at {where(i)}")
    negative = intensity < 0
    if negative.any():
        i = int(np.argmax(negative))
        raise InputError(
            path,
            f"{int(negative.sum())} negative intensities (first {intensity[i]:g} at 2θ {two_theta[i]:g}°, "
            f"{where(i)}); expected counts ≥ 0",
        )
    huge = intensity > _MAX_INTENSITY
    if huge.any():
        i = int(np.argmax(huge))
        raise InputError(path, f"intensity {intensity[i]:g} at {where(i)} is not a count "
                               f"(above {_MAX_INTENSITY:g}); damaged file or wrong column?")
    steps = np.diff(two_theta)
    if (steps < 0).all():
        raise InputError(path, f"2θ decreases throughout ({two_theta[0]:g}° down to {two_theta[-1]:g}°): "
                               "a d-spacing column or a reversed scan? expected 2θ increasing")
    if not (steps > 0).all():
        i = int(np.argmax(steps <= 0))
        what = "repeated" if steps[i] == 0 else "not increasing"
        raise InputError(
            path, f"2θ {what} at {where(i + 1)} ({two_theta[i]:g}° then {two_theta[i + 1]:g}°)"
        )
    if two_theta[0] < 0 or two_theta[-1] >= 180:
        raise InputError(path, f"2θ range {two_theta[0]:g}–{two_theta[-1]:g}° outside 0–180°")
    if two_theta.size >= _RADIAN_POINTS and two_theta[-1] <= np.pi:
        raise InputError(path, f"2θ only spans {two_theta[0]:.4g}–{two_theta[-1]:.4g}, never above π: radians? "
                               "expected degrees (multiply by 180/π)")


def _convert_two_theta(
    two_theta: np.ndarray, intensity: np.ndarray, source: float, target: float
) -> tuple[np.ndarray, np.ndarray]:
    """Move 2θ from wavelength ``source`` to ``target`` at constant d; drop unreachable points."""
    if abs(source - target) < 1e-9:
        return two_theta, intensity
    s = np.sin(np.radians(two_theta) / 2) * (target / source)
    keep = s < 1
    return np.degrees(2 * np.arcsin(s[keep])), intensity[keep]


def _bin_mean(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of the piecewise-linear function through (x, y) over each interval [a, b] ⊂ [x0, xn]."""
    dx = np.diff(x)
    slope = np.diff(y) / dx
    cumulative = np.concatenate([[0.0], np.cumsum(dx * (y[:-1] + y[1:]) / 2)])

    def integral(e: np.ndarray) -> np.ndarray:
        k = np.clip(np.searchsorted(x, e, side="right") - 1, 0, x.size - 2)
        t = e - x[k]
        return cumulative[k] + y[k] * t + slope[k] * t * t / 2

    width = b - a
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (integral(b) - integral(a)) / width
    return np.where(width > 0, mean, np.interp(a, x, y))
