"""Calibration: temperature scaling, ECE, reliability plot, and the not-in-library rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from xrdid.config import Grid
from xrdid.learn.baselines import search_match
from xrdid.learn.calibration import (
    REASONS,
    Evidence,
    NoveltyRule,
    candidate_cosine,
    expected_calibration_error,
    fit_temperature,
    novelty_evidence,
    peak_fraction,
    reliability_plot,
    softmax,
)
from xrdid.learn.inference import predict_logits

GRID = Grid(5.0, 50.0, 901)


def _draw_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class per row drawn from its probabilities (vectorised inverse CDF)."""
    return np.minimum((rng.random((len(probs), 1)) > probs.cumsum(axis=1)).sum(axis=1), probs.shape[1] - 1)


def _peaks(centres: list[float], width: float = 0.08) -> np.ndarray:
    x = GRID.values
    return sum(np.exp(-0.5 * ((x - c) / width) ** 2) for c in centres)


# --------------------------------------------------------------------------- temperature and ECE


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at(true_t: float) -> None:
    rng = np.random.default_rng(1)
    logits = 2.0 * rng.normal(size=(20000, 8))
    y = _draw_labels(softmax(logits, true_t), rng)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.05)


def test_temperature_scaling_calibrates_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    logits = 3.0 * rng.normal(size=(20000, 10))
    y = _draw_labels(softmax(logits, 2.0), rng)  # the model's logits are twice too sharp
    t = fit_temperature(logits, y)
    before, after = expected_calibration_error(softmax(logits), y), expected_calibration_error(softmax(logits, t), y)
    assert before > 0.1 and after < 0.02
    # ranking unchanged: temperature never changes the predicted class
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_ece_of_perfectly_calibrated_probabilities_is_near_zero() -> None:
    rng = np.random.default_rng(3)
    probs = softmax(2.0 * rng.normal(size=(50000, 5)))
    y = _draw_labels(probs, rng)
    assert expected_calibration_error(probs, y) < 0.01


def test_ece_of_a_known_gap() -> None:
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0] * 6 + [1] * 4)  # confidence 0.9, accuracy 0.6
    assert_allclose(expected_calibration_error(probs, y), 0.3)
    assert_allclose(expected_calibration_error(probs, y, n_bins=1), 0.3)


def test_softmax_and_input_checks() -> None:
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert_allclose(softmax(z).sum(axis=1), 1.0)
    assert_allclose(softmax(z, 2.0), softmax(z / 2.0))
    assert_allclose(softmax(z + 100.0), softmax(z))  # shift invariant, no overflow
    with pytest.raises(ValueError, match="temperature"):
        softmax(z, 0.0)
    with pytest.raises(ValueError, match="labels out of range"):
        fit_temperature(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="need scores"):
        expected_calibration_error(z, np.array([0]))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_predict_logits_match_predict_proba(torch_one_thread: None) -> None:
    from xrdid.learn.inference import predict_proba
    from xrdid.learn.models import build_model

    model = build_model("xrdnet", 256, 4)
    X = np.random.default_rng(0).random((5, 256)) * 300  # raw counts: both normalise the rows
    assert_allclose(softmax(predict_logits(model, X, batch_size=2)), predict_proba(model, X), atol=1e-5)
    assert predict_logits(model, X[:0]).shape == (0, 4)


def test_reliability_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    logits = 3.0 * rng.normal(size=(500, 4))
    y = _draw_labels(softmax(logits, 2.0), rng)
    path = tmp_path / "reliability.png"
    reliability_plot({"T = 1": softmax(logits), "T = 2": softmax(logits, 2.0)}, y, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reliability_plot(softmax(logits), y, tmp_path / "single.png")
    assert (tmp_path / "single.png").stat().st_size > 1000


# --------------------------------------------------------------------------- evidence


def test_peak_fraction_separates_peaks_from_background() -> None:
    x = GRID.values
    rng = np.random.default_rng(5)
    crystal = _peaks([15, 22, 31]) + 0.3 * np.exp(-x / 10) + 0.01 * rng.normal(size=x.size)
    amorphous = np.exp(-0.5 * ((x - 22) / 4) ** 2) + 0.02 * rng.normal(size=x.size)  # one broad hump
    blank = 50 * np.exp(-x / 8) + 5 + 0.5 * rng.normal(size=x.size)
    pf = peak_fraction(np.stack([crystal, amorphous, blank]), None, GRID)
    assert pf[0] > 0.7 and pf[1] < 0.25 and pf[2] < 0.25
    # only covered points count: a strong peak outside the scan is ignored
    covered = x < 40
    with_outside = blank + 100 * _peaks([45])
    assert peak_fraction(with_outside[None], covered[None], GRID)[0] < 0.25


def test_candidate_cosine_is_search_match_of_the_chosen_entries() -> None:
    profiles = np.stack([_peaks([12, 20]), _peaks([15, 33]), _peaks([20, 40, 41])])
    X = np.stack([_peaks([12.02, 20.02]), _peaks([40, 41]) + 0.1])
    covered = np.ones(X.shape, bool)
    full = search_match(X, covered, profiles, GRID)
    cand = np.array([[0, 2], [1, 2]])
    assert_allclose(candidate_cosine(X, covered, profiles, cand, GRID), np.take_along_axis(full, cand, 1))
    assert_allclose(candidate_cosine(X, None, profiles, cand[:, 0], GRID), full[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="one candidate row per pattern"):
        candidate_cosine(X, None, profiles, np.array([0]), GRID)


def test_novelty_evidence_fields() -> None:
    profiles = np.stack([_peaks([12, 20]), _peaks([15, 33]), _peaks([20, 40, 41])])
    X = np.stack([_peaks([12, 20]), _peaks([40, 41])])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])  # row 2: the network picks the wrong entry
    ev = novelty_evidence(probs, X, None, profiles, GRID, batch_size=1)
    assert ev.top.tolist() == [0, 1] and ev.best_match.tolist() == [0, 2]
    assert_allclose(ev.top_probability, [0.9, 0.7])
    assert ev.cosine[0] > 0.99 and ev.cosine[1] < 0.1 and ev.best_cosine[1] > 0.7
    assert len(ev.subset(np.array([False, True]))) == 1
    with pytest.raises(ValueError, match="classes but the library"):
        novelty_evidence(probs[:, :2], X, None, profiles, GRID)


# --------------------------------------------------------------------------- the rule


def _validation_evidence(n: int = 4000, seed: int = 6) -> Evidence:
    rng = np.random.default_rng(seed)
    return Evidence(
        top=rng.integers(0, 50, n),
        top_probability=rng.beta(8, 1, n),
        cosine=rng.beta(6, 3, n),
        best_match=rng.integers(0, 50, n),
        best_cosine=rng.beta(7, 3, n),
        peak_fraction=rng.beta(9, 1, n),
    )


@pytest.mark.parametrize("rate", [0.02, 0.05, 0.1])
def test_rule_spends_its_false_flag_budget_on_validation(rate: float) -> None:
    ev = _validation_evidence()
    rule = NoveltyRule.fit(ev, false_flag_rate=rate, signal_rate=0.01)
    flagged = rule.flagged(ev)
    assert rate - 0.005 <= flagged.mean() <= rate
    assert rule.flags(ev)[:, REASONS.index("signal")].mean() == pytest.approx(0.01, abs=0.001)
    # the three scores share one quantile level: each flags a similar share alone
    alone = rule.flags(ev)[:, :3].mean(axis=0)
    assert alone.max() - alone.min() < 0.01
    assert rule.n_fit == len(ev) and rule.false_flag_rate == rate


def test_rule_reasons_and_json_round_trip() -> None:
    rule = NoveltyRule(min_probability=0.5, min_cosine=0.3, min_best_cosine=0.4, min_peak_fraction=0.35)
    ev = Evidence(np.array([0, 1, 2]), np.array([0.99, 0.2, 0.9]), np.array([0.9, 0.2, 0.8]), np.array([0, 1, 2]),
                  np.array([0.9, 0.3, 0.8]), np.array([0.95, 0.9, 0.1]))
    assert rule.flags(ev).tolist() == [[False] * 4, [True, True, True, False], [False, False, False, True]]
    reasons = rule.reasons(ev)
    assert reasons[0] == [] and len(reasons[1]) == 3 and "not in the library" in reasons[1][2]
    assert "little diffraction signal" in reasons[2][0]
    stored = json.loads(json.dumps(rule.to_dict()))
    assert NoveltyRule.from_dict({**stored, "added_in_a_later_version": 1}) == rule
    with pytest.raises(ValueError, match="signal_rate <= false_flag_rate"):
        NoveltyRule.fit(_validation_evidence(100), false_flag_rate=0.01, signal_rate=0.05)


def test_rule_flags_the_real_blank_holders(shared_data: Path) -> None:
    """The seven blank-holder scans are flagged against real crystalline patterns (RRUFF-236).

    The signal threshold is fitted, with the same 1 % rate as on validation spectra, on measured
    crystalline patterns; the blanks were never part of the fit.
    """
    from xrdid.xrd.preprocess import preprocess

    grid = Grid(5.0, 89.96, 2125)  # the RRUFF-236 profile's grid
    crystalline = sorted((shared_data / "rruff236" / "patterns").glob("*.xy"))[::4]
    blanks = sorted((shared_data / "noise" / "blanks").glob("*.xyd"))
    assert len(blanks) == 7 and len(crystalline) >= 30

    def evidence(files: list[Path]) -> Evidence:
        rows, masks = zip(*(preprocess(f, grid, "CuKa") for f in files))
        n = len(files)
        # probability and cosines as for a confidently identified pattern: only the signal decides
        return Evidence(np.zeros(n, int), np.ones(n), np.ones(n), np.zeros(n, int), np.ones(n),
                        peak_fraction(np.stack(rows), np.stack(masks), grid))

    ev_crystal = evidence(crystalline)
    rule = NoveltyRule.fit(ev_crystal, false_flag_rate=0.05, signal_rate=0.01)
    ev_blank = evidence(blanks)
    assert rule.flagged(ev_blank).all()
    assert rule.flags(ev_blank)[:, REASONS.index("signal")].all()
    assert ev_blank.peak_fraction.max() < 0.3 < 0.4 < ev_crystal.peak_fraction.min()
