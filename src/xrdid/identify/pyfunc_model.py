"""The MLflow pyfunc flavour of an :class:`xrdid.identify.identifier.Identifier`, logged as model code.

MLflow stores this file with the model and runs it on load ("models from code"), so nothing is
pickled: the network is rebuilt from the safetensors config in the ``identifier`` artifact.
Input: patterns on the model's grid, ``(n, n_points)`` float32. Output: one
``{"candidates": [{"id", "formula", "probability"}, ...], "in_library", "warnings", "evidence"}``
per row, candidates best first (``evidence``: :func:`xrdid.identify.evidence.peak_evidence`);
the parameter ``top`` (default 5) sets how many.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from xrdid.errors import InputError
from xrdid.identify.identifier import check_top
from xrdid.identify.open import load_folder


class IdentifierModel(PythonModel):
    """Ranks library entries for patterns on the grid (see the module docstring)."""

    def load_context(self, context: Any) -> None:

        self.identifier = load_folder(context.artifacts["identifier"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would reinterpret them
        """Ranked candidates of each row; a bad row or ``top`` is the client's fault.

        ``top`` follows the CLI's rule and message (:func:`~xrdid.identify.identifier.check_top`):
        an integer of at least 1, larger ones meaning the whole library. A bad request raises
        :class:`MlflowException` ``INVALID_PARAMETER_VALUE``, which the scoring server answers
        with a 400 and the reason (any other exception gets a generic "unexpected error").
        """
        try:
            top = check_top((params or {}).get("top", 5))
            X = np.atleast_2d(np.asarray(getattr(model_input, "values", model_input), dtype=np.float32))
            if X.size == 0:
                raise ValueError("no patterns given")
            return self.identifier.identify(X, None, top)
        except (InputError, ValueError, TypeError) as exc:  # wrong length, NaN, strings, top=0
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


mlflow.models.set_model(IdentifierModel())
