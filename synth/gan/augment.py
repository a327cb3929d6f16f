"""Differentiable discriminator augmentation for (image, mask) pairs, with an adaptive probability.

Every image the discriminator sees (real or generated) goes through the same random ops (DiffAugment,
Zhao et al. 2020), so D cannot overfit a few hundred real crops while G still learns the un-augmented
distribution. Each op is applied to each image with probability ``p`` (as in ADA, Karras et al. 2020),
and ``p`` is steered from the overfitting signal r_t = E[sign(D(real))]: up while r_t > target, down
below it.

Geometric ops move the image and its mask together (one set of random parameters for both); colour
ops change the image only. Ops: ``flip`` (x-flip), ``rot90`` (0-3 quarter turns), ``translation`` (up to 1/8
of the side, zero fill), ``cutout`` (a square of half the side set to 0 in the image and the mask),
``color`` (brightness, contrast, and saturation on RGB).

    aug = AdaptiveAugment(["flip", "translation", "cutout", "color"], batch_size=32)
    img, mask = aug(img, mask)          # img ~[-1, 1], mask ~[0, 1] (0 background), both (N, ., H, W)
    aug.update(d_real_logits)           # after each D step
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch

__all__ = ["AdaptiveAugment"]

Pair = Tuple[torch.Tensor, torch.Tensor]


def _chance(n: int, p: float, device: torch.device) -> torch.Tensor:
    """(n,) bool: which images get an op."""
    return torch.rand(n, device=device) < p


def _flip(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.where(_chance(x.shape[0], p, x.device)[:, None, None, None], x.flip(3), x)


def _rot90(x: torch.Tensor, p: float) -> torch.Tensor:
    n = x.shape[0]
    turns = torch.randint(0, 4, (n,), device=x.device) * _chance(n, p, x.device)
    for k in (1, 2, 3):
        x = torch.where((turns == k)[:, None, None, None], torch.rot90(x, k, (2, 3)), x)
    return x


def _translate(x: torch.Tensor, p: float, ratio: float = 0.125) -> torch.Tensor:
    """Integer shifts with zero fill (a gather from the zero-padded batch)."""
    n, _, h, w = x.shape
    on = _chance(n, p, x.device)
    sy = torch.randint(-int(h * ratio), int(h * ratio) + 1, (n, 1, 1), device=x.device) * on[:, None, None]
    sx = torch.randint(-int(w * ratio), int(w * ratio) + 1, (n, 1, 1), device=x.device) * on[:, None, None]
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gy = (gy[None] + sy + 1).clamp(0, h + 1)  # index into the padded image: 0 and h+1 are the zero border
    gx = (gx[None] + sx + 1).clamp(0, w + 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, p: float, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` times the side, centred anywhere in the image (it may be clipped)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = torch.randint(0, h, (n, 1, 1), device=x.device) - ch // 2
    x0 = torch.randint(0, w, (n, 1, 1), device=x.device) - cw // 2
    yy = torch.arange(h, device=x.device)[None, :, None]
    xx = torch.arange(w, device=x.device)[None, None, :]
    inside = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw) & _chance(n, p, x.device)[:, None, None]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _color(img: torch.Tensor, p: float) -> torch.Tensor:
    n = img.shape[0]

    def r() -> torch.Tensor:
        return torch.rand(n, 1, 1, 1, device=img.device, dtype=img.dtype)

    def on() -> torch.Tensor:
        return _chance(n, p, img.device)[:, None, None, None].to(img.dtype)

    img = img + (r() - 0.5) * on()  # brightness
    if img.shape[1] == 3:  # saturation
        mean = img.mean(1, keepdim=True)
        img = (img - mean) * (1 + (r() * 2 - 1) * on()) + mean
    mean = img.mean((1, 2, 3), keepdim=True)  # contrast
    return (img - mean) * (1 + (r() - 0.5) * on()) + mean


class AdaptiveAugment:
    """DiffAugment ops at probability ``p``, steered ADA-style toward ``target`` when ``adaptive``.

    Every ``interval`` calls of :meth:`update`, ``p`` moves by ``sign(r_t - target) * images / (speed_kimg * 1000)``
    (clamped to [0, ``p_max``]), ``images`` being the logits seen since the last move: p can cross [0, 1] in
    ``speed_kimg`` thousand real images at most. ``rt`` is the last r_t measured. The cap keeps a noisy r_t
    (few logits, fast steering) from driving p to 1, where augmentations start to leak into G's samples."""

    def __init__(self, ops: Sequence[str], p: float = 0.0, target: float = 0.6, speed_kimg: float = 100.0,
                 interval: int = 4, adaptive: bool = True, p_max: float = 1.0) -> None:
        self.ops, self.p, self.target, self.speed_kimg = list(ops), float(p), target, speed_kimg
        self.interval, self.adaptive, self.p_max = interval, adaptive, p_max
        self.rt = 0.0
        self._sign_sum, self._count, self._calls = 0.0, 0, 0

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> Pair:
        """Augmented (image, mask); the image has C channels ~[-1, 1], the mask one ~[0, 1] (0: background, the
        fill of translation and cutout)."""
        if self.p <= 0 or not self.ops:
            return img, mask
        c = img.shape[1]
        x = torch.cat([img, mask], 1)  # geometric ops on both at once: one set of random parameters
        if "flip" in self.ops:
            x = _flip(x, self.p)
        if "rot90" in self.ops:
            x = _rot90(x, self.p)
        if "translation" in self.ops:
            x = _translate(x, self.p)
        if "cutout" in self.ops:
            x = _cutout(x, self.p)
        img, mask = x[:, :c], x[:, c:]
        if "color" in self.ops:
            img = _color(img, self.p)
        return img, mask

    def update(self, real_logits: torch.Tensor) -> None:
        """Accumulate D's logits on reals; every ``interval`` calls, measure r_t and move ``p``."""
        self._sign_sum += float(torch.sign(real_logits.detach()).sum())
        self._count += real_logits.numel()
        self._calls += 1
        if self._calls % self.interval:
            return
        self.rt = self._sign_sum / max(self._count, 1)
        if self.adaptive:
            step = self._count / (self.speed_kimg * 1000)
            self.p = min(self.p_max, max(0.0, self.p + (step if self.rt > self.target else -step)))
        self._sign_sum, self._count = 0.0, 0

    def state_dict(self) -> Dict[str, Union[float, int]]:
        return {"p": self.p, "rt": self.rt, "sign_sum": self._sign_sum, "count": self._count, "calls": self._calls}

    def load_state_dict(self, state: Dict[str, Union[float, int]]) -> None:
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self._sign_sum, self._count, self._calls = float(state["sign_sum"]), int(state["count"]), int(state["calls"])
