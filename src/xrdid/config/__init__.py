"""Parameters (``params.yaml``) and the model's 2θ grid: the bottom layer above ``errors``.

``params.yaml`` has one section per pipeline stage (``library``, ``simulate``, ``noise``,
``augment``, ``train``, ...); a stage reads its own section plus ``grid``. Each section is
a frozen dataclass of :mod:`xrdid.config.sections` whose defaults are the root
``params.yaml``: :func:`load_params` checks a file against them (unknown sections and keys,
types, enums, simple bounds) and returns plain dicts with the defaults filled in;
:func:`load_sections` returns the :class:`Params` object instead.

A profile is an overlay: a file that starts with ``extends: ../../params.yaml`` (relative
to itself) and sets only what differs: sections are merged key by key, any other value
(lists, and open mappings such as ``model.options`` or ``tune.space``) replaces the base's.

This package imports only numpy, yaml, the standard library and :mod:`xrdid.errors`.

Examples
--------
>>> GridSection().grid().n_points
4801
"""

from xrdid.config.grid import Grid
from xrdid.config.params import DEFAULT_PARAMS, SECTIONS, load_params, load_sections
from xrdid.config.sections import (
    AblationSection,
    AugmentSection,
    DenoiseSection,
    EvaluateMeasuredSection,
    EvaluateSection,
    GridSection,
    LibrarySection,
    MatchSection,
    MixtureSection,
    ModelSection,
    NoiseSection,
    Params,
    PhysicalSection,
    RegisterSection,
    SimulateSection,
    SyntheticSection,
    TrackingSection,
    TrainSection,
    TuneSection,
)

__all__ = [
    "DEFAULT_PARAMS",
    "SECTIONS",
    "AblationSection",
    "AugmentSection",
    "DenoiseSection",
    "EvaluateMeasuredSection",
    "EvaluateSection",
    "Grid",
    "GridSection",
    "LibrarySection",
    "MatchSection",
    "MixtureSection",
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
    "load_params",
    "load_sections",
]
