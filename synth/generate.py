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
Chunks run over :func:`lineguard.workers.run_chunks`.

**Layout** (:mod:`lineguard.synth.generated`). ``images/<i // 10000>/gen-<i>.png`` and ``masks/...`` (at
most 10 000 files a folder), ``generate.yaml`` (the settings), ``parts/c<k>.json`` (one per chunk of
``chunk`` consecutive indices: its records and counters, written atomically after the chunk's files), and,
once every chunk is there, ``manifest.jsonl``, ``classes.yaml`` (the base set's classes, so training can mix
the sets), an empty ``rejects.jsonl`` and ``generate-report.json``. Records have ``source: synthetic`` and
``origin: {kind: generator, name: lineguard.synth.<method>, version: <source version>, seed}``; the id
``gen-<i>`` gives the index.

**Resume and shards** (:mod:`lineguard.synth.chunks`). A chunk is done when its part exists and every
image in it has the part's sha256 and its mask exists; a rerun with the same settings skips done chunks and
renders (again) the others, so a killed run resumes with no duplicate and no gap. Different settings in the
same folder are an error. ``shard=(i, N)`` renders chunks ``i, i+N, i+2N, ...``: N runs (on N machines, into
one folder or into copies merged later) cover the set; the run that completes it merges
(:func:`merge_shards`).

**Near copies** (:mod:`lineguard.synth.near_copy`). With ``near_copy.enabled``, a patch that is a near copy
of a real train crop of its class is rejected and redrawn; the report counts the rejections. Copy-paste
pastes real crops by design, so the filter must be off for it.

Backgrounds are squash-resized to ``size`` x ``size`` once per process (as the model's preprocessing
squashes every image); output images keep the backgrounds' mode (gray or RGB).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

from ..data.format import Dataset, Record
from ..data.imaging import ImageFileError, read_image, resize, sha256_bytes
from ..data.progress import track
from ..workers import run_chunks
from .chunks import Job, SourceFactory, render_chunk
from .compose import Background, ComposeConfig, CompositeError, Compositor, class_scales
from .generated import (
    FILES_PER_FOLDER,
    GENERATOR_VERSION,
    GenerateError,
    GenerateSettings,
    chunk_count,
    claim,
    merge_shards,
    part_path,
)
from .near_copy import NearCopyConfig, NearCopyIndex
from .patches import PatchSource

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


@dataclass
class _Tally:
    rendered: int = 0
    reused: int = 0
    rejected: int = 0
    records: List[Record] = field(default_factory=list)  # kept only when sharded (merged otherwise)


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
    _check_arguments(n, seed, chunk, size, workers, shard)
    compose = compose if compose is not None else ComposeConfig()
    near_copy = near_copy if near_copy is not None else NearCopyConfig()
    src = source() if isinstance(source, SourceFactory) else source
    ds = Dataset.load(base)
    settings = _settings(src, ds, base, compose, near_copy, n=n, seed=seed, size=size, chunk=chunk)
    claim(out, settings)
    index = NearCopyIndex.from_dataset(ds, settings.source_classes, near_copy) if near_copy.enabled else None
    backgrounds, excluded = _load_backgrounds(ds, size, Compositor(compose), progress)
    job = Job(source, backgrounds, index, settings, out, local=src)
    i_shard, n_shards = shard
    tally = _run(job, list(range(i_shard, chunk_count(settings), n_shards)), workers, progress, keep=n_shards > 1)
    merged = all(part_path(out, k).is_file() for k in range(chunk_count(settings)))
    if merged:
        dataset = merge_shards(out, excluded)
    else:
        dataset = Dataset(out, ds.classes, sorted(tally.records, key=lambda r: r.id))
    return Generated(dataset, settings, merged, tally.rendered, tally.reused, tally.rejected, excluded,
                     round(time.perf_counter() - t0, 3))


def _check_arguments(n: int, seed: int, chunk: int, size: int, workers: int, shard: Tuple[int, int]) -> None:
    if n < 1 or seed < 0 or chunk < 1 or size < 32 or workers < 1:
        raise GenerateError(f"n, chunk, workers >= 1, seed >= 0, size >= 32 needed; got n={n}, chunk={chunk}, "
                            f"workers={workers}, seed={seed}, size={size}")
    i_shard, n_shards = shard
    if not (n_shards >= 1 and 0 <= i_shard < n_shards):
        raise GenerateError(f"shard {i_shard}/{n_shards}: needs 0 <= i < N")


def _base_digest(ds: Dataset) -> str:
    rows = sorted((r.id, r.label, r.sha256) for r in ds.split("train"))
    return sha256_bytes(json.dumps(rows).encode())[:16]


def _settings(src: PatchSource, ds: Dataset, base: Union[str, Path], compose: ComposeConfig,
              near_copy: NearCopyConfig, n: int, seed: int, size: int, chunk: int) -> GenerateSettings:
    """The run's settings, once the source, the base set and the configs are known to fit together."""
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
    return GenerateSettings(method=src.method, version=src.version, source_classes=classes,
                            base=str(Path(base).resolve()), base_digest=_base_digest(ds), classes=ds.classes,
                            n=n, seed=seed, size=size, chunk=chunk, compose=compose, near_copy=near_copy)


def _run(job: Job, chunks: List[int], workers: int, progress: bool, keep: bool) -> _Tally:
    """Render (or find done) ``chunks``, counting their images; ``keep``: collect their records too."""
    s = job.settings
    tally = _Tally()

    def images():
        for part, done in run_chunks(render_chunk, job, chunks, workers):
            tally.rejected += part["near_copy_rejected"]
            for r in part["records"]:
                if keep:
                    tally.records.append(Record.model_validate(r))
                if done:
                    tally.reused += 1
                else:
                    tally.rendered += 1
                yield None

    total = sum(min(s.n, (k + 1) * s.chunk) - k * s.chunk for k in chunks)
    for _ in track(images(), f"generate {s.method}", enabled=progress, total=total):
        pass
    return tally


def _load_backgrounds(ds: Dataset, size: int, compositor: Compositor, progress: bool
                      ) -> Tuple[List[Background], List[str]]:
    ok = [r for r in ds.split("train") if r.label == ds.classes.ok_class]
    if ds.classes.ok_class is None:
        raise GenerateError(f"{ds.root}: a defect-type set (no OK class) has no defect-free image to paste defects "
                            "on; generate onto a set with OK images")
    if not ok:
        raise GenerateError(f"{ds.root}: no image of the OK class '{ds.classes.ok_class}' in the train split "
                            f"to paste defects on (run `lineguard data split`?)")
    out, excluded = [], []
    for r in track(ok, "backgrounds", enabled=progress):
        try:
            img = read_image(ds.path(r.image))[0]
        except ImageFileError as e:
            raise GenerateError(f"{ds.path(r.image)} (record {r.id}): {e}") from None
        try:
            out.append(compositor.prepare(resize(img, (size, size))))
        except CompositeError as e:
            excluded.append(f"{r.id}: {e}")
    if not out:
        raise GenerateError(f"{ds.root}: none of the {len(ok)} OK train images can serve as a background "
                            f"(first: {excluded[0]})")
    return out, excluded
