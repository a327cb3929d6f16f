"""Offline quality scores of a synthetic set against real images, in the feature space of a lineguard model
trained on the real split (no Inception weights, nothing downloaded).

    rep = score("data/mt", "data/mt-gan", "runs/mt-model", split="train")
    rep["overall"]["fd"], rep["per_class"]["Crack"]["c2st_auc"]

Features are the model's pooled penultimate features (the input of its classification ``head``),
images preprocessed with the model's own ``spec.preprocess``. Real images are the records of
``split`` whose class the synthetic set has (a synthetic set of defects is compared with real
defects, not with OK images); each side is capped at ``max_images`` (a seeded sample). Metrics,
overall and per class:

* ``fd``: Frechet distance between Gaussians fitted to the two feature sets (the matrix square
  root's trace from singular values, exact: no sqrtm, no complex parts);
* ``kid_mean`` / ``kid_std``: unbiased MMD^2 with the kernel (x.y / d + 1)^3 over ``kid_subsets``
  random subsets of up to ``kid_subset_size`` per side (Binkowski et al. 2018);
* ``precision`` / ``recall``: k-NN manifold estimates, k = 3 (Kynkaanniemi et al. 2019): the share
  of synthetic features inside some real feature's k-NN ball, and the reverse;
* ``c2st_auc``: ROC AUC of a logistic regression telling real from synthetic (equal sizes,
  standardised features, stratified k-fold predictions; identical feature rows share a fold):
  0.5 = indistinguishable, 1.0 = always told apart;
* ``near_copy_rate``: share of synthetic images whose nearest real feature is at most the 1st
  percentile of real-to-real nearest-neighbour distances.

A class with fewer than ``k + 1`` images on either side is listed under ``skipped`` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from pydantic import BaseModel

from .. import LineguardError
from ..data.format import Dataset, Record
from ..data.imaging import ImageFileError, read_image
from ..data.preprocess import Preprocess
from ..data.progress import track
from .model_dir import load_model_dir

__all__ = [
    "ScoreError",
    "ScoreReport",
    "c2st_auc",
    "embed",
    "frechet_distance",
    "kid",
    "near_copy_rate",
    "precision_recall",
    "sample_records",
    "score",
    "synthetic_proba",
]

K = 3  # neighbours for precision/recall


class ScoreError(LineguardError):
    """Inputs the score cannot use; the message names the folder and the cause."""


class Metrics(BaseModel):
    real: int
    synthetic: int
    fd: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    c2st_auc: float
    near_copy_rate: float


class ScoreReport(BaseModel):
    real: str
    synthetic: str
    model: str
    split: str
    feature_dim: int
    overall: Metrics
    per_class: Dict[str, Metrics]
    skipped: Dict[str, str]


# --------------------------------------------------------------------------------------------------
# metrics on feature arrays (N, d)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2).

    With centred, scaled features A, B (C_a = A^T A), tr (C_a C_b)^1/2 is the sum of the singular values
    of A B^T, which are those of R_a R_b^T (QR of A and B): exact, and small when images are few."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ca = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    cb = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    ra, rb = np.linalg.qr(ca, mode="r"), np.linalg.qr(cb, mode="r")
    cross = np.linalg.svd(ra @ rb.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca * ca).sum() + (cb * cb).sum() - 2 * cross)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
        ) -> Tuple[float, float]:
    """Unbiased MMD^2 (polynomial kernel of degree 3), mean and std over random subsets."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = a.shape[1]
    kxx, kyy, kxy = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        i, j = rng.choice(len(a), m, replace=False), rng.choice(len(b), m, replace=False)
        sxx, syy = kxx[np.ix_(i, i)], kyy[np.ix_(j, j)]
        xx = (sxx.sum() - np.trace(sxx)) / (m * (m - 1))
        yy = (syy.sum() - np.trace(syy)) / (m * (m - 1))
        vals.append(xx + yy - 2 * kxy[np.ix_(i, j)].mean())
    return float(np.mean(vals)), float(np.std(vals))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row."""
    d = _distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = K) -> Tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019)."""
    d = _distances(real, synthetic)  # (R, S)
    precision = float((d <= _knn_radii(real, k)[:, None]).any(0).mean())
    recall = float((d <= _knn_radii(synthetic, k)[None, :]).any(1).mean())
    return precision, recall


def synthetic_proba(real: np.ndarray, synthetic: np.ndarray, folds: int = 5, seed: int = 0, c: float = 0.1,
                    balanced: bool = False) -> np.ndarray:
    """Out-of-fold P(synthetic) of every row of ``[real; synthetic]`` from a logistic regression (standardised
    features, inverse regularisation ``c``, class-balanced weights if ``balanced``) telling ``synthetic`` (1)
    from ``real`` (0); identical rows (copies) share a fold, so a copy is never judged by its twin."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([real, synthetic])
    y = np.repeat([0, 1], [len(real), len(synthetic)])
    _, groups = np.unique(x, axis=0, return_inverse=True)
    cv = StratifiedGroupKFold(n_splits=min(folds, len(real), len(synthetic)), shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="liblinear",
                                                             class_weight="balanced" if balanced else None))
    return cross_val_predict(clf, x, y, cv=cv, groups=groups.ravel(), method="predict_proba")[:, 1]


def c2st_auc(real: np.ndarray, synthetic: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling ``synthetic`` from ``real`` (equal-size samples)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    m = min(len(real), len(synthetic))
    p = synthetic_proba(real[rng.choice(len(real), m, replace=False)],
                        synthetic[rng.choice(len(synthetic), m, replace=False)], folds, seed)
    return float(roc_auc_score(np.repeat([0, 1], m), p))


def near_copy_rate(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Share of ``synthetic`` rows whose nearest real row is at most the 1st percentile of the real
    rows' nearest-neighbour distances."""
    floor = float(np.percentile(_knn_radii(real, 1), 1))
    return float((_distances(synthetic, real).min(1) <= floor).mean())


def _metrics(real: np.ndarray, synthetic: np.ndarray, seed: int, kid_subsets: int, kid_subset_size: int
             ) -> Metrics:
    km, ks = kid(real, synthetic, kid_subsets, kid_subset_size, seed)
    p, r = precision_recall(real, synthetic)
    return Metrics(real=len(real), synthetic=len(synthetic), fd=frechet_distance(real, synthetic), kid_mean=km,
                   kid_std=ks, precision=p, recall=r, c2st_auc=c2st_auc(real, synthetic, seed=seed),
                   near_copy_rate=near_copy_rate(real, synthetic))


# --------------------------------------------------------------------------------------------------
# features


def embed(model: torch.nn.Module, pre: Preprocess, ds: Dataset, records: Sequence[Record], batch_size: int = 32,
          progress: bool = True, where: str = "model", multi_label: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled penultimate features (the input of the model's Linear ``head``), (N, d) float32, and class
    probabilities (softmax; sigmoid per class for a ``multi_label`` model), (N, K), of ``records``."""
    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Linear):
        raise ScoreError(f"{where}: the model has no Linear `head` whose input are the pooled features")
    got: List[torch.Tensor] = []
    probs: List[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach()))
    model.eval()
    try:
        starts = range(0, len(records), batch_size)
        for s in track(starts, f"features {ds.root.name}", enabled=progress):
            batch = []
            for r in records[s:s + batch_size]:
                try:
                    img, sha = read_image(ds.path(r.image))
                except ImageFileError as e:
                    raise ScoreError(f"{ds.path(r.image)} (record {r.id}): {e}") from None
                if sha != r.sha256:
                    raise ScoreError(f"{ds.path(r.image)} (record {r.id}): file changed since the manifest was "
                                     f"written (sha256 {sha[:12]}..., manifest {r.sha256[:12]}...)")
                batch.append(pre(img))
            with torch.inference_mode():
                logits = model(torch.from_numpy(np.stack(batch)))["logits"].float()
            probs.append(logits.sigmoid() if multi_label else logits.softmax(1))
    finally:
        hook.remove()
    return torch.cat(got).float().numpy(), torch.cat(probs).numpy()


def sample_records(records: List[Record], n: int, seed: int) -> List[Record]:
    """At most ``n`` of ``records``, a seeded sample in their order."""
    if len(records) <= n:
        return records
    keep = np.sort(np.random.default_rng(seed).choice(len(records), n, replace=False))
    return [records[int(i)] for i in keep]


def score(real_dir: Union[str, Path], synthetic_dir: Union[str, Path], model_dir: Union[str, Path],
          split: str = "train", max_images: int = 2000, batch_size: int = 32, seed: int = 0,
          kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True) -> Dict[str, Any]:
    """Scores of ``synthetic_dir`` against the ``split`` of ``real_dir`` (see the module docstring); the
    :class:`ScoreReport` as a dict."""
    real, synth = Dataset.load(real_dir), Dataset.load(synthetic_dir)
    present = {r.label for r in synth.records}
    foreign = sorted(present - set(real.classes.classes))
    if foreign or not present:
        raise ScoreError(f"{synth.root}: labels {foreign or 'none'} are not classes of {real.root} "
                         f"({real.classes.classes})")
    labels = [c for c in real.classes.classes if c in present]
    real_recs = sample_records([r for r in real.split(split) if r.label in labels], max_images, seed)
    if len(real_recs) <= K:
        raise ScoreError(f"{real.root}: split '{split}' has {len(real_recs)} images of the classes {labels} "
                         f"(needs > {K}; run `lineguard data split`?)")
    synth_recs = sample_records(list(synth.records), max_images, seed)
    if len(synth_recs) <= K:
        raise ScoreError(f"{synth.root}: {len(synth_recs)} images (needs > {K})")
    loaded = load_model_dir(model_dir)
    fr, _ = embed(loaded.model, loaded.spec.preprocess, real, real_recs, batch_size, progress, str(model_dir))
    fs, _ = embed(loaded.model, loaded.spec.preprocess, synth, synth_recs, batch_size, progress, str(model_dir))
    per_class, skipped = {}, {}
    lr, ls = np.array([r.label for r in real_recs]), np.array([r.label for r in synth_recs])
    for c in labels:
        nr, ns = int((lr == c).sum()), int((ls == c).sum())
        if min(nr, ns) <= K:
            skipped[c] = f"{nr} real and {ns} synthetic images (needs > {K} each)"
            continue
        per_class[c] = _metrics(fr[lr == c], fs[ls == c], seed, kid_subsets, kid_subset_size)
    rep = ScoreReport(real=str(real_dir), synthetic=str(synthetic_dir), model=str(model_dir), split=split,
                      feature_dim=fr.shape[1], overall=_metrics(fr, fs, seed, kid_subsets, kid_subset_size),
                      per_class=per_class, skipped=skipped)
    return rep.model_dump()
