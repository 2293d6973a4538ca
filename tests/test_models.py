"""Model zoo: shapes on several grids, the wang depth rule, config round trips, safetensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xrdid.learn.models import (
    MODELS,
    SameConv1d,
    _UnfoldStem,
    build_model,
    count_parameters,
    ensemble,
    load_model,
    save_model,
    wang_stages,
)

ALL = sorted(set(MODELS) - {"ensemble"})  # an ensemble is built from trained models: own tests


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("n_points", "n_classes"), [(512, 3), (1626, 17)])
def test_forward_shape_small_grids(name: str, n_points: int, n_classes: int) -> None:
    model = build_model(name, n_points, n_classes).eval()
    with torch.no_grad():
        out2 = model(torch.rand(2, n_points))
        out3 = model(torch.rand(2, 1, n_points))
    assert out2.shape == out3.shape == (2, n_classes)
    assert torch.isfinite(out2).all()


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_4801(name: str) -> None:
    # inc6/inc3/cnn_bn carry 80-180 M parameters here (their published dense heads); still < 2 s
    model = build_model(name, 4801, 7).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 4801)).shape == (2, 7)
    assert count_parameters(model) > 0


@pytest.mark.parametrize("name", ["wang", "xrdnet"])
@pytest.mark.parametrize("n_points", [4501, 5000, 1626, 256])
def test_other_grids(name: str, n_points: int) -> None:
    model = build_model(name, n_points, 5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, n_points)).shape == (2, 5)


@pytest.mark.parametrize("name", ALL)
def test_rebuild_from_config_gives_identical_outputs(name: str) -> None:
    model = build_model(name, 512, 6).eval()
    twin = build_model(**model.config)
    assert twin.config == model.config
    twin.load_state_dict(model.state_dict())
    twin.eval()
    x = torch.rand(3, 512)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_config_records_defaults_and_is_json() -> None:
    cfg = build_model("xrdnet", 4801, 10, options={"bins": 64}, dropout=0.1).config
    assert cfg["name"] == "xrdnet" and cfg["n_points"] == 4801 and cfg["n_classes"] == 10
    assert cfg["options"]["bins"] == 64 and cfg["options"]["dropout"] == 0.1
    assert cfg["options"]["widths"] == list(cfg["options"]["widths"])  # tuples stored as lists
    cfg["options"]["bins"] = 1  # a copy: the model is untouched
    assert build_model("xrdnet", 4801, 10, bins=64).config["options"]["bins"] == 64


def test_safetensors_round_trip(tmp_path) -> None:
    model = build_model("wang", 512, 4, conv_layers=5).eval()
    path = tmp_path / "model.safetensors"
    save_model(model, path, metadata={"classes": "a,b,c,d"})
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    x = torch.rand(2, 512)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("depth", range(1, 10))
def test_wang_depth_rule(depth: int) -> None:
    stages = wang_stages(depth)
    assert sum(len(s) for s in stages) == depth
    model = build_model("wang", 512, 3, conv_layers=depth)
    assert sum(isinstance(m, nn.Conv1d) for m in model.modules()) == depth
    assert sum(isinstance(m, nn.MaxPool1d) for m in model.modules()) == len(stages)


def test_wang_depth_rule_matches_paper_and_vgg() -> None:
    assert wang_stages(4) == [[6], [16], [32], [64]]  # the paper's base network
    assert wang_stages(7) == [[6], [16, 16], [32, 32], [64, 64]]  # DESIGN's VGG variant
    vgg = [m.out_channels for m in build_model("vgg", 512, 3).modules() if isinstance(m, nn.Conv1d)]
    assert vgg == [6, 16, 16, 32, 32, 64, 64]
    with pytest.raises(ValueError):
        wang_stages(10)


def test_published_shapes() -> None:
    # flatten sizes at the benchmark's 5000 points, from the published Keras models
    sizes = {"cnn2": 139 * 64, "cnn3": 139 * 64, "cnn6": 78 * 64, "cnn_bn": 625 * 64, "vgg": 312 * 64}
    sizes["resnet"] = 79 * 100
    sizes["inc6"] = 139 * (85 + 166 + 38 + 43)
    with torch.device("meta"):  # shapes only: no memory for the 180 M parameters of inc6
        for name, flat in sizes.items():
            first = next(m for m in build_model(name, 5000, 500).head if isinstance(m, nn.Linear))
            assert first.in_features == flat, name


def test_xrdnet_is_smaller_than_baselines() -> None:
    with torch.device("meta"):
        ours = count_parameters(build_model("xrdnet", 4801, 500))
        assert ours < min(count_parameters(build_model(n, 4801, 500)) for n in ALL if n != "xrdnet")


@pytest.mark.parametrize(
    ("length", "kernel", "stride"), [(10, 4, 2), (11, 4, 2), (100, 25, 3), (50, 50, 2), (7, 5, 1), (8, 6, 1)]
)
def test_same_conv_matches_keras_padding(length: int, kernel: int, stride: int) -> None:
    conv = SameConv1d(1, 1, kernel, stride, bias=False)
    x = torch.rand(1, 1, length)
    out = conv(x)
    assert out.shape[-1] == -(-length // stride)
    total = max((out.shape[-1] - 1) * stride + kernel - length, 0)
    padded = torch.nn.functional.pad(x, (total // 2, total - total // 2))
    ref = torch.nn.functional.conv1d(padded, conv.weight, stride=stride)
    assert torch.allclose(out, ref)


@pytest.mark.parametrize(("length", "kernel", "stride"), [(4801, 16, 8), (5000, 16, 8), (255, 7, 3), (100, 8, 1)])
def test_unfold_stem_equals_conv(length: int, kernel: int, stride: int) -> None:
    stem, conv = _UnfoldStem(1, 5, kernel, stride), SameConv1d(1, 5, kernel, stride)
    conv.load_state_dict(stem.state_dict())
    x = torch.rand(3, 1, length)
    assert torch.allclose(stem(x), conv(x), atol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", 512, 3)
    with pytest.raises(ValueError, match="wang"):
        build_model("wang", 512, 3, filters=3)
    with pytest.raises(ValueError, match="too few"):
        build_model("wang", 16, 3, conv_layers=9)
    with pytest.raises(ValueError, match="norm"):
        build_model("xrdnet", 512, 3, norm="weird")
    with pytest.raises(ValueError, match="expects"):
        build_model("xrdnet", 512, 3)(torch.rand(2, 511))


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_xrdnet_norm_options(norm: str) -> None:
    model = build_model("xrdnet", 512, 3, norm=norm)
    assert model(torch.rand(4, 512)).shape == (4, 3)


def test_ensemble_is_the_mean_of_its_members_probabilities(tmp_path) -> None:
    members = [build_model("xrdnet", 512, 5).eval(), build_model("cnn2", 512, 5).eval()]
    combined = ensemble(members)
    x = torch.rand(4, 512)
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        assert torch.allclose(combined(x).softmax(1), expected, atol=1e-6)
        save_model(combined, tmp_path / "e.safetensors")
        loaded = load_model(tmp_path / "e.safetensors")
        assert loaded.config == combined.config and torch.allclose(loaded(x), combined(x))
    with pytest.raises(ValueError, match="differ in"):
        ensemble([members[0], build_model("xrdnet", 512, 6)])
    with pytest.raises(ValueError, match="none an ensemble"):
        build_model("ensemble", 512, 5)
