"""After training: threshold on val, figures on test, plots, metrics.json and the model card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict

import torch

from ..data.format import Dataset
from ..data.modelspec import ModelSpec
from ..data.split import synthetic_records
from ..files import atomic_write
from ..metrics import ng_scores, pick_threshold
from .config import TrainConfig
from .dataset import DefectDataset
from .evaluate import measure_latency, predict, split_metrics
from .model_dir import save_model_files
from .models import count_gmacs
from .plots import plot_confusion, plot_curves, plot_pr
from .synth_filter import read_filter_report

__all__ = ["finish_model_dir"]


def finish_model_dir(out: Path, model: torch.nn.Module, spec: ModelSpec, ds: Dataset, cfg: TrainConfig,
                     state) -> Dict:
    """Write the complete model directory for the best weights already loaded into ``model``."""
    ok, multi = spec.ok_index, spec.multi_label
    val = predict(model, DefectDataset(ds, ds.split("val"), spec.preprocess, None), ok, multi_label=multi)
    if cfg.target_escape is not None:
        spec.threshold = pick_threshold(ng_scores(val.probs, ok, multi), val.labels != ok, cfg.target_escape)
    metrics: Dict = {"val": split_metrics(val, spec.classes, spec.ok_class, spec.threshold)}
    test_recs = ds.split("test")
    if test_recs:
        test = predict(model, DefectDataset(ds, test_recs, spec.preprocess, None), ok, multi_label=multi)
        metrics["test"] = split_metrics(test, spec.classes, spec.ok_class, spec.threshold)
        plot_pr(test.probs, test.labels, spec.classes, spec.ok_class, out / "pr.png")
    else:
        plot_pr(val.probs, val.labels, spec.classes, spec.ok_class, out / "pr.png")
    shown = "test" if test_recs else "val"
    plot_confusion(metrics[shown]["confusion"], spec.classes, out / "confusion.png", f"{shown} split")
    plot_curves(state.history, out / "curves.png")
    size = spec.preprocess.size
    metrics.update(
        model=spec.arch["name"], best_epoch=state.best_epoch, epochs_run=state.epoch, stop_reason=state.stop_reason,
        train_minutes=state.seconds / 60, train_images_per_s=_mean_rate(state.history),
        gmacs=count_gmacs(model, size), params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        precision=cfg.resolved_precision(), latency=measure_latency(model, spec.preprocess.channels, size),
        history=state.history, data=_provenance(ds, cfg))
    save_model_files(out, model, spec, ds.classes)
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1))
    atomic_write(out / "MODEL_CARD.md", _card(spec, cfg, metrics))
    return {k: v for k, v in metrics.items() if k != "history"}


def _mean_rate(history) -> float:
    rates = [h["images_per_s"] for h in history]
    return sum(rates) / len(rates) if rates else 0.0


def _origins(records) -> Dict[str, int]:
    return dict(Counter(f"{r.origin.kind}:{r.origin.name}@{r.origin.version}" for r in records))


def _provenance(ds: Dataset, cfg: TrainConfig) -> Dict:
    """Images per split, class and source, and the generators/importers behind them (synthetic too)."""
    out: Dict = {"root": str(ds.root), "splits": {}, "origins": _origins(ds.records)}
    for s in ("train", "val", "test"):
        recs = ds.split(s)
        out["splits"][s] = {"classes": ds.counts(recs), "sources": dict(Counter(r.source for r in recs))}
    if cfg.synthetic is not None and cfg.synthetic_extra > 0:
        syn = Dataset.load(cfg.synthetic)
        recs = synthetic_records(ds, syn)
        out["synthetic"] = {"root": str(syn.root), "extra": cfg.synthetic_extra,
                            "real_epochs": cfg.synthetic_real_epochs, "weight": cfg.synthetic_weight,
                            "classes": syn.counts(recs),
                            "sources": dict(Counter(r.source for r in recs)), "origins": _origins(recs),
                            "filter": read_filter_report(syn.root)}
    return out


def _card(spec: ModelSpec, cfg: TrainConfig, m: Dict) -> str:
    shown = "test" if "test" in m else "val"
    r = m[shown]
    rows = "\n".join(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                     for c, v in r["per_class"].items())
    splits = "\n".join(f"| {s} | {v['classes']} | {v['sources']} |" for s, v in m["data"]["splits"].items())
    auroc = f"{r['ok_ng_auroc']:.4f}" if r["ok_ng_auroc"] is not None else "n/a"
    iou = f"{r['heatmap_iou']:.3f}" if r["heatmap_iou"] is not None else "n/a"
    return f"""# Model card: {spec.arch['name']}

Input {spec.preprocess.size[1]}x{spec.preprocess.size[0]}, {spec.preprocess.channels} channel(s), \
mean {spec.preprocess.mean}, std {spec.preprocess.std}; weights from `{cfg.weights}`; \
{m['params_m']:.2f} M parameters, {m['gmacs']:.2f} GMACs.
{_decides(spec)}

## Data (provenance: {m['data']['origins']})

| split | classes | sources |
|---|---|---|
{splits}
{_synthetic_line(m['data'].get('synthetic'))}
## Results on the {shown} split ({r['images']} images)

Accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}{_exact(r)}, {_ok_ng_figures(r, auroc)}, heatmap IoU {iou}.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Training: {m['epochs_run']} epochs (best {m['best_epoch']}; {m['stop_reason']}), {m['train_minutes']:.1f} min, \
{m['train_images_per_s']:.1f} images/s, {m['precision']}. PyTorch latency (batch 1, this machine): \
{m['latency']['p50_ms']:.1f} ms median.

## Limits

- Figures hold for images like the {shown} split: same camera, lighting, product and defect types.
  New products, lenses or lighting need new validation data before this model decides on a line.
- Small test classes give wide error bars: a class with 10 test images moves 10 points per image.
- The heatmap is trained only where masks exist; treat it as a pointer, not a measurement.
{_threshold_line(spec, cfg)}"""


def _threshold_line(spec: ModelSpec, cfg: TrainConfig) -> str:
    if spec.ok_class is None:
        return "- A defect-type model: run it after an OK/NG decision, on the parts already rejected.\n"
    how = f" for a target escape rate of {cfg.target_escape}" if cfg.target_escape else " (default 0.5)"
    return f"- The threshold was chosen on the val split{how}.\n"


def _decides(spec: ModelSpec) -> str:
    if spec.ok_class is None:
        return (f"Classes {spec.classes}: a defect-type model (trained on defective parts only, no OK class). It "
                "tells a defect's type; it cannot decide OK/NG, and the line daemon refuses it as a decider.")
    if spec.multi_label:
        return (f"Classes {spec.classes}, OK class `{spec.ok_class}`; multi-label (a probability per class, every "
                f"defect a part holds): NG when a defect class reaches {spec.threshold:.4f}.")
    return f"Classes {spec.classes}, OK class `{spec.ok_class}`; NG when 1 - p(OK) >= {spec.threshold:.4f}."


def _exact(r: Dict) -> str:
    return "" if r.get("exact_match") is None else f" (per class), exact class-set match {r['exact_match']:.4f}"


def _ok_ng_figures(r: Dict, auroc: str) -> str:
    if r["escape_rate"] is None:
        return "OK/NG figures not applicable (no OK class)"
    return (f"OK/NG AUROC {auroc}, escape rate {r['escape_rate']:.4f}, false-reject rate "
            f"{r['false_reject_rate']:.4f}")


def _synthetic_line(syn) -> str:
    if not syn:
        return ""
    last = f"; the last {syn['real_epochs']} epochs real only" if syn["real_epochs"] else ""
    f = syn.get("filter")
    kept = (f" Filtered from `{f['source']}` by `{f['model']}` (class band {f['band']}, probe below "
            f"{f['probe_max']:g}): {f['kept_share']:.1%} kept; dropped {f['dropped']}." if f else "")
    return (f"\nSynthetic training images from `{syn['root']}`, {syn['extra']:g} draws on top of each real draw of a "
            f"class they hold (class-loss weight {syn['weight']:g}{last}): {syn['classes']}, sources "
            f"{syn['sources']}, made by {syn['origins']}.{kept}\n")
