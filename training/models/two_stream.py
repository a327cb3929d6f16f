"""Two-stream CNN + Transformer (Conformer-style two-way exchange at one stage of the CNN).

The CNN runs to the stride-16 stage (stride 32 for inputs over 256 px), whose map becomes tokens for a small
transformer (1x1 conv + BN, class token, learned position embedding); the patch tokens come back through a
zero-initialised Linear and are added to the map, and the CNN continues with the fused map. Logits come from
[pooled last CNN features, class token]; the heatmap from the fused map and the stride-8 features.
``drop_path``: stochastic depth in the transformer blocks (the last block's rate; 0 off).
``late_depth``: a second exchange of that many blocks on the last CNN stage (stride 32), fused the same way,
its class token beside the first in the head (fusion at two stages, as Conformer fuses at every stage).
``start_as_cnn``: the head's class-token weights start at zero too, so the untrained network is a CNN alone and
the transformer's share grows only as far as training finds it useful.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .layers import Block, DefectNet, LayerNorm, constant_pad
from .registry import ImgSize, ModelError, register_model

__all__ = ["TokenExchange", "TwoStream"]


class TokenExchange(nn.Module):
    """Map (B, C, h, w) -> (map + tokens back-projected, normed class token) through ``depth`` blocks."""

    def __init__(
        self, channels: int, grid: Tuple[int, int], depth: int, embed_dim: int, num_heads: int, mlp_ratio: float,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels, self.grid, self.embed_dim = channels, grid, embed_dim
        self.num_patches = grid[0] * grid[1]
        self.to_tokens = nn.Sequential(nn.Conv2d(channels, embed_dim, 1, bias=False), nn.BatchNorm2d(embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        tokens = 1 + self.num_patches
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # rising with depth (DeiT)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, tokens, mlp_ratio, r) for r in rates))
        self.norm = LayerNorm(embed_dim)
        self.to_map = nn.Linear(embed_dim, channels)
        self.apply(_init_vit)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # Zero contribution at the start: the (pretrained) CNN features pass through unchanged.
        nn.init.zeros_(self.to_map.weight)
        nn.init.zeros_(self.to_map.bias)

    def forward(self, fmap: Tensor) -> Tuple[Tensor, Tensor]:
        # Constant shapes only (batch as -1): the ONNX graph needs no Shape/Expand ops.
        tokens = self.to_tokens(fmap).reshape(-1, self.embed_dim, self.num_patches).transpose(1, 2)
        # Prepend a zero token, then add [cls_token, 0, ..., 0] + pos_embed: the class token without Expand.
        cls = constant_pad(self.cls_token, (0, 0, 0, self.num_patches))
        x = constant_pad(tokens, (0, 0, 1, 0)) + cls + self.pos_embed
        x = self.norm(self.blocks(x))
        back = self.to_map(x[:, 1:]).transpose(1, 2).reshape(-1, self.channels, *self.grid)
        return fmap + back, x[:, 0]


class TwoStream(DefectNet):
    """CNN stream (timm ``backbone``) + transformer stream fused both ways; see the module docstring."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_chans: int = 1,
        img_size: ImgSize = 224,
        *,
        depth: int = 4,
        embed_dim: int = 192,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.2,
        drop_path: float = 0.0,
        start_as_cnn: bool = False,
        late_depth: int = 0,
    ) -> None:
        super().__init__(backbone, num_classes, in_chans, img_size)
        h, w = self.img_size
        channels, last = self.backbone.channels, len(self.backbone.channels) - 1
        self.fusion = TokenExchange(channels[self.deep_index], (h // self.deep_stride, w // self.deep_stride), depth,
                                    embed_dim, num_heads, mlp_ratio, drop_path)
        self.late = None
        if late_depth:
            if self.deep_index == last:
                raise ModelError(f"late_depth: the first exchange is on the last stage already at {h}x{w} "
                                 "(inputs over 256 px); no later stage to exchange at")
            stride = self.backbone.reductions[last]
            self.late = TokenExchange(channels[last], (h // stride, w // stride), late_depth, embed_dim, num_heads,
                                      mlp_ratio, drop_path)
        self.head_drop = nn.Dropout(drop_rate)
        tokens = embed_dim * (2 if self.late is not None else 1)
        self.head = nn.Linear(channels[-1] + tokens, num_classes)
        if start_as_cnn:
            nn.init.zeros_(self.head.weight[:, channels[-1]:])

    def forward(self, x: Tensor) -> dict:
        self.check_input(x)
        feats = self.backbone.run(x, stop=self.deep_index)
        fused, cls = self.fusion(feats[-1])
        feats = [*feats[:-1], fused, *self.backbone.run(fused, start=self.deep_index + 1)]
        classes = [cls]
        if self.late is not None:
            last, late_cls = self.late(feats[-1])
            feats[-1] = last
            classes.append(late_cls)
        pooled = torch.cat([feats[-1].mean((2, 3)), *classes], dim=1)
        return {
            "logits": self.head(self.head_drop(pooled)),
            "heatmap": self.heatmap_head(feats[self.fine_index], fused),
        }


def _init_vit(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


@register_model
def two_stream_lite0(**kwargs) -> TwoStream:
    """EfficientNet-Lite0 CNN stream (the default; ``weights="imagenet-lite0"``)."""
    return TwoStream("tf_efficientnet_lite0", **kwargs)


@register_model
def two_stream_resnet18(**kwargs) -> TwoStream:
    """ResNet-18 CNN stream (most mature TensorRT support)."""
    return TwoStream("resnet18", **kwargs)


@register_model
def two_stream_repvit_m1_1(**kwargs) -> TwoStream:
    """RepViT-M1.1 CNN stream (BatchNorm only)."""
    return TwoStream("repvit_m1_1", **kwargs)


@register_model
def two_stream_mobilenetv3(**kwargs) -> TwoStream:
    """MobileNetV3-Large 1.0 CNN stream."""
    return TwoStream("mobilenetv3_large_100", **kwargs)
