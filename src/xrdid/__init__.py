"""xrdid: identify materials from measured powder X-ray diffraction patterns.

The package is layered; each layer imports only from the layers before it:

``errors`` → ``config`` (params, grid) → ``xrd`` (physics, no torch) → ``data`` (library,
patterns, augmentation) → ``learn`` (models, training, metrics) → ``identify`` (identifier,
explanations) → ``ops`` (MLflow, Optuna, benchmarks) → ``stages`` (one per ``dvc.yaml`` stage)
→ ``cli``.

The names below are the public API; each is imported on first use, so ``import xrdid`` stays
light (no torch, pymatgen or MLflow until a name that needs them is touched).

Examples
--------
>>> import xrdid
>>> xrdid.Grid(5.0, 50.0, 4501).step
0.01
>>> "Identifier" in xrdid.__all__
True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "InputError": "xrdid.errors",
    "Grid": "xrdid.config",
    "load_params": "xrdid.config",
    "Crystal": "xrdid.xrd.crystal",
    "reflections": "xrdid.xrd.diffraction",
    "Pattern": "xrdid.xrd.measured",
    "fft_denoise": "xrdid.xrd.denoise",
    "build_noise_bank": "xrdid.xrd.noise",
    "Library": "xrdid.data.library",
    "build_library": "xrdid.data.library",
    "PatternSet": "xrdid.data.patterns",
    "simulate_library": "xrdid.data.patterns",
    "Augmenter": "xrdid.data.augment",
    "MeasuredSet": "xrdid.data.measured_set",
    "build_model": "xrdid.learn.models",
    "load_model": "xrdid.learn.models",
    "TrainConfig": "xrdid.learn.train",
    "fit": "xrdid.learn.train",
    "predict_proba": "xrdid.learn.inference",
    "topk_accuracy": "xrdid.learn.metrics",
    "search_match": "xrdid.learn.baselines",
    "Identifier": "xrdid.identify.identifier",
    "load_identifier": "xrdid.ops.registry",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'xrdid' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
