"""Training the defect GAN: ``fit(data_dir, out_dir, cfg)`` writes a GAN_DIR.

Data: a square crop around every real defect with its mask (:func:`~lineguard.synth.crops.defect_crops`)
of the defect classes in the train split (all records when the data set has no split); rare classes
are drawn more often (weight ``count ** -oversample_power`` per crop).

Two stages (DFMGAN): ``target: surface`` fits the generator on random patches of the OK images (at the
defect crops' scale, one label, empty masks); a fit with ``surface: THAT_GAN_DIR`` freezes that generator
and trains only the defect blocks of a :class:`~lineguard.synth.gan.networks.DefectGenerator` on it (the
stage-2 GAN_DIR holds both; its ``gan.yaml`` names the surface's weights by sha256).

Losses: non-saturating logistic; lazy R1 on the reals (image and mask) every ``r1_interval`` D steps;
an EMA copy of G is what gets saved; Adam. The out folder::

    checkpoint.pt          all that resuming needs: weights, optimisers, augment state, counters, RNG
                           states, config, format version (written atomically every snapshot)
    fit.yaml               the resolved config
    log.jsonl              a row per tick: losses, R1, augment p, r_t, s/kimg
    samples/               reals.png and kimg000123.png: a row per class, cells image | mask
    shapes.jsonl           a row with every sample grid: per class, how the masks of 64 generated samples
                           differ from the training crops' (orientation, elongation, area) and how varied
                           both are (mean pairwise IoU; ``synth.shapes``)
    texture.jsonl          a row with every sample grid: the generated images' power per frequency band
                           against the training images' (``synth.texture``: ``hf_ratio`` well above 1 is
                           the salt texture of detail drawn from noise) and the noise inputs' strengths
    generator.safetensors  the EMA generator   } the GAN_DIR that GanSource reads,
    gan.yaml               what it is          } written every snapshot and at the end

Determinism: one torch RNG seeded by ``seed`` draws batches, latents, noise and augmentations, and it
is checkpointed, so on CPU a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lineguard import LineguardError
from lineguard.checkpoint import (
    CheckpointError,
    check_settings,
    load_checkpoint,
    restoring,
    save_checkpoint,
    torch_device,
)
from lineguard.config import dump_config
from lineguard.data.format import Dataset, DatasetError, Record
from lineguard.data.imaging import ImageFileError, read_image, resize, write_png
from lineguard.data.progress import track
from lineguard.files import atomic_path, sha256_file
from lineguard.synth.crops import defect_crops, group_by_class, shape_views
from lineguard.synth.shapes import shape_report, split_by_class
from lineguard.synth.texture import texture_report

from .augment import AdaptiveAugment
from .config import ARCH_FIELDS, GAN_FORMAT, GAN_FORMAT_VERSION, GAN_YAML, WEIGHTS, GanConfig, GanFile, SurfaceInfo
from .networks import DefectGenerator, Generator, make_discriminator, make_generator
from .source import load_generator

__all__ = ["CHECKPOINT", "GanTrainer", "TrainingData", "fit", "load_surface", "load_training_data"]

CHECKPOINT = "checkpoint.pt"
STATE_KEYS = ("labels", "G", "D", "G_ema", "opt_g", "opt_d", "augment", "step", "nimg", "seconds", "rng_cpu",
              "rng_cuda")  # a checkpoint's keys besides format, version and config; "surface" (the stage-1
# weights' sha256) since the two stages, absent in older checkpoints (one-stage runs)
GRID_COLUMNS = 8
SHAPE_SAMPLES = 64  # generated masks per class in shapes.jsonl
OK_PATCHES_PER_IMAGE = 4
OK_IMAGES_MAX = 1000
PathLike = Union[str, os.PathLike]


@dataclass
class TrainingData:
    """Crops as tensors: ``images`` (N, C, R, R) in [-1, 1], ``masks`` (N, 1, R, R) in {0, 1}, ``labels``
    (N,) indices into ``label_names`` (the defect classes; for a surface fit the OK class alone, its masks
    empty), ``weights`` the sampling weight of each crop, ``prior`` (N,) True for the shape prior's warped
    copies (``shape_views``)."""

    classes: List[str]  # the defect classes the generator makes (none for a surface)
    label_names: List[str]
    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    prior: torch.Tensor
    provenance: Dict[str, Any]


def _to_gray_or_rgb(img: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1 and img.ndim == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if channels == 3 and img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return img


def _to_tensor(arrays: List[np.ndarray]) -> torch.Tensor:
    """uint8 (R, R) or (R, R, 3) arrays -> float (N, C, R, R) in [-1, 1]."""
    a = np.stack(arrays)
    a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(a)).float() / 127.5 - 1


def _ok_patches(ds: Dataset, records: List[Record], sides: List[int], cfg: GanConfig) -> torch.Tensor:
    """Random squares of OK images, their sides drawn from those of the defect crops (same scale)."""
    ok = [r for r in records if r.label == ds.classes.ok_class]
    if not ok:
        held = "a defect-type set (no OK class)" if ds.classes.ok_class is None else \
            f"no '{ds.classes.ok_class}' image in the training records"
        raise LineguardError(f"{ds.root}: a surface fit trains on OK images, and there is {held}")
    rng = np.random.default_rng(cfg.seed)
    out = []
    for i in rng.permutation(len(ok))[:OK_IMAGES_MAX]:
        try:
            img, _ = read_image(ds.path(ok[i].image))
        except ImageFileError as e:
            raise DatasetError(f"{ds.path(ok[i].image)} (record {ok[i].id}): {e}") from None
        img = _to_gray_or_rgb(img, cfg.channels)
        h, w = img.shape[:2]
        for side in rng.choice(sides, OK_PATCHES_PER_IMAGE):
            s = int(min(side, h, w))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            out.append(resize(img[y:y + s, x:x + s], (cfg.resolution, cfg.resolution)))
    return _to_tensor(out)


def load_training_data(data_dir: PathLike, cfg: GanConfig) -> TrainingData:
    """The crops ``fit`` trains on. A defect class with training images but no usable crop is an error
    naming it and why its images were skipped (no mask, or one under 16 px)."""
    ds = Dataset.load(data_dir)
    train = ds.split("train")
    records = train or ds.records
    crops, skipped = defect_crops(ds, records, size=cfg.resolution, channels=cfg.channels, views=cfg.crop_views,
                                  jitter=cfg.crop_jitter, seed=cfg.seed)
    by_class = group_by_class(crops)
    classes = [c for c in ds.classes.defect_classes if any(r.label == c for r in records)]
    if not classes:
        raise LineguardError(f"{ds.root}: none of the {len(records)} training records shows a defect")
    label_of = {r.id: r.label for r in records}
    for c in classes:
        if not by_class.get(c):
            why = [s for s in skipped if label_of.get(s.partition(": ")[0]) == c]
            raise LineguardError(
                f"{ds.root}: class '{c}' has no usable defect crop ({len(why)} of its images skipped: "
                f"{'; '.join(why[:3])}{' ...' if len(why) > 3 else ''}); give its images masks or boxes, or "
                "drop the class from the training records")
    counts = {c: len(by_class[c]) for c in classes}
    prior = {c: shape_views(by_class[c], cfg.shape_views, cfg.shape_rotate, seed=cfg.seed) for c in classes}
    ordered = [crop for c in classes for crop in by_class[c] + prior[c]]
    is_prior = torch.tensor([k >= counts[c] for c in classes for k in range(counts[c] + len(prior[c]))])
    labels = torch.tensor([classes.index(x.label) for x in ordered])
    sizes = torch.tensor([counts[c] + len(prior[c]) for c in classes], dtype=torch.float64)
    weights = sizes.pow(-cfg.oversample_power)[labels]
    provenance = {"data": str(ds.root.resolve()), "split": "train" if train else "all records",
                  "records": len(records), "crops": counts, "shape_prior": {c: len(v) for c, v in prior.items()},
                  "skipped": len(skipped), "skipped_examples": skipped[:5]}
    if cfg.target == "surface":  # OK patches at the scale of the defect crops, one label, empty masks
        images = _ok_patches(ds, records, [x.box[2] - x.box[0] for x in ordered], cfg)
        provenance["ok_patches"] = len(images)
        return TrainingData([], [ds.classes.ok_class], images, torch.zeros_like(images[:, :1]),
                            torch.zeros(len(images), dtype=torch.long), torch.ones(len(images)),
                            torch.zeros(len(images), dtype=torch.bool), provenance)
    return TrainingData(classes, list(classes), _to_tensor([x.image for x in ordered]),
                        torch.from_numpy(np.stack([x.mask for x in ordered]) > 127).float()[:, None],
                        labels, weights, is_prior, provenance)


def load_surface(cfg: GanConfig) -> Optional[Tuple[Generator, SurfaceInfo]]:
    """Stage 2's frozen surface generator (``cfg.surface``) and what it is; None without one. The surface
    must be a stage-1 fit of the same resolution and channels."""
    if cfg.surface is None:
        return None
    G, info = load_generator(cfg.surface, " --target surface")
    if info.config.target != "surface" or info.surface is not None:
        raise LineguardError(f"{cfg.surface}: not a surface GAN (it makes {info.classes}); fit one with "
                             "target: surface (`lineguard synth fit --target surface`)")
    got, want = (info.resolution, info.channels), (cfg.resolution, cfg.channels)
    if got != want:
        raise LineguardError(f"{cfg.surface}: a surface of {got[0]} px and {got[1]} channel(s); this fit is "
                             f"{want[0]} px and {want[1]}: fit both stages at one resolution")
    return G, SurfaceInfo(sha256=info.sha256, kimg=info.kimg, labels=info.labels, config=info.config)


class GanTrainer:
    """G, D, the EMA generator, their optimisers, the augmentation and the counters of one run;
    :meth:`step` trains one batch (a D step, then a G step)."""

    def __init__(self, cfg: GanConfig, data: TrainingData, device: Union[str, torch.device] = "cpu",
                 surface: Optional[Tuple[Generator, SurfaceInfo]] = None) -> None:
        """``surface``: stage 2's frozen stage-1 generator and what it is (:func:`load_surface`)."""
        self.cfg, self.device = cfg, torch.device(device)
        self.surface = None if surface is None else surface[1]
        torch.manual_seed(cfg.seed)
        n = len(data.label_names)
        self.G = make_generator(cfg, n, None if surface is None else surface[0]).to(self.device)
        self.D = make_discriminator(cfg, n).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        trainable = [p for p in self.G.parameters() if p.requires_grad]  # stage 2: the defect blocks only
        self.opt_g = torch.optim.Adam(trainable, lr=cfg.lr_g, betas=cfg.betas)
        lazy = cfg.r1_interval / (cfg.r1_interval + 1)  # StyleGAN2's correction for lazy regularisation
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d * lazy,
                                      betas=(cfg.betas[0] ** lazy, cfg.betas[1] ** lazy))
        a = cfg.augment
        self.augment = AdaptiveAugment(a.ops, a.p_init, a.target, a.speed_kimg, a.interval, a.adaptive, a.p_max)
        self.images, self.masks = data.images.to(self.device), data.masks.to(self.device)
        self.labels, self.weights = data.labels.to(self.device), data.weights.float().to(self.device)
        self.step_count, self.nimg, self.seconds = 0, 0, 0.0

    def _reals(self):
        b = self.cfg.batch_size
        idx = torch.multinomial(self.weights, b, replacement=True)
        return self.images[idx], self.masks[idx], self.labels[idx]

    def _fakes(self, c: torch.Tensor):
        z = torch.randn(len(c), self.G.z_dim, device=self.device)
        if torch.rand(()) < self.cfg.style_mixing:
            crossover = int(torch.randint(1, self.G.num_ws, ()))
            return self.G(z, c, z_mix=torch.randn_like(z), crossover=crossover)
        return self.G(z, c)

    def step(self) -> Dict[str, Any]:
        """One D step (with R1 every ``r1_interval``-th) and one G step; the losses, R1 (0 when not applied),
        the augment p and r_t."""
        cfg = self.cfg
        t0 = time.perf_counter()
        real_img, real_mask, c = self._reals()
        # D: push D(real) up and D(fake) down
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake_img, fake_mask = self._fakes(c)
        r1_step = cfg.r1_gamma > 0 and self.step_count % cfg.r1_interval == 0
        if r1_step:
            real_img, real_mask = real_img.detach().requires_grad_(True), real_mask.detach().requires_grad_(True)
        real_logits = self.D(*self.augment(real_img, real_mask), c)
        loss_d = F.softplus(self.D(*self.augment(fake_img, fake_mask), c)).mean() + F.softplus(-real_logits).mean()
        r1 = torch.zeros((), device=self.device)
        if r1_step:
            g_img, g_mask = torch.autograd.grad(real_logits.sum(), [real_img, real_mask], create_graph=True)
            r1 = (g_img.square().sum((1, 2, 3)) + g_mask.square().sum((1, 2, 3))).mean()
            loss_d = loss_d + r1 * (cfg.r1_gamma / 2 * cfg.r1_interval)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.augment.update(real_logits)
        # G: push D(fake) up
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        loss_g = F.softplus(-self.D(*self.augment(*self._fakes(c)), c)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step_count += 1
        self.nimg += cfg.batch_size
        self._update_ema()
        row = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "r1": r1.item(), "p": self.augment.p,
               "rt": self.augment.rt}
        if not all(math.isfinite(row[k]) for k in ("loss_d", "loss_g", "r1")):
            raise LineguardError(f"GAN losses became {row} at step {self.step_count}: lower lr_g and lr_d, or raise "
                                 "r1_gamma")
        self.seconds += time.perf_counter() - t0
        return row

    def _update_ema(self) -> None:
        half_life = self.cfg.ema_kimg * 1000
        if self.cfg.ema_rampup > 0:
            half_life = min(half_life, self.nimg * self.cfg.ema_rampup)
        beta = 0.5 ** (self.cfg.batch_size / half_life) if half_life > 0 else 0.0
        with torch.no_grad():
            for e, p in zip(self.G_ema.parameters(), self.G.parameters()):
                e.copy_(p.lerp(e, beta))
            for e, b in zip(self.G_ema.buffers(), self.G.buffers()):
                e.copy_(b)

    def state_dict(self) -> Dict[str, Any]:
        """Everything to continue the run, as tensors and plain values (``torch.load(weights_only=True)``)."""
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "augment": self.augment.state_dict(), "step": self.step_count, "nimg": self.nimg,
                "seconds": self.seconds, "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name in ("G", "D", "G_ema", "opt_g", "opt_d", "augment"):
            getattr(self, name).load_state_dict(state[name])
        self.step_count, self.nimg, self.seconds = int(state["step"]), int(state["nimg"]), float(state["seconds"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state["rng_cuda"] is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)


def _device(name: str) -> torch.device:
    """``auto``: the first CUDA device where there is one, else the CPU; otherwise as ``torch_device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch_device(name)


def _grid(img: torch.Tensor, mask: torch.Tensor, rows: int) -> np.ndarray:
    """uint8 grid of (image | mask) cells, ``rows`` rows, a 2 px gray gap between cells."""
    c = img.shape[1]
    cells = torch.cat([img.clamp(-1, 1) * 0.5 + 0.5, mask.clamp(0, 1).expand(-1, c, -1, -1)], 3).float().cpu()
    cells = F.pad(cells, (0, 2, 0, 2), value=0.5)
    n, _, h, w = cells.shape
    g = cells.reshape(rows, n // rows, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, n // rows * w, c)
    g = (g * 255).round().to(torch.uint8).numpy()
    return g[:, :, 0] if c == 1 else g


def _sample_grid(G: torch.nn.Module, n_classes: int, cfg: GanConfig, device: torch.device) -> np.ndarray:
    """The same latents and noise every time (seeded by ``cfg.seed``), so grids show progress."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    z = torch.randn(n_classes * GRID_COLUMNS, G.z_dim, generator=gen).to(device)
    c = torch.arange(n_classes, device=device).repeat_interleave(GRID_COLUMNS)
    with torch.no_grad():
        img, mask = G(z, c, noise_gen=torch.Generator(device).manual_seed(cfg.seed + 2))
    return _grid(img, mask, n_classes)


def _shapes(G: torch.nn.Module, data: TrainingData, cfg: GanConfig, device: torch.device
            ) -> Dict[str, Dict[str, Any]]:
    """:func:`~lineguard.synth.shapes.shape_report` of ``SHAPE_SAMPLES`` masks per class from ``G`` (latents
    and noise from their own seeded generators: the training RNG is not touched) against the crops."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    classes = tuple(data.classes)
    if not classes:  # a surface: no masks to compare
        return {}
    z = torch.randn(len(classes) * SHAPE_SAMPLES, G.z_dim, generator=gen).to(device)
    c = torch.arange(len(classes), device=device).repeat_interleave(SHAPE_SAMPLES)
    with torch.no_grad():
        _, mask = G(z, c, noise_gen=torch.Generator(device).manual_seed(cfg.seed + 4))
    fake = split_by_class((mask[:, 0] >= 0.5).cpu().numpy(), c.cpu().numpy(), classes)
    crops = ~data.prior  # the real crops, not the shape prior's copies
    real = split_by_class(data.masks[crops, 0].cpu().numpy() > 0.5, data.labels[crops].cpu().numpy(), classes)
    return shape_report(real, fake, seed=cfg.seed)


def _texture(G: torch.nn.Module, data: TrainingData, cfg: GanConfig, device: torch.device) -> Dict[str, Any]:
    """:func:`~lineguard.synth.texture.texture_report` of ``SHAPE_SAMPLES`` images per label from ``G`` (own
    seeded latents and noise) against the training images (not the shape prior's copies), and the noise
    inputs' strength per resolution of the generator that draws the surface."""
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    n_labels = len(data.label_names)
    z = torch.randn(n_labels * SHAPE_SAMPLES, G.z_dim, generator=gen).to(device)
    c = torch.arange(n_labels, device=device).repeat_interleave(SHAPE_SAMPLES)
    with torch.no_grad():
        img, _ = G(z, c, noise_gen=torch.Generator(device).manual_seed(cfg.seed + 6))
    real = data.images[~data.prior].permute(0, 2, 3, 1).cpu().numpy()
    surface = G.surface if isinstance(G, DefectGenerator) else G
    return {**texture_report(real, img.clamp(-1, 1).permute(0, 2, 3, 1).float().cpu().numpy()),
            "noise_strength": surface.noise_strengths()}


def _log_samples(out: Path, trainer: GanTrainer, data: TrainingData, cfg: GanConfig) -> Dict[str, Dict[str, Any]]:
    """The sample grid, and a row each in shapes.jsonl and texture.jsonl; returns the shape report."""
    kimg = round(trainer.nimg / 1000, 3)
    G = trainer.G_ema
    write_png(out / "samples" / f"kimg{trainer.nimg // 1000:06d}.png",
              _sample_grid(G, len(data.label_names), cfg, trainer.device))
    shapes = _shapes(G, data, cfg, trainer.device)
    for name, key, value in (("shapes.jsonl", "shapes", shapes),
                             ("texture.jsonl", "texture", _texture(G, data, cfg, trainer.device))):
        with (out / name).open("a") as f:
            f.write(json.dumps({"kimg": kimg, key: value}) + "\n")
    return shapes


def _reals_grid(data: TrainingData) -> np.ndarray:
    """A row per label of training images spread over its crops (not the first crop's views side by side)."""
    def spread(idx: torch.Tensor) -> torch.Tensor:
        return idx[torch.linspace(0, len(idx) - 1, GRID_COLUMNS).round().long()]

    idx = torch.cat([spread(torch.nonzero(data.labels == k)[:, 0]) for k in range(len(data.label_names))])
    return _grid(data.images[idx], data.masks[idx], len(data.label_names))


def _surface_sha(trainer: GanTrainer) -> Optional[str]:
    return None if trainer.surface is None else trainer.surface.sha256


def _save_checkpoint(path: Path, trainer: GanTrainer, cfg: GanConfig, labels: List[str]) -> None:
    save_checkpoint(path, {"labels": labels, "surface": _surface_sha(trainer), **trainer.state_dict()}, cfg,
                    GAN_FORMAT, GAN_FORMAT_VERSION)


def _resume(path: Path, trainer: GanTrainer, cfg: GanConfig, labels: List[str]) -> None:
    """Continue ``trainer`` from the checkpoint at ``path``: same architecture settings, labels and surface."""
    ck = load_checkpoint(path, GAN_FORMAT, GAN_FORMAT_VERSION, STATE_KEYS)
    check_settings(path, ck["config"], cfg, ARCH_FIELDS, what="architecture settings")
    if ck["labels"] != labels:
        raise CheckpointError(f"{path}: the run was trained on classes {ck['labels']}, the data now gives {labels}; "
                              "resume on the same data or train into a new folder")
    if ck.get("surface") != _surface_sha(trainer):
        raise CheckpointError(f"{path}: the run was started on the surface with weights {str(ck.get('surface'))[:16]}, "
                              f"{cfg.surface} now holds {str(_surface_sha(trainer))[:16]}; resume on that surface or "
                              "train into a new folder")
    with restoring(path):
        trainer.load_state_dict(ck)


def _write_gan_dir(out: Path, trainer: GanTrainer, cfg: GanConfig, data: TrainingData) -> str:
    """generator.safetensors (the EMA generator) and gan.yaml; returns the weights' sha256."""
    with atomic_path(out / WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainer.G_ema.state_dict().items()}, str(tmp))
    sha = sha256_file(out / WEIGHTS)
    GanFile(classes=data.classes, labels=data.label_names, resolution=cfg.resolution, channels=cfg.channels,
            sha256=sha, kimg=round(trainer.nimg / 1000, 3), steps=trainer.step_count, data=data.provenance,
            config=cfg, surface=trainer.surface).save(out / GAN_YAML)
    return sha


def _crossed(before: int, now: int, every_kimg: float) -> bool:
    every = max(1, round(every_kimg * 1000))
    return before // every != now // every


def _log_tick(path: Path, rows: List[Dict[str, Any]], trainer: GanTrainer, since: Tuple[int, float]) -> None:
    """Append one row to log.jsonl: the means of the tick's ``rows``, p and r_t at its end, its speed."""
    r1 = [r["r1"] for r in rows if r["r1"] > 0]
    nimg, seconds = trainer.nimg - since[0], trainer.seconds - since[1]
    row = {"step": trainer.step_count, "kimg": round(trainer.nimg / 1000, 3), "stage": trainer.cfg.target,
           "loss_d": float(np.mean([r["loss_d"] for r in rows])), "loss_g": float(np.mean([r["loss_g"] for r in rows])),
           "r1": float(np.mean(r1)) if r1 else None, "p": rows[-1]["p"], "rt": rows[-1]["rt"],
           "sec_per_kimg": round(seconds * 1000 / max(1, nimg), 2), "seconds": round(trainer.seconds, 1)}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def fit(data_dir: PathLike, out_dir: PathLike, cfg: GanConfig, resume: bool = False, progress: bool = True,
        max_steps: Optional[int] = None) -> Dict[str, Any]:
    """Train on ``data_dir`` into ``out_dir`` until ``cfg.kimg`` (or ``max_steps`` steps in total, for
    smoke runs); returns the summary the CLI prints. An existing run is refused unless ``resume``."""
    out = Path(out_dir)
    ck_path = out / CHECKPOINT
    if not resume and (ck_path.exists() or (out / GAN_YAML).exists()):
        raise LineguardError(f"{out}: holds a GAN run already; pass --resume to continue it or pick a new folder")
    data = load_training_data(data_dir, cfg)
    trainer = GanTrainer(cfg, data, _device(cfg.device), load_surface(cfg))
    if resume:
        _resume(ck_path, trainer, cfg, data.label_names)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "fit.yaml")
    if trainer.nimg == 0:
        write_png(out / "samples" / "reals.png", _reals_grid(data))
    steps = math.ceil(max(0, round(cfg.kimg * 1000) - trainer.nimg) / cfg.batch_size)
    if max_steps is not None:
        steps = min(steps, max(0, max_steps - trainer.step_count))
    rows: List[Dict[str, Any]] = []
    since = (trainer.nimg, trainer.seconds)
    for _ in track(range(steps), "GAN", enabled=progress, total=steps):
        before = trainer.nimg
        rows.append(trainer.step())
        if _crossed(before, trainer.nimg, cfg.tick_kimg):
            _log_tick(out / "log.jsonl", rows, trainer, since)
            rows, since = [], (trainer.nimg, trainer.seconds)
        if _crossed(before, trainer.nimg, cfg.sample_kimg):
            _log_samples(out, trainer, data, cfg)
        if _crossed(before, trainer.nimg, cfg.snapshot_kimg):
            _save_checkpoint(ck_path, trainer, cfg, data.label_names)
            _write_gan_dir(out, trainer, cfg, data)  # usable (generate, score) before the run ends
    if rows:
        _log_tick(out / "log.jsonl", rows, trainer, since)
    _save_checkpoint(ck_path, trainer, cfg, data.label_names)
    shapes = _log_samples(out, trainer, data, cfg)
    sha = _write_gan_dir(out, trainer, cfg, data)
    return {"out": str(out), "classes": data.classes, "crops": data.provenance["crops"],
            "skipped": data.provenance["skipped"], "steps": trainer.step_count, "kimg": round(trainer.nimg / 1000, 3),
            "seconds": round(trainer.seconds, 1),
            "sec_per_kimg": round(trainer.seconds * 1000 / max(1, trainer.nimg), 2), "augment_p": trainer.augment.p,
            "rt": trainer.augment.rt, "device": str(trainer.device), "sha256": sha, "shapes": shapes}
