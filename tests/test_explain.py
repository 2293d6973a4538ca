"""Explanations: class activation maps, features, explanation plots, HTML reports, NCA maps."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from xrdid.config import Grid
from xrdid.data.patterns import PatternSet
from xrdid.identify.explain import (
    cam_layer,
    features,
    format_hkl,
    grad_cam,
    html_report,
    make_candidate,
    nca_plot,
    plot_explanation,
)
from xrdid.learn.inference import normalize_rows
from xrdid.learn.models import MODELS, build_model, ensemble, save_model
from xrdid.learn.train import fit, seed_everything

PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- CAM and features


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cam_and_features_for_every_model(name: str, torch_one_thread: None) -> None:
    torch.manual_seed(0)
    if name == "ensemble":
        model = ensemble([build_model("xrdnet", 256, 3), build_model("wang", 256, 3, conv_layers=2)])
    else:
        model = build_model(name, 256, 3)
    model.train()  # grad_cam and features must switch to eval and back
    X = np.random.default_rng(0).random((3, 256)) * 100
    for method in ("hirescam", "gradcam"):
        cams = np.stack([grad_cam(model, X, target=t, method=method) for t in range(3)])  # (target, n, points)
        assert cams.shape == (3, 3, 256) and np.isfinite(cams).all()
        assert cams.min() >= 0 and cams.max() <= 1
        # each spectrum has positive evidence for some class, scaled to a maximum of 1
        assert_allclose(cams.max(axis=(0, 2)), 1.0, atol=1e-6)
    assert model.training
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients left behind
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert features(model, X, batch_size=2).shape == (3, last.in_features)


def test_cam_layer_picks_the_last_convolutional_stage() -> None:
    wang = build_model("wang", 256, 3, conv_layers=2)
    assert cam_layer(wang) is wang.features[5]  # conv, ReLU, pool, dropout, conv, *ReLU*, pool, ...
    assert type(cam_layer(build_model("resnet", 256, 3))).__name__ == "_ResidualBlock"
    assert type(cam_layer(build_model("inc3", 256, 3))).__name__ == "_Inception"

    class Plain(nn.Module):  # no `features`: the last Conv1d
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv1d(1, 2, 3), nn.Conv1d(2, 2, 3)

    plain = Plain()
    assert cam_layer(plain) is plain.b
    plain.cam_layer = "a"  # a model may name its own layer
    assert cam_layer(plain) is plain.a
    with pytest.raises(ValueError, match="no Conv1d"):
        cam_layer(nn.Sequential(nn.Linear(2, 2)))


def test_grad_cam_targets_and_checks(torch_one_thread: None) -> None:
    model = build_model("xrdnet", 256, 4).eval()  # eval: the reference argmax below without dropout
    X = np.random.default_rng(1).random((4, 256))
    predicted = grad_cam(model, X)
    own = grad_cam(model, X, target=model(normalize_rows(torch.tensor(X, dtype=torch.float32))).argmax(1).numpy())
    assert_allclose(predicted, own, atol=1e-6)
    assert_allclose(grad_cam(model, X, target=[1, 1, 1, 1], batch_size=3), grad_cam(model, X, target=1), atol=1e-5)
    with pytest.raises(ValueError, match="target class out of range"):
        grad_cam(model, X, target=4)
    with pytest.raises(ValueError, match="method must be"):
        grad_cam(model, X, method="cam")


def test_cam_finds_the_discriminative_peak_of_a_trained_model(torch_one_thread: None) -> None:
    """Three classes share a peak at 120 and differ by one peak each: the map must point there."""
    n, rng = 512, np.random.default_rng(0)
    x = np.arange(n)

    def peak(centre: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((x[None] - centre[:, None]) / 3.0) ** 2)

    y = rng.integers(0, 3, 384)
    shift = rng.integers(-4, 5, (384, 2))
    own = np.array([250, 330, 410])[y] + shift[:, 1]
    X = (0.8 * peak(120 + shift[:, 0]) + peak(own) + 0.05 * rng.random((384, n))).astype(np.float32)
    seed_everything(0)
    model = build_model("wang", n, 3, conv_layers=3, dense=(32,))
    history = fit(model, (X, y), (X, y), epochs=6, lr=2e-3, batch_size=32, progress=False)
    assert history.val_acc[-1] > 0.95
    cam = grad_cam(model, X[:40], target=y[:40])
    at = cam.argmax(axis=1)
    assert np.mean(np.abs(at - own[:40]) < 25) >= 0.9
    assert not np.any(np.abs(at - 120) < 25)


def test_features_are_the_input_of_the_last_linear(torch_one_thread: None) -> None:
    model = build_model("xrdnet", 256, 5).eval()
    X = np.random.default_rng(2).random((6, 256)) * 40
    F = features(model, X, batch_size=4)
    with torch.no_grad():
        logits = model(normalize_rows(torch.tensor(X, dtype=torch.float32)))
        assert_allclose(model.head[-1](torch.tensor(F)).numpy(), logits.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- plot and report


def _pattern_set(grid: Grid) -> PatternSet:
    """Three entries with a few reflections each, rendered as narrow Gaussians."""
    x = grid.values
    positions = [[12.0, 20.0, 31.5], [15.0, 22.2, 26.0, 28.1], [18.0, 33.0]]
    hkls = [[[1, 0, 0], [1, 1, 0], [1, -1, 1]], [[0, 0, 1], [0, 1, 1], [2, 0, 0], [12, 0, -2]], [[1, 1, 1], [2, 2, 0]]]
    intensity = [[100.0, 60.0, 30.0], [100.0, 80.0, 20.0, 10.0], [100.0, 50.0]]
    profiles = np.stack([
        sum(i / 100 * np.exp(-0.5 * ((x - p) / 0.1) ** 2) for p, i in zip(pos, inten))
        for pos, inten in zip(positions, intensity)
    ]).astype(np.float32)  # fmt: skip
    offsets = np.r_[0, np.cumsum([len(p) for p in positions])]
    flat = np.concatenate(positions)
    return PatternSet(
        ids=["alpha", "beta", "gamma"], grid=grid, profiles=profiles, offsets=offsets, two_theta=flat,
        intensity=np.concatenate(intensity), hkl=np.concatenate(hkls), multiplicity=np.ones(len(flat)),
        d_spacing=np.ones(len(flat)), meta={},
    )  # fmt: skip


def test_format_hkl() -> None:
    assert format_hkl([1, -1, 0]) == r"$1\bar{1}0$"
    assert format_hkl([12, 0, -2]) == r"$12\,0\,\bar{2}$"


def test_plot_explanation_writes_a_png(tmp_path: Path) -> None:
    grid = Grid(10.0, 40.0, 751)
    patterns = _pattern_set(grid)
    candidates = [make_candidate(patterns, j, p, f) for j, p, f in ((1, 0.8, "B2O3"), (0, 0.15, ""), (2, 0.05, "C"))]
    assert candidates[0]["hkl"][3] == r"$12\,0\,\bar{2}$" and candidates[0]["profile"].shape == (751,)
    measured = patterns.profiles[1] + 0.05
    covered = grid.values < 35  # the scan stopped at 35°: the rest is shaded
    cam = np.exp(-0.5 * ((grid.values - 22.2) / 1.0) ** 2)
    path = tmp_path / "explain.png"
    plot_explanation(grid, measured, covered, cam, candidates, path, "scan <1>.xy")
    assert path.read_bytes()[:8] == PNG
    bare = [{"id": "x", "formula": "", "probability": 1.0, "profile": patterns.profiles[2]}]  # no peaks given
    plot_explanation(grid, measured, None, cam, bare, tmp_path / "bare.png")
    assert (tmp_path / "bare.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="751 points"):
        plot_explanation(grid, measured[:10], None, cam, bare, tmp_path / "bad.png")


def test_html_report_escapes_and_has_one_section_per_entry(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(PNG + b"fake")
    candidates = [{"id": f"e{i}", "formula": "Al2O3", "probability": p} for i, p in enumerate((0.7, 0.2, 0.1))]
    entries = [
        {"file": "<img src=x onerror=alert(1)>.xy", "candidates": candidates, "image": image},
        {"file": "b&c.xy", "candidates": candidates[:1], "image": PNG + b"bytes",
         "warnings": ["no library entry matches well <b>", "scan covers 40 % of the grid"]},
        {"file": "broken.raw", "error": "unknown format '.raw' <RAW v2>"},
    ]  # fmt: skip
    path = html_report(entries, tmp_path / "report.html", "batch <7>", meta={"model": "xrdnet v3"})
    html = path.read_text()
    assert html.count("<section") == 3
    assert html.count('<a href="#entry-') == 3  # summary table links to each section
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.xy" in html
    assert "b&amp;c.xy" in html and "batch &lt;7&gt;" in html
    assert "&lt;b&gt;" in html and "scan covers 40 % of the grid" in html
    assert "unknown format &#39;.raw&#39; &lt;RAW v2&gt;" in html
    assert "data:image" not in html  # a path is referenced relative to the page; bytes are written beside it
    assert re.findall(r'<img src="([^"]+)"', html) == ["a.png", "report/0002.png"]
    assert (tmp_path / "report" / "0002.png").read_bytes() == PNG + b"bytes"
    assert "0.700" in html and "xrdnet v3" in html
    with pytest.raises(ValueError, match="needs a 'file'"):
        html_report([{"candidates": []}], tmp_path / "bad.html")


# --------------------------------------------------------------------------- NCA


def test_nca_plot_handles_singletons_and_references(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (4, 6))
    labels = np.array([0] * 5 + [1] * 5 + [2] * 5 + [3])  # class 3 has a single pattern
    F = centres[labels] + rng.normal(0, 0.5, (16, 6))
    Z = nca_plot(F, labels, tmp_path / "nca.png", names=["a", "b", "c", "d"])
    assert Z.shape == (16, 2) and np.isfinite(Z).all()
    assert (tmp_path / "nca.png").read_bytes()[:8] == PNG
    # one measured pattern per material: the reference spectra anchor the map
    ref_labels = np.repeat(np.arange(4), 8)
    reference = (centres[ref_labels] + rng.normal(0, 0.5, (32, 6)), ref_labels)
    single = centres + rng.normal(0, 0.5, (4, 6))
    Z = nca_plot(single, np.arange(4), tmp_path / "ref.png", {0: "a"}, reference=reference, title="t")
    assert Z.shape == (4, 2)
    # nothing to learn neighbours from: PCA
    assert nca_plot(single, np.arange(4), tmp_path / "pca.png").shape == (4, 2)
    with pytest.raises(ValueError, match="need features"):
        nca_plot(F, labels[:3], tmp_path / "bad.png")


def test_cli_explain_nca(tmp_path: Path, torch_one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from xrdid.cli import main

    grid = Grid(10.0, 40.0, 301)
    patterns = _pattern_set(grid)
    folder = tmp_path / "patterns"
    folder.mkdir()
    np.save(folder / "profiles.npy", patterns.profiles)
    np.savez(folder / "reflections.npz", **{k: getattr(patterns, k) for k in
                                            ("offsets", "two_theta", "intensity", "hkl", "multiplicity", "d_spacing")})
    (folder / "meta.json").write_text(json.dumps({"ids": patterns.ids, "grid": grid.to_dict()}))
    measured = tmp_path / "measured"
    measured.mkdir()
    rng = np.random.default_rng(4)
    with open(measured / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pattern", "cif"])
        for j, entry in enumerate(patterns.ids):
            for k in range(2):
                counts = 1000 * patterns.profiles[j] + 50 + rng.poisson(20, grid.n_points)
                np.savetxt(measured / f"{entry}_{k}.xy", np.c_[grid.values, counts])
                writer.writerow([f"{entry}_{k}.xy", f"cif/{entry}.cif"])
    params = tmp_path / "params.yaml"
    params.write_text(f"grid: {{two_theta_min: 10.0, two_theta_max: 40.0, n_points: 301, wavelength: CuKa}}\n"
                      f"evaluate: {{measured: {{labels: {measured / 'labels.csv'}}}}}\n")  # fmt: skip
    model = tmp_path / "model.safetensors"
    save_model(build_model("xrdnet", 301, 3), model, {"ids": json.dumps(patterns.ids)})
    out = tmp_path / "nca.png"
    args = ["explain", "nca", "--model", str(model), "--params", str(params), "--patterns", str(folder),
            "--augmented", str(tmp_path / "none"), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert out.read_bytes()[:8] == PNG
    params.write_text("grid: {two_theta_min: 10.0, two_theta_max: 40.0, n_points: 301}\n")
    assert main(args) == 2  # no measured set configured: one error line, status 2
