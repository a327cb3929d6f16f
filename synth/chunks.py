"""Rendering the chunks of a generated set, in worker processes or in this one (see
:mod:`lineguard.synth.generate`): :func:`render_chunk` is what :func:`lineguard.workers.run_chunks` runs.

A chunk is done when its part exists and every image in it has the part's sha256 and its mask exists; a
chunk that is not done is rendered (again) and its part written after its files (synced): a killed run
leaves whole chunks and no half-written part.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.format import Origin, Record, numbered_id
from ..data.imaging import sha256_bytes, write_png
from ..files import atomic_write, sync_all
from .compose import Background, CompositeError, Compositor
from .generated import FILES_PER_FOLDER, GenerateError, GenerateSettings, part_path
from .near_copy import NearCopyIndex
from .patches import Patch, PatchSource

__all__ = ["ChunkPart", "Job", "SourceFactory", "render_chunk"]

ChunkPart = Dict[str, Any]  # parts/c<k>.json: chunk, start, stop, near_copy_rejected, records


@dataclass(frozen=True)
class SourceFactory:
    """Builds a patch source in each worker process, for sources that should not be pickled (a torch
    model): ``fn(*args, **kwargs)``; ``fn`` must be importable (a module-level function or classmethod)."""

    fn: Callable[..., PatchSource]
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> PatchSource:
        return self.fn(*self.args, **self.kwargs)


class Job:
    """What rendering a chunk needs, sent to each worker once. Its renderer is built on first use in each
    process: here around ``local`` (the caller's source instance), in a worker around its own copy of
    ``source`` (a factory is called there)."""

    def __init__(self, source: Union[PatchSource, SourceFactory], backgrounds: List[Background],
                 index: Optional[NearCopyIndex], settings: GenerateSettings, out: Path,
                 local: Optional[PatchSource] = None) -> None:
        self.source, self.backgrounds, self.index, self.settings, self.out = source, backgrounds, index, settings, out
        self._local = local
        self._renderer: Optional[_Renderer] = None

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_local": None, "_renderer": None}

    def renderer(self) -> _Renderer:
        if self._renderer is None:
            source = self._local
            if source is None:
                source = self.source() if isinstance(self.source, SourceFactory) else self.source
            self._renderer = _Renderer(self, source)
        return self._renderer


def render_chunk(job: Job, k: int) -> Tuple[ChunkPart, bool]:
    """Part of chunk ``k`` and whether it was found done (else it is rendered now)."""
    return job.renderer().chunk(k)


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


class _Renderer:
    """Renders the chunks of a job with one source instance."""

    def __init__(self, job: Job, source: PatchSource) -> None:
        s = job.settings
        self.job, self.s, self.out, self.source = job, s, job.out, source
        self.compositor = Compositor(s.compose)
        self.origin = Origin(kind="generator", name=f"lineguard.synth.{s.method}", version=s.version, seed=s.seed)

    def chunk(self, k: int) -> Tuple[ChunkPart, bool]:
        path = part_path(self.out, k)
        if path.is_file() and self._intact(path):
            return json.loads(path.read_text()), True
        start, stop = k * self.s.chunk, min(self.s.n, (k + 1) * self.s.chunk)
        records, rejected = [], 0
        patches = _ChunkPatches(self.source, np.random.default_rng([self.s.seed, k, 1]),
                                [self._label(i) for i in range(start, stop)])
        for i in range(start, stop):
            rec, r = self._render(i, patches)
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

    def _patch(self, i: int, label: str, patches: _ChunkPatches) -> Tuple[Patch, int]:
        """A patch of ``label`` for image ``i`` that is no near copy, and the near copies rejected on the way."""
        s, index = self.s, self.job.index
        rejected = empty = 0
        for _ in range(s.near_copy.redraws):
            patch = patches.take(label)
            if patch is None:  # e.g. a generator whose masks came out empty
                empty += 1
            elif index is None or not index.is_near(patch):
                return patch, rejected
            else:
                rejected += 1
        if empty:
            raise GenerateError(f"{self.out}: image {i}: the {self.source.method} source gave no '{label}' patch "
                                f"with a defect in {empty} of {s.near_copy.redraws} draws (an undertrained GAN "
                                "makes empty masks: train it longer)")
        raise GenerateError(f"{self.out}: image {i}: all {s.near_copy.redraws} '{label}' patches were near copies "
                            f"of real crops (threshold {s.near_copy.threshold})")

    def _render(self, i: int, patches: _ChunkPatches) -> Tuple[Record, int]:
        """Write image ``i`` and its mask; returns its record and the near copies rejected on the way."""
        rng = np.random.default_rng([self.s.seed, i])
        label = self._label(i)
        bg = self.job.backgrounds[int(rng.integers(len(self.job.backgrounds)))]
        patch, rejected = self._patch(i, label, patches)
        try:
            comp = self.compositor.composite(bg, patch, rng)
        except CompositeError as e:
            raise GenerateError(f"{self.out}: image {i}: {e}") from None
        name = numbered_id("gen", i, self.s.n)
        folder = f"{i // FILES_PER_FOLDER:05d}"
        image, mask = f"images/{folder}/{name}.png", f"masks/{folder}/{name}.png"
        (self.out / image).parent.mkdir(parents=True, exist_ok=True)
        (self.out / mask).parent.mkdir(parents=True, exist_ok=True)
        data = write_png(self.out / image, comp.image, durable=False)  # synced before the part names them
        mask_data = write_png(self.out / mask, comp.mask, durable=False)
        h, w = comp.mask.shape
        rec = Record(id=name, image=image, label=label, mask=mask, source="synthetic", origin=self.origin,
                     sha256=sha256_bytes(data), mask_sha256=sha256_bytes(mask_data), width=w, height=h)
        return rec, rejected
