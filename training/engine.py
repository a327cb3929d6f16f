"""The training loop: class-balanced sampling, bf16 autocast, EMA, warmup + cosine, early stopping,
a checkpoint every epoch with ``resume``, and DDP under ``torchrun`` (gloo on CPU, NCCL on GPU).

``synthetic`` adds a synthetic data set: the class mix of each epoch's (unchanged number of) draws stays
that of the real images, and ``synthetic_ratio`` of each class's draws come from the synthetic images of
that class (classes it lacks, e.g. OK, stay real); val and test stay real.

Determinism: epoch ``e`` depends only on (seed, e): the sampler, the augmentation of every item and
the dropout RNG are reseeded from them, so a run resumed after a kill ends like an unkilled one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from .. import LineguardError
from ..config import dump_config
from ..data.format import Dataset
from ..data.modelspec import ModelSpec
from ..data.preprocess import Preprocess
from ..data.progress import track
from ..files import atomic_path
from .config import TrainConfig
from .data import BalancedSampler, DefectDataset, MixedDataset, check_training_split, data_loader, synthetic_records
from .evaluate import predict
from ..metrics import classification_metrics
from .models import create_model, model_config
from .report import finish_model_dir
from .weights import load_weights, save_weights

__all__ = ["CHECKPOINT", "CheckpointError", "Dist", "TrainState", "train"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
SYNTHETIC_CACHE_MAX = 20_000  # synthetic sets up to this many images are decoded once into memory


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """torchrun sets WORLD_SIZE/RANK; a plain run is rank 0 of 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_int(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([int(value)])
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

    def epochs(self, cfg: TrainConfig) -> int:
        return min(cfg.epochs, self.planned_epochs or cfg.epochs)


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


CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "state", "config")


class CheckpointError(LineguardError):
    """A checkpoint that cannot be resumed from; the message names the file and what to do."""


def _save_checkpoint(path: Path, model, ema, opt, sched, state: TrainState, cfg: TrainConfig) -> None:
    with atomic_path(path) as tmp:  # a kill during the write leaves the previous checkpoint intact
        torch.save({"model": model.state_dict(), "ema": ema.module.state_dict() if ema else None,
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": vars(state),
                    "config": cfg.model_dump(mode="json")}, tmp)


def _unreadable(path: Path, why: str = "truncated or not a lineguard checkpoint") -> CheckpointError:
    return CheckpointError(f"{path} is unreadable ({why}); delete it to start over or restore it")


def _load_checkpoint(path: Path, cfg: TrainConfig) -> Dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, garbage, foreign pickle: torch raises many kinds
        raise _unreadable(path) from None
    if not isinstance(ck, dict) or any(k not in ck for k in CHECKPOINT_KEYS):
        missing = [k for k in CHECKPOINT_KEYS if k not in ck] if isinstance(ck, dict) else []
        raise _unreadable(path, f"keys {missing} missing" if missing else "not a lineguard checkpoint")
    if not isinstance(ck["config"], dict) or not isinstance(ck["state"], dict) or not isinstance(ck["model"], dict):
        raise _unreadable(path, "not a lineguard checkpoint")
    try:
        state = TrainState(**ck["state"])
    except TypeError:
        raise _unreadable(path, "its training state has other fields") from None
    if not isinstance(state.best_epoch, int) or not isinstance(state.history, list):
        raise _unreadable(path, "its training state is not a lineguard one")
    if state.best_epoch > 0:
        load_weights(path.with_name(BEST))  # the best weights so far must be there to finish the run
    saved = dict(ck["config"])
    now = cfg.model_dump(mode="json")
    differ = [k for k in now if k not in ("epochs", "max_minutes", "workers", "threads") and saved.get(k) != now[k]]
    if differ:
        raise LineguardError(f"{path}: the run was started with other settings ({', '.join(differ)}); "
                             "resume with the same config or train into a new folder")
    return ck


def _restore(path: Path, ck: Dict, model, ema, opt, sched) -> None:
    """Load a checkpoint's tensors and optimiser state; anything that does not fit is a ``CheckpointError``."""
    try:
        model.load_state_dict(ck["model"])
        if ema is not None:
            ema.module.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unreadable(path, f"does not fit this model: {reason}") from None


def train(cfg: TrainConfig, data: Union[str, Path], out: Union[str, Path], resume: bool = False,
          progress: bool = True, max_steps: Optional[int] = None) -> Dict:
    """Train on ``data`` (train split; val for selection) into the model directory ``out``.

    Returns the summary the CLI prints; rank 0 writes the model directory (see ``model_dir``).
    ``max_steps`` stops after that many optimiser steps in total (tests, smoke runs)."""
    d = Dist.from_env()
    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif d.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // d.world))
    ds = Dataset.load(data)
    train_recs, val_recs = ds.split("train"), ds.split("val")
    check_training_split(ds, train_recs, val_recs)
    if (out / CHECKPOINT).exists() and not resume:
        raise LineguardError(f"{out}: holds a training run already; pass --resume to continue it")
    ck = _load_checkpoint(out / CHECKPOINT, cfg) if resume else None  # before anything is decoded or written

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=len(ds.classes.classes), in_chans=cfg.channels,
                         img_size=cfg.img_size, weights=cfg.resolved_weights())
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)  # before EMA and DDP take views of the parameters
    mean, std = model.pretrained_mean_std
    pre = Preprocess(size=(cfg.img_size, cfg.img_size), channels=cfg.channels, mean=list(mean), std=list(std))
    train_set = DefectDataset(ds, train_recs, pre, cfg.augment, seed=cfg.seed)
    val_set = DefectDataset(ds, val_recs, pre, None) if d.main else None
    mix: Dict = {}
    if cfg.synthetic is not None and cfg.synthetic_ratio > 0:
        syn = Dataset.load(cfg.synthetic)
        syn_recs = synthetic_records(ds, syn)
        train_set = MixedDataset(train_set, DefectDataset(
            syn, syn_recs, pre, cfg.augment, seed=cfg.seed + 1, classes=ds.classes.classes,
            cache=len(syn_recs) <= SYNTHETIC_CACHE_MAX))
        mix = {"groups": train_set.groups, "group_shares": [1 - cfg.synthetic_ratio, cfg.synthetic_ratio]}
    sampler = BalancedSampler(train_set.labels, power=cfg.balance_power, num_samples=len(train_recs),
                              seed=cfg.seed, rank=d.rank, world_size=d.world, **mix)
    per_rank = max(1, cfg.batch_size // d.world)
    loader = data_loader(train_set, per_rank, sampler=sampler, num_workers=cfg.workers, drop_last=True)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise LineguardError(f"{data}: {len(train_recs)} training images are fewer than one batch of {per_rank}")

    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    state = TrainState(**ck["state"]) if ck is not None else TrainState(history=[])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch, state))
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None
    if ck is not None:
        _restore(out / CHECKPOINT, ck, model, ema, opt, sched)
    net = DistributedDataParallel(model) if d.world > 1 else model
    autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
                              enabled=cfg.resolved_precision() == "bf16")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "train.yaml")

    stop = False
    while state.epoch < state.epochs(cfg) and not stop:
        epoch = state.epoch
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        net.train()
        total, seen = 0.0, 0
        for batch in track(loader, f"epoch {epoch + 1}/{state.epochs(cfg)}", enabled=progress and d.main,
                           total=steps_per_epoch):
            with autocast:
                o = net(batch["image"].contiguous(memory_format=fmt))
                loss_cls = F.cross_entropy(o["logits"].float(), batch["label"], label_smoothing=cfg.label_smoothing)
                loss = loss_cls + cfg.heatmap_weight * heatmap_loss(o["heatmap"], batch["mask"], batch["has_mask"])
            if not torch.isfinite(loss):
                raise LineguardError(f"loss became {loss.item()} at epoch {epoch + 1}: lower --lr or use fp32")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            state.step += 1
            if ema is not None:
                ema.update(model, step=state.step)
            total += loss.item() * len(batch["label"])
            seen += len(batch["label"])
            if max_steps is not None and state.step >= max_steps:
                stop = True
                break
        train_seconds = time.perf_counter() - t0
        state.epoch += 1
        state.seconds += train_seconds
        if cfg.max_minutes is not None and state.planned_epochs is None:
            # fit the cosine to the time budget, measured on the first epoch; rank 0's count for all ranks
            fit = max(2, int(cfg.max_minutes * 60 / train_seconds))
            state.planned_epochs = d.broadcast_int(min(cfg.epochs, fit))
        if d.main:
            stop = _end_of_epoch(cfg, out, model, ema, opt, sched, state, val_set, ds, total / max(seen, 1),
                                 seen * d.world / train_seconds) or stop
        stop = d.broadcast_flag(stop)
    d.barrier()
    result = {}
    if d.main:
        best = load_weights(out / BEST)
        model.load_state_dict(best)
        spec = ModelSpec(arch=model_config(model), classes=ds.classes.classes, ok_class=ds.classes.ok_class,
                         preprocess=pre)
        result = finish_model_dir(out, model, spec, ds, cfg, state)
    if d.world > 1:
        dist.destroy_process_group()
    return result


def _end_of_epoch(cfg: TrainConfig, out: Path, model, ema, opt, sched, state: TrainState, val_set, ds: Dataset,
                  train_loss: float, images_per_s: float) -> bool:
    """Validate the EMA weights, keep the best, checkpoint; True when training should stop."""
    judged = ema.module if ema is not None else model
    pred = predict(judged, val_set, ds.classes.index(ds.classes.ok_class))
    m = classification_metrics(pred.probs, pred.labels, ds.classes.classes, ds.classes.ok_class)
    row = {"epoch": state.epoch, "train_loss": train_loss, "val_loss": pred.loss, "val_accuracy": m["accuracy"],
           "val_macro_f1": m["macro_f1"], "val_auroc": m["ok_ng_auroc"], "lr": sched.get_last_lr()[0],
           "images_per_s": images_per_s, "seconds": state.seconds}
    state.history.append(row)
    better = (m["macro_f1"], -pred.loss) > (state.best_f1, -state.best_loss)
    if better:
        state.best_f1, state.best_loss, state.best_epoch = m["macro_f1"], pred.loss, state.epoch
        save_weights(judged.state_dict(), out / BEST)
    _save_checkpoint(out / CHECKPOINT, model, ema, opt, sched, state, cfg)
    print(f"epoch {state.epoch}: train loss {train_loss:.4f}, val loss {pred.loss:.4f}, "
          f"acc {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {images_per_s:.1f} img/s"
          + (" *" if better else ""), flush=True)
    if state.epoch - state.best_epoch >= cfg.patience:
        print(f"early stop: no val macro-F1 gain for {cfg.patience} epochs", flush=True)
        return True
    return cfg.max_minutes is not None and state.seconds / 60 >= cfg.max_minutes
