"""The MLflow model registry: log an identifier, register it, move the champion alias, pull it back."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdid.config import Grid
from xrdid.errors import InputError
from xrdid.identify.identifier import IDENTIFIER_FILE, Identifier
from xrdid.identify.open import load_folder
from xrdid.learn.models import save_model
from xrdid.ops.tracking import git_commit, resolve_uri

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


log = logging.getLogger(__name__)
CHAMPION = "champion"


def log_identifier(
    model: Any,
    ids: list[str],
    library_dir: str | Path,
    params: Mapping[str, Any],
    *,
    patterns_dir: str | Path | None = None,
    temperature: float = 1.0,
    novelty: Mapping[str, Any] | None = None,
    input_example: np.ndarray | None = None,
    name: str = "model",
) -> str:
    """Log ``model`` as an MLflow pyfunc identifier in the active run; returns its model URI.

    The model is stored as safetensors plus its config (no pickle) with the library index in
    class order, the preprocessing and, when ``patterns_dir`` is given, the simulated patterns.
    Its signature takes ``(n, n_points)`` float32 patterns on the grid and a ``top`` parameter.
    """
    import mlflow

    grid = Grid.from_params(params["grid"])
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="xrdid-log-") as tmp:
        weights = Path(tmp) / "weights.safetensors"
        save_model(model, weights, {"ids": json.dumps(list(ids)), "grid": json.dumps(grid.to_dict())})
        provenance = {"run_id": run.info.run_id if run else "", "git_commit": git_commit()}
        folder = Identifier.build(Path(tmp) / "identifier", weights, library_dir, patterns_dir, params,
                                  temperature=temperature, novelty=novelty, provenance=provenance)
        identifier = load_folder(folder)
        identifier.write_provenance(library_sha256=json.loads((folder / "identifier.json").read_text())["library_sha256"])
        return log_identifier_folder(folder, grid, input_example, name)


def log_identifier_folder(folder: str | Path, grid: Grid, input_example: np.ndarray | None = None,
                          name: str = "model") -> str:
    """Log an identifier folder (a classifier's or an open-library one) as an MLflow pyfunc model; its URI.

    Its signature takes ``(n, n_points)`` float32 patterns on ``grid`` and the parameters ``top``,
    ``mixture``, ``max_phases`` and the chemistry filter's ``elements`` and ``require_elements``.
    """
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    import xrdid

    # imported here, not at the top: importing it defines an MLflow model, which warns on stderr
    from xrdid.identify import pyfunc_model

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, grid.n_points))]),
        params=ParamSchema([ParamSpec("top", "long", 5), ParamSpec("mixture", "boolean", False),
                            ParamSpec("max_phases", "long", 4), ParamSpec("elements", "string", ""),
                            ParamSpec("require_elements", "string", "")]),
    )
    example = np.zeros((1, grid.n_points), np.float32) if input_example is None else input_example
    with tempfile.TemporaryDirectory(prefix="xrdid-log-") as tmp:
        if Path(folder).name != "identifier":  # MLflow stores a folder artifact under its own name
            folder = shutil.copytree(folder, Path(tmp) / "identifier")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=pyfunc_model.__file__,  # models from code: MLflow imports the file, never unpickles
            artifacts={"identifier": str(folder)},
            code_paths=[str(Path(xrdid.__file__).parent)],
            signature=signature,
            input_example=np.asarray(example, np.float32)[:1],
            pip_requirements=_requirements(),
        )
    return info.model_uri


def _requirements() -> list[str]:
    """The serving environment: the packages the identifier imports, at the installed versions."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "numpy", "pandas", "scipy", "safetensors", "tqdm")]


def champion(name: str) -> Any | None:
    """The version holding the ``champion`` alias of registered model ``name``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _score(version: Any) -> tuple[float, float]:
    return float(version.tags.get("top1", "nan")), float(version.tags.get("top5", "nan"))


def register(model_uri: str, name: str, test_set: str, scores: Mapping[str, float]) -> tuple[Any, bool]:
    """Add a version of ``name``; move ``champion`` to it only if it beats the current one.

    The version records ``test_set`` (what the scores were measured on) and ``top1``..``top5``.
    It beats the champion when both were scored on the same test set and its Top-1 is higher
    (ties broken by Top-5); a champion scored on another test set is kept (``xrdid promote``
    moves the alias by hand). Without a champion the new version becomes one; its
    ``champion_decision`` tag says so ("first version: champion by default"), not "no champion
    yet", which read as if the version holding the alias were none.
    """
    import mlflow
    from mlflow import MlflowClient

    tags = {"test_set": test_set, **{k: f"{float(v):.6f}" for k, v in scores.items()}}
    version = mlflow.register_model(model_uri, name, tags=tags)
    current = champion(name)
    new = (float(scores["top1"]), float(scores.get("top5", scores["top1"])))
    if current is None:
        first = str(version.version) == "1"
        promote, why = True, ("first version" if first else "no version held the alias") + ": champion by default"
    elif current.tags.get("test_set") != test_set:
        promote, why = False, f"champion v{current.version} was scored on another test set"
    elif new > _score(current):
        promote, why = True, f"beats champion v{current.version} {_score(current)}"
    else:
        promote, why = False, f"does not beat champion v{current.version} {_score(current)}"
    client = MlflowClient()
    client.set_model_version_tag(name, version.version, "champion_decision", why)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    log.info("registered %s v%s (%s): %s", name, version.version, "champion" if promote else "kept", why)
    return version, promote


def promote(name: str, version: str | int) -> None:
    """Move the ``champion`` alias of ``name`` to ``version`` by hand."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.get_model_version(name, str(version))  # raises if it does not exist
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "champion_decision", "promoted by hand")


def test_set_of(params: Mapping[str, Any], metrics: Mapping[str, Any], library_dir: str | Path,
                augmented_dir: str | Path) -> tuple[str, dict[str, float]]:
    """What the pipeline's model is judged on, and its scores there.

    The measured test set when ``metrics.json`` has one (identified by the labels file's and the
    library's hashes), else the synthetic validation split (identified by its labels' hash). The
    library counts by its entries (ids and CIF hashes, in order), so columns that a later version
    adds to the index do not start a new comparison.
    """
    with open(Path(library_dir) / "index.csv", newline="") as handle:
        entries = "\n".join(f"{row['id']},{row['sha256']}" for row in csv.DictReader(handle))
    library = hashlib.sha256(entries.encode()).hexdigest()[:12]
    if "measured" in metrics:
        labels = Path(params["evaluate"]["measured"]["labels"])
        key = f"measured:{hashlib.sha256(labels.read_bytes()).hexdigest()[:12]}:library:{library}"
        table = metrics["measured"]["cnn"]
    else:
        val = hashlib.sha256(Path(augmented_dir, "val", "y.npy").read_bytes()).hexdigest()[:12]
        key = f"validation:{val}:library:{library}"
        table = metrics["validation"]["cnn"]
    return key, {f"top{k}": float(table[f"top{k}"]) for k in range(1, 6)}


def download_identifier(uri: str, target: str | Path) -> Path:
    """Copy the identifier folder of an MLflow model (``models:/...``, ``runs:/...``) into ``target``.

    For a registered model the registry's name, version and source run are added to the
    folder's provenance, so every prediction made from it says where it came from.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(resolve_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/artifacts/identifier",
                                                         dst_path=str(target)))
        registered = _registry_version(uri)
    except (MlflowException, OSError) as exc:
        raise InputError(uri, f"cannot fetch the model ({str(exc).splitlines()[0]})") from exc
    if not (local / IDENTIFIER_FILE).is_file():
        raise InputError(uri, "the model carries no xrdid identifier")
    spec = json.loads((local / IDENTIFIER_FILE).read_text())
    spec["provenance"].update({"source_uri": uri, **registered})
    (local / IDENTIFIER_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    return local


def _registry_version(uri: str) -> dict[str, str]:
    """``model_name`` and ``model_version`` of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI."""
    from mlflow import MlflowClient

    if not uri.startswith("models:/"):
        return {}
    ref = uri[len("models:/"):].strip("/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, number = ref.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        return {}  # a logged model id (models:/m-...), not a registry entry
    return {"model_name": name, "model_version": str(version.version)}


def pull(uri: str, to: str | Path) -> Path:
    """Copy a registered model and its library into a self-contained folder for offline use.

    Examples
    --------
    >>> pull("models:/xrdid-default@champion", "champion")  # doctest: +SKIP
    PosixPath('champion')
    """
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise InputError(to, "destination exists and is not empty")
    with tempfile.TemporaryDirectory(prefix="xrdid-pull-") as tmp:
        folder = download_identifier(uri, tmp)
        load_folder(folder)  # refuse to write a folder that would not load
        shutil.copytree(folder, to, dirs_exist_ok=True)
    return to


def load_identifier(uri: str | Path) -> Identifier:
    """An identifier folder, an MLflow model folder, or a ``models:/`` / ``runs:/`` URI.

    A URI's model is downloaded to a temporary folder, read into memory and the folder deleted,
    also when loading fails: nothing is left behind in the temporary directory.
    """
    local = Path(uri)
    if local.is_dir():
        if (local / IDENTIFIER_FILE).is_file():
            return load_folder(local)
        if (local / "artifacts" / "identifier" / IDENTIFIER_FILE).is_file():
            return load_folder(local / "artifacts" / "identifier")
        raise InputError(local, "neither an identifier folder nor an MLflow model folder of xrdid")
    if "://" not in str(uri) and ":/" not in str(uri):
        raise InputError(uri, "no such model folder")
    with tempfile.TemporaryDirectory(prefix="xrdid-model-") as target:
        return load_folder(download_identifier(str(uri), target)).detach()
