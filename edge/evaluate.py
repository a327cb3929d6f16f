"""``lineguard eval``: a model's figures on a data set's split, through a runner and the one decision rule.

    report = evaluate("runs/model", "data/mt", split="test", backend="ort")     # EvalReport
    report.accuracy, report.escape_rate, report.model_dump()

Every backend (torch, ort, ort-int8, trt) is evaluated the same way: frames from ``edge.splits``, scores
from ``Runner.predict``, OK/NG decisions from ``edge.verdict.decide_batch``, figures from ``lineguard.metrics``.
The INT8 accuracy gate (``edge.quantize``) uses :func:`figures` too, so eval and gating cannot disagree.
Torch-free (torch only behind ``backend="torch"``), Python 3.8.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import cv2
import numpy as np
from pydantic import BaseModel

from lineguard.data.format import Dataset, DatasetError
from lineguard.data.modelspec import SPEC_FILE, ModelSpec
from lineguard.data.progress import track
from lineguard.data.split import label_sets
from lineguard.metrics import (
    binary_cross_entropy,
    classification_metrics,
    cross_entropy,
    iou,
    mean_iou,
    ng_scores,
    pick_threshold,
)

from .runners import OUTPUTS, Runner, Scores, load_runner
from .splits import load_frames
from .verdict import CODES, Decision, DecisionPolicy, decide_batch

__all__ = ["HEAT_THRESHOLD", "ClassFigures", "EvalReport", "Latency", "evaluate", "figures", "heatmap_iou"]

HEAT_THRESHOLD = 0.5  # a pixel of the upsampled heatmap above this is predicted defect (heatmap IoU)
CHUNK = 64  # frames per predict call (the progress bar's step)
LATENCY_RUNS, LATENCY_WARMUP = 20, 3


class ClassFigures(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Latency(BaseModel):
    """Batch-1 ``Runner.predict`` time on this machine, ms."""

    p50_ms: float
    p90_ms: float


class EvalReport(BaseModel):
    """Figures of one split. An image counts as called NG when the rule does not pass it as OK (NG or
    UNCERTAIN): ``escape_rate`` = NG images passed as OK, ``false_reject_rate`` = OK images not passed."""

    images: int
    task: Literal["ok-ng", "defect-type"]  # defect-type: a model without an OK class; its OK/NG figures are None
    multi_label: bool  # per-class figures, macro-F1 and exact_match over every class an image holds
    accuracy: float  # the top class against the main label
    exact_match: Optional[float]  # multi-label: images whose predicted class set is exactly the true one
    macro_f1: float
    per_class: Dict[str, ClassFigures]
    ok_ng_auroc: Optional[float]
    threshold: Optional[float]
    escape_rate: Optional[float]
    false_reject_rate: Optional[float]
    confusion: List[List[int]]  # row = true class, column = predicted
    loss: float  # mean cross-entropy (multi-label: mean binary cross-entropy per class)
    heatmap_iou: Optional[float]  # see :func:`heatmap_iou`; None without NG images that have a mask
    split: str
    model: str
    data: str
    target_escape: Optional[float]
    latency: Latency
    backend: str


def figures(probs: np.ndarray, labels: np.ndarray, spec: ModelSpec, policy: Optional[DecisionPolicy] = None,
            targets: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """``lineguard.metrics.classification_metrics`` with the images called NG by ``decide_batch`` under
    ``policy`` (default: the model's); ``targets``: every class of each image, for a multi-label model."""
    policy = policy if policy is not None else DecisionPolicy.of(spec)
    called_ng = decide_batch(probs, spec, policy) != CODES[Decision.OK]
    return classification_metrics(probs, labels, spec.classes, spec.ok_class, policy.threshold, called_ng=called_ng,
                                  targets=targets)


def heatmap_iou(heatmap: np.ndarray, masks: np.ndarray, selected: np.ndarray) -> Optional[float]:
    """The heatmap IoU: mean over the ``selected`` images (NG with a mask) of the IoU of each heatmap
    (1, h, w), resized to the masks' size (the input size) with ``cv2.resize`` (linear) and
    ``> HEAT_THRESHOLD``, with its mask (bool (N, H, W)). None when no image is selected."""
    h, w = masks.shape[1:]
    pred = np.stack([cv2.resize(m[0], (w, h), interpolation=cv2.INTER_LINEAR) for m in heatmap]) > HEAT_THRESHOLD
    return mean_iou(iou(pred, masks), selected)


def _predict(runner: Runner, frames: np.ndarray, what: str, progress: bool) -> Scores:
    starts = range(0, len(frames), CHUNK)
    parts = [runner.predict(frames[s:s + CHUNK]) for s in track(starts, what, enabled=progress)]
    return Scores(*(np.concatenate([getattr(p, k) for p in parts]) for k in OUTPUTS))


def _latency(runner: Runner, frame: np.ndarray) -> Latency:
    times = []
    for i in range(LATENCY_RUNS + LATENCY_WARMUP):
        t0 = time.perf_counter()
        runner.predict(frame)
        if i >= LATENCY_WARMUP:
            times.append((time.perf_counter() - t0) * 1000)
    return Latency(p50_ms=float(np.median(times)), p90_ms=float(np.percentile(times, 90)))


def _threshold(runner: Runner, ds: Dataset, target_escape: Optional[float], progress: bool) -> float:
    """The model's threshold, or the one that meets ``target_escape`` on the val split."""
    spec = runner.spec
    if target_escape is None:
        return spec.threshold
    if spec.ok_index is None:
        raise DatasetError(f"{runner.spec.arch['name']}: a defect-type model (no OK class) has no escape rate to "
                           "target; leave out --target-escape")
    val = load_frames(ds, spec, split="val")
    probs = _predict(runner, val.frames, "val", progress).probs
    return pick_threshold(ng_scores(probs, spec.ok_index, spec.multi_label), val.labels != spec.ok_index,
                          target_escape)


def evaluate(model: Union[str, Path], data: Union[str, Path], split: str = "test", backend: str = "torch",
             target_escape: Optional[float] = None, progress: bool = True, **runner_options: Any) -> EvalReport:
    """Figures of ``model`` (a model directory or file, run by ``backend``; ``runner_options`` go to
    ``load_runner``) on ``split`` of the data set ``data``, at the model's threshold or at the one picked on
    the val split for ``target_escape``. Classes that differ from the model's are a ``DatasetError``."""
    ds = Dataset.load(data)
    with load_runner(model, backend, **runner_options) as runner:
        spec = runner.spec
        if ds.classes.classes != spec.classes:
            raise DatasetError(f"{data}: classes {ds.classes.classes} differ from the model's {spec.classes}")
        if ds.classes.ok_class != spec.ok_class:
            where = Path(model) / SPEC_FILE if Path(model).is_dir() else Path(model)
            raise DatasetError(f"{where}: the model's OK class {spec.ok_class} differs from the data's "
                               f"{ds.classes.ok_class} in {data} (None: a defect-type model or set)")
        policy = DecisionPolicy.of(spec, threshold=_threshold(runner, ds, target_escape, progress))
        test = load_frames(ds, spec, split=split, masks=True)
        scores = _predict(runner, test.frames, split, progress)
        latency = _latency(runner, test.frames[:1])
        name = runner.backend
    assert test.masks is not None  # masks=True
    ng = test.has_mask if spec.ok_index is None else test.has_mask & (test.labels != spec.ok_index)
    iou_of = heatmap_iou(scores.heatmap, test.masks, ng)
    targets = label_sets(ds, test.records, spec.classes) if spec.multi_label else None
    loss = binary_cross_entropy(scores.probs, targets) if targets is not None else cross_entropy(scores.probs,
                                                                                                 test.labels)
    return EvalReport(**figures(scores.probs, test.labels, spec, policy, targets), loss=loss,
                      heatmap_iou=iou_of, split=split, model=str(model), data=str(data), target_escape=target_escape,
                      latency=latency, backend=name)
