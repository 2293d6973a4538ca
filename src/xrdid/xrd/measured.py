"""Measured powder patterns: reading files, wavelength conversion and resampling onto the model grid.

Supported formats
-----------------
- Two-column text: ``.xy``, ``.xye``, ``.xyd``, ``.txt``, ``.csv``, ``.dat`` (Rigaku ``.DAT``
  included). Columns may be separated by whitespace, commas or semicolons; a line whose first
  character is one of ``# ; ! % * / @ '`` is a comment (Rigaku headers start with ``;``), and
  any other line whose first two fields are not numbers is a header and skipped. Columns after
  the second (an esd) are ignored. With ``;`` separators a decimal comma is accepted.
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

Examples
--------
>>> p = Pattern(np.array([10.0, 20.0, 30.0]), np.array([1.0, 4.0, 2.0]), wavelength=1.54056)
>>> p.normalized().intensity.tolist()
[0.25, 1.0, 0.5]
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
            Missing or empty file, unknown format, one column, NaN, negative intensities,
            2θ not increasing, fewer than two points, or an unparsable instrument file.

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
        if not path.is_file():
            raise InputError(path, "file not found")
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            two_theta, intensity, recorded = _read_text(path)
        elif suffix in INSTRUMENT_SUFFIXES:
            two_theta, intensity, recorded = _read_instrument(path)
        else:
            raise InputError(
                path, f"unknown format '{path.suffix or path.name}' (supported: {', '.join(SUPPORTED_SUFFIXES)})"
            )
        _check(path, two_theta, intensity)
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


def _read_text(path: Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Two columns of numbers from a text file, plus a wavelength found in its header."""
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(path, "empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if "\x00" in text:
        raise InputError(path, f"binary content in a {path.suffix} file; expected two columns of text")
    pairs: list[tuple[str, str]] = []
    headers: list[str] = []
    one_column = 0
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith(_COMMENT_START):
            headers.append(s)
            continue
        if ";" in s and "," in s and "." not in s:
            s = s.replace(",", ".")  # "12,5;340": decimal comma with semicolon separators
        fields = _FIELD_SEP.split(s)
        if len(fields) < 2:
            if _is_number(fields[0]):
                one_column += 1
            else:
                headers.append(s)
            continue
        if _is_number(fields[0]) and _is_number(fields[1]):
            pairs.append((fields[0], fields[1]))
        else:
            headers.append(s)
    if not pairs:
        if one_column:
            raise InputError(path, "only one column of numbers; expected 2θ and intensity columns")
        raise InputError(path, "no numeric data (expected 2θ and intensity columns)")
    data = np.array(pairs, dtype=float)
    return data[:, 0], data[:, 1], _header_wavelength(headers)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


def _read_instrument(path: Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """2θ, intensity and wavelength of an instrument file via ``fairmat-readers-xrd``."""
    from fairmat_readers_xrd import readers  # imports pint: only when needed

    reader = {
        ".xrdml": readers.read_panalytical_xrdml,
        ".brml": readers.read_bruker_brml,
        ".raw": readers.read_bruker_raw,
        ".rasx": readers.read_rigaku_rasx,
    }[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        data = reader(str(path))
    except NotImplementedError as exc:
        raise InputError(path, f"unsupported scan ({exc}); expected a single 2θ line scan") from exc
    except Exception as exc:  # the readers raise anything from XML, zip and struct errors
        raise InputError(path, f"cannot parse {path.suffix} file: {type(exc).__name__}: {exc}") from exc
    if data is None:  # read_bruker_raw reports failure this way
        raise InputError(path, "cannot parse .raw file (only Bruker RAW v4 is supported)")
    two_theta, intensity = data.get("2Theta"), data.get("intensity")
    if two_theta is None or intensity is None:
        raise InputError(path, "no 2θ axis or no intensities in the file")
    two_theta = np.asarray(_magnitude(two_theta, "degree"), dtype=float)
    intensity = np.asarray(_magnitude(intensity), dtype=float)
    if two_theta.ndim != 1 or intensity.ndim != 1 or two_theta.shape != intensity.shape:
        scan = (data.get("metadata") or {}).get("scan_type")
        raise InputError(path, f"not a single 2θ line scan (scan type {scan}, 2θ shape {two_theta.shape})")
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


def _check(path: Path, two_theta: np.ndarray, intensity: np.ndarray) -> None:
    """Raise InputError for a pattern that cannot be used."""
    if two_theta.size < 2:
        raise InputError(path, f"only {two_theta.size} data point(s); need at least 2")
    bad = ~(np.isfinite(two_theta) & np.isfinite(intensity))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(path, f"{int(bad.sum())} NaN/infinite value(s), first at 2θ point {i + 1}")
    negative = intensity < 0
    if negative.any():
        i = int(np.argmax(negative))
        raise InputError(
            path,
            f"{int(negative.sum())} negative intensities (first {intensity[i]:g} at 2θ {two_theta[i]:g}°); "
            "expected counts ≥ 0",
        )
    steps = np.diff(two_theta)
    if not (steps > 0).all():
        i = int(np.argmax(steps <= 0))
        raise InputError(
            path, f"2θ not increasing at point {i + 2} ({two_theta[i]:g}° then {two_theta[i + 1]:g}°)"
        )
    if two_theta[0] < 0 or two_theta[-1] >= 180:
        raise InputError(path, f"2θ range {two_theta[0]:g}–{two_theta[-1]:g}° outside 0–180°")


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
