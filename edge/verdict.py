"""The one decision rule: a runner's scores -> OK / NG / UNCERTAIN per frame, with defect boxes.
Torch-free, Python 3.8 (the line computer).

    policy = DecisionPolicy.of(runner.spec, uncertain_band=0.05)        # model.yaml's settings, overridden
    scores = runner.predict(np.stack([runner.prepare(f.image) for f in frames]))
    verdicts = decide(frames, scores, runner.spec, policy)              # one JSON-serialisable Verdict each

The rule (``ng_score`` = 1 - p(OK), for a multi-label model the highest defect-class probability; ``t`` =
threshold, ``b`` = uncertain band):

* NG when ``ng_score >= t + b`` or some defect class reaches its class threshold;
* OK when ``ng_score < t - b`` and no defect class reaches its class threshold;
* UNCERTAIN otherwise (within the band).

With ``b = 0`` and no class thresholds this is ``ng_score >= t`` -> NG, else OK. :func:`decide_batch` applies
it to a batch of probabilities (evaluation and the INT8 accuracy gate use it too); :func:`decide` adds the
frames' identity, the scores, the defect classes (a multi-label model: every class at or above its threshold)
and the boxes: connected regions of ``heatmap >= box_threshold`` (8-connected, on the heatmap's grid), scaled to
the frame's image.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pydantic import Field, ValidationError, model_validator

from lineguard import LineguardError
from lineguard.config import StrictModel, describe
from lineguard.data.modelspec import ModelSpec, decision_error
from lineguard.metrics import ng_scores

from .runners.base import Scores

__all__ = ["CODES", "DECISIONS", "Decision", "DecisionPolicy", "DefectBox", "Frame", "Verdict", "VerdictError",
           "decide", "decide_batch", "find_boxes"]


class VerdictError(LineguardError):
    """A decision policy that cannot be used, or scores that do not fit the frames."""


@dataclass
class Frame:
    """One camera image and where it came from."""

    image: np.ndarray  # uint8 (H, W) or (H, W, C), any size: the runner's ``prepare`` resizes it
    frame_id: int
    timestamp: float  # epoch seconds
    source_id: str  # camera / station
    serial: Optional[str] = None  # the part's serial number, where the line reads one
    lot: Optional[str] = None


class Decision(str, Enum):
    OK = "OK"
    NG = "NG"
    UNCERTAIN = "UNCERTAIN"


DECISIONS: Tuple[Decision, ...] = (Decision.OK, Decision.NG, Decision.UNCERTAIN)  # code -> Decision
CODES: Dict[Decision, int] = {d: i for i, d in enumerate(DECISIONS)}  # Decision -> the code decide_batch returns


class DecisionPolicy(StrictModel):
    """The settings of the rule (see the module docstring); ``box_threshold`` and ``min_box_area`` (pixels
    of the frame's image) select the defect boxes."""

    threshold: float
    uncertain_band: float = 0.0
    class_thresholds: Dict[str, float] = Field(default_factory=dict)  # defect class -> p that makes NG
    box_threshold: float = 0.5
    min_box_area: int = 0

    @model_validator(mode="after")
    def _usable(self) -> DecisionPolicy:
        why = decision_error(self.threshold, self.uncertain_band, self.class_thresholds)
        if not why and not 0.0 <= self.box_threshold <= 1.0:
            why = f"box_threshold must be in 0..1, got {self.box_threshold}"
        if not why and self.min_box_area < 0:
            why = f"min_box_area must be >= 0 px, got {self.min_box_area}"
        if why:
            raise ValueError(why)
        return self

    @classmethod
    def of(cls, spec: ModelSpec, **overrides: Any) -> DecisionPolicy:
        """The policy of the model description ``spec`` (threshold, uncertain_band, class_thresholds) with
        ``overrides`` (any field; None keeps the model's or the default). Unusable values are a
        :class:`VerdictError`."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            policy = cls.model_validate({"threshold": spec.threshold, "uncertain_band": spec.uncertain_band,
                                         "class_thresholds": spec.class_thresholds, **given})
        except ValidationError as e:
            raise VerdictError(f"decision policy: {describe(e, cls)}") from None
        _class_limits(policy, spec)
        return policy


class DefectBox(StrictModel):
    """A defect region in pixels of the frame's image: x0 <= x < x1, y0 <= y < y1."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float  # the highest heatmap value in it
    area: int  # px of the frame's image


class Verdict(StrictModel):
    """The decision on one frame, with everything needed to audit it later (``model_dump_json()``)."""

    frame_id: int
    source_id: str
    serial: Optional[str] = None
    lot: Optional[str] = None
    timestamp: float
    decision: Decision
    top_class: str  # the most probable defect class (NG, UNCERTAIN) or the OK class (OK)
    defects: List[str] = Field(default_factory=list)  # every defect class seen, most probable first (below)
    scores: Dict[str, float]  # class -> probability
    ng_score: float
    policy: DecisionPolicy
    model_version: Optional[str] = None  # sha256 of the weights the model was exported from
    boxes: List[DefectBox] = Field(default_factory=list)  # highest score first
    timings: Dict[str, float] = Field(default_factory=dict)  # step -> ms


def _class_limits(policy: DecisionPolicy, spec: ModelSpec) -> Tuple[List[int], np.ndarray]:
    """Column indices and thresholds of the policy's class thresholds; a name that is not a defect class of
    ``spec`` is a :class:`VerdictError`."""
    why = decision_error(policy.threshold, policy.uncertain_band, policy.class_thresholds, spec.defect_classes)
    if why:
        raise VerdictError(f"decision policy: {why}")
    names = sorted(policy.class_thresholds)
    return [spec.classes.index(c) for c in names], np.array([policy.class_thresholds[c] for c in names])


def decide_batch(probs: np.ndarray, spec: ModelSpec, policy: Optional[DecisionPolicy] = None) -> np.ndarray:
    """The rule on class probabilities (N, K) in ``spec``'s class order: int8 codes (N,), ``DECISIONS[code]``
    is the :class:`Decision`. ``policy`` defaults to the model's (:meth:`DecisionPolicy.of`)."""
    policy = policy if policy is not None else DecisionPolicy.of(spec)
    cols, limits = _class_limits(policy, spec)
    ng = ng_scores(probs, spec.ok_index, spec.multi_label)
    hit = (probs[:, cols] >= limits).any(1) if cols else np.zeros(len(probs), bool)
    codes = np.full(len(probs), CODES[Decision.UNCERTAIN], np.int8)
    codes[(ng < policy.threshold - policy.uncertain_band) & ~hit] = CODES[Decision.OK]
    codes[(ng >= policy.threshold + policy.uncertain_band) | hit] = CODES[Decision.NG]
    return codes


def find_boxes(heat: np.ndarray, image_size: Tuple[int, int], policy: DecisionPolicy) -> List[DefectBox]:
    """Boxes of the 8-connected regions of ``heat`` (h, w) >= ``policy.box_threshold``, scaled to
    ``image_size`` (H, W): grid cell (r, c) covers image rows r*H/h .. (r+1)*H/h (and columns alike),
    rounded outwards. Regions smaller than ``policy.min_box_area`` image pixels are dropped."""
    h, w = heat.shape
    big_h, big_w = image_size
    hot = heat >= policy.box_threshold
    if not hot.any():  # most parts: no region, no labelling
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hot.astype(np.uint8), connectivity=8)
    values, owners = heat[hot], labels[hot]
    boxes = []
    for j in range(1, n):  # 0: the background
        x, y, bw, bh, cells = (int(v) for v in stats[j, :5])
        area = round(cells * big_h * big_w / (h * w))
        if area >= policy.min_box_area:
            boxes.append(DefectBox(x0=x * big_w // w, y0=y * big_h // h, x1=-(-(x + bw) * big_w // w),
                                   y1=-(-(y + bh) * big_h // h), score=float(values[owners == j].max()), area=area))
    return sorted(boxes, key=lambda b: -b.score)


def _defects(probs: np.ndarray, spec: ModelSpec, policy: DecisionPolicy, top: str) -> List[str]:
    """The defect classes of a part not passed: a multi-label model's classes at or above their threshold (a class
    threshold, else the policy's), most probable first, at least the top class; else the top class."""
    if not spec.multi_label:
        return [top]
    found = [(float(probs[j]), c) for j, c in enumerate(spec.classes)
             if c != spec.ok_class and probs[j] >= policy.class_thresholds.get(c, policy.threshold)]
    return [c for _, c in sorted(found, reverse=True)] or [top]


def decide(frames: Sequence[Frame], scores: Scores, spec: ModelSpec, policy: Optional[DecisionPolicy] = None,
           model_version: Optional[str] = None, timings: Optional[Dict[str, float]] = None) -> List[Verdict]:
    """One :class:`Verdict` per frame from the runner's ``scores`` of those frames (same order); ``timings``
    (step -> ms) is recorded in each."""
    if len(frames) != len(scores):
        raise VerdictError(f"{len(frames)} frames but scores for {len(scores)}")
    policy = policy if policy is not None else DecisionPolicy.of(spec)
    codes = decide_batch(scores.probs, spec, policy)
    defect = np.array([spec.classes.index(c) for c in spec.defect_classes])
    top = defect[scores.probs[:, defect].argmax(1)] if len(defect) else np.full(len(frames), spec.ok_index)
    out = []
    for i, f in enumerate(frames):
        decision = DECISIONS[codes[i]]
        out.append(Verdict(
            frame_id=f.frame_id, source_id=f.source_id, serial=f.serial, lot=f.lot, timestamp=f.timestamp,
            decision=decision, top_class=spec.ok_class if decision is Decision.OK else spec.classes[top[i]],
            defects=[] if decision is Decision.OK else _defects(scores.probs[i], spec, policy, spec.classes[top[i]]),
            scores={c: float(p) for c, p in zip(spec.classes, scores.probs[i])},
            ng_score=float(scores.ng_score[i]), policy=policy, model_version=model_version,
            boxes=find_boxes(spec.preprocess.unfit(scores.heatmap[i, 0], f.image.shape[:2]), f.image.shape[:2],
                             policy), timings=dict(timings or {})))
    return out
