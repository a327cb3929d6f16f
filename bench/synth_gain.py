"""Does synthesis help? Issue 16's benchmark: stratified folds x seeds, paired differences with bootstrap intervals.

    LINEGUARD_REAL_DATA=../shared/datasets/magnetic-tile python bench/synth_gain.py \\
        --work runs/bench/synth_gain --record docs/synth_gain --out docs/synth_gain.json

Protocol. The data set is dealt into ``--folds`` stratified folds; fold k is held out (the test images), the others
train, 10% of them (per class, seeded) select the best epoch (val). At fraction f every OK training image is kept
and a share f of each defect class's. Per fold and fraction (a unit), with nothing from the held-out fold:

1. arm (a), ``real``: real images, classical augmentation, class-balanced sampling; ``--seeds`` runs. Its seed-0
   model is the filter's classifier (trained on the training fold only);
2. the synthetic sets: copy-paste + Perlin patches of the training defects (``baseline``), and the two-stage
   StyleGAN (the surface fitted on the fold's OK training images, shared by the fractions; defect blocks on the
   fraction's defect crops) (``gan``), ``--synthetic-n`` images each, pasted on OK training images; both
   filtered by ``lineguard synth filter`` with the arm-(a) model;
3. the screen: frozen ImageNet Lite0 features, logistic-regression heads on the real training images plus
   synthetic draws at each ``--shares`` (with and without the filter), ``--screen-seeds`` draws each, scored on
   the unit's val (never the held-out fold): the filter setting and share with the best mean gain over the two
   synthetic arms are used for
4. arms (b) ``baseline`` and (c) ``gan``: the same training with ``synthetic_extra`` = that share;
5. per fraction, over the recorded units, paired differences per held-out image (c-a, b-a, c-b) of macro-F1 (the
   mean over fold x seed of the per-run difference), accuracy, and per class F1 and recall (``--report-classes``),
   with bootstrap 95% intervals (images resampled within each fold x seed); offline scores (``lineguard synth
   score``) and the shape and texture figures (``synth.texture``: the surface's and the GAN's) of the GAN samples
   kept and unfiltered, and (``--before-kimg``, after the units: its own record) of a one-stage GAN on fold 0;
   real-vs-generated grids per class (under --work: they hold real crops, keep them out of the repository).

Whether arm (a) converged: each run's best epoch and its val macro-F1 over the last quarter of the epochs
(within a point of the best = a plateau) are reported. A finished unit is recorded in ``--record`` (one small JSON:
the runs' held-out labels and predictions, the screen, the scores, the step times), which is what a later run
resumes from: --work (data, GAN fits, generated sets, model folders) resumes within a session but is not kept
between sessions, the records are (committed). The comparison (``--out``, JSON and Markdown) is rewritten after
every unit from the units recorded so far, ``folds_done`` saying which. Cost with the defaults on our 2-core CPU:
about 6 hours, 1 to 1.3 h a unit (the GAN fits ~25 min, 6 trainings ~40-50 min).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from _synth import last_row, sample_grid

from lineguard.checkpoint import CheckpointError, check_settings
from lineguard.config import load_config
from lineguard.console import log_to_console
from lineguard.data.format import Dataset, Record
from lineguard.data.imaging import read_image
from lineguard.data.importers import import_dataset
from lineguard.data.preprocess import Preprocess
from lineguard.data.split import split_dataset
from lineguard.files import atomic_write
from lineguard.metrics import bootstrap_ci, confusion, macro_f1
from lineguard.synth.baselines import CopyPasteSource, PerlinSource
from lineguard.synth.gan.config import ARCH_FIELDS, GAN_YAML, GanConfig, GanFile, preset_config
from lineguard.synth.gan.source import GanSource
from lineguard.synth.gan.train import fit
from lineguard.synth.generate import NearCopyConfig, SourceFactory, generate
from lineguard.training.config import TrainConfig
from lineguard.training.cv import fold_sets
from lineguard.training.dataset import DefectDataset
from lineguard.training.engine import train
from lineguard.training.evaluate import predict
from lineguard.training.model_dir import load_model_dir
from lineguard.training.synth_filter import FilterConfig, filter_synthetic
from lineguard.training.synth_score import ScoreError, score

ARMS = ("real", "baseline", "gan")  # (a), (b), (c)
PAIRS = (("gan", "real"), ("baseline", "real"), ("gan", "baseline"))
VAL_SHARE = 0.1


# ---------------------------------------------------------------------------------------------- data


def folded(args: argparse.Namespace) -> Path:
    """``--data`` (or ``$LINEGUARD_REAL_DATA`` imported into work/data), dealt into ``--folds`` stratified folds."""
    data = args.work / "data"
    if not (data / "manifest.jsonl").exists():
        src = args.data or os.environ.get("LINEGUARD_REAL_DATA")
        if not src:
            raise SystemExit("give --data DIR or set LINEGUARD_REAL_DATA to the magnetic-tile folder")
        if (Path(src) / "manifest.jsonl").exists():
            ds = Dataset.load(src)
            Dataset(data, ds.classes, [ds.absolute(r) for r in ds.records]).save()
        else:
            import_dataset(src, data, progress=False)
        split_dataset(Dataset.load(data), val=0.0, test=0.0, seed=0, folds=args.folds)
    return data


def real_set(ds: Dataset, sets: List[List[Record]], k: int, fraction: float, out: Path) -> Path:
    """Fold ``k`` as test; of the other folds every OK image and ``fraction`` of each defect class's, 10% of
    each class (at least one) as val, the rest train. Seeded by the fold; nothing is copied."""
    if (out / "manifest.jsonl").exists():
        return out
    rng = np.random.default_rng([k, 7])
    rows = [ds.absolute(r, split="test", fold=None) for r in sets[k]]
    pool = [r for j, s in enumerate(sets) if j != k for r in s]
    for c in ds.classes.classes:
        recs = sorted((r for r in pool if r.label == c), key=lambda r: r.id)
        recs = [recs[i] for i in rng.permutation(len(recs))]  # one order per fold: 25% is inside 100%
        if c != ds.classes.ok_class:
            recs = recs[:max(2, round(len(recs) * fraction))]
        n_val = max(1, round(len(recs) * VAL_SHARE))
        rows += [ds.absolute(r, split="val" if i < n_val else "train", fold=None) for i, r in enumerate(recs)]
    Dataset(out, ds.classes, rows).save()
    return out


def merged(parts: List[Path], out: Path) -> Path:
    """One data set holding the records of ``parts`` (absolute paths; same class file)."""
    if (out / "manifest.jsonl").exists():
        return out
    sets = [Dataset.load(p) for p in parts]
    rows = [d.absolute(r, id=f"{i}-{r.id}") for i, d in enumerate(sets) for r in d.records]
    Dataset(out, sets[0].classes, rows).save()
    return out


# ---------------------------------------------------------------------------------------------- synthesis


class Timing(Dict[str, float]):
    """Seconds per step, kept in ``work/seconds.json`` across resumed runs; ``wall`` sums the runs' times, and
    ``UNIT/wall`` those spent on the unit :meth:`start` named (up to each :meth:`save`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(json.loads(path.read_text()) if path.exists() else {})
        self.path, self.before, self.t0 = path, self.get("wall", 0.0), time.perf_counter()
        self.unit: Optional[Tuple[str, float, float]] = None

    def start(self, unit: str) -> None:
        self.unit = (unit, self.get(f"{unit}/wall", 0.0), time.perf_counter())

    def save(self) -> None:
        now = time.perf_counter()
        self["wall"] = self.before + now - self.t0
        if self.unit:
            self[f"{self.unit[0]}/wall"] = self.unit[1] + now - self.unit[2]
        atomic_write(self.path, json.dumps(self, indent=1))


def fitted(data: Path, out: Path, cfg: GanConfig, timing: Timing, key: str) -> Path:
    """A GAN_DIR at ``cfg.kimg`` (resumed where a run stopped); one fitted with other network settings (an
    earlier preset) is refused, not reused."""
    if (out / GAN_YAML).exists():
        info = GanFile.load(out / GAN_YAML)
        try:
            check_settings(out / GAN_YAML, info.config.model_dump(), cfg, ARCH_FIELDS, what="network settings")
        except CheckpointError as e:
            raise SystemExit(f"{e} (remove it or use another --work)") from None
        if info.kimg >= cfg.kimg:
            return out
    t0 = time.perf_counter()
    fit(data, out, cfg, resume=(out / "checkpoint.pt").exists(), progress=False)
    timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0
    timing.save()
    return out


def generated(source, real: Path, n: int, out: Path, timing: Timing, key: str, **kw) -> Path:
    """The synthetic set ``out`` of ``n`` images (generated, resumed, or found complete)."""
    if (out / "generate-report.json").exists():
        return out
    t0 = time.perf_counter()
    g = generate(source, real, n, out, progress=False, **kw)
    timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0
    if g.rendered:
        timing[f"{key}/images_per_s"] = g.rendered / max(g.seconds, 1e-9)  # this run's images
    timing.save()
    return g.dataset.root


def filtered(args: argparse.Namespace, real: Path, synthetic: Path, model: Path, out: Path) -> Optional[Path]:
    """``synthetic`` filtered by ``model`` into ``out``; None (and ``out.none`` saying why) when nothing is kept."""
    none = out.with_suffix(".none")
    if none.exists():
        return None
    if not (out / "manifest.jsonl").exists():
        try:
            filter_synthetic(real, synthetic, model, out, FilterConfig(band=args.band, probe_max=args.probe_max),
                             progress=False)
        except ScoreError as e:
            if "keeps none" not in str(e):
                raise
            atomic_write(none, str(e))
            return None
    return out


def scored(real: Path, synthetic: Path, model: Path) -> Dict:
    """The offline scores per class of ``synthetic``, or why there are none (``{"error": ...}``: e.g. a filter
    that kept too few images to score)."""
    try:
        return score(real, synthetic, model, progress=False)["per_class"]
    except ScoreError as e:
        return {"error": str(e)}


# ---------------------------------------------------------------------------------------------- training


def trained(args: argparse.Namespace, real: Path, synthetic: Optional[Path], share: float, seed: int,
            out: Path, timing: Timing) -> Dict:
    """Held-out predictions and figures of the run whose model folder is ``out`` (a finished run is read)."""
    extra = {"synthetic": str(synthetic), "synthetic_extra": share} if synthetic else {}
    cfg = TrainConfig(arch=args.arch, img_size=args.img_size, seed=seed, epochs=args.epochs, batch_size=args.batch,
                      patience=args.epochs, min_train_share=1.0, **extra)
    done = out / "held_out.npz"
    if not done.exists():
        if (out / "train.yaml").exists() and load_config(TrainConfig, out / "train.yaml") != cfg:
            raise SystemExit(f"{out}: trained with other settings than these; remove it or use another --work")
        if not (out / "metrics.json").exists():
            train(cfg, real, out, resume=(out / "checkpoint.pt").exists(), progress=False)
        loaded = load_model_dir(out)
        ds = Dataset.load(real)
        p = predict(loaded.model, DefectDataset(ds, ds.split("test"), loaded.spec.preprocess, None),
                    loaded.spec.ok_index)
        np.savez(done, labels=p.labels, pred=p.probs.argmax(1))
        timing.save()
    held = dict(np.load(done))
    m = json.loads((out / "metrics.json").read_text())
    curve = [h["val_macro_f1"] for h in m["history"]]
    tail = curve[-max(1, len(curve) // 4):]
    return {"labels": held["labels"], "pred": held["pred"], "best_epoch": m["best_epoch"], "epochs": len(curve),
            "plateau": bool(max(curve) - min(tail) <= 0.01), "train_minutes": m["train_minutes"]}


# ---------------------------------------------------------------------------------------------- the screen


class Lite0Features:
    """Pooled ImageNet EfficientNet-Lite0 features (gray stem), frozen, at the benchmark's input size."""

    def __init__(self, size: int) -> None:
        import timm
        import torch

        from lineguard.weights import load_backbone_weights

        self.torch = torch
        self.net = timm.create_model("tf_efficientnet_lite0", num_classes=0, in_chans=1, pretrained=False)
        load_backbone_weights(self.net, "imagenet-lite0", in_chans=1)
        self.net.eval()
        self.pre = Preprocess(size=(size, size), channels=1, mean=[0.449], std=[0.226])
        self.cache: Dict[str, np.ndarray] = {}

    def __call__(self, ds: Dataset, records: Sequence[Record]) -> np.ndarray:
        out = []
        for s in range(0, len(records), 64):
            batch = np.stack([self.pre(read_image(ds.path(r.image))[0]) for r in records[s:s + 64]])
            with self.torch.inference_mode():
                out.append(self.net(self.torch.from_numpy(batch)).numpy())
        return np.concatenate(out)


def screen(args: argparse.Namespace, real: Path, synthetic: Dict[str, Path], feats: Lite0Features, out: Path
           ) -> Dict[str, Dict[str, float]]:
    """Val macro-F1 gain of linear heads on real + synthetic draws over real alone, mean over seeds, per
    ``arm/filter/share`` (cached in ``out``)."""
    if out.exists():
        return json.loads(out.read_text())
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ds = Dataset.load(real)
    classes = ds.classes.classes
    tr, va = ds.split("train"), ds.split("val")
    xt, xv = feats(ds, tr), feats(ds, va)
    yt, yv = np.array([classes.index(r.label) for r in tr]), np.array([classes.index(r.label) for r in va])
    defects = int(sum(r.label != ds.classes.ok_class for r in tr))

    def val_f1(x: np.ndarray, y: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
        clf.fit(x, y)
        return macro_f1(confusion(yv, clf.predict(xv), len(classes)))

    base = val_f1(xt, yt)
    table: Dict[str, Dict[str, float]] = {"real": {"val_macro_f1": base}}
    for key, root in synthetic.items():
        syn = Dataset.load(root)
        recs = syn.records[:args.screen_max]
        xs, ys = feats(syn, recs), np.array([classes.index(r.label) for r in recs])
        for share in args.shares:
            m = min(len(recs), round(share * defects))
            gains = []
            for seed in range(args.screen_seeds):
                pick = np.random.default_rng(seed).choice(len(recs), m, replace=False)
                gains.append(val_f1(np.vstack([xt, xs[pick]]), np.concatenate([yt, ys[pick]])) - base)
            table[f"{key}/{share:g}"] = {"gain": float(np.mean(gains)), "std": float(np.std(gains)), "draws": m}
    atomic_write(out, json.dumps(table, indent=1))
    return table


def choose(args: argparse.Namespace, screens: List[Dict]) -> Tuple[bool, float, Dict[str, float]]:
    """(filter on, share): the best mean gain over folds and the two synthetic arms; ties to the filter and the
    smaller share."""
    means = {}
    for filt in (True, False):
        for share in args.shares:
            keys = [f"{arm}{'-kept' if filt else ''}/{share:g}" for arm in ("baseline", "gan")]
            if all(k in s for s in screens for k in keys):  # a filter that kept nothing somewhere is out
                means[f"{'filtered' if filt else 'unfiltered'}/{share:g}"] = float(
                    np.mean([s[k]["gain"] for s in screens for k in keys]))
    best = max(means, key=lambda k: (round(means[k], 6), k.startswith("filtered"), -float(k.split("/")[1])))
    return best.startswith("filtered"), float(best.split("/")[1]), means


# ---------------------------------------------------------------------------------------------- the comparison


def per_class(y: np.ndarray, p: np.ndarray, c: int) -> Tuple[float, float]:
    """(F1, recall) of class ``c``."""
    tp, fp, fn = int(((p == c) & (y == c)).sum()), int(((p == c) & (y != c)).sum()), int(((p != c) & (y == c)).sum())
    return (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def _run_mean_delta(f, y: np.ndarray, pa: np.ndarray, pb: np.ndarray, g: np.ndarray, i: np.ndarray) -> float:
    """Mean over the runs (groups ``g``) of figure ``f`` of B minus A on the images ``i``."""
    y, pa, pb, g = y[i], pa[i], pb[i], g[i]
    return float(np.mean([f(y[g == u], pb[g == u]) - f(y[g == u], pa[g == u]) for u in np.unique(g)]))


def paired(runs: Dict[str, List[Dict]], k: int, report: Dict[str, int], reps: int) -> Dict[str, Dict]:
    """B - A per pair, per figure: (estimate, low, high) in points, images resampled within each fold x seed."""
    figures = {"macro_f1": lambda t, p: macro_f1(confusion(t, p, k)),
               "accuracy": lambda t, p: float((t == p).mean())}
    for name, c in report.items():
        figures[f"f1_{name}"] = lambda t, p, c=c: per_class(t, p, c)[0]
        figures[f"recall_{name}"] = lambda t, p, c=c: per_class(t, p, c)[1]
    out = {}
    for b, a in PAIRS:
        y = np.concatenate([r["labels"] for r in runs[a]])
        if not np.array_equal(y, np.concatenate([r["labels"] for r in runs[b]])):
            raise SystemExit(f"arms {a} and {b} were evaluated on other images: remove their held_out.npz files")
        pa, pb = (np.concatenate([r["pred"] for r in runs[x]]) for x in (a, b))
        g = np.concatenate([np.full(len(r["labels"]), i) for i, r in enumerate(runs[a])])
        out[f"{b}-{a}"] = {
            n: [v * 100 for v in bootstrap_ci(partial(_run_mean_delta, f, y, pa, pb, g), len(y), groups=g, reps=reps)]
            for n, f in figures.items()}
    return out


def summary(runs: Dict[str, List[Dict]], k: int, report: Dict[str, int]) -> Dict[str, Dict]:
    """Mean and std over fold x seed of each arm's figures (points)."""
    out = {}
    for arm, rows in runs.items():
        figs: Dict[str, List[float]] = {"macro_f1": [], "accuracy": []}
        for r in rows:
            figs["macro_f1"].append(100 * macro_f1(confusion(r["labels"], r["pred"], k)))
            figs["accuracy"].append(100 * float((r["labels"] == r["pred"]).mean()))
            for name, c in report.items():
                f1, rec = per_class(r["labels"], r["pred"], c)
                figs.setdefault(f"f1_{name}", []).append(100 * f1)
                figs.setdefault(f"recall_{name}", []).append(100 * rec)
        out[arm] = {n: {"mean": float(np.mean(v)), "std": float(np.std(v))} for n, v in figs.items()}
        out[arm]["converged"] = [{"best_epoch": r["best_epoch"], "epochs": r["epochs"], "plateau": r["plateau"]}
                                 for r in rows]
    return out


def verdict(deltas: Dict[str, Dict], fraction: float) -> Dict[str, Optional[bool]]:
    """The issue's goals at this fraction (None where an arm is missing)."""
    ca, cb = deltas.get("gan-real", {}).get("macro_f1"), deltas.get("gan-baseline", {}).get("macro_f1")
    if fraction < 1:
        return {"c-a >= +2 points, interval above 0": None if ca is None else bool(ca[0] >= 2 and ca[1] > 0),
                "c >= b": None if cb is None else bool(cb[0] >= 0)}
    return {"c no worse than a beyond the interval": None if ca is None else bool(ca[2] >= 0)}


def markdown(result: Dict) -> str:
    names = result["report_classes"]
    lines = [f"Fraction {f}: folds {r['folds_done']} of {result['folds']} recorded, choice (filter, share) "
             + ", ".join(f"{n} ({c['filter']}, {c['share']:g})" for n, c in r["choice"].items())
             for f, r in result["fractions"].items()]
    lines += ["", "| fraction | arm | macro-F1 | accuracy | " + " | ".join(f"{n} F1 / recall" for n in names) + " |",
             "|" + "---|" * (4 + len(names))]
    for f, r in result["fractions"].items():
        for arm, s in r["arms"].items():
            cells = [f"{s[f'f1_{n}']['mean']:.1f} / {s[f'recall_{n}']['mean']:.1f}" for n in result["report_classes"]]
            lines.append(f"| {f} | {arm} | {s['macro_f1']['mean']:.2f} +- {s['macro_f1']['std']:.2f} | "
                         f"{s['accuracy']['mean']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "| fraction | pair | d macro-F1 [95%] | d accuracy | goals |", "|---|---|---|---|---|"]
    for f, r in result["fractions"].items():
        for pair, d in r["paired"].items():
            m, acc = d["macro_f1"], d["accuracy"]
            lines.append(f"| {f} | {pair} | {m[0]:+.2f} [{m[1]:+.2f}, {m[2]:+.2f}] | {acc[0]:+.2f} | "
                         f"{r['goals'] if pair == 'gan-real' else ''} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- one unit


def settings(args: argparse.Namespace) -> Dict:
    """The protocol's settings a unit's record is valid for (a record made with others is refused)."""
    keys = ("folds", "seeds", "arch", "img_size", "epochs", "batch", "synthetic_n", "shares", "screen_seeds", "band",
            "probe_max", "screen_max", "surface_kimg", "gan_kimg")
    out = {k: getattr(args, k) for k in keys}
    out["gan_config"] = args.gan_config.read_text() if args.gan_config else None
    return out


def unit(args: argparse.Namespace, ds: Dataset, sets: List[List[Record]], k: int, f: float, feats: Lite0Features,
         timing: Timing) -> Dict:
    """Fold ``k`` at fraction ``f``, whole: arm (a), the synthetic sets and their filtered versions, the screen and
    its choice (on this fold's val), arms (b) and (c), the offline scores and the shape and texture figures. Returns
    the unit's record: everything the comparison needs, so the bulky work under --work may go."""
    tag = args.work / f"f{round(f * 100):03d}" / f"fold{k}"
    key = f"{tag.parent.name}/{tag.name}"
    timing.start(key)
    real = real_set(ds, sets, k, f, tag / "data")
    full = real_set(ds, sets, k, 1.0, args.work / "f100" / f"fold{k}" / "data")
    a = [trained(args, real, None, 0.0, s, tag / "train" / "real" / f"seed{s}", timing) for s in args.seeds]
    clf = tag / "train" / "real" / f"seed{args.seeds[0]}"  # the filter's classifier
    rds = Dataset.load(real)
    half = args.synthetic_n // 2
    cp = generated(CopyPasteSource.from_dataset(rds, channels=1), real, half, tag / "copy-paste", timing,
                   f"{key}/copy-paste", near_copy=NearCopyConfig(enabled=False))  # real crops by design
    pl = generated(PerlinSource.from_dataset(rds), real, args.synthetic_n - half, tag / "perlin", timing,
                   f"{key}/perlin", seed=1)
    surface = fitted(full, args.work / "surface" / f"fold{k}", preset_config(
        "cpu", args.gan_config, target="surface", kimg=args.surface_kimg), timing, f"fold{k}/surface-fit")
    gan = fitted(real, tag / "gan", preset_config("cpu", args.gan_config, surface=str(surface), kimg=args.gan_kimg),
                 timing, f"{key}/gan-fit")
    sample_grid(real, gan, tag / "real-vs-gan.png")
    syn = {"baseline": merged([cp, pl], tag / "baseline"),
           "gan": generated(SourceFactory(GanSource.load, (str(gan),)), real, args.synthetic_n, tag / "gan-set",
                            timing, f"{key}/gan-generate")}
    for arm in ("baseline", "gan"):
        kept = filtered(args, real, syn[arm], clf, tag / f"{arm}-kept")
        if kept is not None:
            syn[f"{arm}-kept"] = kept
    table = screen(args, real, syn, feats, tag / "screen.json")
    use_filter, share, means = choose(args, [table])
    runs = {"real": a}
    for arm in ("baseline", "gan"):
        root = syn[f"{arm}-kept" if use_filter else arm]
        runs[arm] = [trained(args, real, root, share, s, tag / "train" / arm / f"seed{s}", timing)
                     for s in args.seeds]
    record = {
        "fold": k, "fraction": f, "settings": settings(args), "filter": use_filter, "share": share, "screen": table,
        "screen_means": means,
        "runs": {arm: [{**r, "labels": r["labels"].tolist(), "pred": r["pred"].tolist()} for r in rows]
                 for arm, rows in runs.items()},
        "scores": {name: scored(real, syn[name], clf) for name in ("gan", "gan-kept") if name in syn},
        "shapes": last_row(gan / "shapes.jsonl")["shapes"],
        "texture": {"surface": last_row(surface / "texture.jsonl")["texture"],
                    "gan": last_row(gan / "texture.jsonl")["texture"]},
        "kept_share": {arm: json.loads((syn[f"{arm}-kept"] / "filter-report.json").read_text())["kept_share"]
                       if f"{arm}-kept" in syn else 0.0 for arm in ("baseline", "gan")}}
    timing.save()
    shared = [f"fold{k}/surface-fit"] if f == args.fractions[0] else []  # fitted by the fold's first unit
    record["seconds"] = {n: v for n, v in timing.items() if n.startswith(f"{key}/") or n in shared}
    return record


def one_stage(args: argparse.Namespace, ds: Dataset, sets: List[List[Record]], timing: Timing) -> Dict:
    """The one-stage GAN (as before the two stages) on fold 0 of the first fraction, fitted ``--before-kimg``,
    scored as the units' GAN samples are (its classifier is that unit's arm-(a) seed-0 run, trained again if
    --work lost it)."""
    f = args.fractions[0]
    tag = args.work / f"f{round(f * 100):03d}" / "fold0"
    key = f"{tag.parent.name}/one-stage"
    timing.start(key)
    real = real_set(ds, sets, 0, f, tag / "data")
    clf = tag / "train" / "real" / f"seed{args.seeds[0]}"
    trained(args, real, None, 0.0, args.seeds[0], clf, timing)
    one = fitted(real, tag / "gan-one-stage", preset_config("cpu", args.gan_config, kimg=args.before_kimg), timing,
                 f"{key}/fit")
    sample_grid(real, one, tag / "real-vs-one-stage.png")
    root = generated(SourceFactory(GanSource.load, (str(one),)), real, args.synthetic_n, tag / "one-stage-set",
                     timing, f"{key}/generate")
    record = {"fold": 0, "fraction": f, "kimg": args.before_kimg, "settings": settings(args),
              "scores": scored(real, root, clf), "shapes": last_row(one / "shapes.jsonl")["shapes"],
              "texture": last_row(one / "texture.jsonl")["texture"]}
    timing.save()
    record["seconds"] = {n: v for n, v in timing.items() if n.startswith(f"{key}/")}
    return record


def compared(args: argparse.Namespace, records: Dict[Tuple[int, float], Dict], before: Optional[Dict],
             classes: List[str], report: Dict[str, int]) -> Dict:
    """The comparison over the recorded units, per fraction (``folds_done`` says which folds it holds so far),
    and the one-stage GAN's figures (``before``) once recorded."""
    result: Dict = {"benchmark": "synth_gain", **settings(args), "report_classes": list(report), "fractions": {}}
    for f in args.fractions:
        recs = [records[(k, f)] for k in range(args.folds) if (k, f) in records]
        if not recs:
            continue
        runs = {arm: [{**r, "labels": np.array(r["labels"]), "pred": np.array(r["pred"])}
                      for rec in recs for r in rec["runs"][arm]] for arm in ARMS}
        deltas = paired(runs, len(classes), report, args.reps)
        result["fractions"][f"{f:g}"] = {
            "folds_done": [rec["fold"] for rec in recs], "complete": len(recs) == args.folds,
            "choice": {f"fold{rec['fold']}": {"filter": rec["filter"], "share": rec["share"]} for rec in recs},
            "arms": summary(runs, len(classes), report), "paired": deltas, "goals": verdict(deltas, f),
            "per_fold": {f"fold{rec['fold']}": {n: rec[n] for n in ("scores", "shapes", "texture", "kept_share",
                                                                     "screen_means")} for rec in recs}}
    if before is not None:
        result["one_stage_fold0"] = before
    result["cpu_hours"] = sum(v for rec in [*records.values(), *([before] if before else [])]
                              for n, v in rec["seconds"].items() if n.endswith("/wall")) / 3600
    result["gan_images_per_s"] = {f"{rec['fraction']:g}/fold{rec['fold']}": v for rec in records.values()
                                  for n, v in rec["seconds"].items() if n.endswith("gan-generate/images_per_s")}
    return result


# ---------------------------------------------------------------------------------------------- main


def recorded(args: argparse.Namespace, path: Path, make: Callable[[], Dict]) -> Dict:
    """The record at ``path``; if missing, made by ``make()`` and written."""
    if path.exists():
        rec = json.loads(path.read_text())
        if rec["settings"] != json.loads(json.dumps(settings(args))):
            raise SystemExit(f"{path}: recorded with other settings than these; remove it or use another --record")
        return rec
    rec = make()
    atomic_write(path, json.dumps(rec))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a lineguard data set (else $LINEGUARD_REAL_DATA is imported)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--arch", default="cnn_lite0")
    ap.add_argument("--img-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--synthetic-n", type=int, default=2000, help="generated images per synthetic set")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                    help="synthetic draws per real defect draw the screen tries")
    ap.add_argument("--screen-seeds", type=int, default=10)
    ap.add_argument("--band", type=float, nargs=2, default=list(FilterConfig().band), help="the filter's class band")
    ap.add_argument("--probe-max", type=float, default=FilterConfig().probe_max)
    ap.add_argument("--screen-max", type=int, default=2000, help="synthetic images per set the screen embeds")
    ap.add_argument("--gan-config", type=Path, help="GanConfig YAML over the cpu preset (both stages)")
    ap.add_argument("--surface-kimg", type=float, default=20.0)
    ap.add_argument("--gan-kimg", type=float, default=20.0)
    ap.add_argument("--before-kimg", type=float, default=20.0,
                    help="a one-stage GAN on fold 0 of the first fraction, for the scores (0: off)")
    ap.add_argument("--report-classes", nargs="+", default=["Fray", "Crack", "Break"])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/synth_gain"))
    ap.add_argument("--record", type=Path, default=Path("docs/synth_gain"),
                    help="one JSON per finished fold x fraction (kept in the repository: a session's --work is not)")
    ap.add_argument("--out", type=Path, default=Path("docs/synth_gain.json"))
    args = ap.parse_args()
    log_to_console(False)
    args.work.mkdir(parents=True, exist_ok=True)
    args.record.mkdir(parents=True, exist_ok=True)
    timing = Timing(args.work / "seconds.json")  # from the start: the import counts
    ds = Dataset.load(folded(args))
    sets = fold_sets(ds, args.folds)
    classes = ds.classes.classes
    report = {n: classes.index(n) for n in args.report_classes if n in classes}
    feats = Lite0Features(args.img_size)
    records: Dict[Tuple[int, float], Dict] = {}
    before: Optional[Dict] = None

    def write() -> Dict:
        """The comparison over what is recorded so far, as JSON and Markdown."""
        result = compared(args, records, before, classes, report)
        atomic_write(args.out, json.dumps(result, indent=1))
        atomic_write(args.out.with_suffix(".md"), markdown(result))
        return result

    for k in range(args.folds):  # fold-major: a fold's fractions share its surface
        for f in args.fractions:
            path = args.record / f"f{round(f * 100):03d}-fold{k}.json"
            new = not path.exists()
            records[(k, f)] = recorded(args, path, partial(unit, args, ds, sets, k, f, feats, timing))
            if new:
                write()  # a session that ends in the next unit leaves the comparison of those before
    if args.before_kimg > 0:
        before = recorded(args, args.record / "one-stage.json", partial(one_stage, args, ds, sets, timing))
    print(markdown(write()))


if __name__ == "__main__":
    main()
