"""Filter a synthetic set with a model trained on the real training split, before training on it.

    rep = filter_synthetic("data/mt", "data/mt-gan", "runs/mt-real", "data/mt-gan-kept")
    rep.kept, rep.per_class["Crack"].reasons

A generated image is kept when both hold:

* **class band**: the real-trained classifier gives its intended class a probability in ``band``
  (``lo <= p <= hi``): below ``lo`` the classifier does not see the class in it (``off_class``), above
  ``hi`` it is one the classifier finds trivially easy, with nothing new to teach (``too_easy``; ``hi = 1``
  keeps them);
* **probe**: a real-vs-synthetic logistic regression on the classifier's pooled features (one per class,
  real images of that class from the real ``split`` against the synthetic ones, class-balanced, C = 1:
  probabilities sharp enough to mean "told apart", out-of-fold predictions, identical feature rows in one
  fold) gives it a probability of being synthetic below ``probe_max`` (``told_apart`` otherwise; a class
  with too few real images is not probed, and the report says so; ``probe_max = 1`` turns the probe off).

The filtered set is a data set of its own (``out``): the synthetic set's class file, the kept records with
absolute image and mask paths (the files stay where the generator wrote them), and ``filter-report.json``
(settings, kept share per class, every dropped record with its reasons and scores). Training on it records
the filter's figures in the model's provenance. The same filter serves any synthetic set: GAN, copy-paste,
Perlin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from pydantic import BaseModel, Field, model_validator

from ..config import StrictModel
from ..data.format import Dataset
from ..data.split import synthetic_records
from ..files import TMP_SUFFIX, atomic_write
from .model_dir import load_model_dir
from .synth_score import ScoreError, embed, sample_records, synthetic_proba

__all__ = ["FILTER_REPORT", "FilterConfig", "FilterReport", "filter_synthetic", "probe_scores", "read_filter_report"]

FILTER_REPORT = "filter-report.json"
REASONS = ("off_class", "too_easy", "told_apart")


class FilterConfig(StrictModel):
    """What a synthetic image must pass to be kept (see the module docstring)."""

    band: Tuple[float, float] = Field((0.5, 0.99), description="keep p(intended class) in [lo, hi]")
    probe_max: float = Field(0.9, gt=0, le=1, description="drop when the probe's P(synthetic) reaches this (1: off)")
    probe_folds: int = Field(5, ge=2, description="folds of the probe's out-of-fold predictions")
    split: str = Field("train", description="the real split the classifier was trained on (the probe's real side)")
    max_real: int = Field(2000, ge=2, description="real images per class for the probe (a seeded sample)")
    batch_size: int = Field(32, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _band(self) -> FilterConfig:
        lo, hi = self.band
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"band must be 0 <= lo <= hi <= 1, got {list(self.band)}")
        return self


class Dropped(BaseModel):
    id: str
    label: str
    reasons: List[str]
    p_class: float  # the classifier's probability of the intended class
    predicted: str  # its most probable class
    p_synthetic: Optional[float]  # the probe's; None where the class was not probed


class ClassResult(BaseModel):
    images: int
    kept: int
    reasons: Dict[str, int]  # images each reason applies to (one image may have several)
    probed: bool
    probe_real: int  # real images the probe saw
    p_class_median: float


class FilterReport(BaseModel):
    real: str
    synthetic: str
    model: str
    config: FilterConfig
    images: int
    kept: int
    kept_share: float
    per_class: Dict[str, ClassResult]
    not_probed: Dict[str, str]  # class -> why
    dropped: List[Dropped]


def probe_scores(real: np.ndarray, synthetic: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(synthetic) of each ``synthetic`` row (class-balanced, C = 1; :func:`synthetic_proba`)."""
    return synthetic_proba(real, synthetic, folds, seed, c=1.0, balanced=True)[len(real):]


def filter_synthetic(real_dir: Union[str, Path], synthetic_dir: Union[str, Path], model_dir: Union[str, Path],
                     out: Union[str, Path], cfg: Optional[FilterConfig] = None, progress: bool = True
                     ) -> FilterReport:
    """Write the kept records of ``synthetic_dir`` as the data set ``out`` (see the module docstring)."""
    cfg = cfg or FilterConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ScoreError(f"{out}: exists and is not empty (the filter writes a new data set)")
    real, synth = Dataset.load(real_dir), Dataset.load(synthetic_dir)
    recs = synthetic_records(real, synth)
    loaded = load_model_dir(model_dir)
    spec = loaded.spec
    if spec.classes != real.classes.classes:
        raise ScoreError(f"{model_dir}: classes {spec.classes} are not those of {real.root} "
                         f"({real.classes.classes}): filter with a model trained on that set")
    fs, ps = embed(loaded.model, spec.preprocess, synth, recs, cfg.batch_size, progress, str(model_dir),
                   spec.multi_label)
    index = {c: i for i, c in enumerate(spec.classes)}
    labels = np.array([r.label for r in recs])
    p_class = ps[np.arange(len(recs)), [index[r.label] for r in recs]]
    p_synth = np.full(len(recs), np.nan)
    lo, hi = cfg.band
    reasons: List[List[str]] = [[] for _ in recs]
    for i, p in enumerate(p_class):
        if p < lo:
            reasons[i].append("off_class")
        elif p > hi:
            reasons[i].append("too_easy")
    per_class: Dict[str, ClassResult] = {}
    not_probed: Dict[str, str] = {}
    for c in [c for c in spec.classes if c in set(labels)]:
        rows = np.flatnonzero(labels == c)
        real_c = sample_records([r for r in real.split(cfg.split) if r.label == c], cfg.max_real, cfg.seed)
        probed = cfg.probe_max < 1 and len(real_c) >= 2 and len(rows) >= 2
        if probed:
            fr, _ = embed(loaded.model, spec.preprocess, real, real_c, cfg.batch_size, progress, str(model_dir))
            p_synth[rows] = probe_scores(fr, fs[rows], cfg.probe_folds, cfg.seed)
            for i in rows[p_synth[rows] >= cfg.probe_max]:
                reasons[i].append("told_apart")
        elif cfg.probe_max < 1:
            not_probed[c] = (f"{len(real_c)} real images in split '{cfg.split}' and {len(rows)} synthetic "
                             "(the probe needs 2 of each)")
        per_class[c] = ClassResult(
            images=len(rows), kept=sum(not reasons[i] for i in rows),
            reasons={k: sum(k in reasons[i] for i in rows) for k in REASONS}, probed=probed,
            probe_real=len(real_c) if probed else 0, p_class_median=float(np.median(p_class[rows])))
    kept = [synth.absolute(r) for r, why in zip(recs, reasons) if not why]
    dropped = [Dropped(id=r.id, label=r.label, reasons=why, p_class=float(p_class[i]),
                       predicted=spec.classes[int(ps[i].argmax())],
                       p_synthetic=None if np.isnan(p_synth[i]) else float(p_synth[i]))
               for i, (r, why) in enumerate(zip(recs, reasons)) if why]
    rep = FilterReport(real=str(real_dir), synthetic=str(synthetic_dir), model=str(model_dir), config=cfg,
                       images=len(recs), kept=len(kept), kept_share=len(kept) / len(recs), per_class=per_class,
                       not_probed=not_probed, dropped=dropped)
    if not kept:
        raise ScoreError(f"{synth.root}: the filter keeps none of its {len(recs)} images "
                         f"({_summary(rep)}); widen --band or raise --probe-max")
    work = out.with_name(out.name + TMP_SUFFIX)
    shutil.rmtree(work, ignore_errors=True)
    Dataset(work, synth.classes, kept).save()
    atomic_write(work / FILTER_REPORT, rep.model_dump_json(indent=1))
    if out.exists():
        out.rmdir()
    work.rename(out)
    return rep


def _summary(rep: FilterReport) -> str:
    counts = {k: sum(c.reasons[k] for c in rep.per_class.values()) for k in REASONS}
    return ", ".join(f"{k} {n}" for k, n in counts.items())


def read_filter_report(root: Union[str, Path]) -> Optional[Dict]:
    """The filter's figures of a filtered set (settings, kept share, drops per reason), None for a set the
    filter did not write."""
    path = Path(root) / FILTER_REPORT
    if not path.is_file():
        return None
    rep = FilterReport.model_validate(json.loads(path.read_text()))
    return {"model": rep.model, "source": rep.synthetic, "band": list(rep.config.band),
            "probe_max": rep.config.probe_max, "kept_share": rep.kept_share, "dropped": _summary(rep)}
