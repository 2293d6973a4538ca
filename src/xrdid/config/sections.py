"""One frozen dataclass per section of ``params.yaml``, with its defaults and checks.

Field names are the YAML keys and defaults are the values of the root ``params.yaml``.
:meth:`_Section.from_dict` checks the keys against the fields and the values against the
field types (read from the annotations: ``Literal`` is an enum, ``tuple[float, float]`` a
``[lo, hi]`` range) and the bounds in the field metadata; :meth:`_Section.to_dict` gives
the plain YAML values back, in the key order of ``params.yaml``. Values are kept as
written (an ``int`` stays an ``int`` where a number is allowed), so they reach the
pipeline unchanged.

Examples
--------
>>> AugmentSection.from_dict({"ratio": 72}, "p.yaml").to_dict()["ratio"]
72
>>> AugmentSection.from_dict({"ratoi": 72}, "p.yaml")
Traceback (most recent call last):
...
xrdid.errors.InputError: p.yaml: unknown key 'augment.ratoi'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from xrdid.config.grid import Grid
from xrdid.errors import InputError

__all__ = [
    "AblationSection",
    "AugmentSection",
    "DenoiseSection",
    "EvaluateMeasuredSection",
    "EvaluateSection",
    "GridSection",
    "LibrarySection",
    "MixtureMeasuredSection",
    "MixtureSection",
    "MixturesAugmentSection",
    "ModelSection",
    "NoiseSection",
    "Params",
    "PhysicalSection",
    "RegisterSection",
    "SimulateSection",
    "SyntheticSection",
    "TrackingSection",
    "TrainSection",
    "TuneSection",
]

Range = tuple[float, float]  # [lo, hi] with lo ≤ hi
Wavelength = str | float  # a name (CuKa, CuKa1, CoKa1, MoKa, ...) or Å
Shuffle = Literal["permute", "segments", "keep"]


def _f(default: Any, **bounds: float) -> Any:
    """A field with ``default`` (a mapping is copied per instance) and numeric bounds
    ``ge``/``gt``/``le``/``lt``, checked on a number or on every number of a range."""
    if isinstance(default, dict):
        return field(default_factory=lambda: _frozen(default), metadata=bounds)
    return field(default=default, metadata=bounds)


_BOUNDS = {"ge": (lambda v, b: v >= b, "≥"), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "≤"), "lt": (lambda v, b: v < b, "<")}


def _describe(tp: Any) -> str:
    """What a type accepts, in YAML words."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is tuple:
        if args[-1] is Ellipsis:
            return f"a list of ({_describe(args[0])})"
        if args == (float, float):
            return "[lo, hi]"
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    if origin is dict:
        return "a mapping"
    return {NoneType: "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _problem(value: Any, tp: Any) -> str | None:
    """None when ``value`` fits ``tp``; else the problem ("expected ..." when the shape is wrong)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return None
    if origin in (Union, UnionType):
        problems = [_problem(value, a) for a in args]
        if None in problems:
            return None
        specific = [p for p in problems if not p.startswith("expected")]  # right shape, bad value
        return specific[0] if specific else f"expected {_describe(tp)}, got {value!r}"
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
    elif origin is tuple:
        if not isinstance(value, list | tuple):
            return f"expected {_describe(tp)}, got {value!r}"
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(items) != len(value):
            return f"expected {_describe(tp)}, got {value!r}"
        for item, item_tp in zip(value, items):
            problem = _problem(item, item_tp)
            if problem is not None:
                return problem if not problem.startswith("expected") else f"expected {_describe(tp)}, got {value!r}"
        if args == (float, float) and value[0] > value[1]:
            return f"low > high in {list(value)}"
        return None
    elif origin is dict:
        ok = isinstance(value, Mapping)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is NoneType:
        ok = value is None
    else:
        ok = isinstance(value, tp)
    return None if ok else f"expected {_describe(tp)}, got {value!r}"


def _numbers(value: Any) -> list[float]:
    """The numbers of a scalar or of a (nested) range, for the bounds check."""
    if isinstance(value, list | tuple):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def _frozen(value: Any) -> Any:
    """Lists as tuples, mappings copied (the section is immutable, its YAML values are not)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """YAML-able: sections as mappings, tuples as lists."""
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


class _Section:
    """``from_dict``/``to_dict`` of every section: checks driven by the dataclass fields."""

    _key = ""  # dotted name in params.yaml ("noise.physical"); "" for the whole file

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: Any = None) -> Any:
        """Build from a YAML mapping (None: all defaults); raise :class:`InputError` naming ``source``.

        Parameters
        ----------
        values : the section as read from YAML; missing keys take the defaults.
        source : the file the values came from (named in the error message).

        Examples
        --------
        >>> LibrarySection.from_dict({"source": "folder", "folder": "cifs", "select": "all"}).select
        'all'
        >>> LibrarySection.from_dict({"partial_occupancy": "maybe"}, "p.yaml")
        Traceback (most recent call last):
        ...
        xrdid.errors.InputError: p.yaml: library.partial_occupancy: expected 'keep' | 'reject', got 'maybe'
        """
        where = f"{cls._key}." if cls._key else ""
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise InputError(source, f"{cls._key or 'parameters'}: expected a mapping, got {values!r}")
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for key in values:
            if key not in known:
                raise InputError(source, f"unknown key '{where}{key}'" if where else f"unknown section '{key}'")
        kwargs, nested = {}, cls.nested()
        for key, value in values.items():
            tp, name = _hints(cls)[key], f"{where}{key}"
            if key in nested:
                kwargs[key] = tp.from_dict(value, source)
                continue
            if get_origin(tp) is dict and value is None:  # an open mapping: null clears it
                value = {}
            if isinstance(value, str) and float in get_args(tp) + (tp,) and str not in get_args(tp) + (tp,):
                try:  # YAML reads 3e-4 (no dot) as a string
                    value = float(value)
                except ValueError:
                    pass
            problem = _problem(value, tp)
            for bound, limit in known[key].metadata.items():
                test, sign = _BOUNDS[bound]
                if problem is None and not all(test(v, limit) for v in _numbers(value)):
                    problem = f"must be {sign} {limit}, got {value!r}"
            if problem is not None:
                raise InputError(source, f"{name}: {problem}")
            kwargs[key] = _frozen(value)
        section = cls(**kwargs)
        problem = section._check()
        if problem is not None:
            raise InputError(source, f"{where}{problem}")
        return section

    @classmethod
    def nested(cls) -> dict[str, type[_Section]]:
        """The fields that are sections themselves (merged key by key by an overlay).

        Examples
        --------
        >>> list(NoiseSection.nested())
        ['physical']
        """
        return {name: tp for name, tp in _hints(cls).items() if isinstance(tp, type) and issubclass(tp, _Section)}

    def _check(self) -> str | None:
        """A problem between fields ("key: problem"), else None."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML values (lists, not tuples) in the key order of ``params.yaml``.

        Examples
        --------
        >>> NoiseSection().to_dict()["physical"]["count_level"]
        [300, 30000]
        """
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class GridSection(_Section):
    """``grid``: the model's 2θ axis (degrees) and the source wavelength.

    Examples
    --------
    >>> GridSection(two_theta_min=5.0, two_theta_max=50.0, n_points=4501).grid().step
    0.01
    """

    _key = "grid"
    two_theta_min: float = _f(2.0, gt=0)
    two_theta_max: float = _f(50.0, lt=180)
    n_points: int = _f(4801, ge=2)
    wavelength: Wavelength = _f("CuKa", gt=0)

    def _check(self) -> str | None:
        if self.two_theta_min >= self.two_theta_max:
            return f"two_theta_min: must be below two_theta_max, got {self.two_theta_min} ≥ {self.two_theta_max}"
        return None

    def grid(self) -> Grid:
        """The :class:`~xrdid.config.grid.Grid` of this section."""
        return Grid(float(self.two_theta_min), float(self.two_theta_max), self.n_points)


@dataclass(frozen=True)
class LibrarySection(_Section):
    """``library``: which structures make the reference library."""

    _key = "library"
    source: Literal["core-mof", "folder"] = "core-mof"
    dataset: str | int = "2019-ASR"  # core-mof checks the name (YAML reads 2014 as a number)
    folder: str | tuple[str, ...] | None = None
    select: Literal["all"] | int | tuple[str | int, ...] | str = 50  # a str other than "all": a file of ids
    seed: int = _f(0, ge=0)
    max_atoms: int = _f(5000, ge=1)
    elements_allowed: tuple[str, ...] = ()
    elements_required: tuple[str, ...] = ()
    partial_occupancy: Literal["keep", "reject"] = "keep"
    parser: Literal["gemmi", "pymatgen"] = "gemmi"
    workers: int = _f(2, ge=1)

    def _check(self) -> str | None:
        if isinstance(self.select, int) and self.select < 1:
            return f"select: must be 'all', a positive number or a list of ids, got {self.select}"
        if self.source == "folder" and self.folder is None:
            return "folder: source 'folder' needs a folder of *.cif"
        return None


@dataclass(frozen=True)
class SimulateSection(_Section):
    """``simulate``: reflections of a structure → a profile on the grid."""

    _key = "simulate"
    doublet: bool = False
    debye_waller: dict[str, Any] = _f({})
    profile: Literal["gaussian", "lorentzian", "pseudo-voigt"] = "pseudo-voigt"
    eta: float = _f(0.5, ge=0, le=1)
    caglioti: dict[str, Any] = _f({"U": 0.0, "V": 0.0, "W": 0.01})
    min_intensity: float = _f(0.001, ge=0)
    workers: int = _f(2, ge=1)


@dataclass(frozen=True)
class SyntheticSection(_Section):
    """``synthetic``: the universal synthetic spectra benchmark (Schuetzke et al. 2023)."""

    _key = "synthetic"
    config: str = "../shared/data/schuetzke2022/dataset500.json"
    out: str = "data/synthetic/dataset500"
    seed: int = _f(0, ge=0)
    dtype: Literal["float32", "float16"] = "float32"


@dataclass(frozen=True)
class DenoiseSection(_Section):
    """``denoise``: the FFT rule of Wang et al. 2020, shared by ``xrdid denoise`` and ``evaluate``."""

    _key = "denoise"
    cutoff: int = _f(200, ge=1)
    threshold: float = _f(0.02, ge=0)
    relative: bool = True
    detrend: bool = True


@dataclass(frozen=True)
class PhysicalSection(_Section):
    """``noise.physical``: the physical noise model (ranges drawn uniformly per row)."""

    _key = "noise.physical"
    n_entries: int = _f(256, ge=1)
    count_level: Range = _f((300, 30000), gt=0)
    background: Range = _f((0.01, 0.15), ge=0)
    slope: Range = (-0.5, 0.5)
    curvature: Range = (-0.5, 0.5)
    air_scatter: Range = _f((0.0, 0.5), ge=0)
    air_decay: Range = _f((0.5, 4.0), gt=0)
    hump: Range = _f((0.0, 0.1), ge=0)
    hump_center: Range = (18.0, 30.0)
    hump_width: Range = _f((3.0, 8.0), gt=0)


@dataclass(frozen=True)
class NoiseSection(_Section):
    """``noise``: the noise bank (background + noise of measured patterns, or the physical model)."""

    _key = "noise"
    folder: str | None = None
    default_wavelength: Wavelength = _f("CuKa", gt=0)
    seed: int = _f(0, ge=0)
    baseline_window: float = _f(1.0, gt=0)
    background_smooth: float = _f(0.15, ge=0)
    noise_window: float = _f(1.5, gt=0)
    peak_sigma: float = _f(4.0, ge=0)
    peak_extent_sigma: float = _f(0.5, ge=0)
    peak_pad: float = _f(0.1, ge=0)
    min_peak_snr: float = _f(10.0, ge=0)
    blank_ratio: Literal["frameworks"] | Range = _f("frameworks", ge=0)
    physical: PhysicalSection = field(default_factory=PhysicalSection)


@dataclass(frozen=True)
class MixturesAugmentSection(_Section):
    """``augment.mixtures``: spectra of several entries at random weight fractions (0: none written)."""

    _key = "augment.mixtures"
    count: int = _f(32, ge=0)
    phases: tuple[int, int] = _f((2, 4), ge=1)
    min_fraction: float = _f(0.05, ge=0, lt=0.5)

    def _check(self) -> str | None:
        lo, hi = self.phases
        if lo > hi:
            return f"phases: expected [lo, hi] with lo <= hi, got {list(self.phases)}"
        return None if self.min_fraction * hi < 1 else f"min_fraction × {hi} phases must stay below 1"


@dataclass(frozen=True)
class AugmentSection(_Section):
    """``augment``: augmented datasets (varied reflections + noise-bank rows)."""

    _key = "augment"
    ratio: int = _f(40, ge=1)
    val_fraction: float = _f(0.2, ge=0, le=1)
    seed: int = _f(0, ge=0)
    main_points: int = _f(400, ge=1)
    max_peaks: int = _f(200, ge=1)
    shuffle: Shuffle | tuple[Shuffle, ...] = "permute"
    segment_width: float = _f(2.0, gt=0)
    noise_scale: Range = _f((1.0, 1.0), ge=0)
    zero_shift: Range = (-0.1, 0.1)
    strain: Range | tuple[Range, Range, Range] = _f((-0.02, 0.02), gt=-1)
    intensity_sigma: float = _f(0.15, ge=0)
    unreliable_intensity_sigma: float | None = _f(1.0, ge=0)  # null: intensity_sigma
    texture_probability: float = _f(0.5, ge=0, le=1)
    texture_r: Range = _f((0.7, 1.4), gt=0)
    texture_direction: Literal["low-index", "random"] = "low-index"
    crystallite_size: Range | None = _f((30.0, 1000.0), gt=0)
    scherrer_k: float = _f(0.9, gt=0)
    kalpha2_probability: float = _f(0.5, ge=0, le=1)
    width_bands: int = _f(1, ge=1)
    chunk_size: int = _f(256, ge=1)
    workers: int = _f(2, ge=1)
    mixtures: MixturesAugmentSection = field(default_factory=MixturesAugmentSection)

    def _check(self) -> str | None:
        return "shuffle: expected at least one mode, got []" if self.shuffle == () else None


@dataclass(frozen=True)
class ModelSection(_Section):
    """``model``: the network (``learn.models.MODELS`` checks the name) and its options."""

    _key = "model"
    name: str = "xrdnet"
    options: dict[str, Any] = _f({})


@dataclass(frozen=True)
class TrainSection(_Section):
    """``train``: ``learn.train.TrainConfig`` plus the stage-only ``ensemble``, ``fresh``, ``seeds``."""

    _key = "train"
    epochs: int = _f(15, ge=1)
    batch_size: int = _f(128, ge=1)
    lr: float = _f(3.0e-4, gt=0)
    weight_decay: float = _f(0.0, ge=0)
    patience: int = _f(25, ge=0)
    min_delta: float = _f(1.0e-4, ge=0)
    lr_patience: int = _f(10, ge=0)
    lr_factor: float = _f(0.1, gt=0)
    seed: int = _f(0, ge=0)
    ensemble: int = _f(1, ge=1)
    fresh: bool = False
    seeds: str | int | None = None  # "0-4", "0,2,5" (learn.train.parse_seeds)
    deterministic: bool = False
    device: str | None = None
    amp: bool | None = None


@dataclass(frozen=True)
class TrackingSection(_Section):
    """``tracking``: the MLflow store, experiment and registered model."""

    _key = "tracking"
    uri: str | None = None
    experiment: str = "xrdid-default"
    model_name: str = "xrdid-default"


@dataclass(frozen=True)
class RegisterSection(_Section):
    """``register``: calibration and the not-in-library rule that go with the model."""

    _key = "register"
    calibration_samples: int = _f(4000, ge=1)
    novelty_samples: int = _f(2000, ge=0)
    false_flag_rate: float = _f(0.1, ge=0, le=1)
    signal_rate: float = _f(0.01, ge=0, le=1)
    seed: int = _f(0, ge=0)


@dataclass(frozen=True)
class EvaluateMeasuredSection(_Section):
    """``evaluate.measured``: a measured test set (``labels.csv``: pattern, cif[, source])."""

    _key = "evaluate.measured"
    labels: str | None = None
    folder: str | None = None
    default_wavelength: Wavelength = _f("CuKa", gt=0)


@dataclass(frozen=True)
class EvaluateSection(_Section):
    """``evaluate``: Top-1..5 of the CNN and the baselines."""

    _key = "evaluate"
    measured: EvaluateMeasuredSection = field(default_factory=EvaluateMeasuredSection)
    search_match_smooth: float = _f(0.05, ge=0)
    fusion_weight: float = _f(10.0, ge=0)
    classical: tuple[str, ...] = ("naive_bayes", "knn", "logistic_regression", "random_forest", "svm")
    classical_pool: int = _f(10, ge=1)
    classical_max_train: int = _f(20000, ge=1)
    baseline_val_samples: int = _f(2000, ge=0)
    n_match_plots: int = _f(0, ge=0)


@dataclass(frozen=True)
class MatchSection(_Section):
    """``match``: the open-library identifier (search, calibration and scoring; xrdid.identify.search)."""

    _key = "match"
    axis_step: float = _f(0.001, gt=0, le=0.01)
    smooth: float = _f(5.0, ge=0)
    power: float = _f(0.7, gt=0, le=1)
    max_strain: float = _f(0.03, ge=0, le=0.2)
    strain_penalty: float = _f(0.03, ge=0)
    coarse_smooth: float = _f(15.0, ge=0)
    coarse_stride: int = _f(5, ge=1)
    candidates: int = _f(200, ge=1)
    holdout: float = _f(0.3333, ge=0, lt=1)
    calibration_samples: int = _f(2000, ge=10)
    test_samples: int = _f(1000, ge=1)
    false_flag_rate: float = _f(0.05, ge=0, le=1)
    baseline_smooth: float = _f(0.3, ge=0)
    alone_source: str | None = None
    model_name: str | None = None
    seed: int = _f(0, ge=0)


@dataclass(frozen=True)
class MixtureMeasuredSection(EvaluateMeasuredSection):
    """``mixture.measured``: measured mixtures (``labels.csv``: pattern, phases[, phases_not_in_library, scan],
    or pattern, cif for single-phase patterns); ``unmatched``: formulas whose library entries are none of them
    the measured polymorph (the scores are also given with those phases counted as absent)."""

    _key = "mixture.measured"
    unmatched: tuple[str, ...] = ()


@dataclass(frozen=True)
class MixtureSection(_Section):
    """``mixture``: the phases of multi-phase samples (xrdid.identify.mixture; stage mixture)."""

    _key = "mixture"
    max_phases: int = _f(4, ge=1)
    settings: dict[str, Any] = _f({})  # other MixtureSettings fields; empty: their defaults
    calibration_share: float = _f(0.5, gt=0, lt=1)
    measured: MixtureMeasuredSection = field(default_factory=MixtureMeasuredSection)


@dataclass(frozen=True)
class AblationSection(_Section):
    """``tune.ablation``: fixed settings (``base``) and the grid per parameter (``values``)."""

    _key = "tune.ablation"
    base: dict[str, Any] = _f({"ratio": 20, "epochs": 10, "conv_layers": 7, "lr": 1.0e-3, "dropout": 0.2,
                               "batch_size": 64})
    values: dict[str, Any] = _f({"ratio": [5, 10, 20, 40], "epochs": [2, 5, 10, 20, 40],
                                 "conv_layers": [1, 3, 5, 7, 9]})


@dataclass(frozen=True)
class TuneSection(_Section):
    """``tune``: the Optuna study and the ablations."""

    _key = "tune"
    study: str = "xrdid-default"
    n_trials: int = _f(20, ge=0)
    storage: str | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = _f(0, ge=0)
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_options: dict[str, Any] = _f({"n_startup_trials": 5, "n_warmup_steps": 3})
    objective: Literal["validation", "measured"] = "validation"
    tie_break: float = _f(1.0e-3, ge=0)
    model: str = "wang"
    space: dict[str, Any] = _f({
        "ratio": {"low": 5, "high": 40, "step": 5},
        "epochs": {"low": 5, "high": 40, "step": 5},
        "conv_layers": {"low": 1, "high": 9},
        "lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
        "dropout": {"low": 0.0, "high": 0.5, "step": 0.05},
        "batch_size": [32, 64, 128],
    })
    heartbeat_interval: float = _f(10, gt=0)
    grace_period: float = _f(60, gt=0)
    max_retry: int = _f(3, ge=0)
    register: bool = False
    threads: int | None = _f(None, ge=1)
    out: str = "reports/tune"
    ablation: AblationSection = field(default_factory=AblationSection)


@dataclass(frozen=True)
class Params(_Section):
    """A whole parameter file: one section per stage (absent sections hold their defaults).

    Examples
    --------
    >>> p = Params.from_dict({"train": {"epochs": 5}}, "p.yaml")
    >>> p.train.epochs, p.train.batch_size, p.grid.grid().n_points
    (5, 128, 4801)
    >>> Params.from_dict({"trian": {}}, "p.yaml")
    Traceback (most recent call last):
    ...
    xrdid.errors.InputError: p.yaml: unknown section 'trian'
    """

    grid: GridSection = field(default_factory=GridSection)
    library: LibrarySection = field(default_factory=LibrarySection)
    simulate: SimulateSection = field(default_factory=SimulateSection)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    denoise: DenoiseSection = field(default_factory=DenoiseSection)
    noise: NoiseSection = field(default_factory=NoiseSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    register: RegisterSection = field(default_factory=RegisterSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    match: MatchSection = field(default_factory=MatchSection)
    mixture: MixtureSection = field(default_factory=MixtureSection)
    tune: TuneSection = field(default_factory=TuneSection)
