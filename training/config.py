"""``lineguard train`` configuration: one typed model, YAML first, then command-line overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple, Union

import torch
from pydantic import AliasChoices, Field, field_validator, model_validator

from ..config import StrictModel
from .augment import AugmentConfig

__all__ = ["TrainConfig"]


class TrainConfig(StrictModel):
    """Everything a training run depends on; saved as ``train.yaml`` in the model directory."""

    # older runs' train.yaml and checkpoints call it 'model': both load (the one place of the rename)
    arch: str = Field("two_stream_lite0", validation_alias=AliasChoices("arch", "model"),
                      description="the network architecture, one of `lineguard.training.models.list_models()`")
    arch_options: Dict[str, Union[bool, int, float, str]] = Field(
        default_factory=dict, description="options of the architecture's factory, e.g. {depth: 2} for a two-stream")
    weights: Optional[str] = Field(
        "auto", description="auto (ImageNet for Lite0 backbones, else random), none, imagenet-lite0 or a file")
    img_size: Union[int, Tuple[int, int]] = Field(
        224, description="the input size: 224 (square), or HxW such as 96x224 for parts that are not square")
    fit: Literal["stretch", "pad"] = Field(
        "stretch", description="stretch: resize to img_size; pad: keep the aspect ratio, pad with the mean")
    channels: Literal[1, 3] = 1
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    multi_label: bool = Field(
        False, description="per-class sigmoid heads trained on every class a part holds (its boxes' classes); "
                           "NG when any defect class reaches its threshold")
    frozen_stages: int = Field(
        0, ge=0, description="the CNN's first N feature stages keep their pretrained weights (no gradients): "
                             "2 stages (strides 2, 4) raise Lite0's training images/s 1.4x on our CPUs")
    heatmap_weight: float = Field(1.0, ge=0, description="weight of the mask-supervised heatmap loss")
    balance_power: float = Field(0.5, ge=0, le=1, description="class-balanced sampling: 1 = equal, 0 = natural")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 only where the hardware computes it natively (see resolved_precision)")
    channels_last: bool = Field(True, description="NHWC tensors: 1.8x the training images/s of Lite0 on our CPUs")
    ema_decay: float = Field(0.998, ge=0, lt=1, description="0 disables the weight EMA")
    patience: int = Field(8, ge=1, description="epochs without val gain (macro-F1, then val loss) before stopping")
    min_train_share: float = Field(
        0.5, ge=0, le=1, description="no early stop before this share of the planned epochs (or budget) has run")
    max_minutes: Optional[float] = Field(
        None, gt=0, description="time budget; after epoch 1 the cosine is fitted to the epochs that fit")
    seed: int = 0
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$",
                        description="cpu | cuda[:N]; under torchrun with cuda, process k takes cuda:LOCAL_RANK")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads per process")
    target_escape: Optional[float] = Field(
        None, gt=0, lt=1, description="pick the OK/NG threshold on val so that escapes stay below this")
    synthetic: Optional[str] = Field(
        None, description="a data set of synthetic images (no split or split train) trained beside the real ones")
    synthetic_extra: float = Field(
        0.5, ge=0, le=10, description="synthetic draws on top of each real draw of a class --synthetic holds (the "
                                      "real draws are those of a run without it)")
    synthetic_real_epochs: int = Field(
        0, ge=0, description="the last N epochs draw real images only (synthetic first, then real)")
    synthetic_weight: float = Field(1.0, gt=0, le=1, description="class-loss weight of a synthetic image")
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="before")
    @classmethod
    def _older_synthetic_ratio(cls, data: Any) -> Any:
        """A train.yaml of before ``synthetic_extra`` names ``synthetic_ratio`` (synthetic draws in place of
        real ones): without a synthetic set it meant nothing and is dropped; with one the run cannot go on
        as it was, so it is an error saying so."""
        if isinstance(data, dict) and "synthetic_ratio" in data:
            data = dict(data)
            ratio = data.pop("synthetic_ratio")
            if data.get("synthetic") is not None:
                raise ValueError(f"synthetic_ratio {ratio} drew synthetic images in place of real ones; that protocol "
                                 "is gone: synthetic images are drawn on top of the real epoch (synthetic_extra)")
        return data

    @field_validator("img_size", mode="before")
    @classmethod
    def _hxw(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", v)
            if not m:
                raise ValueError(f"img_size must be a number or HxW (e.g. 96x224), got {v!r}")
            return int(m[1]) if m[2] is None else (int(m[1]), int(m[2]))
        return v

    @field_validator("img_size")
    @classmethod
    def _sides(cls, v: Union[int, Tuple[int, int]]) -> Union[int, Tuple[int, int]]:
        h, w = (v, v) if isinstance(v, int) else v
        if not (32 <= h <= 1024 and 32 <= w <= 1024):
            raise ValueError(f"img_size sides must be 32..1024 px, got {h}x{w}")
        return h if h == w else (h, w)

    @property
    def size(self) -> Tuple[int, int]:
        """The input size (H, W)."""
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size

    def resolved_precision(self) -> str:
        """bf16 on CUDA GPUs that support it and on CPUs with native bf16 (AVX512-BF16 / AMX); fp32 else.

        Measured on our 2-core AVX2 CPU (timm tf_efficientnet_lite0, batch 32, 224 px, one training
        step): fp32 6.8 images/s, bf16 autocast 2.2 images/s: emulated bf16 is 3x slower there."""
        if self.precision != "auto":
            return self.precision
        if self.device != "cpu":
            return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "fp32"
        return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"

    def resolved_weights(self) -> Optional[str]:
        """The weight source ``create_model`` gets for this config."""
        if self.weights in (None, "none"):
            return None
        if self.weights == "auto":
            return "imagenet-lite0" if self.arch.endswith("lite0") else None
        return self.weights
