"""StyleGAN2-style networks for defect patches, in plain PyTorch (no custom ops; CPU or GPU).

The generator makes an image and its defect mask for a class; the discriminator judges both together.
:class:`DefectGenerator` is the two-stage variant: defect blocks on a frozen generator of the OK surface.
Written from the papers' ideas, no code copied: StyleGAN2 (Karras et al. 2020: mapping network, weight
(de)modulation, noise inputs, skip outputs, equalized learning rate, residual D with minibatch stddev)
and the projection discriminator (Miyato & Koyama 2018).

    G = Generator(resolution=64, channels=1, n_classes=3)
    img, mask = G(torch.randn(8, G.z_dim), c)            # (8, 1, 64, 64) ~[-1, 1] and (8, 1, 64, 64) ~[0, 1]
    logits = Discriminator(64, 1, 3)(img, mask, c)       # (8,)

Upsampling is bilinear and downsampling average pooling (in place of StyleGAN2's FIR filters). The
image output is linear, as in StyleGAN2 (training keeps it in [-1, 1]; consumers clamp); so is the mask
output, on the real masks' 0/1 scale (consumers threshold at 0.5). Feature maps are channels-last (NHWC): on
CPU that halves the time of the convs and the upsampling.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import GanConfig

__all__ = ["DefectGenerator", "Discriminator", "Generator", "make_discriminator", "make_generator"]

SQRT2 = math.sqrt(2.0)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * SQRT2  # the gain keeps activations at unit variance


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _widths(base: int, cap: int):
    return lambda res: max(1, min(base // res, cap))


class EqLinear(nn.Module):
    """Linear layer with equalized learning rate: N(0, 1) weights scaled by ``lr_mul / sqrt(fan_in)`` at run time."""

    def __init__(self, fan_in: int, fan_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 act: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((fan_out,), bias_init / lr_mul))
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(fan_in), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return _lrelu(x) if self.act else x


class EqConv2d(nn.Module):
    """Square 'same' convolution with equalized learning rate."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True, act: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.act = 1 / math.sqrt(cin * k * k), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)
        return _lrelu(x) if self.act else x


class StyleLayer(nn.Module):
    """Modulated, demodulated 3x3 conv (``up``: at twice the resolution) + per-pixel noise with a learned
    strength + bias + leaky ReLU. An affine map of w scales the input channels (modulation); each output
    channel is rescaled to unit expected variance (demodulation). Computed as scale input -> one shared
    conv -> scale output, which equals StyleGAN2's per-sample weights and runs as one plain conv."""

    def __init__(self, cin: int, cout: int, w_dim: int, up: bool = False, noise: bool = True,
                 noise_init: float = 0.0) -> None:
        super().__init__()
        self.affine = EqLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.noise_strength = nn.Parameter(torch.tensor(float(noise_init))) if noise else None
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale, self.up = 1 / math.sqrt(cin * 9), up
        if up:  # [1, 3, 3, 1] binomial filter, gain 4 (the transposed conv leaves 3 of 4 taps empty on average)
            k = torch.tensor([1.0, 3.0, 3.0, 1.0])
            self.register_buffer("blur", (k[:, None] * k / 16).repeat(cout, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_gen: Optional[torch.Generator] = None,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``noise`` (N or 1, 1, H, W) in place of drawing it from ``noise_gen`` (the global RNG when None)."""
        s = self.affine(w)  # (N, cin)
        weight = self.weight * self.scale
        x = x * s[:, :, None, None]
        if self.up:  # transposed conv at stride 2 (4x cheaper than upsample + conv), then blur: 2H+1 -> 2H
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = F.conv2d(x, self.blur, padding=1, groups=self.blur.shape[0])
        else:
            x = F.conv2d(x, weight, padding=1)
        d = (s.square() @ weight.square().sum((2, 3)).t() + 1e-8).rsqrt() * SQRT2  # (N, cout), with the lrelu gain
        x = torch.addcmul(self.bias[:, None, None] * SQRT2, x, d[:, :, None, None])
        if self.noise_strength is not None:
            if noise is None:
                noise = self.draw_noise(x.shape[0], x.shape[-1], x, noise_gen)
            x = x.add_(noise * (self.noise_strength * SQRT2))
        return F.leaky_relu_(x, 0.2)

    @staticmethod
    def draw_noise(n: int, res: int, like: torch.Tensor, noise_gen: Optional[torch.Generator] = None) -> torch.Tensor:
        """The per-pixel noise input of one layer at ``res`` (N, 1, res, res)."""
        return torch.randn(n, 1, res, res, device=like.device, dtype=like.dtype, generator=noise_gen)


class ToOutput(nn.Module):
    """StyleGAN2's toRGB: modulated 1x1 conv (no demodulation) + bias, as per-sample weights applied by
    one batched matmul over the channels-last features."""

    def __init__(self, cin: int, cout: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1 / math.sqrt(cin)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, c, h, wd = x.shape
        weight = self.weight.t()[None] * (self.affine(w) * self.scale)[:, :, None]  # (N, cin, cout)
        y = torch.baddbmm(self.bias, x.permute(0, 2, 3, 1).reshape(n, h * wd, c), weight)  # (N, h*w, cout)
        return y.reshape(n, h, wd, -1).permute(0, 3, 1, 2)


class _Mapped(nn.Module):
    """A class-conditional mapping network ``map(z, c) -> w``: the class's embedding row (N(0, 1)), normalised
    like z and concatenated to it, through ``mapping_layers`` equalized-lr layers at ``lr_mul``; ``w_avg`` holds
    the running mean of w per class (updated in training mode) for the truncation trick."""

    def _init_mapping(self, n_classes: int, z_dim: int, w_dim: int, mapping_layers: int, lr_mul: float) -> None:
        self.embed = nn.Embedding(n_classes, z_dim)
        self.mapping = nn.Sequential(*[EqLinear(2 * z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul, act=True)
                                       for i in range(mapping_layers)])
        self.register_buffer("w_avg", torch.zeros(n_classes, w_dim))

    def map(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """w (N, w_dim) for latents ``z`` (N, z_dim) and class indices ``c`` (N,); ``truncation`` < 1 pulls
        w toward its class's mean."""
        w = self.mapping(torch.cat([_normalize(z), _normalize(self.embed(c))], 1))
        if self.training:
            with torch.no_grad():  # per-class running mean of w
                n = torch.bincount(c, minlength=self.w_avg.shape[0]).unsqueeze(1)
                sums = torch.zeros_like(self.w_avg).index_add_(0, c, w.detach())
                seen = n[:, 0] > 0
                self.w_avg[seen] = torch.lerp(sums[seen] / n[seen], self.w_avg[seen], 0.995)
        return w if truncation == 1.0 else torch.lerp(self.w_avg[c], w, truncation)


class Generator(_Mapped):
    """``G(z, c) -> (image, mask)``: class-conditional mapping network, constant 4x4 input, two style
    layers per resolution, skip outputs for the image (``channels``) and, through its own layers, the mask."""

    def __init__(self, resolution: int, channels: int, n_classes: int, z_dim: int = 256, w_dim: int = 256,
                 mapping_layers: int = 4, channel_base: int = 8192, channel_max: int = 256,
                 mapping_lr_mul: float = 0.01) -> None:
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self._init_mapping(n_classes, z_dim, w_dim, mapping_layers, mapping_lr_mul)
        ch = _widths(channel_base, channel_max)
        self.widths = [ch(4 * 2 ** i) for i in range(int(math.log2(resolution)) - 1)]  # per resolution 4, 8, ...
        self.const = nn.Parameter(torch.randn(ch(4), 4, 4))
        self.layers = nn.ModuleList([StyleLayer(ch(4), ch(4), w_dim)])
        self.to_img = nn.ModuleList([ToOutput(ch(4), channels, w_dim)])
        self.to_mask = nn.ModuleList([ToOutput(ch(4), 1, w_dim)])
        for res in (2 ** k for k in range(3, int(math.log2(resolution)) + 1)):
            self.layers.extend([StyleLayer(ch(res // 2), ch(res), w_dim, up=True), StyleLayer(ch(res), ch(res), w_dim)])
            self.to_img.append(ToOutput(ch(res), channels, w_dim))
            self.to_mask.append(ToOutput(ch(res), 1, w_dim))
        self.num_ws = len(self.layers) + 1  # each output layer shares the w of the next conv; the last has its own

    def noise_strengths(self) -> Dict[int, float]:
        """Mean absolute strength of the noise inputs per resolution (px): how much of each layer's detail is
        drawn from per-pixel noise rather than computed from the styles."""
        res = [4] + [4 * 2 ** (i // 2 + 1) for i in range(len(self.layers) - 1)]
        out: Dict[int, List[float]] = {}
        for r, layer in zip(res, self.layers):
            if layer.noise_strength is not None:
                out.setdefault(r, []).append(abs(float(layer.noise_strength)))
        return {r: round(sum(v) / len(v), 5) for r, v in out.items()}

    def synthesis(self, ws: torch.Tensor, noise_gen: Optional[torch.Generator] = None):
        """(image, mask) from per-layer styles ``ws`` (N, num_ws, w_dim). Both outputs are linear, as StyleGAN
        keeps every output: the mask is on the real masks' scale (0 background, 1 defect; the discriminator
        sees ``2m - 1``) but not squashed into it, so a sharp edge costs G no saturated sigmoid (a sigmoid
        head's vanishing gradients froze the shapes: D told soft fake edges from hard real ones). Threshold
        at 0.5; a generator trained with the earlier sigmoid head keeps its masks (sigmoid(x) >= 0.5 iff
        (x + 1) / 2 >= 0.5)."""
        x = self.const.expand(ws.shape[0], -1, -1, -1).contiguous(memory_format=torch.channels_last)
        x = self.layers[0](x, ws[:, 0], noise_gen)
        img, mask = self.to_img[0](x, ws[:, 1]), self.to_mask[0](x, ws[:, 1])
        for i in range(1, len(self.to_img)):
            x = self.layers[2 * i - 1](x, ws[:, 2 * i - 1], noise_gen)
            x = self.layers[2 * i](x, ws[:, 2 * i], noise_gen)
            img = _up(img) + self.to_img[i](x, ws[:, 2 * i + 1])
            mask = _up(mask) + self.to_mask[i](x, ws[:, 2 * i + 1])
        return img, (mask + 1) * 0.5

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0, z_mix: Optional[torch.Tensor] = None,
                crossover: Optional[int] = None, noise_gen: Optional[torch.Generator] = None):
        """(image, mask) for ``z`` and classes ``c``. Style mixing: layers from ``crossover`` on take the w
        of ``z_mix`` (same classes). ``noise_gen`` draws the noise inputs (reproducible sampling)."""
        ws = self.map(z, c, truncation).unsqueeze(1).repeat(1, self.num_ws, 1)
        if z_mix is not None:
            ws[:, crossover:] = self.map(z_mix, c, truncation).unsqueeze(1)
        return self.synthesis(ws, noise_gen)


class DefectGenerator(_Mapped):
    """Stage 2 of the two-stage GAN (after DFMGAN, Duan et al. 2023): ``surface`` is a :class:`Generator`
    fitted on OK patches (stage 1, one label), frozen; trainable defect blocks change its features inside a
    mask they generate. ``G(z, c) -> (image, mask)`` with ``z = [surface z | defect z]`` (``z_dim`` = the sum).

    From resolution ``start`` on, a defect path (its own class-conditional mapping network and style layers,
    ``channels`` wide at most and never wider than the surface, no noise inputs) reads the surface's features at
    ``start``, with its own per-pixel noise inputs (strength ``noise`` at first: where and how a defect grows needs
    randomness in space, which the frozen surface hardly has at low resolution), grows a mask by skip outputs like
    StyleGAN's image, and adds its features, through a zero-initialised
    1x1 conv, to the surface's features at each resolution, gated by the mask there (``clamp(m, 0, 1)`` of the
    linear mask). The surface runs twice from ``start``: as it is (the OK sample, computed exactly as the surface
    alone computes it) and with the additions, its noise inputs shared. The image is the OK sample blended with the
    changed one by the full-resolution gate, so a defect sample differs from its OK sample (same surface z and
    noise) only where its mask is above 0. At initialisation the image is the OK sample."""

    def __init__(self, surface: Generator, n_classes: int, z_dim: int = 128, w_dim: int = 128,
                 mapping_layers: int = 2, mapping_lr_mul: float = 0.01, start: int = 16, channels: int = 64,
                 noise: float = 1.0) -> None:
        super().__init__()
        top = 4 * 2 ** (len(surface.widths) - 1)
        if start & (start - 1) or not 8 <= start <= top:
            raise ValueError(f"defect blocks start at a power of 2 from 8 to the resolution {top}, got {start}")
        self.surface = surface.eval().requires_grad_(False)
        self.defect_z_dim, self.w_dim = z_dim, w_dim
        self.z_dim = surface.z_dim + z_dim
        self._init_mapping(n_classes, z_dim, w_dim, mapping_layers, mapping_lr_mul)
        self.first = int(math.log2(start)) - 2  # index of the start resolution in surface.widths
        levels = range(self.first, len(surface.widths))
        wd = [min(channels, surface.widths[i]) for i in levels]  # no wider than the surface at any resolution
        self.enter = StyleLayer(surface.widths[self.first], wd[0], w_dim, noise_init=noise)
        self.ups = nn.ModuleList([StyleLayer(a, b, w_dim, up=True, noise_init=noise) for a, b in zip(wd, wd[1:])])
        self.convs = nn.ModuleList([StyleLayer(c, c, w_dim, noise_init=noise) for c in wd])
        self.to_mask = nn.ModuleList([ToOutput(c, 1, w_dim) for c in wd])
        self.inject = nn.ModuleList([EqConv2d(c, surface.widths[i], 1) for c, i in zip(wd, levels)])
        for conv in self.inject:
            nn.init.zeros_(conv.weight)
        self.num_ws = 2 * len(levels) + 1  # enter, (up, conv) per level after the first, conv; to_mask's own

    def train(self, mode: bool = True) -> DefectGenerator:
        super().train(mode)
        self.surface.eval()  # frozen: its w_avg keeps the stage-1 value
        return self

    def requires_grad_(self, requires_grad: bool = True) -> DefectGenerator:
        super().requires_grad_(requires_grad)
        self.surface.requires_grad_(False)  # frozen whatever a trainer toggles
        return self

    def synthesis(self, ws_s: torch.Tensor, ws: torch.Tensor, noise_gen: Optional[torch.Generator] = None):
        """(image, mask) from the surface's styles ``ws_s`` (N, surface.num_ws, w) and the defect styles ``ws``
        (N, num_ws, w)."""
        S, n = self.surface, ws_s.shape[0]
        x = S.const.expand(n, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        x = S.layers[0](x, ws_s[:, 0], noise_gen)
        img = S.to_img[0](x, ws_s[:, 1])
        branches = [(x, img)]  # the OK sample; from the start resolution also the changed one
        # the surface's noise first, in the surface's own order; the defect blocks' then comes after it
        surface_noise = [[StyleLayer.draw_noise(n, 4 * 2 ** i, x, noise_gen) for _ in range(2)]
                         for i in range(1, len(S.to_img))]
        r = mask = None
        for i, noises in enumerate(surface_noise, 1):
            xs = [S.layers[2 * i](S.layers[2 * i - 1](b, ws_s[:, 2 * i - 1], noise=noises[0]), ws_s[:, 2 * i],
                                  noise=noises[1]) for b, _ in branches]
            if i >= self.first:
                k = i - self.first  # defect level
                if k == 0:
                    r = self.convs[0](self.enter(xs[0], ws[:, 0], noise_gen), ws[:, 1], noise_gen)
                    mask = self.to_mask[0](r, ws[:, 2])
                    xs.append(xs[0])
                    branches.append(branches[0])
                else:
                    r = self.convs[k](self.ups[k - 1](r, ws[:, 2 * k], noise_gen), ws[:, 2 * k + 1], noise_gen)
                    mask = _up(mask) + self.to_mask[k](r, ws[:, 2 * k + 2])
                xs[1] = xs[1] + ((mask + 1) * 0.5).clamp(0, 1) * self.inject[k](r)
            branches = [(b, _up(img) + S.to_img[i](b, ws_s[:, 2 * i + 1])) for b, (_, img) in zip(xs, branches)]
        (_, ok), (_, changed) = branches
        return torch.lerp(ok, changed, ((mask + 1) * 0.5).clamp(0, 1)), (mask + 1) * 0.5

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0, z_mix: Optional[torch.Tensor] = None,
                crossover: Optional[int] = None, noise_gen: Optional[torch.Generator] = None):
        """(image, mask) for ``z`` = [surface z | defect z] and defect classes ``c``; style mixing (``z_mix``,
        ``crossover``) on the defect styles, as :meth:`Generator.forward`."""
        zs, zd = z[:, :self.surface.z_dim], z[:, self.surface.z_dim:]
        ws_s = self.surface.map(zs, torch.zeros_like(c), truncation).unsqueeze(1).repeat(1, self.surface.num_ws, 1)
        ws = self.map(zd, c, truncation).unsqueeze(1).repeat(1, self.num_ws, 1)
        if z_mix is not None:
            ws[:, crossover:] = self.map(z_mix[:, self.surface.z_dim:], c, truncation).unsqueeze(1)
        return self.synthesis(ws_s, ws, noise_gen)


def _minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append the mean standard deviation over groups of samples as one more feature map."""
    n, _, h, w = x.shape
    g = max(k for k in range(1, min(group, n) + 1) if n % k == 0)
    y = x.reshape(g, n // g, *x.shape[1:])
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (n // g,)
    return torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)], 1)


class DBlock(nn.Module):
    """Residual discriminator block: conv, pool, conv, plus a pooled 1x1 skip, halving the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0, self.conv1 = EqConv2d(cin, cin, 3, act=True), EqConv2d(cin, cout, 3, act=True)
        self.skip = EqConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (y + self.skip(F.avg_pool2d(x, 2))) / SQRT2


class Discriminator(nn.Module):
    """``D(image, mask, c) -> logits`` (N,): residual blocks over image + mask channels, minibatch stddev,
    and projection conditioning (the class embedding's inner product with the final feature)."""

    def __init__(self, resolution: int, channels: int, n_classes: int, channel_base: int = 8192,
                 channel_max: int = 256, mbstd_group: int = 4) -> None:
        super().__init__()
        ch = _widths(channel_base, channel_max)
        self.mbstd_group = mbstd_group
        self.from_input = EqConv2d(channels + 1, ch(resolution), 1, act=True)
        self.blocks = nn.Sequential(*[DBlock(ch(2 ** k), ch(2 ** (k - 1)))
                                      for k in range(int(math.log2(resolution)), 2, -1)])
        c4 = ch(4)
        self.conv = EqConv2d(c4 + 1, c4, 3, act=True)
        self.fc = EqLinear(c4 * 16, c4, act=True)
        self.out = EqLinear(c4, 1)
        self.embed = nn.Embedding(n_classes, c4)
        self.proj_scale = 1 / math.sqrt(c4)

    def forward(self, img: torch.Tensor, mask: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = torch.cat([img, mask * 2 - 1], 1).contiguous(memory_format=torch.channels_last)  # mask in [-1, 1] too
        x = self.blocks(self.from_input(x))
        h = self.fc(self.conv(_minibatch_stddev(x, self.mbstd_group)).flatten(1))
        return self.out(h).squeeze(1) + (h * self.embed(c)).sum(1) * self.proj_scale


def make_generator(cfg: GanConfig, n_classes: int, surface: Optional[Generator] = None) -> nn.Module:
    """The :class:`Generator` of ``cfg``; with ``surface`` (stage 2) the :class:`DefectGenerator` on it."""
    if surface is not None:
        return DefectGenerator(surface, n_classes, cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mul,
                               cfg.defect_start, cfg.defect_channels, cfg.defect_noise)
    return Generator(cfg.resolution, cfg.channels, n_classes, cfg.z_dim, cfg.w_dim, cfg.mapping_layers,
                     cfg.channel_base, cfg.channel_max, cfg.mapping_lr_mul)


def make_discriminator(cfg: GanConfig, n_classes: int) -> nn.Module:
    """The pixel :class:`Discriminator`, or with ``discriminator: projected`` the one on frozen Lite0 features."""
    if cfg.discriminator == "projected":
        from .projected import ProjectedDiscriminator

        return ProjectedDiscriminator(cfg.resolution, cfg.channels, n_classes, cfg.projected_weights,
                                      cfg.projected_width)
    return Discriminator(cfg.resolution, cfg.channels, n_classes, cfg.channel_base, cfg.channel_max, cfg.mbstd_group)
