"""Mixtures: every phase of a multi-phase pattern with its weight fraction, without training.

Identify–fit–subtract (XRD-AutoAnalyzer's loop with Dara's acceptance rule; DESIGN.md, "Scale
and mixtures"):

1. **Search.** The residual (at first the background-subtracted pattern, ``rolling_background`` as
   the open-library search) and every library profile are put on the ln sin θ axis
   (:class:`~xrdid.xrd.strain.StrainAxis`), where an isotropic lattice strain is a shift, and
   smoothed alike (``smooth`` points). For every entry and every shift within ``max_strain`` the
   drop of the weighted squared residual ``r`` from adding entry ``p`` at its best non-negative
   scale is ``max(r·Wp, 0)² / p·Wp``: one (shifts × points) @ (points × entries) product. Entries
   of one reduced formula compete as polymorphs. With ``anisotropy`` each entry is also drawn with
   one cell axis that much longer and shorter (six more rows per entry, the best one kept): a DFT
   cell off along one axis by more than the refinement reaches from an isotropic start (α-V2O5's
   layer spacing c is 2.5 % short in Materials Project, its a within 1 %) is otherwise ranked below
   look-alikes and never refined. That ranking (smoothed, on few cells) favours entries
   that fit the misfit of the phases already in, so the best ``candidates`` (``polymorphs`` per formula
   at most) are screened by a short refinement of their cell against the residual and ranked by the
   joint fit's R, those the acceptance rule passes first; the best ``refine_best`` are refined in
   full and tested in turn.
2. **Fit.** The picked entry is refined on the 2θ grid from its reflections, Le Bail-like with
   its simulated intensities fixed: the six components of its reciprocal metric tensor
   (``1/d² = hᵀ G* h``, so that a DFT cell that is off differently along each axis still fits;
   each within ``cell_freedom`` of the isotropic start, relative to √(G*ᵢᵢ G*ⱼⱼ): an off-diagonal
   component of a centred cell's primitive setting is a small difference that must move far more
   than its own size), its peak width (Caglioti ``W`` and ``U``) and
   a March–Dollase preferred orientation (``r`` within ``1/texture … texture`` about the normal
   of one of its strongest low-angle reflections or a reciprocal axis): Levenberg–Marquardt with
   an analytic Jacobian, the scale projected out. Then the scales of all phases are fitted jointly
   by non-negative least squares (:func:`scipy.optimize.nnls`). Weights ``1 / (y + weight_floor ·
   max y)`` follow counting statistics over a background (Rietveld's ``w = 1 / y``): the misfit of
   the strongest peaks does not drown the weak phases.
3. **Acceptance** (Dara's rule: a phase stays only if it lowers the R-factor enough for the
   pattern's noise). With ``R = ‖√w (y − model)‖ / ‖√w y‖``, a new phase must remove ``min_gain``
   of the misfit left (``1 − R_new² / R_old²``), lower ``‖√w r‖²`` by more than ``first_noise_factor``
   σ of counting noise for the first phase and ``noise_factor`` σ for a later one (σ from differences
   of points 4 apart, robust to peaks and to scans coarser than the grid; the factors are large
   because texture and peak-shape misfits, not noise, leave most of a long scan's residual), and
   with ``free_noise_factor`` set, by that many σ still when every phase already in may add
   intensity to each of its strongest reflections (a Pawley-like freedom, non-negative least
   squares): the intensity misfit of the phases in (texture, the structure's own errors) grows with
   the counts, and a phase drawn on their peak positions would otherwise pass for a new one (the
   profiles of measured laboratory scans set it to 60: on single-phase RRUFF patterns the second
   phases that passed 30 σ were such misfits). It must also explain ``min_share`` of the signal's
   intensity, have its peaks in the residual (``min_support``), and a cell strained by at most
   ``max_strain`` (DFT cells are 1–2 % off; every phase of the Dara scans that needed more was a
   look-alike of another formula): a library phase that fits a few peaks of a phase absent from the
   library stays out, and those peaks stay in the residual. When no screened candidate passes,
   ``max_phases`` is reached, or no residual peak reaches ``min_peak`` of the maximum
   (XRD-AutoAnalyzer's rule), the search ends.
4. **Review.** Each phase was judged against those found before it; judged again against all the
   others (as if added last) a phase the later ones make redundant is removed, the least missed first.
   Then a phase (not the best-supported one) whose confidence (below) is under ``min_confidence``
   is removed: another formula fits its peaks as well, so they are the misfit of the others or a
   phase absent from the library (the profiles of measured scans set it to 0: on the Dara scans it
   removed more right phases than wrong ones).

**Kα2.** A library drawn at the mean Kα wavelength leaves, on a laboratory scan, a misfit beside
every peak above ~40° that the search takes for a phase. Per pattern the strongest entry is refined
with one line and with the Kα1/Kα2 doublet (``kalpha2``), and the better fit decides for all phases.

**Weight fractions.** A phase's integrated intensity per unit mass is its ``Σ |F|²·LP`` over the
grid's range divided by its cell volume and cell mass (``integrated_intensity`` of
:mod:`xrdid.xrd.diffraction` when the structures are given: the Rietveld relation
``W_p = S_p (ZMV)_p / Σ_i S_i (ZMV)_i`` in integrated form). Without structures (a model folder
carries none) it is Wilson's estimate from the formula alone (``wilson_intensity``); real
structures fall 0.60–0.86 (5–95 %) of it on the Dara library, so those fractions are good to
about ±15 % relative. Then ``W_p ∝ A_p / q_p`` with ``A_p`` the phase's fitted integrated
intensity (its scale × its library profile's area) and ``q_p`` its intensity per unit mass.
Absorption contrast (microabsorption) is not corrected, and the fractions are of the crystalline
phases found: amorphous matter and phases absent from the library are outside them
(``residual_share`` says how much of the signal is left).

**Confidence.** Per phase, on the search axis: the weighted R-factor with the phase replaced by the
best entry of any formula not in the fit (isotropic), minus the R-factor with the phase (as fitted,
or its formula's best isotropic entry if that fits better), both against the same residual of the
other phases: the margin ``m`` by which it beats its best substitute (``margin`` in the answer).
The review drops phases with ``m / (m + 0.01)`` below ``min_confidence``; the reported
``confidence`` is the ``mixture`` stage's isotonic calibration of ``m`` on augmented mixtures (the
probability that the phase's formula is right) when the search has one (``calibration``), else
``m / (m + 0.01)``: on the 100 Dara scans 92 % of the phases above 0.75 of that are right,
8 of the 17 below 0.5.

Examples
--------
>>> search = MixtureSearch(PatternSet.load("data/patterns"), read_index("data/library"))  # doctest: +SKIP
>>> search.fit(X, covered)[0]["phases"][0]  # doctest: +SKIP
{'id': 'mp-1234', 'formula': 'ZrO2', 'weight_fraction': 0.41, 'confidence': 0.93, 'strain': 0.012, ...}
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage, sparse
from scipy.optimize import nnls
from scipy.signal import find_peaks

from xrdid.errors import InputError
from xrdid.identify.chemistry import ElementTable
from xrdid.xrd.diffraction import KALPHA2_RATIO, intensity_per_mass, wilson_intensity
from xrdid.xrd.measured import wavelength_angstrom
from xrdid.xrd.preprocess import rolling_background
from xrdid.xrd.strain import StrainAxis

if TYPE_CHECKING:
    import pandas as pd

    from xrdid.identify.identifier import Identifier

    from xrdid.config import Grid
    from xrdid.data.patterns import PatternSet
    from xrdid.xrd.crystal import Crystal


@dataclass(frozen=True)
class MixtureSettings:
    """How a mixture is searched and when a phase is accepted (see the module notes).

    Attributes
    ----------
    max_phases : most phases per pattern.
    min_gain : a new phase must remove this share of the weighted misfit left (``1 − R_new² / R_old²``) ...
    noise_factor : ... by more than this many σ of counting noise (``√(Δ‖√w r‖² · floor) / σ``) ...
    first_noise_factor : ... (this many for the first phase) ...
    min_share : ... explain this share of the signal's intensity ...
    min_support : ... and have its peaks in the residual: the mean over its peaks (above 10 % of its
        strongest) of min(1, residual / drawn) at least this.
    min_peak : the search stops when no residual peak reaches this share of the pattern's maximum.
    axis_step : ln sin θ step of the search (0.001: 0.1 % strain per point).
    max_strain : largest isotropic lattice strain searched per phase (both signs), and of its refined cell.
    anisotropy : the search also draws each entry with one cell axis (along a*, b* or c*) this much longer and
        shorter (relative), and a candidate's refinement starts from the best of those cells: a layered DFT cell
        is off along its stacking axis by more than ``cell_freedom`` reaches (0: isotropic only).
    smooth : Gaussian σ, in axis points, applied to the residual and the profiles in the search.
    cell_freedom : how far each reciprocal-metric component may move from the isotropic start
        (relative; 0: the isotropic strain of the search and the library profile, no refinement).
    texture : largest March–Dollase r (1 / r the smallest) of a phase's preferred orientation; 1: none.
    weight_floor : weights are ``1 / (y + weight_floor · max y)``.
    refine_steps : most Levenberg–Marquardt steps of one phase's refinement.
    candidates : entries taken from the search at each step (``polymorphs`` per formula at most) and screened
        by a short refinement of their cell against the residual (``screen_steps`` steps, no texture) ...
    polymorphs : most entries of one reduced formula among the ``candidates`` (a DFT polymorph ranked low on
        the isotropic search may refine best).
    screen_steps : ... ranked by the joint fit's R (those the acceptance rule passes first) ...
    refine_best : ... and this many of them refined in full and tested in turn; the first accepted is added.
    kalpha2 : I(Kα2) / I(Kα1) of a scan's doublet when the library was drawn at the mean Kα wavelength:
        per pattern, the first phase is refined with and without the doublet and the better fit decides
        for all phases (0: one line).
    free_noise_factor : a later phase must also lower ``‖√w r‖²`` by this many σ when each phase already in
        may add intensity to its ``free_reflections`` strongest reflections (the intensity misfit of texture
        and of the structure, which grows with the counts and which a phase drawn on the others' peak
        positions would fit); 0: not tested.
    free_reflections : reflections per phase given that freedom.
    min_confidence : at the end, a phase (not the only one) whose margin ``m`` over its best substitute has
        ``m / (m + 0.01)`` below this is removed (the uncalibrated scale: calibration does not move the rule);
        0: never.
    polish_steps : after each phase added, every phase is refined again (this many steps) against the
        pattern less the others; 0: never.
    """

    max_phases: int = 4
    min_gain: float = 0.06
    noise_factor: float = 30.0
    first_noise_factor: float = 30.0
    min_share: float = 0.03
    min_support: float = 0.55
    min_peak: float = 0.05
    axis_step: float = 0.001
    max_strain: float = 0.025
    anisotropy: float = 0.0
    smooth: float = 4.0
    cell_freedom: float = 0.03
    texture: float = 2.5
    weight_floor: float = 0.03
    refine_steps: int = 20
    candidates: int = 6
    polymorphs: int = 2
    screen_steps: int = 3
    refine_best: int = 2
    polish_steps: int = 0
    kalpha2: float = 0.5
    free_noise_factor: float = 0.0
    free_reflections: int = 40
    min_confidence: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.max_phases, bool) or not isinstance(self.max_phases, int | np.integer) or self.max_phases < 1:
            raise InputError("--max-phases", f"must be an integer of at least 1, got {self.max_phases!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not value >= 0:
                raise InputError("mixture settings", f"{f.name} must be a number >= 0, got {value!r}")
        if not (self.axis_step > 0 and self.weight_floor > 0 and self.texture >= 1):
            raise InputError("mixture settings", "axis_step and weight_floor must be positive, texture at least 1")
        if self.anisotropy >= 0.5:  # a cell axis 1 − anisotropy times as long must stay a cell
            raise InputError("mixture settings", f"anisotropy must be below 0.5, got {self.anisotropy!r}")
        if min(self.candidates, self.polymorphs, self.refine_best) < 1:  # 0 would silently find no phase
            raise InputError("mixture settings", "candidates, polymorphs and refine_best must be at least 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MixtureSettings:
        """The settings from a mapping; other keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


@dataclass
class _Phase:
    """One phase of a fit: entry, reciprocal-metric factors, width, and its unit-scale profile on the grid."""

    entry: int
    metric: np.ndarray  # (6,) factors on G*'s components (1 = the simulated cell)
    width: np.ndarray  # (2,) √W, √U of Caglioti's FWHM² = W + U tan²θ (degrees)
    profile: np.ndarray | None  # on the grid, for scale 1 (the library's max-normalised profile when unstrained);
    # None: a search's start, drawn when refined
    scale: float = 0.0
    direction: np.ndarray | None = None  # texture axis (reciprocal-lattice vector), None: no texture
    texture: float = 1.0  # March–Dollase r about it


@dataclass
class _Peaks:
    """An entry's reflections for the refinement: 1/d², intensities, G* terms and the library's normalisation."""

    q0: np.ndarray
    intensity: np.ndarray
    terms: np.ndarray  # (n, 6): (h², k², l², 2hk, 2hl, 2kl) × the simulated G*'s components
    norm: float
    hkl: np.ndarray  # (n, 3)
    metric: np.ndarray  # (3, 3): G* of the simulated cell


@dataclass
class _Lines:
    """An entry's lines (each reflection at each wavelength) drawn at one cell and peak width, before
    intensities: each line's window of the unit-area peak shape (and of its slope and u × slope, for
    derivatives) is a column of a sparse matrix, so a profile and each of its derivatives are one sparse
    product with per-line coefficients. With ``a = ratio · intensity / fwhm`` a line's amplitude,
    ``d f / d position = −a/fwhm · slope`` and ``d f / d fwhm = −a/fwhm · (shape + u·slope)``. The matrices'
    rows are the grid's points with ``pad`` rows before them and, where windows reach past the grid's end,
    some after: ``_cut`` keeps rows ``pad … pad + n_points``."""

    reflection: np.ndarray  # each line's reflection
    ratio: np.ndarray  # its share of the reflection's intensity (Kα1 1, Kα2 its ratio)
    fwhm: np.ndarray
    tan2: np.ndarray
    per_q: np.ndarray  # d position (degrees) / d(1/d²)
    peak: sparse.csc_matrix  # (pad + n_points + ..., lines): the unit-area shape
    peak_slope: sparse.csc_matrix | None  # its derivative by u (position in FWHM), when drawn with slopes
    u_slope: sparse.csc_matrix | None  # u × that
    pad: int
    n_points: int

    def profile(self, intensity: np.ndarray) -> np.ndarray:
        """The pattern of reflections of these intensities."""
        return self._cut(self.peak @ self._amplitude(intensity))

    def separate(self, intensity: np.ndarray) -> np.ndarray:
        """(n_points, n_reflections): each reflection (its Kα2 line too) in its own column."""
        to_reflection = np.zeros((len(self.reflection), len(intensity)))
        to_reflection[np.arange(len(self.reflection)), self.reflection] = self._amplitude(intensity)
        return self._cut(self.peak @ to_reflection)

    def with_jacobian(self, intensity: np.ndarray, d_intensity: np.ndarray, terms: np.ndarray, width: np.ndarray,
                      columns: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """The profile and its derivatives by those of the nine parameters (six G* factors, √W, √U, texture) in
        ``columns``; ``d_intensity``: the intensities' derivative by the texture. The G* columns leave out the
        width's change with θ (U·tan²θ): a Levenberg–Marquardt step needs no more."""
        amp = self._amplitude(intensity)
        down = -amp / self.fwhm
        wanted = np.arange(9)[columns]
        cell_columns, width_columns = np.flatnonzero(wanted < 6), np.flatnonzero((wanted == 6) | (wanted == 7))
        d_fwhm = np.column_stack([np.full(len(amp), width[0]), width[1] * self.tan2]) / self.fwhm[:, None]
        d_width = down[:, None] * d_fwhm[:, wanted[width_columns] - 6]
        texture = [self._amplitude(d_intensity)[:, None]] if 8 in wanted else []
        on_peak = np.hstack([amp[:, None], d_width, *texture])  # the columns f, the widths', the texture's
        drawn = np.zeros((self.peak.shape[0], 1 + len(wanted)))
        drawn[:, np.r_[0, 1 + width_columns, 1 + np.flatnonzero(wanted == 8)]] = self.peak @ on_peak
        if len(cell_columns):  # d q / d metric_k = terms_k
            on_slope = (down * self.per_q)[:, None] * terms[self.reflection][:, wanted[cell_columns]]
            drawn[:, 1 + cell_columns] = self.peak_slope @ on_slope
        if len(width_columns):
            drawn[:, 1 + width_columns] += self.u_slope @ d_width
        drawn = self._cut(drawn)
        return drawn[:, 0], drawn[:, 1:]

    def _amplitude(self, intensity: np.ndarray) -> np.ndarray:
        return self.ratio * intensity[self.reflection] / self.fwhm

    def _cut(self, drawn: np.ndarray) -> np.ndarray:
        return drawn[self.pad:self.pad + self.n_points]


def _march_dollase(peaks: _Peaks, direction: np.ndarray | None, texture: float) -> tuple[np.ndarray, np.ndarray]:
    """Each reflection's intensity with March–Dollase preferred orientation ``(r² cos²α + sin²α / r)^-3/2``
    about ``direction`` (α from the simulated cell's G*; None: none), and its derivative by ``r``."""
    if direction is None:
        return peaks.intensity, np.zeros(len(peaks.intensity))
    along = peaks.hkl @ peaks.metric @ direction
    cos2 = along ** 2 / (peaks.q0 * float(direction @ peaks.metric @ direction))
    base = texture ** 2 * cos2 + (1 - cos2) / texture
    d_base = 2 * texture * cos2 - (1 - cos2) / texture ** 2
    return peaks.intensity * base ** -1.5, peaks.intensity * -1.5 * base ** -2.5 * d_base


MIXTURE_FILE = "mixture.json"  # in an identifier folder: settings, confidence calibration, scattering powers
# the R-factor margin over the best substitute at which a phase's confidence is 0.5
_CONFIDENCE_STEP = 0.01
# reflections weaker than this (strongest = 100) are left out of the refinement
_MIN_REFLECTION = 0.05
# peaks are drawn in a window of this many FWHM (a Lorentzian keeps 5 % of its area beyond ±6 FWHM)
_WINDOW = 6.0


class MixtureSearch:
    """The phases of measured patterns among a simulated library (see the module notes).

    Parameters
    ----------
    patterns : the library's simulated profiles and reflections (on the measured rows' grid).
    library : its index rows (``id``, ``reduced_formula`` or ``formula``), a table or dicts;
        None: every entry is its own formula.
    settings : the :class:`MixtureSettings`.
    crystals : the entries' structures, in ``patterns.ids`` order: weight fractions from the
        structures; None: from the formulas (Wilson's estimate).
    per_mass : entry id → scattering power per unit mass (as the ``mixture`` stage stores it),
        used when ``crystals`` is None and it covers every entry.
    calibration : ``(margin, probability)``, increasing: the confidence a phase's margin maps to
        (isotonic, fitted by the ``mixture`` stage on augmented mixtures); None: ``m / (m + 0.01)``.

    Examples
    --------
    >>> from xrdid.config import Grid
    >>> from xrdid.data.patterns import PatternSet
    >>> from xrdid.xrd.profiles import render
    >>> grid = Grid(10, 80, 3501)
    >>> sticks = {"A": [20.0, 31.0, 45.0], "B": [25.0, 38.0, 52.0], "C": [28.0, 41.0, 60.0]}
    >>> profiles = np.stack([render(np.array(t), np.ones(3), grid, 0.1) for t in sticks.values()])
    >>> profiles /= profiles.max(axis=1, keepdims=True)
    >>> ps = PatternSet(list(sticks), grid, profiles, np.zeros(4, int), *[np.zeros(0)] * 2, np.zeros((0, 3)),
    ...                 np.zeros(0), np.zeros(0), {})
    >>> found = MixtureSearch(ps).fit(profiles[:1] + 0.5 * profiles[2:])[0]
    >>> [p["id"] for p in found["phases"]], round(found["residual_share"], 2)
    (['A', 'C'], 0.0)
    """

    def __init__(self, patterns: PatternSet, library: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
                 settings: MixtureSettings | None = None, crystals: Sequence[Crystal] | None = None,
                 per_mass: Mapping[str, float] | None = None,
                 calibration: tuple[Sequence[float], Sequence[float]] | None = None, chunk: int = 2048) -> None:
        self.settings = s = settings or MixtureSettings()
        self.calibration = None if calibration is None else (np.asarray(calibration[0], np.float64),
                                                             np.asarray(calibration[1], np.float64))
        self.patterns = patterns
        self._peak_cache: dict[int, _Peaks | None] = {}
        self.grid: Grid = patterns.grid
        self.ids = [str(i) for i in patterns.ids]
        n = len(self.ids)
        if n == 0:
            raise InputError("library", "no simulated patterns to search")
        self.allowed = np.ones(n, bool)  # the entries a phase and its substitutes may be (:meth:`restrict`)
        self._elements: ElementTable | None = None
        self.axis = StrainAxis.from_grid(self.grid, s.axis_step)
        # search rows: variant × n + entry, the first n the library's profiles (the cells: _axis_variants)
        self.variants = _axis_variants(s.anisotropy)
        self.profiles = np.empty((len(self.variants) * n, self.axis.n_points), np.float32)
        self.area = np.empty(n)
        for start in range(0, n, chunk):  # bounded memory on large libraries
            rows = np.asarray(patterns.profiles[start:start + chunk], np.float32)
            self.area[start:start + chunk] = rows.sum(axis=1) * self.grid.step
            self.profiles[start:start + len(rows)] = self._smooth(self.axis.resample(rows, self.grid))
        self.rows = _rows(library, self.ids)
        self.formulas = _formulas(self.rows, self.ids)
        _, self.group = np.unique(self.formulas, return_inverse=True)
        meta = patterns.meta or {}
        self.wavelength = float(meta.get("reflection_wavelength_angstrom")
                                or wavelength_angstrom(meta.get("wavelength") or "CuKa"))
        name = meta.get("wavelength") if isinstance(meta.get("wavelength"), str) else ""
        doublet = bool(meta.get("doublet")) and name.endswith("Ka")
        # the lines the library was drawn with, and those a scan may hold: a laboratory scan not monochromated
        # has Kα2 beside each Kα1 peak, 0.1–0.5° apart above 45°; drawn as one line at the mean wavelength the
        # pair leaves a misfit that the search takes for a phase
        self.library_lines = [(self.wavelength, 1.0)] + ([(wavelength_angstrom(name + "2"), KALPHA2_RATIO)]
                                                          if doublet else [])
        self.doublet_lines = ([(wavelength_angstrom(name + "1"), 1.0), (wavelength_angstrom(name + "2"), s.kalpha2)]
                              if name.endswith("Ka") and not doublet and s.kalpha2 > 0 else None)
        self.lines = self.library_lines
        self.shape, self.eta = str(meta.get("profile", "pseudo-voigt")), float(meta.get("eta", 0.5))
        caglioti = meta.get("caglioti") or {}
        self.width0 = np.array([float(caglioti.get("W", 0.01)), float(caglioti.get("U", 0.0))])
        for v, factors in enumerate(self.variants[1:], 1):  # drawn from the reflections, at the library's width
            for start in range(0, n, chunk):
                drawn = np.array([self._profile(e, factors, np.sqrt(self.width0))[0]
                                  for e in range(start, min(start + chunk, n))], np.float32)
                self.profiles[v * n + start:v * n + start + len(drawn)] = self._smooth(self.axis.resample(drawn,
                                                                                                       self.grid))
        self.squares = self.profiles * self.profiles
        two_theta = (self.grid.start, self.grid.stop)
        if crystals is not None:
            if len(crystals) != n:
                raise InputError("library", f"{len(crystals)} structures for {n} simulated patterns")
            self.mass_intensity = np.array([intensity_per_mass(c, self.wavelength, two_theta) for c in crystals])
            self.weight_basis = "structure"
        elif per_mass is not None and all(i in per_mass for i in self.ids):
            self.mass_intensity = np.array([float(per_mass[i]) for i in self.ids])
            self.weight_basis = "structure"
        else:
            per_formula = {f: _wilson_per_mass(f, self.wavelength, two_theta) for f in set(self.formulas)}
            self.mass_intensity = np.array([per_formula[f] for f in self.formulas])
            self.weight_basis = "composition"

    @classmethod
    def for_identifier(cls, identifier: Identifier, max_phases: int | None = None,
                       library_dir: str | Path | None = None) -> MixtureSearch:
        """The search over an identifier's library, with the settings, calibration and scattering powers
        its folder's ``mixture.json`` carries (the ``mixture`` stage's; defaults without one).

        ``library_dir`` (a ``library`` stage output) gives the structures when the library was swapped.
        """
        spec: dict[str, Any] = {}
        if identifier.folder is not None and (Path(identifier.folder) / MIXTURE_FILE).is_file():
            spec = json.loads((Path(identifier.folder) / MIXTURE_FILE).read_text())
        settings = MixtureSettings.from_dict({**spec.get("settings", {}),
                                              **({"max_phases": max_phases} if max_phases is not None else {})})
        try:
            patterns = identifier.patterns()
        except InputError:
            patterns = None
        if patterns is None:
            raise InputError(identifier.folder or "model", "mixtures need the library's simulated patterns and this "
                                                           "model carries none: give them with --library DIR")
        crystals = None
        if library_dir is not None and (Path(library_dir) / "structures.npz").is_file():
            from xrdid.data.library import Library

            try:
                crystals = Library.load(library_dir).crystals(patterns.ids)
            except InputError:  # another library than the patterns': fractions from the stored powers
                crystals = None
        calibration = spec.get("calibration")
        return cls(patterns, identifier.library, settings, crystals, spec.get("intensity_per_mass"),
                   (calibration["margin"], calibration["probability"]) if calibration else None)

    def restrict(self, elements: Iterable[str] = (), required: Iterable[str] = ()) -> MixtureSearch:
        """A shallow copy that searches only the entries made of ``elements`` (any when empty) and holding
        every one of ``required`` (:meth:`~xrdid.identify.chemistry.ElementTable.mask`; the chemistry filter of
        :meth:`Identifier.restrict <xrdid.identify.identifier.Identifier.restrict>`).

        Phases and their substitutes (the confidence's margins) are then drawn from those entries only:
        a chemist who knows the precursors' elements rules out look-alikes of other chemistry.
        """
        if self._elements is None:  # built once: the copies share it
            self._elements = ElementTable.from_rows(self.rows)
        search = copy.copy(self)
        search.allowed = self._elements.mask(elements, required)
        return search

    # ------------------------------------------------------------------ fitting

    def fit(self, X: np.ndarray, covered: np.ndarray | None = None, profiles: bool = False) -> list[dict[str, Any]]:
        """The phases of each measured row (on the library's grid), by weight fraction.

        Returns, per row: ``phases`` (dicts ``id``, ``formula``, ``weight_fraction``,
        ``confidence``, ``strain``, ``scale``, ``share``), ``residual_share`` (the share of the
        background-subtracted signal's intensity the fit leaves above it), ``r_factor`` (weighted),
        ``weight_basis`` and ``why`` (one line per phase added or refused, and why the search stopped).
        With ``profiles``, also ``signal`` (the background-subtracted row) and ``profiles`` (each
        phase's fitted profile on the grid, in ``phases`` order): what the stacked plot draws.
        """
        X = np.asarray(X, np.float32)
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2 or X.shape[1] != self.grid.n_points:
            raise InputError("pattern", f"expected rows of {self.grid.n_points} points on the library's grid, "
                                        f"got shape {np.shape(X)}")
        covered = np.ones(X.shape, bool) if covered is None else np.asarray(covered, bool).reshape(X.shape)
        signal = np.clip(X - rolling_background(X, self.grid.step), 0, None) * covered
        answers = [self._fit_row(y, c) for y, c in zip(signal, covered)]
        for answer, y in zip(answers, signal):
            drawn = answer.pop("_profiles")
            if profiles:
                answer.update(signal=y, profiles=drawn)
        return answers

    def _fit_row(self, y: np.ndarray, covered: np.ndarray) -> dict[str, Any]:
        s = self.settings
        y = y.astype(np.float64)
        total = float(y.sum())
        if not total > 0:
            return {"phases": [], "residual_share": 0.0, "r_factor": 0.0, "weight_basis": self.weight_basis,
                    "why": ["no signal above the background"], "_profiles": np.zeros((0, len(y)))}
        floor = s.weight_floor * y.max()
        weight = covered / (ndimage.gaussian_filter1d(y, 2.0) + floor)
        norm = float(np.sqrt(weight @ (y * y)))
        # the weighted variance of counting noise where there is no peak (σ from neighbour differences)
        # (lag 4: a scan coarser than the grid is interpolated, and neighbouring grid points share its noise)
        sigma = max(1.4826 * np.median(np.abs(y[covered][4:] - y[covered][:-4])) / np.sqrt(2), 1e-12)
        search = _Search(self, y, covered)
        self.lines = self.library_lines
        if self.doublet_lines is not None:  # does the scan hold Kα2? the strongest entry fitted both ways decides
            first = search.candidates(y, self.allowed, 1)
            if first:
                costs = []
                for self.lines in (self.library_lines, self.doublet_lines):
                    fitted = self._refine(self._start(*first[0]), y, weight, orient=False)
                    costs.append(float(weight @ (y - fitted.scale * fitted.profile) ** 2))
                self.lines = self.doublet_lines if costs[1] < costs[0] else self.library_lines
        phases: list[_Phase] = []
        model = np.zeros_like(y)
        r_factor, why, dropped = 1.0, [], []

        def judge(rest: list[_Phase], new: _Phase, r_rest: float, residual: np.ndarray,
                  free: bool = True) -> tuple[list[_Phase], np.ndarray, float, str, str]:
            """The fit of ``rest`` (R ``r_rest``, ``residual`` left) with ``new`` added (joint scales), its R,
            and the acceptance rule's refusal ("": none); ``free`` False: not the free-intensity test (screening)."""
            r_factor = r_rest
            trial = [replace(p) for p in rest] + [new]  # a refused trial leaves the accepted scales alone
            self._scales(trial, y, weight)
            trial_model = sum(p.scale * p.profile for p in trial)
            new_r = float(np.sqrt(weight @ (y - trial_model) ** 2)) / norm
            gain = 1 - (new_r / r_factor) ** 2  # the share of the weighted misfit left that the new phase removes
            z = np.sqrt(max(r_factor ** 2 - new_r ** 2, 0.0) * floor) * norm / sigma
            share = trial[-1].scale * self.area[new.entry] * self._line_factor() / (total * self.grid.step)
            support = _support(trial[-1].scale * new.profile, residual)
            strain = float(np.prod(new.metric[:3])) ** (-1 / 6) - 1
            limit = s.noise_factor if rest else s.first_noise_factor
            refusal = (f"its cell is strained {strain:+.1%}, beyond ±{s.max_strain:.1%}"
                       if abs(strain) > s.max_strain else
                       f"explains {gain:.1%} of the misfit left < {s.min_gain:.0%}" if gain < s.min_gain else
                       f"its fit is {z:.0f} σ of noise < {limit:g}" if z < limit else
                       f"explains {share:.1%} of the signal < {s.min_share:.0%}" if share < s.min_share else
                       f"only {support:.0%} of its intensity lies under the pattern < {s.min_support:.0%}"
                       if support < s.min_support else "")
            note_free = ""
            if not refusal and free and rest and s.free_noise_factor > 0:
                z_free = np.sqrt(self._free_gain(rest, new, y, weight) * floor) / sigma
                if z_free < s.free_noise_factor:
                    refusal = (f"with free intensities for the others' reflections its fit is {z_free:.0f} σ of noise "
                               f"< {s.free_noise_factor:g}")
                note_free = f", {z_free:.0f} σ with free intensities"
            note = (f"R {r_factor:.3f} → {new_r:.3f} ({z:.0f} σ{note_free}), explains {share:.1%} of the signal, "
                    f"{support:.0%} of it under the pattern")
            return trial, trial_model, new_r, refusal, note

        while True:
            residual = y - model
            if len(phases) >= s.max_phases:
                why.append(f"stopped: {s.max_phases} phases (--max-phases)")
                break
            if ndimage.gaussian_filter1d(residual, 1.0).max() < s.min_peak * y.max():
                why.append(f"stopped: no residual peak above {s.min_peak:.0%} of the maximum")
                break
            # a formula in the fit, or one the joint fit dropped, is not tried again
            used = [p.entry for p in phases] + dropped
            found = search.candidates(residual, self.allowed & ~np.isin(self.group, self.group[used]), s.candidates)
            if not found:
                why.append("stopped: no library entry fits the residual")
                break
            # the search axis ranks by isotropic, smoothed overlap, which favours entries that fit the misfit of
            # the phases already in; a short refinement of the cell against the residual ranks them as the fit will
            screened = []
            for entry, shift, variant in found:
                quick = self._refine(self._start(entry, shift, variant), residual, weight, s.screen_steps, orient=False)
                _, _, new_r, refusal, _ = judge(phases, quick, r_factor, residual, free=False)
                screened.append((bool(refusal), new_r, entry, shift, variant))
            screened.sort()
            accepted = None
            for _, _, entry, shift, variant in screened[:s.refine_best]:
                new = self._refine(self._start(entry, shift, variant), residual, weight)
                trial, trial_model, new_r, refusal, note = judge(phases, new, r_factor, residual)
                name = f"{self.formulas[entry]} ({self.ids[entry]})"
                if refusal:
                    why.append(f"refused {name}: {refusal}")
                    continue
                why.append(f"added {name}: {note}")
                accepted = trial, trial_model, new_r
                break
            if accepted is None:
                break
            trial, model, r_factor = accepted
            why += [f"dropped {self.formulas[p.entry]} ({self.ids[p.entry]}): no weight left in the joint fit"
                    for p in trial if p.scale <= 0]
            dropped += [p.entry for p in trial if p.scale <= 0]
            phases = [p for p in trial if p.scale > 0]
            if s.polish_steps and len(phases) > 1:
                # each phase was refined against the residual of those before it, which held the later ones'
                # peaks: refined again against the pattern less all the others, its misfit does not pass for a phase
                for i in range(len(phases)):
                    others = sum(q.scale * q.profile for j, q in enumerate(phases) if j != i)
                    phases[i] = self._refine(phases[i], y - others, weight, s.polish_steps, polish=True)
                self._scales(phases, y, weight)
                model = sum(p.scale * p.profile for p in phases)
                r_factor = float(np.sqrt(weight @ (y - model) ** 2)) / norm
        # each phase was judged against those found before it; judged again against all the others (as if added
        # last), a phase whose peaks the later ones explain as well is dropped, the weakest first
        while len(phases) > 1:
            tests = []
            for i, p in enumerate(phases):
                rest = [replace(q) for j, q in enumerate(phases) if j != i]
                self._scales(rest, y, weight)
                rest_model = sum(q.scale * q.profile for q in rest)
                r_rest = float(np.sqrt(weight @ (y - rest_model) ** 2)) / norm
                refusal = judge(rest, p, r_rest, y - rest_model)[3]
                tests.append((r_rest, i, refusal, rest, rest_model))
            failed = [t for t in tests if t[2]]
            if not failed:
                break
            r_factor, i, refusal, rest, model = min(failed, key=lambda t: t[0])  # the least missed
            gone = phases[i]
            why.append(f"removed {self.formulas[gone.entry]} ({self.ids[gone.entry]}): judged against all the "
                       f"others, {refusal}")
            phases = rest
        margin = search.margins(phases)
        confidence = margin / (margin + _CONFIDENCE_STEP)  # the pruning rule's scale (the answer's is calibrated)
        # a phase that another formula replaces as well fits peaks that no formula claims: misfit of the others,
        # or a phase absent from the library; all such go at once (judged again one by one, each removal would
        # hand its peaks to the next), the best-supported phase stays
        weak = (confidence < s.min_confidence) & (np.arange(len(phases)) != int(np.argmax(confidence))) \
            if phases else np.zeros(0, bool)
        if weak.any():
            why += [f"removed {self.formulas[p.entry]} ({self.ids[p.entry]}): another formula fits its peaks as well "
                    f"(confidence {c:.2f} < {s.min_confidence:g})" for p, c, w in zip(phases, confidence, weak) if w]
            phases = [p for p, w in zip(phases, weak) if not w]
            self._scales(phases, y, weight)
            model = sum(p.scale * p.profile for p in phases)
            r_factor = float(np.sqrt(weight @ (y - model) ** 2)) / norm
            margin = search.margins(phases)
        return self._answer(y, phases, model, margin, r_factor, why)

    def _start(self, entry: int, shift: int, variant: int = 0) -> _Phase:
        """The entry at the isotropic strain of an axis shift (every G* component scaled by (1 + ε)⁻²) on the
        cell of one of its search ``variants``, not drawn yet (every start is refined)."""
        metric = np.full(6, (1 + float(self.axis.strain(shift))) ** -2) * self.variants[variant]
        return _Phase(entry, metric, np.sqrt(self.width0), None)

    def _refine(self, phase: _Phase, target: np.ndarray, weight: np.ndarray, steps: int | None = None,
                orient: bool = True, polish: bool = False) -> _Phase:
        """The phase's cell (six G* factors within ``cell_freedom``), width and texture fitted to ``target``.

        Variable projection: the scale follows in closed form at every step (the non-negative least
        squares of one column), and the Jacobian is analytic (sparse products over the lines' windows).
        Texture: March–Dollase ``(r² cos²α + sin²α / r)^-3/2`` about the normal of one of the
        entry's strongest reflections or a reciprocal axis, the one whose best ``r`` fits best.
        ``orient`` False: no texture; ``polish``: a few steps from the phase's own cell, width and
        texture (its axis kept), against a new target.
        """
        freedom = self.settings.cell_freedom
        peaks = self._peaks(phase.entry)
        if freedom <= 0 or peaks is None:
            return phase if phase.profile is not None else replace(
                phase, profile=self._profile(phase.entry, phase.metric, phase.width)[0])
        root = np.sqrt(weight)

        def evaluate(x: np.ndarray, direction: np.ndarray | None,
                     free: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
            """Weighted residual, its Jacobian (columns ``free``), the profile and its projected (best) scale."""
            return project(*self._profile(phase.entry, x[:6], x[6:8], True, direction, x[8] if len(x) > 8 else 1.0,
                                          free))

        def project(f: np.ndarray, jac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
            """A profile and its Jacobian as ``evaluate`` returns them, the scale projected out."""
            wf = weight * f
            ff = float(wf @ f)
            c = max(float(wf @ target) / ff, 0.0) if ff > 0 else 0.0
            # the scale moves with x too: d(scale)/dx, so that the Jacobian is exact
            dc = ((weight * target) @ jac - 2 * c * (wf @ jac)) / ff if c > 0 else np.zeros(jac.shape[1])
            return root * (target - c * f), -root[:, None] * (c * jac + f[:, None] * dc[None, :]), f, c

        # each component may move by ``freedom`` of its diagonal scale √(G*ii G*jj): an off-diagonal component that
        # is a small difference (a centred cell's primitive setting) must move by far more than its own size
        g, diagonal = peaks.metric, np.diag(peaks.metric)
        scale = np.r_[np.abs(diagonal), np.sqrt(np.abs(diagonal[[0, 0, 1]] * diagonal[[1, 2, 2]]))]
        own = np.abs(np.r_[diagonal, g[0, 1], g[0, 2], g[1, 2]])
        reach = freedom * np.minimum(scale / np.maximum(own, 1e-12), 50.0)  # factors' half-range
        lo = np.r_[phase.metric - np.abs(phase.metric) * reach, 0.01, 0.0]
        hi = np.r_[phase.metric + np.abs(phase.metric) * reach, 0.5, 0.7]
        steps = self.settings.refine_steps if steps is None else steps
        if polish:
            r_lo, r_hi = 1 / self.settings.texture, self.settings.texture
            start = np.r_[phase.metric, phase.width, phase.texture]
            if phase.direction is None:
                x = np.r_[_levenberg_marquardt(lambda v: evaluate(np.r_[v, 1.0], None, slice(0, 8)),
                                               start[:8], lo, hi, steps), 1.0]
            else:
                x = _levenberg_marquardt(lambda v: evaluate(v, phase.direction), start,
                                         np.r_[lo, r_lo], np.r_[hi, r_hi], steps)
            _, _, f, c = evaluate(x, phase.direction, slice(0, 0))
            return _Phase(phase.entry, x[:6], x[6:8], f, c, phase.direction, float(x[8]))
        x = _levenberg_marquardt(lambda v: evaluate(np.r_[v, 1.0], None, slice(0, 8)),
                                 np.r_[phase.metric, phase.width], lo, hi, steps)
        direction = None
        if orient and self.settings.texture > 1:
            r_lo, r_hi = 1 / self.settings.texture, self.settings.texture
            best = float(np.sum(evaluate(np.r_[x, 1.0], None, slice(0, 0))[0] ** 2))
            # r alone per direction, the cheap choice: the cell and width stay, so the lines' windows are drawn once
            held = self._lines(peaks, x[:6], x[6:8])

            def textured(r: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
                intensity, d_intensity = _march_dollase(peaks, direction, float(r[0]))
                return project(held.profile(intensity) / peaks.norm, held.profile(d_intensity)[:, None] / peaks.norm)

            for trial in _texture_directions(peaks):
                r = _levenberg_marquardt(lambda v, t=trial: textured(v, t), np.ones(1), np.array([r_lo]),
                                         np.array([r_hi]), 8)
                cost = float(np.sum(textured(r, trial)[0] ** 2))
                if cost < 0.98 * best:
                    best, direction, texture = cost, trial, r
            if direction is not None:
                x = _levenberg_marquardt(lambda v: evaluate(v, direction), np.r_[x, texture],
                                         np.r_[lo, r_lo], np.r_[hi, r_hi], steps)
        x = np.r_[x, 1.0] if direction is None else x
        _, _, f, c = evaluate(x, direction, slice(0, 0))
        return _Phase(phase.entry, x[:6], x[6:8], f, c, direction, float(x[8]))

    def _scales(self, phases: list[_Phase], y: np.ndarray, weight: np.ndarray) -> None:
        """All phases' scales at once: weighted non-negative least squares."""
        root = np.sqrt(weight)
        A = np.stack([p.profile for p in phases], axis=1) * root[:, None]
        for p, c in zip(phases, nnls(A, y * root)[0]):
            p.scale = float(c)

    def _free_gain(self, rest: list[_Phase], new: _Phase, y: np.ndarray, weight: np.ndarray) -> float:
        """The drop of ``‖√w r‖²`` that ``new`` brings when each phase of ``rest`` may also add intensity to its
        ``free_reflections`` strongest reflections (non-negative least squares over all the columns)."""
        columns = [p.profile[:, None] for p in rest]
        for p in rest:
            peaks = self._peaks(p.entry)
            if peaks is not None:
                strong = np.argsort(-peaks.intensity, kind="stable")[: self.settings.free_reflections]
                one = replace(peaks, q0=peaks.q0[strong], intensity=np.ones(len(strong)), terms=peaks.terms[strong],
                              hkl=peaks.hkl[strong])
                columns.append(self._lines(one, p.metric, p.width).separate(one.intensity))  # a column each
        root = np.sqrt(weight)
        A = np.hstack(columns) * root[:, None]
        b = y * root
        before = nnls(A, b, maxiter=50 * A.shape[1])[1] ** 2
        after = nnls(np.column_stack([A, new.profile * root]), b, maxiter=50 * A.shape[1])[1] ** 2
        return max(before - after, 0.0)

    def _peaks(self, entry: int) -> _Peaks | None:
        """An entry's reflections as the refinement draws them (cached); None without enough of them."""
        if entry not in self._peak_cache:
            ps = self.patterns
            sl = slice(int(ps.offsets[entry]), int(ps.offsets[entry + 1]))
            intensity = np.asarray(ps.intensity[sl], np.float64)
            keep = intensity >= _MIN_REFLECTION  # the thousands of faint ones of a large cell change nothing
            peaks = None
            if keep.sum() >= 6:
                d = np.asarray(ps.d_spacing[sl], np.float64)[keep]
                h = np.asarray(ps.hkl[sl], np.float64).reshape(-1, 3)[keep]
                terms = np.column_stack([h * h, 2 * h[:, 0] * h[:, 1], 2 * h[:, 0] * h[:, 2], 2 * h[:, 1] * h[:, 2]])
                q0 = 1 / d ** 2
                g0 = np.linalg.lstsq(terms, q0, rcond=None)[0]  # G* of the simulated cell
                G = np.array([[g0[0], g0[3], g0[4]], [g0[3], g0[1], g0[5]], [g0[4], g0[5], g0[2]]])
                peaks = _Peaks(q0, intensity[keep], terms * g0, 1.0, h, G)
                drawn = self._lines(peaks, np.ones(6), np.sqrt(self.width0), wavelengths=self.library_lines)
                peaks.norm = float(drawn.profile(peaks.intensity).max()) or 1.0  # scale 1: the library's profile
            self._peak_cache[entry] = peaks
        return self._peak_cache[entry]

    def _profile(self, entry: int, metric: np.ndarray, width: np.ndarray, jacobian: bool = False,
                 direction: np.ndarray | None = None, texture: float = 1.0,
                 columns: slice = slice(None)) -> tuple[np.ndarray, np.ndarray | None]:
        """The entry's profile (scaled as the library's) with G* components × ``metric`` and (√W, √U) ``width``.

        Without reflections (a bare profile) the isotropic part of ``metric`` resamples the library profile.
        """
        peaks = self._peaks(entry)
        if peaks is None:
            library = np.asarray(self.patterns.profiles[entry], np.float64)
            return self._strained(library, float(np.mean(metric)) ** -0.5 - 1), None
        f, jac = self._draw(peaks, metric, width, jacobian, direction, texture, columns)
        return f / peaks.norm, (jac / peaks.norm if jac is not None else None)

    def _draw(self, peaks: _Peaks, metric: np.ndarray, width: np.ndarray, jacobian: bool = False,
              direction: np.ndarray | None = None, texture: float = 1.0,
              columns: slice = slice(None)) -> tuple[np.ndarray, np.ndarray | None]:
        """Reflections drawn on the grid as the library's (doublet, shape), with d/d(metric, width, texture) if
        asked (``columns`` of those nine)."""
        slopes = jacobian and bool(np.any(np.arange(9)[columns] < 8))  # the texture's column needs none
        lines = self._lines(peaks, metric, width, slopes)
        intensity, d_intensity = _march_dollase(peaks, direction, texture)
        if not jacobian:
            return lines.profile(intensity), None
        return lines.with_jacobian(intensity, d_intensity, peaks.terms, width, columns)

    def _lines(self, peaks: _Peaks, metric: np.ndarray, width: np.ndarray, slopes: bool = False,
               wavelengths: list[tuple[float, float]] | None = None) -> _Lines:
        """The entry's lines (each reflection at each (wavelength, ratio) of ``wavelengths``, default
        ``self.lines``) at G* components × ``metric`` and (√W, √U) ``width`` (FWHM² = W + U tan²θ),
        ``1/d² = q0 + terms·(metric − 1)``, each on the grid points within ±``_WINDOW`` of its own FWHM (a
        narrow low-angle peak does not pay for the broadest one)."""
        grid = self.grid
        wavelengths = self.lines if wavelengths is None else wavelengths
        q = peaks.q0 + peaks.terms @ (metric - 1)
        lam = np.repeat([w for w, _ in wavelengths], len(q))
        ratio = np.repeat([r for _, r in wavelengths], len(q))
        reflection = np.tile(np.arange(len(q)), len(wavelengths))
        sin = lam * np.sqrt(np.clip(q[reflection], 1e-12, None)) / 2
        theta = np.arcsin(np.clip(sin, 0, 0.999))
        position = (np.degrees(2 * theta) - grid.start) / grid.step  # in grid points
        tan2 = np.tan(theta) ** 2
        fwhm = np.sqrt(width[0] ** 2 + width[1] ** 2 * tan2 + 1e-8)
        reach = _WINDOW * fwhm / grid.step
        first, last = np.ceil(position - reach).astype(np.int64), np.floor(position + reach).astype(np.int64)
        keep = (sin < 0.999) & (last >= 0) & (first < grid.n_points)  # lines beyond 2θ = 180° or the grid: none
        lam, ratio, reflection, theta, position, tan2, fwhm, first, last = (
            a[keep] for a in (lam, ratio, reflection, theta, position, tan2, fwhm, first, last))
        pad = int(max(-first.min(), 0)) if len(first) else 0
        size = last - first + 1
        indptr = np.r_[0, np.cumsum(size)]
        line = np.repeat(np.arange(len(size)), size)
        rows = np.arange(indptr[-1]) - indptr[:-1][line] + first[line] + pad  # grid point + pad
        # float32 over the windows: half the time of the exponentials, far below the fit's precision needs
        u = ((rows - pad - position[line]) * (grid.step / fwhm)[line]).astype(np.float32)
        shape, slope = _shape(u, self.shape, self.eta, slopes)
        rows, indptr = rows.astype(np.int32), indptr.astype(np.int32)  # int32: scipy need not scan them for a dtype
        n_rows = max(pad + grid.n_points, int(rows.max()) + 1 if len(rows) else 0)

        def windows(values: np.ndarray) -> sparse.csc_matrix:
            return sparse.csc_matrix((values, rows, indptr), shape=(n_rows, len(size)))

        per_q = np.degrees(lam / (2 * np.sqrt(q[reflection]) * np.cos(theta)))  # d position (degrees) / d q
        return _Lines(reflection, ratio, fwhm, tan2, per_q, windows(shape), windows(slope) if slopes else None,
                      windows(u * slope) if slopes else None, pad, grid.n_points)

    def _strained(self, profile: np.ndarray, strain: float) -> np.ndarray:
        """A profile on the grid with its cell scaled by ``1 + strain``."""
        x = self.grid.values
        # the entry's intensity at x is its simulated one where sin θ is (1 + strain) times larger
        source = 2 * np.degrees(np.arcsin(np.clip(np.sin(np.radians(x / 2)) * (1 + strain), 0, 1)))
        return np.interp(source, x, profile, right=0.0)

    def confidence(self, margin: np.ndarray) -> np.ndarray:
        """A phase's confidence from its margin: the calibration's, else ``m / (m + 0.01)``."""
        margin = np.asarray(margin, np.float64)
        if self.calibration is not None:
            return np.interp(margin, *self.calibration)
        return margin / (margin + _CONFIDENCE_STEP)

    def _answer(self, y: np.ndarray, phases: list[_Phase], model: np.ndarray | float, margin: np.ndarray,
                r_factor: float, why: list[str]) -> dict[str, Any]:
        """The JSON-ready answer: phases by weight fraction, and the unexplained share of the signal."""
        total = float(y.sum())
        entries = np.array([p.entry for p in phases], np.int64)
        intensity = np.array([p.scale * self.area[p.entry] * self._line_factor() / self.grid.step
                              for p in phases])  # in grid steps
        weights = intensity / self.mass_intensity[entries] if len(phases) else np.zeros(0)
        weights = weights / weights.sum() if weights.sum() > 0 else weights
        answer = []
        for p, w, c, m, a in zip(phases, weights, self.confidence(margin), margin, intensity):
            strain = float(np.prod(p.metric[:3])) ** (-1 / 6) - 1  # from the cell volume's change (diagonal of G*)
            answer.append({"id": self.ids[p.entry], "formula": str(self.formulas[p.entry]),
                           "weight_fraction": round(float(w), 4), "confidence": round(float(c), 3),
                           "margin": round(float(m), 5),
                           "strain": round(strain, 4), "scale": round(p.scale, 5),
                           "share": round(float(a / total), 4)})
        order = np.argsort([-p["weight_fraction"] for p in answer], kind="stable")
        drawn = np.array([phases[i].scale * phases[i].profile for i in order]).reshape(len(phases), len(y))
        unexplained = float(np.clip(y - model, 0, None).sum() / total)
        return {"phases": [answer[i] for i in order], "residual_share": round(unexplained, 4),
                "r_factor": round(r_factor, 4), "weight_basis": self.weight_basis, "why": why, "_profiles": drawn}

    def _line_factor(self) -> float:
        """The intensity of the lines drawn over that of the library's (1.5: Kα2 drawn beside a library's Kα)."""
        return sum(r for _, r in self.lines) / sum(r for _, r in self.library_lines)

    def _smooth(self, rows: np.ndarray) -> np.ndarray:
        if self.settings.smooth <= 0:
            return np.clip(rows, 0, None).astype(np.float32)
        return np.clip(ndimage.gaussian_filter1d(rows, self.settings.smooth, axis=-1), 0, None).astype(np.float32)


class _Search:
    """One pattern's search on the strain axis: every entry at every shift, vectorised (see the module notes)."""

    def __init__(self, owner: MixtureSearch, y: np.ndarray, covered: np.ndarray) -> None:
        self.owner, self.m = owner, owner.axis.points(owner.settings.max_strain)
        self.mask = owner.axis.resample(covered.astype(np.float32), owner.grid) > 0.5
        self.y = y
        self.ya = ya = self.axis_row(y)
        self.weight = (self.mask / (ya + owner.settings.weight_floor * ya.max())).astype(np.float32)
        covers = sliding_window_view(np.pad(self.weight, self.m), len(ya))  # row j: the weights moved by j - m
        self.norms = covers @ owner.squares.T  # (shifts, entries): weighted ‖p‖² at each shift

    def axis_row(self, row: np.ndarray) -> np.ndarray:
        return self.owner._smooth(self.owner.axis.resample(row.astype(np.float32), self.owner.grid)) * self.mask

    def gains(self, residual: np.ndarray, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per entry of ``entries``: the best drop of the weighted ‖residual‖² (axis row) over its shifts and
        cell variants, the shift in points and the variant."""
        n, count = len(self.owner.ids), len(self.owner.variants)
        rows = (np.arange(count)[:, None] * n + entries).ravel()  # variant-major
        windows = sliding_window_view(np.pad(self.weight * residual, self.m), len(residual))  # row j: moved by j - m
        gain = _drop(windows @ self.owner.profiles[rows].T, self.norms[:, rows])
        best = gain.argmax(axis=0)
        gain = gain[best, np.arange(gain.shape[1])].reshape(count, len(entries))
        variant = gain.argmax(axis=0)
        pick = variant * len(entries) + np.arange(len(entries))
        return gain.max(axis=0), best[pick] - self.m, variant

    def candidates(self, residual: np.ndarray, allowed: np.ndarray, n: int) -> list[tuple[int, int, int]]:
        """The ``n`` (entry, shift, variant) among ``allowed`` that lower the residual most, ``polymorphs`` per
        formula at most."""
        rows = np.flatnonzero(allowed)
        if len(rows) == 0:
            return []
        gain, shift, variant = self.gains(self.axis_row(residual), rows)
        out: list[tuple[int, int, int]] = []
        per_formula: dict[int, int] = {}
        for k in np.argsort(-gain, kind="stable"):
            g = int(self.owner.group[rows[k]])
            if gain[k] <= 0 or len(out) >= n:
                break
            if per_formula.get(g, 0) < self.owner.settings.polymorphs:  # a few polymorphs compete, not a whole family
                per_formula[g] = per_formula.get(g, 0) + 1
                out.append((int(rows[k]), int(shift[k]), int(variant[k])))
        return out

    def margins(self, phases: list[_Phase]) -> np.ndarray:
        """Per phase: the weighted R-factor margin by which it beats its best substitute of another formula."""
        out = np.zeros(len(phases))
        if not phases:
            return out
        group = self.owner.group
        entries = [p.entry for p in phases]
        free = self.owner.allowed & ~np.isin(group, group[entries])
        norm = np.sqrt(float(self.weight @ (self.ya * self.ya)))
        for i, p in enumerate(phases):
            rest = sum((q.scale * q.profile for j, q in enumerate(phases) if j != i), np.zeros(self.owner.grid.n_points))
            residual = self.axis_row(self.y - rest)
            base = float(self.weight @ (residual * residual))
            # the phase as fitted (refined cell, width, texture) or any polymorph strained isotropically: a refined
            # cell the isotropic search cannot draw must not make a right phase look replaceable
            own = self.gains(residual, np.flatnonzero((group == group[p.entry]) & self.owner.allowed))[0].max()
            drawn = self.axis_row(p.profile)
            own = max(own, float(_drop((self.weight * residual) @ drawn, self.weight @ (drawn * drawn))))
            other = self.gains(residual, np.flatnonzero(free))[0].max() if free.any() else 0.0
            out[i] = max(np.sqrt(max(base - other, 0)) - np.sqrt(max(base - own, 0)), 0.0) / norm
        return out


def _axis_variants(anisotropy: float) -> np.ndarray:
    """Factors on G*'s six components (11, 22, 33, 12, 13, 23): the cell, then each cell axis along a reciprocal
    axis ``1 ± anisotropy`` times as long (that axis's reciprocal length scaled by the inverse)."""
    out = [np.ones(6)]
    if anisotropy > 0:
        for axis in range(3):
            mixed = [3 + j for j, pair in enumerate([(0, 1), (0, 2), (1, 2)]) if axis in pair]  # G*_kj, j ≠ k
            for sign in (1, -1):
                t = 1 / (1 + sign * anisotropy)
                factors = np.ones(6)
                factors[axis], factors[mixed] = t * t, t
                out.append(factors)
    return np.array(out)


def _drop(dot: np.ndarray, norm2: np.ndarray) -> np.ndarray:
    """How much ``‖√w r‖²`` drops when a profile ``p`` at its best non-negative scale is taken from ``r``:
    ``max(r·Wp, 0)² / p·Wp`` from ``dot = r·Wp`` and ``norm2 = p·Wp``."""
    return np.where(dot > 0, dot * dot / np.maximum(norm2, 1e-12), 0.0)


# ---------------------------------------------------------------------- scattering power per unit mass


def _wilson_per_mass(formula: str, wavelength: float, two_theta: tuple[float, float]) -> float:
    """Wilson's integrated intensity per unit mass of ``formula``; 1.0 when it cannot be parsed (fractions by intensity)."""
    from pymatgen.core import Composition, Element

    try:
        composition = Composition(formula)
        amounts = composition.get_el_amt_dict()
        numbers = np.array([Element(el).Z for el in amounts])
        return wilson_intensity(numbers, np.array(list(amounts.values())), wavelength, two_theta) / composition.weight
    except (ValueError, KeyError, TypeError):
        return 1.0


def _rows(library: pd.DataFrame | Sequence[Mapping[str, Any]] | None, ids: list[str]) -> list[dict[str, Any]]:
    """Each entry's library row ({} when the library says nothing of it)."""
    if library is None:
        return [{} for _ in ids]
    records = library.to_dict("records") if hasattr(library, "to_dict") else list(library)
    by_id = {str(r.get("id")): dict(r) for r in records}
    return [by_id.get(entry, {}) for entry in ids]


def _formulas(rows: Sequence[Mapping[str, Any]], ids: list[str]) -> np.ndarray:
    """Each entry's reduced formula (its id when its row says nothing)."""
    out = []
    for entry, row in zip(ids, rows):
        formula = str(row.get("reduced_formula") or "")
        if not formula and row.get("formula"):
            from pymatgen.core import Composition

            try:
                formula = Composition(str(row["formula"])).reduced_formula
            except (ValueError, KeyError):
                formula = str(row["formula"])
        out.append(formula or entry)
    return np.array(out, dtype=object)


def _shape(u: np.ndarray, shape: str, eta: float, slope: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-area, unit-FWHM peak at ``u`` (in FWHM) and, if asked, its derivative (as
    :func:`xrdid.xrd.profiles.render`); Python floats as constants keep a float32 ``u`` in float32."""
    c = 4 * math.log(2)
    u2 = u * u
    gauss = float(np.sqrt(c / np.pi)) * np.exp(-c * u2) if shape != "lorentzian" else 0.0
    lorentz = (2 / np.pi) / (1 + 4 * u2) if shape != "gaussian" else 0.0
    share = {"gaussian": 0.0, "lorentzian": 1.0}.get(shape, eta)  # the Lorentzian fraction
    value = share * lorentz + (1 - share) * gauss
    if not slope:
        return value, None
    # d/du: Gaussian −2c·u·g, Lorentzian −8u·L²·π/2 (with L = (2/π) / (1 + 4u²))
    return value, -u * (share * 4 * np.pi * lorentz * lorentz + (1 - share) * 2 * c * gauss)


def _levenberg_marquardt(evaluate: Any, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, steps: int) -> np.ndarray:
    """Minimise ‖r(x)‖² within bounds; ``evaluate(x)`` returns (r, J, ...). Steps are clipped to the bounds.

    A few parameters and thousands of points: the 9 × 9 normal equations cost nothing next to the
    profile, where a general solver's SVD of the whole Jacobian would dominate.
    """
    x = np.clip(x, lo, hi)
    r, jac = evaluate(x)[:2]
    cost, damping = float(r @ r), 1e-3
    for _ in range(steps):
        a, g = jac.T @ jac, jac.T @ r
        diagonal = np.diag(a) + 1e-12
        try:
            step = np.linalg.solve(a + damping * np.diag(diagonal), -g)
        except np.linalg.LinAlgError:
            break
        trial = np.clip(x + step, lo, hi)
        r_new, jac_new = evaluate(trial)[:2]
        new_cost = float(r_new @ r_new)
        if new_cost < cost:
            done = cost - new_cost < 1e-4 * cost and damping <= 1e-2  # converged (a damped step is merely short)
            x, r, jac, cost, damping = trial, r_new, jac_new, new_cost, damping / 3
            if done:
                break
        else:
            damping *= 4
            if damping > 1e6:
                break
    return x


def _texture_directions(peaks: _Peaks, strongest: int = 3) -> list[np.ndarray]:
    """Candidate texture axes: the normals of the strongest low-angle reflections, then a*, b*, c* (no repeats)."""
    low = np.argsort(peaks.q0)[:max(12, strongest)]  # platelets and needles show in low-angle families
    first = low[np.argsort(-peaks.intensity[low], kind="stable")[:strongest]]
    out: list[np.ndarray] = []
    for h in [*peaks.hkl[first], *np.eye(3)]:
        h = np.asarray(h, np.float64)
        g = h @ peaks.metric @ h
        parallel = [abs(h @ peaks.metric @ o) ** 2 >= 0.999 * g * (o @ peaks.metric @ o) for o in out]
        if g > 0 and not any(parallel):
            out.append(h)
    return out


def _support(drawn: np.ndarray, residual: np.ndarray, strong: float = 0.1) -> float:
    """How far the measured residual holds the phase's peaks: the mean over its peaks above ``strong``
    of its maximum of min(1, residual / drawn) at the peak (the residual's maximum within ±2 points).

    Every peak counts alike, so that two or three strong coincidences cannot hide the peaks a
    wrong phase puts where the pattern has none.
    """
    top = float(drawn.max())
    if not top > 0:
        return 0.0
    where = find_peaks(drawn, height=strong * top)[0]
    if len(where) == 0:
        where = np.array([int(drawn.argmax())])
    held = ndimage.maximum_filter1d(np.clip(residual, 0, None), 5)[where]
    return float(np.mean(np.minimum(held / drawn[where], 1.0)))
