"""Peak evidence (issue 18): an answer is "ok" only when the measured strongest peaks sit on the candidate's reflections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xrdid.cli import main
from xrdid.identify.evidence import (
    MeasuredPeaks,
    PeakRule,
    measured_peaks,
    peak_evidence,
    unexplained_message,
)
from xrdid.identify.names import short_id

CHAMPION = "models:/xrdid-default@champion"
WAVELENGTH = 1.54184  # CuKa, the grids' wavelength


def _two_theta(d: np.ndarray) -> np.ndarray:
    return np.degrees(2 * np.arcsin(WAVELENGTH / (2 * np.asarray(d, float))))


# ---------------------------------------------------------------------- the rule on synthetic peaks


def test_rule_explains_matching_and_strained_peaks_not_shifted_or_unsupported_ones() -> None:
    d = np.array([8.0, 2.0, 3.0, 2.5])
    refs, weights = _two_theta(d), np.array([100.0, 60.0, 40.0, 2.0])
    fwhm = np.full(4, 0.1)
    peaks = np.array([
        refs[0],                    # on its reflection
        _two_theta(d[1] * 1.008),   # a cell 0.8 % larger: 0.37° away, beyond half the FWHM
        _two_theta(d[2] * 1.03),    # 3 % off: no reflection of this phase
        refs[3],                    # on a reflection, but a 2 % one cannot make an 80 % peak
    ])  # fmt: skip
    height = np.array([100.0, 70.0, 50.0, 80.0])
    rule = PeakRule()
    found = rule.explain(peaks, height, fwhm, refs, weights)
    assert found.explained.tolist() == [True, True, False, False]
    shift = abs(peaks[1] - refs[1])
    assert rule.k_fwhm * fwhm[1] < shift <= found.tolerance[1]  # the strain term, not the width, explains it
    assert found.match.tolist()[:2] == [0, 1] and found.match[3] == 3  # the weak reflection is named, not enough
    assert found.simulated.tolist() == [100.0, 60.0, 0.0, 2.0]
    assert not rule.explain(peaks[1:2], height[1:2], fwhm[1:2], refs, weights * 0).explained.any()
    strict = PeakRule(strain=0.005)  # half the tolerated misfit: the strained peak is no longer explained
    assert strict.explain(peaks, height, fwhm, refs, weights).explained.tolist() == [True, False, False, False]
    wide = np.full(4, 1.0)  # a broad peak (nanocrystals): its half width covers the shift
    assert strict.explain(peaks, height, wide, refs, weights).explained[1]


def test_tolerance_follows_the_width_at_low_angle_and_the_strain_at_high_angle() -> None:
    rule = PeakRule(k_fwhm=0.5, strain=0.01)
    tol = rule.tolerance(np.array([8.0, 60.0]), np.array([0.3, 0.3]))
    assert tol[0] == pytest.approx(0.15)  # 2ε tanθ = 0.08° < 0.15°
    assert tol[1] == pytest.approx(np.degrees(2 * 0.01 * np.tan(np.radians(30))))


def test_measured_peaks_on_a_scan_with_background_noise_and_a_kalpha2_component() -> None:
    x = np.arange(5.0, 60.0, 0.01)
    peak = lambda c, w: np.exp(-0.5 * ((x - c) / w) ** 2)
    y = (300 * np.exp(-x / 15) + 80  # air scatter and a flat background
         + 2000 * (peak(25.0, 0.05) + 0.5 * peak(25.065, 0.05))  # Kα1 + Kα2, resolved on this grid
         + 900 * peak(33.0, 0.06) + 500 * peak(47.0, 0.08) + 30 * peak(52.0, 0.08))  # fmt: skip
    found = measured_peaks(x, np.random.default_rng(1).poisson(y).astype(float))
    assert found.two_theta[0] == pytest.approx(25.0, abs=0.02) and found.height[0] == 100
    judged = PeakRule().select(found)  # the Kα2 component belongs to its Kα1 peak; 52° is under 10 %
    assert judged.two_theta == pytest.approx([25.0, 33.0, 47.0], abs=0.02)
    top = 2000 * (1 + 0.5 * np.exp(-0.5 * (0.065 / 0.05) ** 2))  # Kα1 apex with the Kα2 tail under it
    assert judged.height[1:] == pytest.approx([100 * 900 / top, 100 * 500 / top], rel=0.1)
    assert judged.fwhm[1] == pytest.approx(2.355 * 0.06, rel=0.25)
    flat = measured_peaks(x, np.random.default_rng(2).poisson(np.full(x.size, 200.0)).astype(float))
    assert flat.two_theta.size == 0  # counting noise alone has no 4σ-prominent peak


def test_an_answer_without_measured_peaks_is_not_explained() -> None:
    evidence = {"candidate": "ABC_clean", "explained": False, "peaks": []}
    assert unexplained_message(evidence) == "no diffraction peak found to compare with ABC's reflections"
    assert PeakRule().select(MeasuredPeaks(np.zeros(0), np.zeros(0), np.zeros(0))).two_theta.size == 0


# ---------------------------------------------------------------------- with the tiny registered model


def _stick_scan(path: Path, grid_values: np.ndarray, two_theta: np.ndarray, intensity: np.ndarray) -> Path:
    """A measured-like scan rendered from reflections: Gaussian peaks, a background, counting noise."""
    x = grid_values
    profile = (intensity[:, None] * np.exp(-0.5 * ((x[None] - two_theta[:, None]) / 0.06) ** 2)).sum(axis=0)
    counts = np.random.default_rng(3).poisson(2000 * profile / profile.max() + 60 + 100 * np.exp(-x / 8))
    np.savetxt(path, np.column_stack([x, counts]))
    return path


def _force(monkeypatch: pytest.MonkeyPatch, n_classes: int, entry: int, p: float = 0.998) -> None:
    """A confidently wrong (or right) network: probability ``p`` on ``entry`` for every pattern."""
    from xrdid.identify.identifier import Identifier

    def probabilities(self: Identifier, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
        out = np.full((len(X), n_classes), (1 - p) / (n_classes - 1), dtype=np.float32)
        out[:, entry] = p
        return out

    monkeypatch.setattr(Identifier, "probabilities", probabilities)


def test_a_confident_answer_whose_reflections_miss_the_measured_peaks_is_not_ok(
        store: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from xrdid.ops.registry import load_identifier

    ident = load_identifier(CHAMPION)
    patterns = ident.patterns()
    rule = PeakRule()
    source = 0  # the scan is built from this entry's reflections
    refs, weights = patterns.peaks(patterns.rows([ident.ids[source]])[0])
    strongest = np.argsort(-weights)[:rule.n_peaks]

    def explained(entry: int) -> int:
        r, w = patterns.peaks(patterns.rows([ident.ids[entry]])[0])
        found = rule.explain(refs[strongest], weights[strongest], np.full(strongest.size, 0.14), r, w)
        return int(found.explained.sum())

    wrong = min((e for e in range(len(ident.ids)) if e != source), key=explained)  # the least alike entry
    assert explained(wrong) < strongest.size, "the tiny library's entries are too alike for this test"
    scan = _stick_scan(tmp_path / "other.xy", ident.grid.values, refs, weights)

    _force(monkeypatch, len(ident.ids), wrong)
    assert main(["predict", str(scan), "--model", CHAMPION, "--json", "--no-progress"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["candidates"][0]["id"] == ident.ids[wrong] and found["candidates"][0]["probability"] >= 0.99
    evidence = found["evidence"]
    assert found["in_library"] is False and evidence["explained"] is False
    assert evidence["candidate"] == ident.ids[wrong] and evidence["rule"] == rule.to_dict()
    missing = [p for p in evidence["peaks"] if not p["explained"]]
    assert missing and all(p["simulated"] < rule.min_ratio * p["height"] for p in missing)
    for p in missing:  # each unexplained peak is one of the source entry's reflections
        assert np.abs(refs - p["two_theta"]).min() < 0.1
    message = unexplained_message(evidence)
    assert message in found["warnings"] and f"not explained by {short_id(ident.ids[wrong])}'s reflections" in message

    assert main(["predict", str(scan), "--model", CHAMPION, "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].endswith("  [not in library?]") and out[2].startswith("  why: ") and message in out[2]

    _force(monkeypatch, len(ident.ids), source)  # the right entry explains the same scan
    assert main(["predict", str(scan), "--model", CHAMPION, "--json", "--no-progress"]) == 0
    right = json.loads(capsys.readouterr().out)
    assert right["evidence"]["explained"] is True and len(right["evidence"]["peaks"]) >= 3
    assert all(p["reflection"]["hkl"] and len(p["reflection"]["hkl"]) == 3 for p in right["evidence"]["peaks"])
    assert not any("not explained" in w for w in right["warnings"])


def test_peak_evidence_of_the_library_profiles_against_themselves(store: dict) -> None:
    """Every simulated profile is explained by its own entry's reflections (no false alarm on clean data)."""
    from xrdid.data.patterns import PatternSet

    patterns = PatternSet.load(store["dir"] / "patterns")
    found = peak_evidence(np.asarray(patterns.profiles), None, patterns.grid, patterns, range(len(patterns)))
    assert [f["explained"] for f in found] == [True] * len(patterns)
    assert [f["candidate"] for f in found] == patterns.ids
