"""Defect patches from a trained GAN: :class:`GanSource` reads a GAN_DIR (``generator.safetensors`` +
``gan.yaml``, written by ``lineguard synth fit``).

    src = GanSource.load("runs/gan", device="cuda:0", truncation=0.8)
    patches = src.sample("scratch", 64, np.random.default_rng(0))    # List[Patch], same rng -> same patches

Patches are generated in batches of 64 under ``torch.no_grad()`` on ``device`` (``cpu``, ``cuda`` or
``cuda:N``); the latents and the seeds of every noise input are drawn from the given numpy rng only. The
noise comes from the device's own generator, so CUDA makes other patches than the CPU (from the same rng):
the source's ``version`` names the device kind then, and a generated set is not resumed across kinds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lineguard import LineguardError
from lineguard.checkpoint import torch_device
from lineguard.synth.patches import Patch, PatchSource

from .config import GAN_YAML, GanDirError, GanFile
from .networks import make_generator

__all__ = ["GanSource", "load_generator"]

BATCH = 64
REDRAW_ROUNDS = 3  # rounds of redrawing patches whose mask came out empty before giving up on them


def load_generator(gan_dir: Union[str, os.PathLike], fit_flags: str = "") -> Tuple[torch.nn.Module, GanFile]:
    """The generator of a GAN_DIR (CPU, eval mode, frozen) and its ``gan.yaml``; a stage-2 GAN_DIR's
    generator is the :class:`~.networks.DefectGenerator` on its surface. A GAN_DIR that cannot be used is one
    :class:`GanDirError` line, whose remedy names ``fit_flags`` (e.g. ``--target surface``)."""
    gan_dir = Path(gan_dir)
    fix = f"train one with `lineguard synth fit --data DATA{fit_flags} --out {gan_dir}`"
    meta_path = gan_dir / GAN_YAML
    if not meta_path.is_file():
        raise GanDirError(f"{meta_path}: missing, {gan_dir} is not a GAN_DIR; {fix}")
    try:
        info = GanFile.load(meta_path)
    except GanDirError as e:
        raise GanDirError(f"{e}; retrain: {fix}") from None
    weights = gan_dir / info.weights
    if not weights.is_file():
        raise GanDirError(f"{weights}: missing (named by {meta_path}); {fix}")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    if sha != info.sha256:
        raise GanDirError(f"{weights}: sha256 {sha[:16]}... differs from the {meta_path} record "
                          f"{info.sha256[:16]}...; the files do not belong together, {fix}")
    try:
        surface = None if info.surface is None else make_generator(info.surface.config, len(info.surface.labels))
        G = make_generator(info.config, len(info.labels), surface)
        G.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise GanDirError(f"{meta_path} / {weights}: cannot build the generator ({e}); {fix}") from None
    return G.eval().requires_grad_(False), info


class GanSource(PatchSource):
    """Patches from the EMA generator of a GAN_DIR. ``version`` is the first 16 hex digits of the weights'
    sha256 (``-cuda`` appended on a CUDA device). ``truncation`` < 1 trades variety for typicality (w pulled
    toward its class's mean)."""

    method = "stylegan"

    def __init__(self, generator: torch.nn.Module, info: GanFile, gan_dir: Path,
                 device: Union[str, torch.device] = "cpu", truncation: float = 1.0) -> None:
        self.G, self.info, self.gan_dir = generator, info, gan_dir
        self.device, self.truncation = torch_device(device), truncation
        self.version = info.sha256[:16] + ("" if self.device.type == "cpu" else f"-{self.device.type}")

    @classmethod
    def load(cls, gan_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
             truncation: float = 1.0) -> GanSource:
        """The GAN of ``gan_dir`` on ``device``; a GAN_DIR that cannot be used is one clear line."""
        G, info = load_generator(gan_dir)
        if not info.classes:
            raise GanDirError(f"{gan_dir}: a surface GAN (stage 1: OK patches, no defect classes); fit the defects "
                              f"on it: `lineguard synth fit --data DATA --surface {gan_dir} --out GAN_DIR`")
        dev = torch_device(device)
        return cls(G.to(dev), info, Path(gan_dir), dev, truncation)

    @property
    def classes(self) -> List[str]:
        return list(self.info.classes)

    @property
    def resolution(self) -> int:
        return self.info.resolution

    def _generate(self, c: int, n: int, rng: np.random.Generator):
        """(images uint8 (n, R, R[, 3]), masks uint8 (n, R, R) in {0, 255}) for class index ``c``."""
        z = torch.from_numpy(rng.standard_normal((n, self.G.z_dim), dtype=np.float32)).to(self.device)
        noise = torch.Generator(self.device).manual_seed(int(rng.integers(2 ** 63)))
        with torch.no_grad():
            img, mask = self.G(z, torch.full((n,), c, device=self.device), self.truncation, noise_gen=noise)
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        mask = ((mask[:, 0] >= 0.5).to(torch.uint8) * 255).cpu().numpy()
        return (img[..., 0] if img.shape[-1] == 1 else img), mask

    def sample(self, label: str, n: int, rng: np.random.Generator) -> List[Patch]:
        """``n`` patches of ``label``, drawn only from ``rng``. A patch whose thresholded mask is empty is
        redrawn (up to 3 more rounds for the missing ones); a generator that keeps making empty masks
        for a class can therefore return fewer than ``n`` patches (never an empty-mask patch)."""
        if label not in self.classes:
            raise LineguardError(f"{self.gan_dir}: the GAN makes {self.classes}, not '{label}'")
        c = self.info.labels.index(label)
        out: List[Patch] = []
        for _ in range(1 + REDRAW_ROUNDS):
            missing = n - len(out)
            for start in range(0, missing, BATCH):
                imgs, masks = self._generate(c, min(BATCH, missing - start), rng)
                out.extend(Patch(i.copy(), m.copy(), label) for i, m in zip(imgs, masks) if m.any())
            if len(out) == n:
                break
        return out
