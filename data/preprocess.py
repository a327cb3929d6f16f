"""The one preprocessing definition shared by training, evaluation, export and every runner.

A model directory stores it (``model.yaml: preprocess``); the ONNX export puts ``normalize`` inside
the graph, so a runner on the line only resizes (``resize``) and hands over uint8 pixels.

    pre = Preprocess(size=(224, 224), channels=1, mean=[0.5], std=[0.5])
    x = pre(image)            # float32 C x H x W, normalised
"""

from __future__ import annotations

import math
from typing import List, Literal, Tuple

import cv2
import numpy as np
from pydantic import Field, model_validator

from ..config import StrictModel
from .imaging import resize

__all__ = ["Preprocess"]


class Preprocess(StrictModel):
    """Squash-resize to ``size`` (H, W), convert to ``channels``, scale to 0..1, normalise."""

    size: Tuple[int, int] = (224, 224)
    channels: Literal[1, 3] = 1
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

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The model's input pixels: channel conversion, then area (down) or linear (up) resize."""
        return resize(self.to_channels(image), self.size)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HxW(xC) pixels of the input size -> float32 C x H x W."""
        x = pixels.astype(np.float32) * (1.0 / 255.0)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.normalize(self.resize(image))
