"""The NCA map: measured patterns in a model's feature space, projected to 2-D and coloured by material."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xrdid.errors import InputError
from xrdid.identify.explain.cam import features

log = logging.getLogger(__name__)

__all__ = ["nca_map", "nca_plot"]


def nca_plot(
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    path: str | Path,
    names: Mapping[Any, str] | Sequence[str] | None = None,
    seed: int = 0,
    *,
    reference: tuple[np.ndarray, Sequence[Any] | np.ndarray] | None = None,
    title: str = "",
) -> np.ndarray:
    """A 2-D neighbourhood components analysis (NCA) map of feature vectors, coloured by material; PNG.

    NCA learns a linear projection under which each point's nearest neighbours share its
    class. A point whose class has no other member cannot have such a neighbour and would only
    add noise to the fit, so the projection is fitted on the points of the classes with at
    least two members, then applied to all:

    * ``reference`` (e.g. the CNN features of validation spectra of the same materials) joins
      the fit: a measured test set often holds one pattern per material (RRUFF-304 does), and
      the reference gives each such pattern neighbours of its own material. Reference points
      are drawn small and faint, the ``features`` large;
    * points whose class still has a single member are projected only and drawn hollow.

    When fewer than two classes have two members, PCA replaces NCA (said in the title).
    Features are standardised first (fitted on the same points). Up to 20 classes get a
    legend (``names`` maps labels to display names); more are drawn without one.

    Parameters
    ----------
    features : (n, d) e.g. :func:`features` of the measured patterns.
    labels : (n,) class of each row (ints or strings).
    path : PNG file to write.
    names : display names by label (mapping, or sequence indexed by integer labels).
    seed : NCA's random state.
    reference : optional ``(features_ref (m, d), labels_ref (m,))`` fitted along.
    title : figure title.

    Returns
    -------
    np.ndarray
        (n, 2) the embedded ``features``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> F = np.r_[rng.normal(0, 1, (10, 5)), rng.normal(3, 1, (10, 5))]
    >>> import tempfile, os
    >>> nca_plot(F, [0] * 10 + [1] * 10, os.path.join(tempfile.mkdtemp(), "nca.png")).shape
    (20, 2)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NeighborhoodComponentsAnalysis
    from sklearn.preprocessing import StandardScaler

    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if F.ndim != 2 or y.shape != (len(F),):
        raise ValueError(f"need features (n, d) and labels (n,), got {F.shape} and {y.shape}")
    if len(F) < 2:
        raise ValueError("need at least two feature vectors")
    if reference is not None:
        F_ref, y_ref = np.asarray(reference[0], dtype=np.float64), np.asarray(reference[1])
        if F_ref.ndim != 2 or F_ref.shape[1] != F.shape[1] or y_ref.shape != (len(F_ref),):
            raise ValueError("reference features must be (m, d) with m labels, d as the features")
    else:
        F_ref, y_ref = np.zeros((0, F.shape[1])), y[:0]
    F_all, y_all = np.r_[F_ref, F], np.r_[y_ref, y]
    classes, counts = np.unique(y_all, return_counts=True)
    fitted = np.isin(y_all, classes[counts >= 2])
    if (counts >= 2).sum() >= 2:
        method = "NCA"
        scaler = StandardScaler().fit(F_all[fitted])
        projection = NeighborhoodComponentsAnalysis(n_components=2, random_state=seed, max_iter=100)
        projection.fit(scaler.transform(F_all[fitted]), y_all[fitted])
    else:
        method = "PCA (NCA needs two classes with two or more points)"
        scaler = StandardScaler().fit(F_all)
        projection = PCA(n_components=2, random_state=seed).fit(scaler.transform(F_all))
    Z_all = projection.transform(scaler.transform(F_all))
    R, Z = Z_all[: len(F_ref)], Z_all[len(F_ref) :]
    single = ~fitted[len(F_ref) :]

    shown = list(dict.fromkeys(y.tolist() + y_ref.tolist()))
    cmap = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    color = {c: cmap(i % cmap.N) for i, c in enumerate(shown)}

    def name(c: Any) -> str:
        if names is None:
            return str(c)
        if isinstance(names, Mapping):
            return str(names.get(c, c))
        return str(names[int(c)])

    fig, ax = plt.subplots(figsize=(8.5 if len(shown) <= 20 else 6.5, 6), layout="constrained")
    if len(R):
        ax.scatter(R[:, 0], R[:, 1], s=8, c=[color[c] for c in y_ref.tolist()], alpha=0.35, lw=0)
    big = len(R) > 0
    for c in shown:
        rows = y == c
        if not rows.any():
            continue
        filled, hollow = rows & ~single, rows & single
        ax.scatter(Z[filled, 0], Z[filled, 1], c=[color[c]], s=60 if big else 36,
                   edgecolors="k" if big else "none", lw=0.8, label=name(c))  # fmt: skip
        if hollow.any():
            ax.scatter(Z[hollow, 0], Z[hollow, 1], facecolors="none", edgecolors=[color[c]], s=60 if big else 36,
                       lw=1.5, label=name(c) if not filled.any() else "_single")  # fmt: skip
    axis = method.split(" ")[0]
    ax.set(xlabel=f"{axis} 1", ylabel=f"{axis} 2")
    note = " · large: measured, small: reference" if big else ""
    note += " · hollow: only point of its class" if single.any() else ""
    ax.set_title((title + "\n" if title else "") + f"{method}{note}", fontsize=9)
    if len(shown) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Z


def nca_map(
    params: Mapping[str, Any],
    model_path: str | Path,
    patterns_dir: str | Path,
    augmented_dir: str | Path,
    out: str | Path,
    max_classes: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> tuple[int, int]:
    """The NCA map of the measured test set (``evaluate.measured``) in the model's feature space.

    Draws the ``max_classes`` materials with most patterns (seeded ties) and writes ``out``;
    returns (patterns drawn, materials drawn).
    """
    from xrdid.data.measured_set import MeasuredSet
    from xrdid.data.patterns import PatternSet
    from xrdid.data.splits import load_split
    from xrdid.learn.models import load_model

    patterns = PatternSet.load(patterns_dir)
    try:
        model = load_model(model_path)
    except (OSError, ValueError) as exc:
        raise InputError(model_path, f"cannot load the model ({exc})") from exc
    ids = _model_ids(model_path, model.n_classes, patterns.ids)
    test = MeasuredSet.from_params(params, ids, patterns.grid, progress)
    if test is None:
        labels = ((params.get("evaluate") or {}).get("measured") or {}).get("labels")
        raise InputError(labels or "evaluate.measured.labels", "no measured labels file: nothing to map")
    test = test.subset(test.y >= 0)
    if len(test.y) < 2:
        raise InputError(labels, "fewer than two measured patterns of library materials")
    # The materials with most patterns first, ties in a seeded random order.
    classes, counts = np.unique(test.y, return_counts=True)
    tie = np.random.default_rng(seed).permutation(len(classes))
    chosen = classes[np.lexsort((tie, -counts))][: max(max_classes, 1)]
    test = test.subset(np.isin(test.y, chosen))
    F = features(model, test.X)
    reference = None
    if (np.unique(test.y, return_counts=True)[1] >= 2).sum() < 2:
        try:
            X_val, y_val = load_split(augmented_dir, "val")
        except InputError:
            log.warning("explain: no augmented validation split at %s; the map falls back to PCA", augmented_dir)
        else:
            rows = np.flatnonzero(np.isin(y_val, chosen))
            rows = np.sort(np.concatenate([rows[y_val[rows] == c][:30] for c in chosen]))
            reference = (features(model, np.asarray(X_val[rows], np.float32)), y_val[rows])
    formula = {}
    index_csv = Path(patterns_dir).parent / "library" / "index.csv"
    if index_csv.is_file():
        import pandas as pd

        index = pd.read_csv(index_csv, dtype=str, keep_default_na=False)
        formula = dict(zip(index["id"], index.get("reduced_formula", index.get("formula", index["id"]))))
    names = {}
    for c in chosen:  # the formula helps where the id does not already start with it (CSD refcodes)
        extra = formula.get(ids[c], "")
        names[int(c)] = ids[c] if not extra or ids[c].startswith(extra) else f"{ids[c]} ({extra})"
    nca_plot(F, test.y, out, names, seed, reference=reference,
             title=f"{len(test.y)} measured patterns of {len(chosen)} materials, CNN features ({model.name})")
    return len(test.y), len(chosen)


def _model_ids(path: str | Path, n_classes: int, fallback: list[str]) -> list[str]:
    """Class ids stored with a trained model (``ids`` metadata), else the library order."""
    from xrdid.learn.models import read_metadata

    meta = read_metadata(path)
    ids = json.loads(meta["ids"]) if "ids" in meta else fallback
    if len(ids) != n_classes:
        raise InputError(path, f"model has {n_classes} classes but {len(ids)} library ids")
    return list(ids)
