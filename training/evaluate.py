"""A PyTorch model over a split while training: class probabilities, heatmap IoU, loss, latency.

``lineguard eval`` (any backend, a model directory or an exported file) is ``lineguard.edge.evaluate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.format import DatasetError
from ..data.progress import track
from ..metrics import classification_metrics, iou, mean_iou
from .dataset import DefectDataset

__all__ = ["Predictions", "measure_latency", "predict", "split_metrics"]


@dataclass
class Predictions:
    probs: np.ndarray  # N x C
    labels: np.ndarray  # N
    iou: np.ndarray  # N, heatmap IoU per image
    iou_counted: np.ndarray  # N, bool: an NG image with a mask (the images the heatmap IoU averages)
    loss: float  # mean cross-entropy (multi-label: mean binary cross-entropy per class)
    targets: Optional[np.ndarray] = None  # N x C multi-hot, for a multi-label model


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: DefectDataset, ok_index: Optional[int], batch_size: int = 64,
            progress: bool = False, multi_label: bool = False) -> Predictions:
    """Probabilities and per-image heatmap IoU (``lineguard.metrics.iou`` of sigmoid(heatmap) > 0.5, upsampled
    bilinearly to the input size, with the mask); the IoU counts NG images with a mask (every image with a mask
    in a defect-type set, ``ok_index`` None)."""
    model.eval()
    device = next(model.parameters()).device  # the batches go where the model is; the figures come back
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    probs, labels, ious, counted, losses = [], [], [], [], []
    for batch in track(loader, "predict", enabled=progress, total=len(loader)):
        out = model(batch["image"].to(device))
        logits = out["logits"].float().cpu()
        if multi_label:
            losses.append(F.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="none")
                          .mean(1).sum().item())
        else:
            losses.append(F.cross_entropy(logits, batch["label"], reduction="sum").item())
        heat = F.interpolate(out["heatmap"].float().cpu(), size=batch["mask"].shape[-2:], mode="bilinear",
                             align_corners=False).sigmoid() > 0.5
        ious.append(iou(heat.numpy(), batch["mask"].numpy() > 0.5))
        has = batch["has_mask"]
        counted.append((has if ok_index is None else has & (batch["label"] != ok_index)).numpy())
        probs.append((logits.sigmoid() if multi_label else logits.softmax(1)).numpy())
        labels.append(batch["label"].numpy())
    if not probs:
        raise DatasetError("nothing to predict: the split is empty")
    n = sum(len(p) for p in probs)
    return Predictions(np.concatenate(probs), np.concatenate(labels), np.concatenate(ious), np.concatenate(counted),
                       sum(losses) / n, dataset.targets if multi_label else None)


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


def split_metrics(pred: Predictions, classes: List[str], ok_class: Optional[str], threshold: float) -> Dict:
    """``classification_metrics`` with the loss and the heatmap IoU (None without NG images with a mask)."""
    m = classification_metrics(pred.probs, pred.labels, classes, ok_class, threshold, targets=pred.targets)
    m["loss"] = pred.loss
    m["heatmap_iou"] = mean_iou(pred.iou, pred.iou_counted)
    return m
