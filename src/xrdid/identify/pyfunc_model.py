"""The MLflow pyfunc flavour of an :class:`xrdid.identify.identifier.Identifier`, logged as model code.

MLflow stores this file with the model and runs it on load ("models from code"), so nothing is
pickled: the network is rebuilt from the safetensors config in the ``identifier`` artifact.
Input: patterns on the model's grid, ``(n, n_points)`` float32. Output: one
``{"candidates": [{"id", "formula", "probability"}, ...], "in_library", "warnings", "evidence"}``
per row, candidates best first (``evidence``: :func:`xrdid.identify.evidence.peak_evidence`);
the parameter ``top`` (default 5) sets how many. With the parameter ``mixture`` (true) each
answer also carries ``phases`` (``id``, ``formula``, ``weight_fraction``, ``confidence``, ...,
best first) and ``residual_share``, found by :class:`xrdid.identify.mixture.MixtureSearch` over
the library the model carries (``max_phases``, default 4, bounds them). The parameters
``elements`` and ``require_elements`` (comma-separated symbols, e.g. ``"Fe,C,O"``) are the chemistry
filter of ``xrdid predict --elements / --require-elements``: only the entries made of those elements
and holding these are ranked, and may be phases.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from xrdid.errors import InputError
from xrdid.identify.chemistry import parse_elements
from xrdid.identify.identifier import check_top
from xrdid.identify.mixture import MixtureSearch
from xrdid.identify.open import load_folder


_KEEP_RESTRICTED = 8  # chemistry filters whose restricted copies a served model keeps


class IdentifierModel(PythonModel):
    """Ranks library entries for patterns on the grid (see the module docstring)."""

    def load_context(self, context: Any) -> None:

        self.identifier = load_folder(context.artifacts["identifier"])
        # loaded once here, so that the copies a chemistry filter makes share them
        self.identifier.profiles()
        self.identifier.element_table
        self._mixture: MixtureSearch | None = None  # built at the first request that asks for phases
        # copies restricted by a chemistry filter, the latest few reused: a broad filter over a large open
        # library copies much of its index
        self._restricted: dict[tuple[frozenset[str], frozenset[str]], Any] = {}

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would reinterpret them
        """Ranked candidates of each row; a bad row or ``top`` is the client's fault.

        ``top`` follows the CLI's rule and message (:func:`~xrdid.identify.identifier.check_top`):
        an integer of at least 1, larger ones meaning the whole library. A bad request raises
        :class:`MlflowException` ``INVALID_PARAMETER_VALUE``, which the scoring server answers
        with a 400 and the reason (any other exception gets a generic "unexpected error").
        """
        try:
            params = params or {}
            top = check_top(params.get("top", 5))
            X = np.atleast_2d(np.asarray(getattr(model_input, "values", model_input), dtype=np.float32))
            if X.size == 0:
                raise ValueError("no patterns given")
            identifier = self.identifier
            elements, required = (parse_elements(params.get(k), k) for k in ("elements", "require_elements"))
            if elements or required:  # a copy restricted for this request: the loaded model stays whole
                key = (elements, required)
                if key not in self._restricted:
                    if len(self._restricted) >= _KEEP_RESTRICTED:
                        self._restricted.pop(next(iter(self._restricted)))
                    self._restricted[key] = copy.copy(identifier).restrict(elements, required)
                identifier = self._restricted[key]
            answers = identifier.identify(X, None, top)
            if params.get("mixture"):
                if self._mixture is None:
                    self._mixture = MixtureSearch.for_identifier(self.identifier)
                # a shallow copy with this request's filter and limit (the settings check it, with the CLI's message)
                search = self._mixture.restrict(elements, required)
                search.settings = replace(search.settings, max_phases=params.get("max_phases", 4))
                for answer, found in zip(answers, search.fit(X)):
                    answer.update(phases=found["phases"], residual_share=found["residual_share"])
            return answers
        except (InputError, ValueError, TypeError) as exc:  # wrong length, NaN, strings, top=0
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


mlflow.models.set_model(IdentifierModel())
