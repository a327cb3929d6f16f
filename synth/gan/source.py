"""Defect patches from a trained GAN: :class:`GanSource` reads a GAN_DIR (``generator.safetensors`` +
``gan.yaml``, written by ``lineguard synth fit``).

    src = GanSource.load("runs/gan", truncation=0.8)
    patches = src.sample("scratch", 64, np.random.default_rng(0))    # List[Patch], same rng -> same patches

Patches are generated in batches of 64 under ``torch.no_grad()``; the latents and every noise input
are drawn from the given numpy rng only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from lineguard import LineguardError
from lineguard.synth.patches import Patch, PatchSource

from .config import GAN_FORMAT, GAN_FORMAT_VERSION, GAN_YAML, GanConfig
from .networks import make_generator

__all__ = ["GanSource"]

BATCH = 64
REDRAW_ROUNDS = 3  # rounds of redrawing patches whose mask came out empty before giving up on them


class GanSource(PatchSource):
    """Patches from the EMA generator of a GAN_DIR. ``version`` is the first 16 hex digits of the weights'
    sha256. ``truncation`` < 1 trades variety for typicality (w pulled toward its class's mean)."""

    method = "stylegan"

    def __init__(self, generator: torch.nn.Module, meta: Dict[str, Any], version: str, gan_dir: Path,
                 device: Union[str, torch.device] = "cpu", truncation: float = 1.0) -> None:
        self.G, self.meta, self.version, self.gan_dir = generator, meta, version, gan_dir
        self.device, self.truncation = torch.device(device), truncation

    @classmethod
    def load(cls, gan_dir: Union[str, os.PathLike], device: str = "cpu", truncation: float = 1.0) -> GanSource:
        gan_dir = Path(gan_dir)
        fix = f"train one with `lineguard synth fit --data DATA --out {gan_dir}`"
        meta_path = gan_dir / GAN_YAML
        if not meta_path.is_file():
            raise LineguardError(f"{meta_path}: missing, {gan_dir} is not a GAN_DIR; {fix}")
        try:
            meta = yaml.safe_load(meta_path.read_text())
        except yaml.YAMLError as e:
            raise LineguardError(f"{meta_path}: not valid YAML ({e}); {fix}") from None
        if not isinstance(meta, dict) or (meta.get("format"), meta.get("version")) != (GAN_FORMAT, GAN_FORMAT_VERSION):
            got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else None
            raise LineguardError(f"{meta_path}: format {got}, this lineguard reads ({GAN_FORMAT!r}, "
                                 f"{GAN_FORMAT_VERSION}); retrain: {fix}")
        weights = gan_dir / str(meta.get("weights", ""))
        if not weights.is_file():
            raise LineguardError(f"{weights}: missing (named by {meta_path}); {fix}")
        sha = hashlib.sha256(weights.read_bytes()).hexdigest()
        if sha != meta.get("sha256"):
            raise LineguardError(f"{weights}: sha256 {sha[:16]}... differs from the {meta_path} record "
                                 f"{str(meta.get('sha256'))[:16]}...; the files do not belong together, {fix}")
        try:
            cfg = GanConfig.model_validate(meta["config"])
            G = make_generator(cfg, len(meta["labels"]))
            G.load_state_dict(load_file(str(weights)))
        except (KeyError, ValidationError, SafetensorError, RuntimeError) as e:
            raise LineguardError(f"{meta_path} / {weights}: cannot build the generator ({e}); {fix}") from None
        return cls(G.eval().requires_grad_(False).to(device), meta, sha[:16], gan_dir, device, truncation)

    @property
    def classes(self) -> List[str]:
        return list(self.meta["classes"])

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

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
        c = self.meta["labels"].index(label)
        out: List[Patch] = []
        for _ in range(1 + REDRAW_ROUNDS):
            missing = n - len(out)
            for start in range(0, missing, BATCH):
                imgs, masks = self._generate(c, min(BATCH, missing - start), rng)
                out.extend(Patch(i.copy(), m.copy(), label) for i, m in zip(imgs, masks) if m.any())
            if len(out) == n:
                break
        return out
