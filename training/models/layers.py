"""Building blocks shared by the model families, written for TensorRT 8.5 (ONNX opset 17):
LayerNorm and attention from basic ops, constant-scale resizes only, no data-dependent control flow."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, DropPath
from timm.layers.padding import pad_same_arg
from timm.models import FeatureDictNet
from torch import Tensor, nn

from .registry import ImgSize, ModelError, to_pair


def constant_pad(x: Tensor, pads: Sequence[int]) -> Tensor:
    """``F.pad(x, pads)`` (zeros) that the TorchScript ONNX exporter writes as one Pad node with constant pads
    (its own ``F.pad`` export computes them with ConstantOfShape/Slice/Cast ops)."""
    if torch.onnx.is_in_onnx_export():
        return _ConstantPad.apply(x, tuple(pads), x.dim())
    return F.pad(x, tuple(pads))


class _ConstantPad(torch.autograd.Function):
    """Export-only: forward is ``F.pad``; ``symbolic`` emits ``Pad(x, constant ONNX-order pads)``."""

    @staticmethod
    def forward(ctx: object, x: Tensor, pads: Tuple[int, ...], rank: int) -> Tensor:
        return F.pad(x, pads)

    @staticmethod
    def symbolic(g: object, x: object, pads: Tuple[int, ...], rank: int) -> object:
        begin, end = [0] * rank, [0] * rank
        for i in range(len(pads) // 2):  # torch order: last dim first, (begin, end) pairs
            begin[rank - 1 - i], end[rank - 1 - i] = pads[2 * i], pads[2 * i + 1]
        return g.op("Pad", x, g.op("Constant", value_t=torch.tensor(begin + end, dtype=torch.int64)), mode_s="constant")


class LayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dim from ReduceMean/Sub/Mul/Add/Sqrt/Div (no ONNX LayerNormalization)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        var = (centred * centred).mean(-1, keepdim=True)
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


class Attention(nn.Module):
    """Multi-head self-attention with explicit matmul + softmax (no fused SDPA, no nn.MultiheadAttention).

    Shapes are constants (``num_tokens``; batch as -1), so the ONNX graph has no Shape ops."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.num_tokens = dim, num_heads, num_tokens
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x).reshape(-1, self.num_tokens, 3, self.num_heads, self.dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, self.num_tokens, self.dim))


class Block(nn.Module):
    """Pre-norm transformer block (DeiT): x + attn(norm(x)), then x + mlp(norm(x)) with GELU; ``drop_path``:
    stochastic depth on both residual branches while training (an identity in eval and in the export)."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, num_tokens)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class StaticSameConv2d(nn.Conv2d):
    """timm's ``Conv2dSame`` (TF 'same' padding) with the pads fixed for one input size: exports as a constant
    Pad + Conv instead of Shape/Ceil/Pad arithmetic. Same parameter names as the conv it replaces."""

    def __init__(self, conv: nn.Conv2d, pads: Sequence[int]) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)  # fmt: skip
        self.load_state_dict(conv.state_dict())
        self.pads = tuple(pads)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(constant_pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CnnStream(nn.Module):
    """A timm ``features_only`` backbone run module by module, so a model can stop at one stage, change the
    map and continue with it (``run``). The timm modules keep their names, so the state-dict keys are timm's
    (what ``load_backbone_weights`` matches); ``channels``/``reductions`` describe each feature tap.
    Dynamic TF-'same' convs (``tf_*`` nets) get static pads for ``img_size``."""

    def __init__(self, model_name: str, in_chans: int, img_size: Tuple[int, int]) -> None:
        super().__init__()
        net = timm.create_model(model_name, features_only=True, in_chans=in_chans, pretrained=False)
        taps = list(net.return_layers) if isinstance(net, FeatureDictNet) else net.feature_info.module_name()
        steps: List[str] = []
        for name, child in net.named_children():
            if isinstance(child, nn.Sequential) and any(t.startswith(f"{name}.") for t in taps):
                steps += [f"{name}.{i}" for i in range(len(child))]
            else:
                steps.append(name)
            self.add_module(name, child)
        missing = [t for t in taps if t not in steps]
        if missing:
            raise ModelError(f"{model_name}: feature taps {missing} are not top-level modules of the timm net")
        ends = [steps.index(t) + 1 for t in taps]
        self.segments: Tuple[Tuple[str, ...], ...] = tuple(tuple(steps[a:b]) for a, b in zip([0, *ends[:-1]], ends))
        self.model_name = model_name
        self.channels: Tuple[int, ...] = tuple(net.feature_info.channels())
        self.reductions: Tuple[int, ...] = tuple(net.feature_info.reduction())
        self.pretrained_cfg: Dict = dict(net.pretrained_cfg)
        self._freeze_same_padding(in_chans, img_size)

    def _freeze_same_padding(self, in_chans: int, img_size: Tuple[int, int]) -> None:
        """Replace each ``Conv2dSame`` by a ``StaticSameConv2d`` with the pads it gets at ``img_size``."""
        dynamic = {name: m for name, m in self.named_modules() if isinstance(m, Conv2dSame)}
        if not dynamic:
            return
        sizes: Dict[str, List[int]] = {}

        def record(name: str) -> Callable[..., None]:
            def hook(_: nn.Module, args: Tuple[Tensor, ...]) -> None:
                sizes[name] = list(args[0].shape[-2:])

            return hook

        hooks = [m.register_forward_pre_hook(record(name)) for name, m in dynamic.items()]
        was_training = self.training
        try:
            with torch.no_grad():
                self.eval().run(torch.zeros(1, in_chans, *img_size))
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        for name, conv in dynamic.items():
            pads = pad_same_arg(sizes[name], list(conv.kernel_size), list(conv.stride), list(conv.dilation))
            self.set_submodule(name, StaticSameConv2d(conv, pads))

    def tap(self, reduction: int) -> int:
        """Index of the feature tap at stride ``reduction``."""
        if reduction not in self.reductions:
            raise ModelError(f"{self.model_name} has no features at stride {reduction} (has {self.reductions})")
        return self.reductions.index(reduction)

    def run(self, x: Tensor, start: int = 0, stop: Optional[int] = None) -> List[Tensor]:
        """Maps of taps ``start..stop`` (inclusive, default to the last); ``x`` is the image when ``start`` is 0,
        else the (possibly changed) map of tap ``start - 1``."""
        out = []
        for segment in self.segments[start : None if stop is None else stop + 1]:
            for name in segment:
                x = self.get_submodule(name)(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.run(x)

    def freeze(self, stages: int) -> None:
        """No gradients for the parameters of the first ``stages`` feature stages (their BN statistics still
        adapt): the backward pass stops before the high-resolution maps."""
        if stages > len(self.segments):
            raise ModelError(f"{self.model_name} has {len(self.segments)} feature stages, cannot freeze {stages}")
        for name in (n for segment in self.segments[:stages] for n in segment):
            self.get_submodule(name).requires_grad_(False)


class HeatmapHead(nn.Module):
    """Stride-8 defect logits: 1x1 conv of the deep map upsampled by the constant ``scale``, plus a 1x1 conv of
    the stride-8 map, then 3x3 conv + BN + ReLU and a 1x1 conv to one channel."""

    def __init__(self, fine_chs: int, deep_chs: int, scale: int, width: int = 64) -> None:
        super().__init__()
        self.fine = nn.Conv2d(fine_chs, width, 1)
        self.deep = nn.Conv2d(deep_chs, width, 1)
        self.up = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
        self.mix = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, fine: Tensor, deep: Tensor) -> Tensor:
        return self.out(self.mix(self.fine(fine) + self.up(self.deep(deep))))


class DefectNet(nn.Module):
    """Common part of every model: the CNN stream, the heatmap head and the attributes lineguard reads.

    Subclasses implement ``forward(x) -> {"logits": (B, num_classes), "heatmap": (B, 1, H/8, W/8)}``. The deep
    stage (``deep_index``) is stride 16, or stride 32 when the larger side of ``img_size`` exceeds 256 px.
    """

    def __init__(self, backbone: str, num_classes: int, in_chans: int, img_size: ImgSize) -> None:
        super().__init__()
        h, w = to_pair(img_size)
        if num_classes < 1 or in_chans < 1:
            raise ModelError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise ModelError(f"img_size sides must be multiples of 32 (>= 32), got {h}x{w}")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, (h, w)
        self.deep_stride = 32 if max(h, w) > 256 else 16
        self.backbone = CnnStream(backbone, in_chans, (h, w))
        self.fine_index = self.backbone.tap(8)
        self.deep_index = self.backbone.tap(self.deep_stride)
        chs = self.backbone.channels
        self.heatmap_head = HeatmapHead(chs[self.fine_index], chs[self.deep_index], self.deep_stride // 8)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ModelError`` unless ``x`` is (B, in_chans, *img_size) (skipped while tracing for export)."""
        if not torch.jit.is_tracing() and tuple(x.shape[1:]) != (self.in_chans, *self.img_size):
            raise ModelError(f"input of shape {tuple(x.shape)}; this model takes (B, {self.in_chans}, "
                             f"{self.img_size[0]}, {self.img_size[1]})")  # fmt: skip

    @property
    def pretrained_mean_std(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """Normalisation of the backbone's pretrained weights, one value per input channel
        (timm's pretrained_cfg; the mean over RGB when ``in_chans`` is not 3)."""
        mean, std = self.backbone.pretrained_cfg["mean"], self.backbone.pretrained_cfg["std"]
        if self.in_chans == 3:
            return tuple(mean), tuple(std)
        return (sum(mean) / 3,) * self.in_chans, (sum(std) / 3,) * self.in_chans
