"""FFT denoising (xrdid.xrd.denoise): the published rule, its units, the scale-free variant, `xrdid denoise`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from xrdid.cli import main
from xrdid.xrd.denoise import fft_denoise, noise_level
from xrdid.xrd.measured import Pattern

N = 4801
X = np.linspace(2.0, 50.0, N)
CLEAN = 1000 * np.exp(-0.5 * ((X - 20.0) / 0.5) ** 2) + 50 * np.exp(-0.5 * ((X - 35.0) / 0.8) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_peak_is_denoised_and_closer_to_truth(seed: int) -> None:
    noisy = CLEAN + np.random.default_rng(seed).normal(0, 10.0, N)
    result = fft_denoise(noisy)  # the published rule: cutoff 200, threshold 1 (absolute)
    assert result.denoised is True
    assert result.level == pytest.approx(10.0 * np.sqrt(np.pi * N) / 2, rel=0.05)
    rmse_before = np.sqrt(np.mean((noisy - CLEAN) ** 2))
    rmse_after = np.sqrt(np.mean((result.values - CLEAN) ** 2))
    assert rmse_after < rmse_before / 3


def test_clean_pattern_is_returned_unchanged() -> None:
    result = fft_denoise(CLEAN, relative=True, threshold=0.01)
    assert result.denoised is False and result.level < 0.01
    assert_array_equal(result.values, CLEAN)


@pytest.mark.parametrize("sigma", [0.5, 3.0, 20.0])
def test_level_units(sigma: float) -> None:
    """Absolute level = mean |rfft| = σ √(πN)/2 for white noise; relative = σ / max."""
    rng = np.random.default_rng(int(sigma * 10))
    noise = rng.normal(0, sigma, (8, N))
    assert_allclose(noise_level(noise).mean(), sigma * np.sqrt(np.pi * N) / 2, rtol=0.03)
    rows = noise + 1000.0
    assert_allclose(noise_level(rows, relative=True), sigma / rows.max(axis=1), rtol=0.05)


def test_rows_are_independent() -> None:
    rng = np.random.default_rng(3)
    rows = np.stack([CLEAN, CLEAN + rng.normal(0, 20, N), CLEAN * 2])
    batch = fft_denoise(rows, threshold=0.005, relative=True)
    assert batch.denoised.tolist() == [False, True, False]
    for row, values, level in zip(rows, batch.values, batch.level):
        single = fft_denoise(row, threshold=0.005, relative=True)
        assert_allclose(single.values, values)
        assert single.level == pytest.approx(level)


def test_relative_level_is_scale_free_absolute_is_not() -> None:
    noisy = CLEAN + np.random.default_rng(4).normal(0, 10.0, N)
    assert noise_level(noisy * 100, relative=True) == pytest.approx(noise_level(noisy, relative=True))
    assert noise_level(noisy * 100) == pytest.approx(100 * noise_level(noisy))


def test_detrend_removes_end_jump_leakage() -> None:
    ramp = np.linspace(500.0, 50.0, N)  # the FFT sees a 450-count jump at the wrap-around
    noisy = ramp + np.random.default_rng(5).normal(0, 1.0, N)
    assert noise_level(noisy, detrend=False) > 5 * noise_level(noisy, detrend=True)
    result = fft_denoise(noisy, threshold=1e9)
    assert result.denoised is False
    kept = fft_denoise(noisy, threshold=0.0)
    assert kept.denoised is True
    assert_allclose(kept.values[[0, -1]], ramp[[0, -1]], atol=3.0)  # no ringing at the ends


def test_cutoff_past_spectrum_and_bad_cutoff() -> None:
    short = np.random.default_rng(6).normal(0, 1.0, 100)
    result = fft_denoise(short, cutoff=1000, threshold=0.0)
    assert result.level == 0.0 and result.denoised is False
    with pytest.raises(ValueError, match="cutoff"):
        fft_denoise(short, cutoff=0)
    with pytest.raises(ValueError, match="shape"):
        fft_denoise(np.zeros((2, 2, 2)))


def test_cli_denoise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "noisy_Cu-Ka1.xy"
    counts = np.random.default_rng(7).poisson(CLEAN + 20).astype(float)
    np.savetxt(path, np.column_stack([X, counts]))
    out = tmp_path / "clean.xy"
    args = ["denoise", str(path), "--cutoff", "200", "--threshold", "1", "--absolute"]
    assert main([*args, "--json", "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["denoised"] is True and record["noise_level"] > 1 and record["cutoff"] == 200
    assert len(record["intensity"]) == N and record["wavelength"] == pytest.approx(1.54056)
    written = Pattern.read(out)
    assert_allclose(written.intensity, record["intensity"], atol=1e-5)
    assert main([*args[:2], "--threshold", "1e12"]) == 0
    assert "left as is" in capsys.readouterr().out


def test_cli_denoise_params_and_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("denoise: {cutoff: 150, threshold: 0.5, relative: true}\n")
    path = tmp_path / "flat.xy"
    np.savetxt(path, np.column_stack([X, np.full(N, 100.0)]))
    assert main(["denoise", str(path), "--json", "--params", str(params)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["cutoff"], record["threshold"], record["relative"]) == (150, 0.5, True)
    assert record["denoised"] is False
    bad = tmp_path / "bad.xy"
    bad.write_text("1\n2\n")
    assert main(["denoise", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err
