"""Baselines beside the CNN: cosine search-match and five classical classifiers."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from xrdid.xrd.preprocess import rolling_background

if TYPE_CHECKING:
    from xrdid.config import Grid


log = logging.getLogger(__name__)
def search_match(
    X: np.ndarray,
    covered: np.ndarray,
    profiles: np.ndarray,
    grid: Grid,
    smooth: float = 0.05,
    subtract_background: bool = True,
) -> np.ndarray:
    """Cosine similarity (n, n_entries) of measured rows against simulated profiles.

    Parameters
    ----------
    X, covered : measured rows on the grid and the points their scans cover.
    profiles : (n_entries, n_points) simulated profiles.
    grid : the grid (for the smoothing width).
    smooth : Gaussian σ in degrees applied to both sides, so that small peak shifts still overlap.
    subtract_background : remove a rolling-ball background (measured rows only).
    """
    X = np.asarray(X, dtype=np.float64)
    if subtract_background:
        X = np.clip(X - rolling_background(X, grid.step), 0, None)
    sigma = smooth / grid.step
    P = np.asarray(profiles, dtype=np.float64)
    if sigma > 0:
        X = ndimage.gaussian_filter1d(X, sigma, axis=1, mode="constant")
        P = ndimage.gaussian_filter1d(P, sigma, axis=1, mode="constant")
    X = X * covered
    # Only the covered points count: the profile's norm is taken over each row's coverage.
    dots = X @ P.T
    norms = np.sqrt(covered.astype(np.float64) @ (P**2).T) * np.linalg.norm(X, axis=1, keepdims=True)
    return dots / np.maximum(norms, 1e-12)


CLASSICAL = ("naive_bayes", "knn", "logistic_regression", "random_forest", "svm")


def pool_features(X: np.ndarray, factor: int) -> np.ndarray:
    """Mean-pool rows by ``factor`` points and divide by the row maximum (classical features)."""
    X = np.asarray(X, dtype=np.float32)
    n = X.shape[1] // factor * factor
    pooled = X[:, :n].reshape(len(X), -1, factor).mean(axis=2)
    return pooled / np.maximum(pooled.max(axis=1, keepdims=True), 1e-12)


def classical_scores(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    n_classes: int,
    pool: int = 10,
    max_train: int = 20000,
    seed: int = 0,
    models: tuple[str, ...] = CLASSICAL,
) -> dict[str, np.ndarray]:
    """Train each classical model on (pooled) augmented spectra and score the test rows.

    Returns a score matrix (n_test, n_classes) per model; higher ranks first. Naive Bayes,
    kNN, logistic regression and random forest give probabilities; the linear SVM gives
    one-vs-rest decision values (ranking by them is what Top-k needs; Platt scaling would
    add a five-fold refit for nothing).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)
    if len(y_train) > max_train:
        pick = np.sort(rng.choice(len(y_train), max_train, replace=False))
        X_train, y_train = X_train[pick], y_train[pick]
    F_train = pool_features(X_train, pool)
    F_test = pool_features(X_test, pool)
    factories = {
        "naive_bayes": lambda: GaussianNB(),
        "knn": lambda: KNeighborsClassifier(n_neighbors=5, weights="distance"),
        "logistic_regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0)),
        "random_forest": lambda: RandomForestClassifier(n_estimators=200, n_jobs=2, random_state=seed),
        "svm": lambda: make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=2000, random_state=seed)),
    }
    scores = {}
    for name in tqdm(models, desc="classical", unit="model"):
        start = time.perf_counter()
        model = factories[name]().fit(F_train, y_train)
        raw = model.decision_function(F_test) if name == "svm" else model.predict_proba(F_test)
        # Classes absent from the subsample get no column: put them last.
        full = np.full((len(F_test), n_classes), -np.inf)
        full[:, model.classes_] = raw
        scores[name] = full
        log.info("evaluate: %s trained in %.1f s", name, time.perf_counter() - start)
    return scores
