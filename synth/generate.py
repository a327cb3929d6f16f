"""Synthetic data sets: defect patches from any :class:`PatchSource` composited onto the OK images of a
real set's train split, written in the lineguard data set format.

    res = generate(CopyPasteSource.from_dataset(ds), base="data/mt", n=100_000, out="data/mt-cp", workers=2)
    res.dataset                                       # the merged data set (classes = the base set's)

**Determinism.** Image ``i`` of a run with seed ``S`` depends only on (S, i), the source, the base set
and the settings (``chunk`` among them): its class is ``classes[i % K]`` (exactly balanced over the
source's K classes); its background, placement and augmentation come from
``np.random.default_rng([S, i])``, its patch from its chunk's patch stream
``np.random.default_rng([S, k, 1])``, drawn class by class in one batch per chunk (a GAN runs one batch,
not one forward pass per image). The worker count, the sharding and interruptions do not change a byte.

**Layout.** ``images/<i // 10000>/gen-<i>.png`` and ``masks/...`` (at most 10 000 files a folder),
``generate.yaml`` (the settings), ``parts/c<k>.json`` (one per chunk of ``chunk`` consecutive
indices: its records and counters, written atomically after the chunk's files), and, once every
chunk is there, ``manifest.jsonl``, ``classes.yaml`` (the base set's classes, so training can mix
the sets), an empty ``rejects.jsonl`` and ``generate-report.json``. Records have
``source: synthetic`` and ``origin: {kind: generator, name: lineguard.synth.<method>, version:
<source version>, seed}``; the id ``gen-<i>`` gives the index.

**Resume and shards.** A chunk is done when its part exists and every image in it has the part's
sha256 and its mask exists; a rerun with the same settings skips done chunks and renders (again) the
others, so a killed run resumes with no duplicate and no gap. Different settings in the same folder
are an error. ``shard=(i, N)`` renders chunks ``i, i+N, i+2N, ...``: N runs (on N machines, into one
folder or into copies merged later) cover the set; the run that completes it merges
(:func:`merge_shards`).

**Near copies.** With ``near_copy.enabled``, a patch whose downscaled (``near_copy.size``
squared), mean-removed, unit-norm pixels have cosine similarity >= ``near_copy.threshold`` with a
real train crop of its class is rejected and redrawn; the report counts the rejections. Copy-paste
pastes real crops by design, so the filter must be off for it.

Backgrounds are squash-resized to ``size`` x ``size`` once per process (as the model's preprocessing
squashes every image); output images keep the backgrounds' mode (gray or RGB).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import yaml
from pydantic import Field, ValidationError

from .. import LineguardError
from ..config import StrictModel
from ..data.format import CLASSES_FILE, MANIFEST_FILE, REJECTS_FILE, ClassFile, Dataset, Origin, Record
from ..data.imaging import ImageFileError, read_image, sha256_bytes, write_png
from ..data.progress import track
from ..files import atomic_path, atomic_write, sync_all
from ..workers import init_worker, keep_freed_memory, mp_context
from .compose import Background, ComposeConfig, CompositeError, Compositor, class_scales
from .crops import defect_crops
from .patches import Patch, PatchSource

__all__ = [
    "FILES_PER_FOLDER",
    "GENERATOR_VERSION",
    "GenerateError",
    "GenerateSettings",
    "Generated",
    "NearCopyConfig",
    "NearCopyIndex",
    "SourceFactory",
    "generate",
    "merge_shards",
]

GENERATOR_VERSION = "2"  # 2: patches drawn per chunk
FILES_PER_FOLDER = 10_000
SETTINGS_FILE = "generate.yaml"
REPORT_FILE = "generate-report.json"
PARTS = "parts"
_CROP_SIZE = 64  # real crops for the near-copy index are cut at this size, then downscaled


class GenerateError(LineguardError):
    """A generation that cannot start, resume or merge; the message names the folder and the cause."""


class NearCopyConfig(StrictModel):
    """The near-copy filter (see the module docstring)."""

    enabled: bool = True
    size: int = Field(16, ge=4, le=64, description="side of the downscaled signature")
    threshold: float = Field(0.95, gt=0, le=1, description="cosine similarity counted as a copy")
    redraws: int = Field(50, ge=1, le=10_000, description="patch draws per image before giving up")


class GenerateSettings(StrictModel):
    """``generate.yaml``: what a folder holds; a resumed run must match it exactly."""

    generator: str = GENERATOR_VERSION
    method: str
    version: str
    source_classes: List[str]
    base: str  # where the first run found the base set (for information)
    base_digest: str  # the base set's train split (OK backgrounds and defect records)
    classes: ClassFile
    n: int
    seed: int
    size: int
    chunk: int
    compose: ComposeConfig
    near_copy: NearCopyConfig


@dataclass(frozen=True)
class SourceFactory:
    """Builds a patch source in each worker process, for sources that should not be pickled (a torch
    model): ``fn(*args, **kwargs)``; ``fn`` must be importable (a module-level function or classmethod)."""

    fn: Callable[..., PatchSource]
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> PatchSource:
        return self.fn(*self.args, **self.kwargs)


@dataclass
class Generated:
    """What :func:`generate` did: ``dataset`` is the merged set, or (``merged`` False, other shards still
    missing) this shard's records, unsaved."""

    dataset: Dataset
    settings: GenerateSettings
    merged: bool
    rendered: int  # images rendered by this run
    reused: int  # images of this shard found done (resume)
    near_copy_rejected: int  # over this shard's images (rendered or reused)
    excluded_backgrounds: List[str]
    seconds: float


# --------------------------------------------------------------------------------------------------
# near copies


def _signature(image: np.ndarray, size: int) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    v = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-6 else v


class NearCopyIndex:
    """Signatures of the real train crops, per class; :meth:`similarity` of a patch to its closest one."""

    def __init__(self, images: Dict[str, Sequence[np.ndarray]], cfg: NearCopyConfig) -> None:
        self.cfg = cfg
        dim = cfg.size * cfg.size
        self.signatures = {c: (np.stack([_signature(x, cfg.size) for x in v]) if len(v) else np.zeros((0, dim),
                               np.float32)) for c, v in images.items()}

    @classmethod
    def from_dataset(cls, ds: Dataset, classes: Sequence[str], cfg: NearCopyConfig) -> NearCopyIndex:
        crops, _ = defect_crops(ds, ds.split("train"), size=_CROP_SIZE)
        return cls({c: [x.image for x in crops if x.label == c] for c in classes}, cfg)

    def similarity(self, patch: Patch) -> float:
        sig = self.signatures.get(patch.label)
        if sig is None or not len(sig):
            return 0.0
        return float((sig @ _signature(patch.image, self.cfg.size)).max())

    def is_near(self, patch: Patch) -> bool:
        return self.similarity(patch) >= self.cfg.threshold


# --------------------------------------------------------------------------------------------------
# settings, parts


def _part_path(out: Path, k: int) -> Path:
    return out / PARTS / f"c{k:07d}.json"


def _read_settings(out: Path) -> GenerateSettings:
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise GenerateError(f"{out}: not a generated set ({SETTINGS_FILE} missing)")
    try:
        return GenerateSettings.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as e:
        raise GenerateError(f"{path}: {e}") from None


def _claim(out: Path, settings: GenerateSettings) -> None:
    """Write ``generate.yaml``, or check that the folder's run has the same settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        old = _read_settings(out).model_dump(mode="json")
        new = settings.model_dump(mode="json")
        # the base set is compared by content (base_digest): shards on other machines may mount it elsewhere
        diff = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k != "base" and old.get(k) != new[k]]
        if diff:
            raise GenerateError(f"{path}: this folder holds a run with other settings ({'; '.join(diff)}); "
                                f"resume with the same settings or write to a new folder")
        return
    for name in (CLASSES_FILE, MANIFEST_FILE):
        if (out / name).exists():
            raise GenerateError(f"{out}: holds a data set not made by `generate` ({name} exists)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))


def _width(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


def _chunks(n: int, chunk: int) -> int:
    return math.ceil(n / chunk)


def _base_digest(ds: Dataset) -> str:
    rows = sorted((r.id, r.label, r.sha256) for r in ds.split("train"))
    return sha256_bytes(json.dumps(rows).encode())[:16]


# --------------------------------------------------------------------------------------------------
# rendering (in worker processes, or inline for one worker)


@dataclass
class _Job:
    source: Union[PatchSource, SourceFactory]
    backgrounds: List[Background]
    index: Optional[NearCopyIndex]
    settings: GenerateSettings
    out: str


class _Renderer:
    """Renders chunks of a job; ``source`` overrides the job's (the caller's instance, in-process)."""

    def __init__(self, job: _Job, source: Optional[PatchSource] = None) -> None:
        s = job.settings
        self.job, self.s, self.out = job, s, Path(job.out)
        if source is None:
            source = job.source() if isinstance(job.source, SourceFactory) else job.source
        self.source = source
        self.compositor = Compositor(s.compose)
        self.width = _width(s.n)
        self.origin = Origin(kind="generator", name=f"lineguard.synth.{s.method}", version=s.version, seed=s.seed)

    def chunk(self, k: int) -> Tuple[Dict[str, Any], bool]:
        """Part of chunk ``k`` and whether it was found done (else it is rendered now)."""
        path = _part_path(self.out, k)
        if path.is_file() and self._intact(path):
            return json.loads(path.read_text()), True
        start, stop = k * self.s.chunk, min(self.s.n, (k + 1) * self.s.chunk)
        records, rejected = [], 0
        patches = _ChunkPatches(self.source, np.random.default_rng([self.s.seed, k, 1]),
                                [self._label(i) for i in range(start, stop)])
        for i in range(start, stop):
            rec, r = self.render(i, patches)
            records.append(rec.model_dump(mode="json", exclude_none=True))
            rejected += r
        part = {"chunk": k, "start": start, "stop": stop, "near_copy_rejected": rejected, "records": records}
        sync_all(self.out)  # the chunk's images, before the part that commits them
        atomic_write(path, json.dumps(part))
        return part, False

    def _intact(self, path: Path) -> bool:
        """Whether a part's files are all there with its sha256 (a killed or damaged chunk is rendered again)."""
        try:
            part = json.loads(path.read_text())
            for r in part["records"]:
                if not (self.out / r["mask"]).is_file():
                    return False
                if sha256_bytes((self.out / r["image"]).read_bytes()) != r["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def _label(self, i: int) -> str:
        return self.s.source_classes[i % len(self.s.source_classes)]

    def render(self, i: int, patches: _ChunkPatches) -> Tuple[Record, int]:
        """Write image ``i`` and its mask; returns its record and the near copies rejected on the way."""
        s = self.s
        rng = np.random.default_rng([s.seed, i])
        label = self._label(i)
        bg = self.job.backgrounds[int(rng.integers(len(self.job.backgrounds)))]
        rejected = empty = 0
        for _ in range(s.near_copy.redraws):
            patch = patches.take(label)
            if patch is None:  # e.g. a generator whose masks came out empty
                empty += 1
                continue
            if self.job.index is None or not self.job.index.is_near(patch):
                break
            rejected += 1
        else:
            if empty:
                raise GenerateError(f"{self.out}: image {i}: the {self.source.method} source gave no '{label}' patch "
                                    f"with a defect in {empty} of {s.near_copy.redraws} draws (an undertrained GAN "
                                    "makes empty masks: train it longer)")
            raise GenerateError(f"{self.out}: image {i}: all {s.near_copy.redraws} '{label}' patches were near copies "
                                f"of real crops (threshold {s.near_copy.threshold})")
        try:
            comp = self.compositor.composite(bg, patch, rng)
        except CompositeError as e:
            raise GenerateError(f"{self.out}: image {i}: {e}") from None
        ident = f"gen-{i:0{self.width}d}"
        folder = f"{i // FILES_PER_FOLDER:05d}"
        image, mask = f"images/{folder}/{ident}.png", f"masks/{folder}/{ident}.png"
        (self.out / image).parent.mkdir(parents=True, exist_ok=True)
        (self.out / mask).parent.mkdir(parents=True, exist_ok=True)
        data = write_png(self.out / image, comp.image, durable=False)  # synced before the part names them
        mask_data = write_png(self.out / mask, comp.mask, durable=False)
        h, w = comp.mask.shape
        rec = Record(id=ident, image=image, label=label, mask=mask, source="synthetic", origin=self.origin,
                     sha256=sha256_bytes(data), mask_sha256=sha256_bytes(mask_data), width=w, height=h)
        return rec, rejected


class _ChunkPatches:
    """The patches of one chunk: each class's share drawn in one ``sample`` call, in sorted class order,
    from the chunk's stream; a class that runs out (near copies, empty masks) draws ``REFILL`` more."""

    REFILL = 8

    def __init__(self, source: PatchSource, rng: np.random.Generator, labels: Sequence[str]) -> None:
        self.source, self.rng = source, rng
        self.ready: Dict[str, Deque[Patch]] = {}
        for label in sorted(set(labels)):
            self.ready[label] = deque(source.sample(label, labels.count(label), rng))

    def take(self, label: str) -> Optional[Patch]:
        """The next patch of ``label``, or None when a refill draw gave none."""
        ready = self.ready.setdefault(label, deque())
        if not ready:
            ready.extend(self.source.sample(label, self.REFILL, self.rng))
        return ready.popleft() if ready else None


_WORKER: Optional[_Renderer] = None


def _init_worker(job: _Job) -> None:
    global _WORKER
    init_worker()  # the workers (and their fork server) die with this process, even SIGKILLed
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only compete
    keep_freed_memory()  # many short-lived arrays of a few 100 kB: see lineguard.synth.simulator._init_worker
    os.environ["OMP_NUM_THREADS"] = "1"  # one process per core: a torch source (the GAN) gets one thread
    if "torch" in sys.modules:  # already imported (albumentations imports it): set it there too
        sys.modules["torch"].set_num_threads(1)
    _WORKER = _Renderer(job)


def _work(k: int) -> Tuple[Dict[str, Any], bool]:
    assert _WORKER is not None
    return _WORKER.chunk(k)


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fresh worker processes that have imported this module once (:func:`lineguard.workers.mp_context`)."""
    return mp_context(__name__)


def _parts(job: _Job, source: PatchSource, chunks: List[int], workers: int
           ) -> Iterator[Tuple[Dict[str, Any], bool]]:
    """(part, found done) of each chunk, in the order they finish."""
    if workers <= 1 or len(chunks) <= 1:
        renderer = _Renderer(job, source)
        for k in chunks:
            yield renderer.chunk(k)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_init_worker,
                             initargs=(job,)) as ex:
        futs = [ex.submit(_work, k) for k in chunks]
        try:
            for f in as_completed(futs):
                yield f.result()
        finally:
            for f in futs:
                f.cancel()


# --------------------------------------------------------------------------------------------------
# backgrounds


def _load_backgrounds(ds: Dataset, size: int, compositor: Compositor, progress: bool
                      ) -> Tuple[List[Background], List[str]]:
    ok = [r for r in ds.split("train") if r.label == ds.classes.ok_class]
    if not ok:
        raise GenerateError(f"{ds.root}: no image of the OK class '{ds.classes.ok_class}' in the train split "
                            f"to paste defects on (run `lineguard data split`?)")
    out, excluded = [], []
    for r in track(ok, "backgrounds", enabled=progress):
        try:
            img = read_image(ds.path(r.image))[0]
        except ImageFileError as e:
            raise GenerateError(f"{ds.path(r.image)} (record {r.id}): {e}") from None
        shrink = img.shape[0] >= size and img.shape[1] >= size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        try:
            out.append(compositor.prepare(img))
        except CompositeError as e:
            excluded.append(f"{r.id}: {e}")
    if not out:
        raise GenerateError(f"{ds.root}: none of the {len(ok)} OK train images can serve as a background "
                            f"(first: {excluded[0]})")
    return out, excluded


# --------------------------------------------------------------------------------------------------
# entry points


def generate(source: Union[PatchSource, SourceFactory], base: Union[str, Path], n: int, out: Union[str, Path],
             seed: int = 0, workers: int = 2, shard: Tuple[int, int] = (0, 1),
             compose: Optional[ComposeConfig] = None, near_copy: Optional[NearCopyConfig] = None,
             size: int = 256, chunk: int = 64, progress: bool = True) -> Generated:
    """Write (or resume) ``n`` synthetic defect images from ``source`` on the OK train images of the data
    set ``base`` into ``out``; ``shard=(i, N)`` takes chunks i, i+N, ... (see the module docstring).

    ``source`` is a picklable PatchSource (sent to each worker) or a :class:`SourceFactory` (called in
    each worker, and once here for its method, version and classes)."""
    t0 = time.perf_counter()
    out = Path(out)
    i_shard, n_shards = shard
    if n < 1 or seed < 0 or chunk < 1 or size < 32 or workers < 1:
        raise GenerateError(f"n, chunk, workers >= 1, seed >= 0, size >= 32 needed; got n={n}, chunk={chunk}, "
                            f"workers={workers}, seed={seed}, size={size}")
    if not (n_shards >= 1 and 0 <= i_shard < n_shards):
        raise GenerateError(f"shard {i_shard}/{n_shards}: needs 0 <= i < N")
    compose = compose if compose is not None else ComposeConfig()
    near_copy = near_copy if near_copy is not None else NearCopyConfig()
    src = source() if isinstance(source, SourceFactory) else source
    ds = Dataset.load(base)
    classes = src.classes
    foreign = [c for c in classes if c not in ds.classes.defect_classes]
    if not classes or foreign:
        raise GenerateError(f"{ds.root}: the {src.method} source's classes {classes} must be defect classes of "
                            f"the base set ({ds.classes.defect_classes})")
    try:
        class_scales(compose, classes)
    except CompositeError as e:
        raise GenerateError(f"compose config: {e}") from None
    if near_copy.enabled and src.method == "copy-paste":
        raise GenerateError("the near-copy filter would reject every copy-paste patch (they are real crops); "
                            "disable it for copy-paste")
    settings = GenerateSettings(method=src.method, version=src.version, source_classes=classes,
                                base=str(Path(base).resolve()), base_digest=_base_digest(ds), classes=ds.classes,
                                n=n, seed=seed, size=size, chunk=chunk, compose=compose, near_copy=near_copy)
    _claim(out, settings)
    (out / PARTS).mkdir(exist_ok=True)
    index = NearCopyIndex.from_dataset(ds, classes, near_copy) if near_copy.enabled else None
    backgrounds, excluded = _load_backgrounds(ds, size, Compositor(compose), progress)
    job = _Job(source, backgrounds, index, settings, str(out))
    mine = list(range(i_shard, _chunks(n, chunk), n_shards))
    total = sum(min(n, (k + 1) * chunk) - k * chunk for k in mine)
    rendered = reused = rejected = 0
    records: List[Record] = []

    def images() -> Iterator[None]:
        nonlocal rendered, reused, rejected
        for part, done in _parts(job, src, mine, workers):
            rejected += part["near_copy_rejected"]
            for r in part["records"]:
                if n_shards > 1:
                    records.append(Record.model_validate(r))
                if done:
                    reused += 1
                else:
                    rendered += 1
                yield None

    for _ in track(images(), f"generate {src.method}", enabled=progress, total=total):
        pass
    merged = all(_part_path(out, k).is_file() for k in range(_chunks(n, chunk)))
    if merged:
        dataset = merge_shards(out, excluded)
    else:
        records.sort(key=lambda r: r.id)
        dataset = Dataset(out, ds.classes, records)
    seconds = round(time.perf_counter() - t0, 3)
    return Generated(dataset, settings, merged, rendered, reused, rejected, excluded, seconds)


def merge_shards(out: Union[str, Path], excluded_backgrounds: Optional[List[str]] = None) -> Dataset:
    """Merge every chunk's part in ``out`` into ``manifest.jsonl`` + ``classes.yaml`` (+ the report); a
    missing chunk is an error naming the shards to run."""
    out = Path(out)
    s = _read_settings(out)
    total = _chunks(s.n, s.chunk)
    missing = [k for k in range(total) if not _part_path(out, k).is_file()]
    if missing:
        raise GenerateError(f"{out}: {len(missing)} of {total} chunks are not rendered yet (chunks "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}); run the missing shards or "
                            f"rerun to resume")
    width = _width(s.n)
    counts = {c: 0 for c in s.classes.classes}
    rejected = 0
    with atomic_path(out / MANIFEST_FILE) as tmp, tmp.open("w", encoding="utf-8") as f:  # shards may race: own temp
        for k in range(total):
            path = _part_path(out, k)
            try:
                part = json.loads(path.read_text())
                rows = [Record.model_validate(r) for r in part["records"]]
            except (ValueError, KeyError, TypeError) as e:
                raise GenerateError(f"{path}: unreadable part ({e}); delete it and rerun to render it again") from None
            want = [f"gen-{i:0{width}d}" for i in range(k * s.chunk, min(s.n, (k + 1) * s.chunk))]
            if [r.id for r in rows] != want:
                raise GenerateError(f"{path}: holds images {[r.id for r in rows][:3]}..., expected {want[:3]}...; "
                                    f"delete it and rerun")
            rejected += part["near_copy_rejected"]
            for r in rows:
                counts[r.label] += 1
                f.write(r.model_dump_json(exclude_none=True) + "\n")
    s.classes.save(out / CLASSES_FILE)
    (out / REJECTS_FILE).touch()
    report = {"images": s.n, "classes": counts, "method": s.method, "version": s.version, "seed": s.seed,
              "near_copy_rejected": rejected, "near_copy": s.near_copy.enabled}
    if excluded_backgrounds is not None:
        report["excluded_backgrounds"] = excluded_backgrounds
    atomic_write(out / REPORT_FILE, json.dumps(report, indent=1))
    return Dataset.load(out)
