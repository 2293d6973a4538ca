"""The model registry :data:`MODELS` (filled by the package) and :func:`build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from xrdid.learn.models.base import XRDModel

MODELS: dict[str, type[XRDModel]] = {}
"""Model classes by name; :func:`build_model` is the way to instantiate them."""


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_model(
    name: str, n_points: int, n_classes: int, options: Mapping[str, Any] | None = None, **kwargs: Any
) -> XRDModel:
    """Build a registered model; ``build_model(**model.config)`` rebuilds one.

    Parameters
    ----------
    name : a key of :data:`MODELS`.
    n_points : input length (the 2θ grid's number of points).
    n_classes : number of outputs.
    options, **kwargs : constructor options of that model (merged, kwargs win); unknown
        options raise ``ValueError``. The model's ``config`` records every option with its
        value, defaults included.

    Examples
    --------
    >>> m = build_model("wang", 1626, 12, conv_layers=5)
    >>> m.config["name"], m.config["n_points"], m.config["options"]["conv_layers"], m.config["options"]["dense"]
    ('wang', 1626, 5, [120, 84])
    >>> build_model(**m.config).config == m.config
    True
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    opts = {**(options or {}), **kwargs}
    try:
        bound = inspect.signature(cls.__init__).bind(None, n_points, n_classes, **opts)
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    bound.apply_defaults()
    resolved = {k: _jsonable(v) for k, v in bound.arguments.items() if k not in ("self", "n_points", "n_classes")}
    model = cls(int(n_points), int(n_classes), **resolved)
    model._config = {"name": name, "n_points": int(n_points), "n_classes": int(n_classes), "options": resolved}
    return model
