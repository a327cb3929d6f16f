"""Run a model over a split: class probabilities, heatmap IoU, PyTorch latency; ``lineguard eval``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.format import Dataset, DatasetError
from ..data.progress import track
from .data import DefectDataset
from ..metrics import classification_metrics, ng_scores, pick_threshold
from .model_dir import LoadedModel, load_model_dir

__all__ = ["Predictions", "evaluate_model_dir", "measure_latency", "predict"]


@dataclass
class Predictions:
    probs: np.ndarray  # N x C
    labels: np.ndarray  # N
    iou: np.ndarray  # N, heatmap IoU per image (nan where no mask or OK)
    loss: float  # mean cross-entropy


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: DefectDataset, ok_index: int, batch_size: int = 64,
            progress: bool = False) -> Predictions:
    """Probabilities and per-image heatmap IoU (heatmap > 0.5 vs mask, at input size)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    probs, labels, ious, losses = [], [], [], []
    for batch in track(loader, "predict", enabled=progress, total=len(loader)):
        out = model(batch["image"])
        logits = out["logits"].float()
        losses.append(F.cross_entropy(logits, batch["label"], reduction="sum").item())
        heat = F.interpolate(out["heatmap"].float(), size=batch["mask"].shape[-2:], mode="bilinear",
                             align_corners=False).sigmoid() > 0.5
        true = batch["mask"] > 0.5
        inter = (heat & true).flatten(1).sum(1).float()
        union = (heat | true).flatten(1).sum(1).float()
        iou = torch.where(batch["has_mask"] & (batch["label"] != ok_index), inter / union.clamp(min=1),
                          torch.full_like(inter, float("nan")))
        probs.append(logits.softmax(1).numpy())
        labels.append(batch["label"].numpy())
        ious.append(iou.numpy())
    if not probs:
        raise DatasetError("nothing to predict: the split is empty")
    n = sum(len(p) for p in probs)
    return Predictions(np.concatenate(probs), np.concatenate(labels), np.concatenate(ious), sum(losses) / n)


def measure_latency(model: torch.nn.Module, channels: int, size: tuple, runs: int = 20) -> Dict[str, float]:
    """Batch-1 latency of the PyTorch model on this machine (ms): median and p90 after warm-up."""
    model.eval()
    x = torch.randn(1, channels, *size)
    times = []
    with torch.no_grad():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            model(x)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "threads": torch.get_num_threads()}


def split_metrics(pred: Predictions, classes: List[str], ok_class: str, threshold: float) -> Dict:
    m = classification_metrics(pred.probs, pred.labels, classes, ok_class, threshold)
    m["loss"] = pred.loss
    m["heatmap_iou"] = float(np.nanmean(pred.iou)) if np.isfinite(pred.iou).any() else None
    return m


def evaluate_model_dir(model_dir: Union[str, Path], data: Union[str, Path], split: str = "test",
                       target_escape: Optional[float] = None, progress: bool = True) -> Dict:
    """Figures of a model directory on ``split`` of a data set, at the model's threshold or at the
    one picked on the val split for ``target_escape``."""
    lm: LoadedModel = load_model_dir(model_dir)
    ds = Dataset.load(data)
    if ds.classes.classes != lm.spec.classes:
        raise DatasetError(f"{data}: classes {ds.classes.classes} differ from the model's {lm.spec.classes}")

    def run(name: str) -> Predictions:
        recs = ds.split(name)
        if not recs:
            raise DatasetError(f"{data}: split '{name}' is empty (run `lineguard data split`)")
        return predict(lm.model, DefectDataset(ds, recs, lm.spec.preprocess, None), lm.spec.ok_index,
                       progress=progress)

    threshold = lm.spec.threshold
    if target_escape is not None:
        val = run("val")
        threshold = pick_threshold(ng_scores(val.probs, lm.spec.ok_index), val.labels != lm.spec.ok_index,
                                   target_escape)
    metrics = split_metrics(run(split), lm.spec.classes, lm.spec.ok_class, threshold)
    metrics.update(split=split, model=str(model_dir), data=str(data), target_escape=target_escape,
                   latency=measure_latency(lm.model, lm.spec.preprocess.channels, lm.spec.preprocess.size))
    return metrics
