"""CNN-only baselines with the two-stream output contract and the same heatmap head (no transformer)."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import DefectNet
from .registry import ImgSize, register_model

__all__ = ["CnnBaseline"]


class CnnBaseline(DefectNet):
    """timm ``backbone``; logits from pooled last features -> dropout -> Linear; heatmap from stride 8 + deep."""

    def __init__(
        self, backbone: str, num_classes: int, in_chans: int = 1, img_size: ImgSize = 224, *, drop_rate: float = 0.2
    ) -> None:
        super().__init__(backbone, num_classes, in_chans, img_size)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.backbone.channels[-1], num_classes)

    def forward(self, x: Tensor) -> dict:
        self.check_input(x)
        feats = self.backbone.run(x)
        return {
            "logits": self.head(self.head_drop(feats[-1].mean((2, 3)))),
            "heatmap": self.heatmap_head(feats[self.fine_index], feats[self.deep_index]),
        }


@register_model
def cnn_lite0(**kwargs) -> CnnBaseline:
    """EfficientNet-Lite0 baseline (``weights="imagenet-lite0"``)."""
    return CnnBaseline("tf_efficientnet_lite0", **kwargs)


@register_model
def cnn_resnet18(**kwargs) -> CnnBaseline:
    """ResNet-18 baseline."""
    return CnnBaseline("resnet18", **kwargs)
