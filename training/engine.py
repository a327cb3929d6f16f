"""The training loop: class-balanced sampling, bf16 autocast, EMA, warmup + cosine, early stopping,
a checkpoint every epoch with ``resume``, and DDP under ``torchrun`` (gloo on CPU, NCCL on GPU), on
``cfg.device`` (``cpu`` or ``cuda[:N]``; under torchrun with cuda process k takes GPU ``LOCAL_RANK``).

    summary = train(cfg, "data/sim", "runs/model")       # what the CLI calls: a Trainer, run to the end

:class:`Trainer` runs in explicit steps: ``setup`` (DDP, data, model, optimiser, resume), then per epoch
``run_epoch`` (every rank), ``validate`` and ``checkpoint`` (rank 0), and ``finish`` (best weights,
model.yaml, report). Rank 0 logs one line per epoch to the ``lineguard.train`` logger.

``synthetic`` adds a synthetic data set, drawn on top of the real epoch: the real draws stay those of a
run without it (count and class mix), and each class the synthetic set holds gets ``synthetic_extra``
synthetic draws per real draw (classes it lacks, e.g. OK, stay real); the last ``synthetic_real_epochs``
epochs draw as many images, all real; a synthetic image's class loss weighs ``synthetic_weight``. Val and
test stay real.

Determinism: epoch ``e`` depends only on (seed, e): the sampler, the augmentation of every item and
the dropout RNG are reseeded from them, so a run resumed after a kill ends like an unkilled one.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from .. import LineguardError
from ..checkpoint import check_settings, load_checkpoint, restoring, save_checkpoint, torch_device, unreadable
from ..config import dump_config
from ..data.format import Dataset, Record
from ..data.modelspec import ModelSpec
from ..data.preprocess import Preprocess
from ..data.progress import track
from ..data.split import check_training_split, synthetic_records
from ..metrics import classification_metrics
from ..weights import load_weights, save_weights
from .config import TrainConfig
from .dataset import DefectDataset, MixedDataset, data_loader
from .evaluate import predict
from .models import ModelError, create_model, model_config
from .report import finish_model_dir
from .sampler import BalancedSampler

__all__ = ["CHECKPOINT", "Dist", "TrainState", "Trainer", "train"]

log = logging.getLogger("lineguard.train")
log.setLevel(logging.INFO)  # the epoch lines: shown wherever a handler is set up (the CLI's)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "lineguard-train", 1  # files without them (older runs) resume too
CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "state")
# the settings a resume may change
RESUMABLE = ("epochs", "max_minutes", "patience", "min_train_share", "workers", "threads", "device")
BEST = "best.safetensors"
SYNTHETIC_CACHE_MAX = 20_000  # synthetic sets up to this many images are decoded once into memory


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this process's (NCCL's tensors)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> Dist:
        """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run is rank 0 of 1. ``device``: cpu, or cuda[:N]
        (under torchrun each process takes GPU LOCAL_RANK, NCCL; on the CPU gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        where = torch_device(device)
        if where.type == "cuda" and world > 1:
            where = torch_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        if where.type == "cuda":
            torch.cuda.set_device(where)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, where)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_int(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([int(value)], device=self.device)
        dist.broadcast(t, 0)
        return int(t.item())

    def broadcast_flag(self, flag: bool) -> bool:
        return bool(self.broadcast_int(int(flag)))


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_f1: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    seconds: float = 0.0
    history: Optional[List[Dict]] = None
    planned_epochs: Optional[int] = None  # with max_minutes: the epochs that fit the budget, fixed after epoch 1
    stop_reason: Optional[str] = None  # why the run ended (stored in metrics.json)

    def epochs(self, cfg: TrainConfig) -> int:
        return min(cfg.epochs, self.planned_epochs or cfg.epochs)

    def observe(self, macro_f1: float, val_loss: float) -> bool:
        """The val figures of the epoch just run: True (and it becomes the best) when its macro-F1 is higher, or
        equal with a lower val loss, so a saturated metric (1.0 on a small val split) still lets a falling loss
        count as progress."""
        if (macro_f1, -val_loss) > (self.best_f1, -self.best_loss):
            self.best_f1, self.best_loss, self.best_epoch = macro_f1, val_loss, self.epoch
            return True
        return False

    def why_stop(self, cfg: TrainConfig) -> Optional[str]:
        """Why to stop now, or None: the time budget spent, or ``patience`` epochs without progress once
        ``min_train_share`` of the planned epochs have run (an early plateau on a small val split is no reason)."""
        planned = self.epochs(cfg)
        if cfg.max_minutes is not None and self.seconds / 60 >= cfg.max_minutes:
            return f"time budget of {cfg.max_minutes:g} min spent after {self.epoch}/{planned} epochs"
        stale = self.epoch - self.best_epoch
        if stale >= cfg.patience and self.epoch >= cfg.min_train_share * planned:
            return (f"early stop after {self.epoch}/{planned} epochs: no val gain (macro-F1, then val loss) for "
                    f"{stale} epochs since epoch {self.best_epoch}")
        return None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict]:
    """No weight decay on norms, biases, position embeddings and the class token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int, state: TrainState):
    """Linear warmup, then cosine to ``min_lr_ratio`` at the last planned epoch (read from ``state``)."""
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        total = max(warm + 1, state.epochs(cfg) * steps_per_epoch)
        t = (step - warm) / (total - warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def class_loss(logits: torch.Tensor, batch: Dict, multi_label: bool, smoothing: float) -> torch.Tensor:
    """Cross-entropy on the label, or (``multi_label``) binary cross-entropy per class on the multi-hot targets,
    smoothed towards 0.5 by ``smoothing / 2``; the mean over the batch weighted by its ``weight`` (synthetic
    images' loss weight; 1 without)."""
    if not multi_label:
        each = F.cross_entropy(logits, batch["label"], label_smoothing=smoothing, reduction="none")
    else:
        target = batch["targets"] * (1 - smoothing) + smoothing / 2
        each = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    weight = batch.get("weight")
    return each.mean() if weight is None else (each * weight).sum() / weight.sum()


def heatmap_loss(heatmap: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the images that have a mask (mixed supervision); 0 when none has one."""
    if not has_mask.any():
        return heatmap.sum() * 0.0
    h = heatmap[has_mask].float()
    t = F.interpolate(mask[has_mask], size=h.shape[-2:], mode="area")
    bce = F.binary_cross_entropy_with_logits(h, t)
    p = h.sigmoid()
    inter = (p * t).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)
    return bce + dice.mean()


def _load_checkpoint(path: Path, cfg: TrainConfig) -> Tuple[Dict, TrainState]:
    """The checkpoint of the run to resume and its state; a file that cannot resume with ``cfg`` is a
    :class:`~lineguard.checkpoint.CheckpointError`."""
    ck = load_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CHECKPOINT_KEYS, unversioned=True)
    if not isinstance(ck["state"], dict) or not isinstance(ck["model"], dict):
        raise unreadable(path, "not a lineguard checkpoint")
    try:
        state = TrainState(**ck["state"])
    except TypeError:
        raise unreadable(path, "its training state has other fields") from None
    if not isinstance(state.best_epoch, int) or not isinstance(state.history, list):
        raise unreadable(path, "its training state is not a lineguard one")
    if state.best_epoch > 0:
        load_weights(path.with_name(BEST))  # the best weights so far must be there to finish the run
    check_settings(path, ck["config"], cfg, [k for k in TrainConfig.model_fields if k not in RESUMABLE])
    return ck, state


class Trainer:
    """One training run on the data set ``data`` (train split; val for selection) into the model directory
    ``out``; ``max_steps`` stops after that many optimiser steps in total (tests, smoke runs)::

        t = Trainer(cfg, data, out, resume=False)
        t.setup()
        while not t.done:
            loss, images_per_s, stop = t.run_epoch()
            ...                          # rank 0: t.validate(loss, images_per_s); t.checkpoint()
        summary = t.finish()

    :meth:`run` is that loop with early stopping and the time budget."""

    def __init__(self, cfg: TrainConfig, data: Union[str, Path], out: Union[str, Path], resume: bool = False,
                 progress: bool = True, max_steps: Optional[int] = None) -> None:
        self.cfg, self.data, self.out = cfg, Path(data), Path(out)
        self.resume, self.progress, self.max_steps = resume, progress, max_steps

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """DDP and threads, the data set and its checks, the checkpoint to resume (read before anything is
        decoded or written), the model, the data, the optimiser; rank 0 writes train.yaml."""
        cfg = self.cfg
        self.dist = Dist.from_env(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif self.dist.world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // self.dist.world))
        self.ds = Dataset.load(self.data)
        train_recs, val_recs = self.ds.split("train"), self.ds.split("val")
        check_training_split(self.ds, train_recs, val_recs)
        if cfg.target_escape is not None and self.ds.classes.ok_class is None:
            raise LineguardError(f"{self.data}: a defect-type set (no OK class) has no escape rate to target; "
                                 "leave out --target-escape")
        if (self.out / CHECKPOINT).exists() and not self.resume:
            raise LineguardError(f"{self.out}: holds a training run already; pass --resume to continue it")
        ck, self.state = _load_checkpoint(self.out / CHECKPOINT, cfg) if self.resume else (None, TrainState(history=[]))
        self.state.stop_reason = None  # a resumed run ends for its own reason
        self._build_model()
        self._build_data(train_recs, val_recs)
        self._build_optimiser(ck)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "train.yaml")

    def _build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        try:
            self.model = create_model(cfg.arch, num_classes=len(self.ds.classes.classes), in_chans=cfg.channels,
                                      img_size=cfg.img_size, weights=cfg.resolved_weights(), **cfg.arch_options)
        except TypeError as e:  # an option the architecture does not take
            raise ModelError(f"arch_options {cfg.arch_options}: model '{cfg.arch}' does not take them ({e})") from None
        self.model.backbone.freeze(cfg.frozen_stages)
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(self.dist.device, memory_format=self.fmt)  # before EMA and DDP take views of the parameters
        mean, std = self.model.pretrained_mean_std
        self.pre = Preprocess(size=cfg.size, fit=cfg.fit, channels=cfg.channels, mean=list(mean),
                              std=list(std))

    def _build_data(self, train_recs: List[Record], val_recs: List[Record]) -> None:
        cfg, d = self.cfg, self.dist
        real = DefectDataset(self.ds, train_recs, self.pre, cfg.augment, seed=cfg.seed)
        self.val_set = DefectDataset(self.ds, val_recs, self.pre, None) if d.main else None
        self.train_set, mix = self._synthetic_mix(real)
        self.sampler = BalancedSampler(self.train_set.labels, power=cfg.balance_power, num_samples=len(train_recs),
                                       seed=cfg.seed, rank=d.rank, world_size=d.world, **mix)
        per_rank = max(1, cfg.batch_size // d.world)
        self.loader = data_loader(self.train_set, per_rank, sampler=self.sampler, num_workers=cfg.workers,
                                  drop_last=True)
        if len(self.loader) == 0:
            raise LineguardError(f"{self.data}: {len(train_recs)} training images are fewer than one batch of "
                                 f"{per_rank}")

    def _synthetic_mix(self, real: DefectDataset) -> Tuple[torch.utils.data.Dataset, Dict]:
        """The training set (real, or real + synthetic) and the sampler's group arguments for it."""
        cfg = self.cfg
        if cfg.synthetic is None or cfg.synthetic_extra <= 0:
            return real, {}
        syn = Dataset.load(cfg.synthetic)
        recs = synthetic_records(self.ds, syn)
        mixed = MixedDataset(real, DefectDataset(syn, recs, self.pre, cfg.augment, seed=cfg.seed + 1,
                                                 classes=self.ds.classes.classes,
                                                 cache=len(recs) <= SYNTHETIC_CACHE_MAX), cfg.synthetic_weight)
        return mixed, {"groups": mixed.groups, "extra": cfg.synthetic_extra}

    def _build_optimiser(self, ck: Optional[Dict]) -> None:
        """AdamW, the LR schedule, the EMA; the checkpoint's state into all of them; DDP and autocast."""
        cfg = self.cfg
        self.opt = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg, len(self.loader), self.state))
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None
        if ck is not None:
            with restoring(self.out / CHECKPOINT):
                self.model.load_state_dict(ck["model"])
                if self.ema is not None:
                    self.ema.module.load_state_dict(ck["ema"])
                self.opt.load_state_dict(ck["optimizer"])
                self.sched.load_state_dict(ck["scheduler"])
        on_gpu = self.dist.device.type == "cuda"
        self.net = (DistributedDataParallel(self.model, device_ids=[self.dist.device] if on_gpu else None)
                    if self.dist.world > 1 else self.model)
        self.autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.resolved_precision() == "bf16")

    # ------------------------------------------------------------------ epochs

    @property
    def done(self) -> bool:
        """Every planned epoch has run."""
        return self.state.epoch >= self.state.epochs(self.cfg)

    def run_epoch(self) -> Tuple[float, float, bool]:
        """One epoch on every rank: the mean training loss, images/s (all ranks) and whether ``max_steps``
        was reached. After the first epoch a time budget fixes the planned epochs (rank 0's count)."""
        cfg, state, epoch = self.cfg, self.state, self.state.epoch
        t0 = time.perf_counter()
        self.sampler.set_epoch(epoch, real_only=epoch >= state.epochs(cfg) - cfg.synthetic_real_epochs)
        self.train_set.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        self.net.train()
        total, seen, stop = 0.0, 0, False
        for batch in track(self.loader, f"epoch {epoch + 1}/{state.epochs(cfg)}",
                           enabled=self.progress and self.dist.main, total=len(self.loader)):
            total += self._step(batch) * len(batch["label"])
            seen += len(batch["label"])
            if self.max_steps is not None and state.step >= self.max_steps:
                stop = True
                break
        seconds = time.perf_counter() - t0
        state.epoch += 1
        state.seconds += seconds
        if cfg.max_minutes is not None and state.planned_epochs is None:
            # fit the cosine to the time budget, measured on the first epoch; rank 0's count for all ranks
            fit = max(2, int(cfg.max_minutes * 60 / seconds))
            state.planned_epochs = self.dist.broadcast_int(min(cfg.epochs, fit))
        return total / max(seen, 1), seen * self.dist.world / seconds, stop

    def _step(self, batch: Dict) -> float:
        """One optimiser step on ``batch``; its loss."""
        cfg = self.cfg
        batch = {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        with self.autocast:
            o = self.net(batch["image"].contiguous(memory_format=self.fmt))
            loss_cls = class_loss(o["logits"].float(), batch, cfg.multi_label, cfg.label_smoothing)
            loss = loss_cls + cfg.heatmap_weight * heatmap_loss(o["heatmap"], batch["mask"], batch["has_mask"])
        if not torch.isfinite(loss):
            raise LineguardError(f"loss became {loss.item()} at epoch {self.state.epoch + 1}: lower --lr or use fp32")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.sched.step()
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.step)
        return loss.item()

    def validate(self, train_loss: float, images_per_s: float) -> bool:
        """Rank 0: the EMA weights on val, a history row and its log line; the best weights so far are kept
        (macro-F1, then val loss). True when this epoch is the best."""
        state, classes = self.state, self.ds.classes
        judged = self.ema.module if self.ema is not None else self.model
        pred = predict(judged, self.val_set, classes.ok_index, multi_label=self.cfg.multi_label)
        m = classification_metrics(pred.probs, pred.labels, classes.classes, classes.ok_class, targets=pred.targets)
        state.history.append({
            "epoch": state.epoch, "train_loss": train_loss, "val_loss": pred.loss, "val_accuracy": m["accuracy"],
            "val_macro_f1": m["macro_f1"], "val_auroc": m["ok_ng_auroc"], "lr": self.sched.get_last_lr()[0],
            "images_per_s": images_per_s, "seconds": state.seconds})
        better = state.observe(m["macro_f1"], pred.loss)
        if better:
            save_weights(judged.state_dict(), self.out / BEST)
        log.info("epoch %d: train loss %.4f, val loss %.4f, acc %.4f, macro-F1 %.4f, %.1f img/s%s", state.epoch,
                 train_loss, pred.loss, m["accuracy"], m["macro_f1"], images_per_s, " *" if better else "")
        return better

    def checkpoint(self) -> None:
        """Rank 0: everything a resume needs, written atomically to checkpoint.pt."""
        state = {"model": self.model.state_dict(), "ema": self.ema.module.state_dict() if self.ema else None,
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "state": vars(self.state)}
        save_checkpoint(self.out / CHECKPOINT, state, self.cfg, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)

    def should_stop(self) -> bool:
        """Rank 0: :meth:`TrainState.why_stop`, the reason logged and kept."""
        why = self.state.why_stop(self.cfg)
        if why is not None:
            self.state.stop_reason = why
            log.info("%s", why)
        return why is not None

    def finish(self) -> Dict:
        """After the last epoch: rank 0 loads the best weights and writes the model directory; its summary
        (an empty dict on other ranks)."""
        self.dist.barrier()
        result: Dict = {}
        if self.dist.main:
            self.model.load_state_dict(load_weights(self.out / BEST))
            self.model.cpu()  # the model folder's figures (latency, GMACs) are the CPU's, as on every machine
            classes = self.ds.classes
            spec = ModelSpec(arch=model_config(self.model), classes=classes.classes, ok_class=classes.ok_class,
                             multi_label=self.cfg.multi_label,
                             preprocess=self.pre)
            result = finish_model_dir(self.out, self.model, spec, self.ds, self.cfg, self.state)
        if self.dist.world > 1:
            dist.destroy_process_group()
        return result

    def run(self) -> Dict:
        """``setup``, the epochs until done, stopped early or out of time or steps, ``finish``."""
        self.setup()
        stop = False
        while not self.done and not stop:
            train_loss, images_per_s, stop = self.run_epoch()
            if stop:
                self.state.stop_reason = f"max_steps {self.max_steps} reached in epoch {self.state.epoch}"
            if self.dist.main:
                self.validate(train_loss, images_per_s)
                stop = self.should_stop() or stop
                self.checkpoint()
            stop = self.dist.broadcast_flag(stop)
        if self.state.stop_reason is None:
            self.state.stop_reason = f"all {self.state.epoch} planned epochs run"
        return self.finish()


def train(cfg: TrainConfig, data: Union[str, Path], out: Union[str, Path], resume: bool = False,
          progress: bool = True, max_steps: Optional[int] = None) -> Dict:
    """Train on ``data`` into the model directory ``out`` (see :class:`Trainer`); the summary the CLI
    prints (rank 0; other ranks get an empty dict)."""
    return Trainer(cfg, data, out, resume, progress, max_steps).run()
