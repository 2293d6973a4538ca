"""The ``tune`` settings of ``params.yaml`` and the search space they describe.

A space entry is a list (categorical), a mapping ``{low, high[, step][, log]}`` or a scalar
(fixed). :func:`suggest` draws a configuration from it; ``_route`` splits one into the data
(:data:`DATA_PARAMS`), training (``TrainConfig`` fields) and model options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

DATA_PARAMS = ("ratio",)
"""Searched names that choose the training data; TrainConfig fields go to training, the rest to the model."""


@dataclass
class TuneSettings:
    """The ``tune`` section of ``params.yaml``.

    Examples
    --------
    >>> s = TuneSettings.from_params({"pruner": "hyperband", "space": {"epochs": [5, 10]}})
    >>> s.pruner, s.objective, s.max_epochs()
    ('hyperband', 'validation', 10)
    """

    study: str = "xrdid"
    n_trials: int = 20
    storage: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "validation"
    tie_break: float = 1e-3
    model: str = "wang"
    space: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 3
    register: bool = False
    threads: int | None = None
    out: str = "reports/tune"
    ablation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in ("validation", "measured"):
            raise ValueError(f"tune.objective must be validation or measured, got {self.objective!r}")
        if self.pruner not in ("median", "hyperband", "none"):
            raise ValueError(f"tune.pruner must be median, hyperband or none, got {self.pruner!r}")
        if self.sampler not in ("tpe", "random"):
            raise ValueError(f"tune.sampler must be tpe or random, got {self.sampler!r}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> TuneSettings:
        """Build from the ``tune`` mapping; unknown keys raise ``ValueError`` (typos would pass silently)."""
        section = dict(section or {})
        unknown = sorted(set(section) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown tune settings: {', '.join(unknown)}")
        return cls(**{k: v for k, v in section.items() if v is not None or k in ("storage", "threads")})

    def max_epochs(self) -> int | None:
        """The largest ``epochs`` the space can draw (Hyperband's maximum resource)."""
        spec = self.space.get("epochs")
        return None if spec is None else int(_bounds(spec)[1])


def _bounds(spec: Any) -> tuple[float, float]:
    """Smallest and largest value a space entry can take."""
    if isinstance(spec, Mapping):
        return float(spec["low"]), float(spec["high"])
    if isinstance(spec, (list, tuple)):
        return float(min(spec)), float(max(spec))
    return float(spec), float(spec)


def suggest(trial: optuna.trial.BaseTrial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draw one configuration from a space of the ``tune.space`` form.

    An entry is a list (categorical), a mapping ``{low, high[, step][, log]}`` (integers when
    ``low`` and ``high`` are, floats otherwise) or a scalar (fixed, not searched).

    Examples
    --------
    >>> import optuna
    >>> space = {"ratio": {"low": 5, "high": 40, "step": 5}, "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    ...          "batch_size": [32, 64], "dropout": 0.2}
    >>> suggest(optuna.trial.FixedTrial({"ratio": 10, "lr": 1e-3, "batch_size": 64}), space)
    {'ratio': 10, 'lr': 0.001, 'batch_size': 64, 'dropout': 0.2}
    """
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, (list, tuple)):
            values[name] = trial.suggest_categorical(name, list(spec))
        elif isinstance(spec, Mapping):
            low, high = spec["low"], spec["high"]
            log_scale = bool(spec.get("log", False))
            if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
                values[name] = trial.suggest_int(name, low, high, step=int(spec.get("step", 1)), log=log_scale)
            else:
                step = spec.get("step")
                values[name] = trial.suggest_float(name, float(low), float(high),
                                                   step=None if step is None else float(step), log=log_scale)
        else:
            values[name] = spec
    return values


def _route(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a configuration into data (ratio), training (TrainConfig fields) and model options."""
    from xrdid.learn.train import TrainConfig

    train_fields = {f.name for f in fields(TrainConfig)}
    data = {k: v for k, v in values.items() if k in DATA_PARAMS}
    train = {k: v for k, v in values.items() if k in train_fields}
    model = {k: v for k, v in values.items() if k not in DATA_PARAMS and k not in train_fields}
    return data, train, model
