"""The one preprocessing definition shared by training, evaluation, export and every runner.

A model directory stores it (``model.yaml: preprocess``); the ONNX export puts ``normalize`` inside
the graph, so a runner on the line only resizes (``resize``) and hands over uint8 pixels.

    pre = Preprocess(size=(96, 224), channels=1, mean=[0.5], std=[0.5], fit="pad")
    x = pre(image)            # float32 C x H x W, normalised
    m = pre.resize_mask(mask) # the mask where the image went
    heat = pre.unfit(heatmap, image.shape[:2])   # a model map cropped to the image's part of the input

``fit``: ``stretch`` resizes to ``size`` whatever the image's aspect ratio; ``pad`` keeps the ratio, centres the
image and fills the rest with the mean (0 after normalising), so a thin defect on a long part keeps its width.
"""

from __future__ import annotations

import math
from typing import List, Literal, Tuple

import cv2
import numpy as np
from pydantic import Field, model_validator

from ..config import StrictModel
from .imaging import resize, resize_mask

__all__ = ["Preprocess"]


class Preprocess(StrictModel):
    """Resize to ``size`` (H, W) by ``fit``, convert to ``channels``, scale to 0..1, normalise."""

    size: Tuple[int, int] = (224, 224)
    channels: Literal[1, 3] = 1
    fit: Literal["stretch", "pad"] = "stretch"
    mean: List[float] = Field(default_factory=lambda: [0.5])
    std: List[float] = Field(default_factory=lambda: [0.5])

    @model_validator(mode="after")
    def _per_channel(self) -> Preprocess:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each, got {self.mean} and {self.std}")
        if not all(math.isfinite(v) for v in [*self.mean, *self.std]):
            raise ValueError(f"mean and std must be finite numbers, got {self.mean} and {self.std}")
        if min(self.std) <= 0 or min(self.size) < 16:
            raise ValueError(f"std must be > 0 and size >= 16 px, got std {self.std}, size {self.size}")
        return self

    def to_channels(self, image: np.ndarray) -> np.ndarray:
        """uint8 HxW (gray) or HxWx3 (RGB) in the model's channel count; HxW for 1 channel."""
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if self.channels == 1:
            return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)

    def placement(self, image_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """Where an image of ``image_hw`` (H, W) lies in the input: (top, left, height, width)."""
        big_h, big_w = self.size
        if self.fit == "stretch":
            return 0, 0, big_h, big_w
        h, w = image_hw
        s = min(big_h / h, big_w / w)
        nh, nw = min(big_h, max(1, round(h * s))), min(big_w, max(1, round(w * s)))
        return (big_h - nh) // 2, (big_w - nw) // 2, nh, nw

    @property
    def pad_value(self) -> List[int]:
        """The uint8 value per channel of the padding: the mean, so it normalises to 0."""
        return [round(min(max(m, 0.0), 1.0) * 255) for m in self.mean]

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The model's input pixels: channel conversion, then area (down) or linear (up) resize by ``fit``."""
        img = self.to_channels(image)
        top, left, nh, nw = self.placement(img.shape[:2])
        if (nh, nw) == tuple(self.size):
            return resize(img, self.size)
        out = np.empty((*self.size, *img.shape[2:]), np.uint8)
        out[...] = self.pad_value if img.ndim == 3 else self.pad_value[0]
        out[top:top + nh, left:left + nw] = resize(img, (nh, nw))
        return out

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """A binary mask (H x W) where :meth:`resize` puts its image (``data.imaging.resize_mask``); bool."""
        top, left, nh, nw = self.placement(mask.shape[:2])
        if (nh, nw) == tuple(self.size):
            return resize_mask(mask, self.size)
        out = np.zeros(self.size, bool)
        out[top:top + nh, left:left + nw] = resize_mask(mask, (nh, nw))
        return out

    def unfit(self, heat: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
        """A model map (h, w) over the input cropped to the cells that cover the image of ``image_hw`` (the
        padding left out, rounded outwards), so that stretching it over the image puts it where it belongs."""
        top, left, nh, nw = self.placement(image_hw)
        if (nh, nw) == tuple(self.size):
            return heat
        (big_h, big_w), (h, w) = self.size, heat.shape[:2]
        r0, c0 = top * h // big_h, left * w // big_w
        r1, c1 = -(-(top + nh) * h // big_h), -(-(left + nw) * w // big_w)
        return heat[r0:r1, c0:c1]

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HxW(xC) pixels of the input size -> float32 C x H x W."""
        x = pixels.astype(np.float32) * (1.0 / 255.0)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.normalize(self.resize(image))
