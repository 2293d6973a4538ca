"""The universal synthetic benchmark generator (xrdid.data.synthetic) against the published procedure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from xrdid import cli
from xrdid.data.synthetic import (
    CHALLENGE27_PROCEDURE,
    DATASET500_PROCEDURE,
    NINE_GRID,
    SPLITS,
    Procedure,
    SyntheticConfig,
    generate,
    iter_chunks,
    make_config,
    plan_split,
    procedure_for,
    render,
    write_dataset,
)
from xrdid.errors import InputError

N = 800  # points of the crafted configs


@pytest.fixture(scope="module")
def small() -> SyntheticConfig:
    """Four classes: overlapping peaks, two height-1 peaks, a tiny peak, a lone peak."""
    return SyntheticConfig(
        n_points=N,
        positions=((150, 170, 600), (300, 500), (120, 400, 410, 700), (400,)),
        heights=((0.6, 1.0, 0.02), (1.0, 1.0), (0.3, 0.5, 1.0, 0.9), (1.0,)),
        boundary=100,
    )


def _hand_test_spectra(pos, hts, shift: int, dh: float, n: int) -> np.ndarray:
    """The 9 published test spectra of one class, built one by one with scipy."""
    rows = []
    for s, d in NINE_GRID:
        spikes = np.zeros(n)
        h = np.array(hts, dtype=float)
        if d:
            h = np.where(h == 1.0, h, np.clip(h + d * dh, 0, 2))
        spikes[np.clip(np.array(pos) + s * shift, 0, n - 1)] = h
        b = gaussian_filter1d(spikes, 2.0, mode="constant")
        rows.append(b / b.max())
    return np.array(rows)


# --- loader ----------------------------------------------------------------------------------


def test_loads_published_configs(shared_data: Path) -> None:
    path = shared_data / "schuetzke2022" / "dataset500.json"
    cfg = SyntheticConfig.from_json(path)
    assert (cfg.n_classes, cfg.n_points, cfg.boundary, cfg.max_peaks) == (500, 5000, 100, 10)
    assert cfg.n_peaks.min() == 2 and cfg.n_peaks.max() == 10
    assert cfg.positions[8] == (177, 3358) and cfg.heights[8] == (1.0, 0.857)
    assert procedure_for(cfg) is DATASET500_PROCEDURE
    assert json.dumps(cfg.to_dict()) == path.read_text()  # byte-exact round trip
    challenge = SyntheticConfig.from_json(shared_data / "schuetzke2022" / "challenge27.json")
    assert challenge.n_classes == 27 and procedure_for(challenge) is CHALLENGE27_PROCEDURE


def test_make_config_reproduces_dataset500(shared_data: Path) -> None:
    published = SyntheticConfig.from_json(shared_data / "schuetzke2022" / "dataset500.json")
    assert make_config(500, 5000, seed=2022) == published


def _spectra(**classes) -> dict:
    return {"datapoints": 100, "spectra": classes}


GOOD = {"peak_positions": [10, 50], "peak_heights": [0.5, 1.0]}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
        (json.dumps({"spectra": {"0": GOOD}}), "missing key 'datapoints'"),
        (json.dumps({"datapoints": 100}), "missing key 'spectra'"),
        (json.dumps({"datapoints": True, "spectra": {"0": GOOD}}), "'datapoints' must be an integer"),
        (json.dumps({"datapoints": 100, "spectra": {}}), "non-empty object"),
        (json.dumps(_spectra(**{"0": GOOD, "2": GOOD})), "without gaps"),
        (json.dumps({**_spectra(**{"0": GOOD}), "classes": 3}), "'classes' is 3"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [10]}})), "class 0: needs"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [1.5], "peak_heights": [1]}})), "list of integers"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [1], "peak_heights": ["x"]}})), "list of numbers"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [10, 100], "peak_heights": [1, 1]}})), r"in \[0, 99\]"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [10, 20], "peak_heights": [1]}})), "as many heights"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [10], "peak_heights": [-1]}})), "finite, ≥ 0"),
        (json.dumps(_spectra(**{"0": {"peak_positions": [], "peak_heights": []}})), "≥ 1 peak"),
        (json.dumps({**_spectra(**{"0": GOOD}), "boundary": "x"}), "'boundary' must be an integer"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        SyntheticConfig.from_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config file not found"):
        SyntheticConfig.from_json(tmp_path / "nope.json")


# --- splits ----------------------------------------------------------------------------------


def test_split_sizes_and_labels(small: SyntheticConfig) -> None:
    for split, per_class in zip(SPLITS, (50, 10, 9)):
        X, y = generate(small, split, seed=1)
        assert X.shape == (4 * per_class, N) and X.dtype == np.float32
        assert y.dtype == np.int64 and np.array_equal(y, np.repeat(np.arange(4), per_class))
        np.testing.assert_allclose(X.max(axis=1), 1.0, rtol=1e-6)
        assert X.min() >= 0


def test_test_grid_matches_hand_built(small: SyntheticConfig) -> None:
    X, _ = generate(small, "test")
    for c in range(small.n_classes):
        expected = _hand_test_spectra(small.positions[c], small.heights[c], 30, 0.04, N)
        np.testing.assert_allclose(X[9 * c : 9 * c + 9], expected, atol=1e-6)


def test_special_cases_are_overridable_data(small: SyntheticConfig) -> None:
    assert procedure_for(small) == Procedure()  # not the published config: no special cases
    proc = Procedure(class_shift={2: 17}, class_height={2: 0.025})
    X, _ = generate(small, "test", procedure=proc)
    expected = _hand_test_spectra(small.positions[2], small.heights[2], 17, 0.025, N)
    np.testing.assert_allclose(X[18:27], expected, atol=1e-6)
    np.testing.assert_array_equal(X[:18], generate(small, "test")[0][:18])


def test_dataset500_special_cases(shared_data: Path) -> None:
    cfg = SyntheticConfig.from_json(shared_data / "schuetzke2022" / "dataset500.json")
    X, y = generate(cfg, "test")
    assert X.shape == (4500, 5000)
    for c, shift, dh in [(8, 17, 0.04), (318, 17, 0.04), (164, 30, 0.025), (347, 30, 0.025), (0, 30, 0.04)]:
        expected = _hand_test_spectra(cfg.positions[c], cfg.heights[c], shift, dh, 5000)
        np.testing.assert_allclose(X[9 * c : 9 * c + 9], expected, atol=1e-6, err_msg=f"class {c}")


def test_challenge27_layout(shared_data: Path) -> None:
    cfg = SyntheticConfig.from_json(shared_data / "schuetzke2022" / "challenge27.json")
    plan = plan_split(cfg, "test")
    assert len(plan) == 27 * 6
    # class 10 = peaks (700, 3070), heights (1.0, 0.7): layout (-,0) (+,0) (-,+) (+,+) (-,-) (+,-)
    rows = [plan.pos[plan.offsets[i] : plan.offsets[i + 1]].tolist() for i in range(60, 66)]
    assert rows == [[670, 3040], [730, 3100]] * 3
    hts = plan.height[plan.offsets[62] : plan.offsets[66]].round(6).tolist()
    assert hts == [1.0, 0.73, 1.0, 0.73, 1.0, 0.67, 1.0, 0.67]
    train = plan_split(cfg, "train", seed=0)
    # height-1 peaks are never jittered in the challenge procedure
    first = np.array([train.height[train.offsets[i]] for i in range(450, 500)])  # class 9: first peak h = 1.0
    assert np.all(first == 1.0)


# --- train / val randomness ------------------------------------------------------------------


def test_train_statistics() -> None:
    cfg = SyntheticConfig(n_points=1000, positions=((500,), (300,)), heights=((1.0,), (0.5,)))
    proc = Procedure(n_train=3000)
    plan = plan_split(cfg, "train", seed=3, procedure=proc)
    assert np.array_equal(np.diff(plan.offsets), np.ones(6000, dtype=np.int64))  # one spike each
    shifts = plan.pos - np.where(plan.y == 0, 500, 300)
    assert shifts.min() == -50 and shifts.max() == 49  # numpy's half-open integers(p - 50, p + 50)
    assert abs(shifts.mean() + 0.5) < 1.5
    dh = plan.height - np.where(plan.y == 0, 1.0, 0.5)
    assert dh.min() >= -0.05 and dh.max() <= 0.05 and dh.min() < -0.049 and dh.max() > 0.049
    assert plan.sigma.min() >= 2 and plan.sigma.max() <= 5 and plan.sigma.min() < 2.01 and plan.sigma.max() > 4.99
    # the rendered spectra peak where the spikes are, with the drawn widths
    X = render(plan, 0, 200, normalize=False, dtype=np.float64)
    assert np.array_equal(X.argmax(axis=1), plan.pos[:200])
    x = np.arange(1000)
    var = (X * (x - plan.pos[:200, None]) ** 2).sum(1) / X.sum(1)
    np.testing.assert_allclose(np.sqrt(var), plan.sigma[:200], rtol=0.01)  # truncation at 4σ: < 0.1 %


def test_blur_equals_scipy(small: SyntheticConfig) -> None:
    edge = SyntheticConfig(n_points=300, positions=((0, 5, 295, 299),), heights=((0.5, 1.0, 0.7, 0.2),))
    for cfg in (small, edge):
        for split in SPLITS:
            plan = plan_split(cfg, split, seed=5, procedure=Procedure(shift=80))
            spikes = plan.spikes()
            ours = render(plan, normalize=False, dtype=np.float64)
            ref = np.array([gaussian_filter1d(s, g, mode="constant", truncate=4.0) for s, g in zip(spikes, plan.sigma)])
            np.testing.assert_allclose(ours, ref, atol=1e-12)
            normalised = render(plan)
            np.testing.assert_allclose(normalised, ref / ref.max(axis=1, keepdims=True), atol=1e-6)


def test_coinciding_spikes_and_edges() -> None:
    # two peaks 3 points apart: when shifts make them coincide, the later one wins (published assignment)
    cfg = SyntheticConfig(n_points=400, positions=((100, 103),), heights=((1.0, 0.3),))
    plan = plan_split(cfg, "train", seed=0, procedure=Procedure(n_train=2000))
    counts = np.diff(plan.offsets)
    merged = np.flatnonzero(counts == 1)
    assert len(merged) > 0 and set(counts) == {1, 2}
    assert np.all(plan.height[plan.offsets[merged]] < 0.36)  # the 0.3 peak, jittered by ≤ 0.05
    # a peak near the edge: clipped onto point 0 (published) or dropped
    near = SyntheticConfig(n_points=400, positions=((10, 200),), heights=((0.5, 1.0),))
    clipped = plan_split(near, "train", seed=0, procedure=Procedure(n_train=500))
    assert clipped.pos.min() == 0 and np.all(np.diff(clipped.offsets) == 2)
    dropped = plan_split(near, "train", seed=0, procedure=Procedure(n_train=500, edge="drop"))
    assert dropped.pos.min() >= 0 and np.any(np.diff(dropped.offsets) == 1)


def test_seeded_and_chunk_invariant(small: SyntheticConfig) -> None:
    a, ya = generate(small, "train", seed=7)
    b, _ = generate(small, "train", seed=7, chunk=7)
    assert a.tobytes() == b.tobytes()
    streamed = np.concatenate([X for X, _ in iter_chunks(small, "train", seed=7, chunk=33)])
    assert streamed.tobytes() == a.tobytes()
    assert generate(small, "train", seed=8)[0].tobytes() != a.tobytes()
    assert generate(small, "val", seed=7)[0].tobytes() != a[: 40].tobytes()
    assert generate(small, "test", seed=1)[0].tobytes() == generate(small, "test", seed=2)[0].tobytes()
    still = plan_split(small, "train", seed=7, procedure=Procedure(shift=0, height_jitter=0.0))
    assert np.array_equal(still.pos[:3], small.positions[0]) and np.array_equal(still.height[:3], small.heights[0])
    with pytest.raises(ValueError, match="split"):
        generate(small, "dev", seed=1)  # type: ignore[arg-type]


# --- make_config -----------------------------------------------------------------------------


def test_make_config_rules_and_round_trip(tmp_path: Path) -> None:
    cfg = make_config(300, 2000, peaks_per_class=(1, 6), seed=4, boundary=60)
    assert cfg.n_classes == 300 and cfg.n_peaks.min() >= 1 and cfg.n_peaks.max() <= 6
    for pos, hts in zip(cfg.positions, cfg.heights):
        assert list(pos) == sorted(set(pos)) and 60 <= pos[0] and pos[-1] < 2000 - 60
        assert max(hts) == 1.0 and min(hts) >= 0.01
    assert SyntheticConfig.from_json(cfg.to_json(tmp_path / "sub" / "c.json")) == cfg
    assert make_config(300, 2000, peaks_per_class=(1, 6), seed=4, boundary=60) == cfg
    assert make_config(300, 2000, peaks_per_class=(1, 6), seed=5, boundary=60) != cfg
    uniform = make_config(500, 1000, seed=0, distribution="uniform")
    assert set(uniform.n_peaks.tolist()) == set(range(2, 11))
    with pytest.raises(ValueError, match="no room"):
        make_config(3, 100, boundary=50)


# --- writer and command line -----------------------------------------------------------------


def _run(argv: list[str]) -> int:
    return cli.main(argv)


def test_cli_make_config_and_generate(tmp_path: Path, small: SyntheticConfig) -> None:
    assert cli.COMMANDS["synthetic"][0].startswith("xrdid.cli.synthetic:")
    cfg_path = tmp_path / "cfg.json"
    argv = ["synthetic", "make-config", "--classes", "3", "--points", "500", "--boundary", "60", "--out", str(cfg_path)]
    assert _run(argv) == 0
    cfg = SyntheticConfig.from_json(cfg_path)
    assert cfg.n_classes == 3 and cfg.n_points == 500
    assert generate(cfg_path, "val", seed=2)[0].tobytes() == generate(cfg, "val", seed=2)[0].tobytes()  # path accepted
    out = tmp_path / "ds"
    argv = ["synthetic", "generate", "--config", str(cfg_path), "--out", str(out), "--seed", "3", "--dtype", "float16"]
    assert _run(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["splits"]["train"]["n"] == 150 and meta["config_fingerprint"] == cfg.fingerprint
    for split in SPLITS:
        X, y = np.load(out / f"x_{split}.npy"), np.load(out / f"y_{split}.npy")
        assert X.dtype == np.float16 and y.dtype == np.int16 and X.shape == (meta["splits"][split]["n"], 500)
        np.testing.assert_allclose(X, generate(cfg, split, seed=3)[0], atol=1e-3)
    write_dataset(small, tmp_path / "ds32", seed=3)
    X, _ = generate(small, "val", seed=3)
    assert np.load(tmp_path / "ds32" / "x_val.npy").tobytes() == X.tobytes()


def test_cli_generate_reads_the_synthetic_section(tmp_path: Path, small: SyntheticConfig) -> None:
    cfg_path = tmp_path / "cfg.json"
    assert _run(["synthetic", "make-config", "--classes", "3", "--points", "500", "--boundary", "60",
                 "--out", str(cfg_path)]) == 0
    params = tmp_path / "params.yaml"
    params.write_text(f"synthetic: {{config: {cfg_path}, out: {tmp_path / 'from-params'}, seed: 4}}\n")
    assert _run(["synthetic", "generate", "--params", str(params)]) == 0
    meta = json.loads((tmp_path / "from-params" / "meta.json").read_text())
    assert meta["seed"] == 4 and meta["dtype"] == "float32"
    assert _run(["synthetic", "generate", "--params", str(params), "--seed", "5", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["seed"] == 5  # the command line wins


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert _run(["synthetic", "generate", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "missing key 'datapoints'" in capsys.readouterr().err
    assert _run(["synthetic", "make-config", "--classes", "3", "--points", "100", "--out", str(tmp_path / "c.json")]) == 2
    assert "no room" in capsys.readouterr().err
