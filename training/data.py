"""Training data: augmentation, the torch data set over a lineguard data set, class-balanced sampling.

    pre = Preprocess(size=(224, 224), channels=1)
    check_training_split(ds, ds.split("train"), ds.split("val"))
    train = DefectDataset(ds, ds.split("train"), pre, AugmentConfig(), seed=0)
    sampler = BalancedSampler(train.labels, power=0.5, seed=0)      # rank/world from torch.distributed
    loader = data_loader(train, batch_size=32, sampler=sampler, num_workers=2)   # fork-safe workers
    for epoch in range(epochs):
        train.set_epoch(epoch); sampler.set_epoch(epoch)
        for batch in loader: ...  # image (B,C,H,W) float32, label int64, mask (B,1,H,W), has_mask, index

Images are squash-resized to the model's input size with :class:`Preprocess` (the one shared
definition) and masks with the same geometry; augmentation runs on those uint8 pixels, image and mask
together, and ``pre.normalize`` makes the tensor. Without augmentation an item is exactly
``pre(image)``. The augmentation of item ``i`` in epoch ``e`` depends only on (seed, e, i): the same
whatever the number of DataLoader workers, their order, or ``persistent_workers``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, Sampler

from ..config import StrictModel
from ..data.format import ClassFile, Dataset, DatasetError, Record
from ..data.imaging import ImageFileError, binarize_mask, read_image
from ..data.preprocess import Preprocess

__all__ = [
    "AugmentConfig",
    "BalancedSampler",
    "DefectDataset",
    "MixedDataset",
    "build_transform",
    "check_training_split",
    "class_counts",
    "data_loader",
    "loader_context",
    "resize_mask",
    "synthetic_records",
    "worker_init",
]

_TRIES = 4  # augmentation draws per item before giving up on keeping a visible defect


class AugmentConfig(StrictModel):
    """Training augmentation for industrial surface images (gray or RGB). Geometry is mild on purpose:
    a defect must stay in the picture. Probabilities are per item."""

    enabled: bool = True
    hflip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip")
    vflip_p: float = Field(0.5, ge=0, le=1, description="vertical flip")
    rot90_p: float = Field(0.0, ge=0, le=1, description="random 90-degree rotation (off: textures have a direction)")
    affine_p: float = Field(0.7, ge=0, le=1, description="shift/scale/rotate, reflected border")
    shift: float = Field(0.05, ge=0, le=0.3, description="max shift, fraction of the side")
    scale: Tuple[float, float] = Field((0.9, 1.1), description="zoom range of the affine")
    rotate: float = Field(10.0, ge=0, le=180, description="max rotation in degrees")
    crop_p: float = Field(0.3, ge=0, le=1, description="random resized crop (0 = off)")
    crop_scale: Tuple[float, float] = Field((0.85, 1.0), description="area fraction kept by the crop")
    brightness_contrast_p: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.1, ge=0, le=1, description="max brightness change, fraction of 255")
    contrast: float = Field(0.15, ge=0, le=1, description="max contrast change, fraction")
    gamma_p: float = Field(0.3, ge=0, le=1)
    gamma: Tuple[float, float] = Field((0.8, 1.2), description="gamma range")
    blur_p: float = Field(0.1, ge=0, le=1, description="slight 3x3 Gaussian blur")
    blur_sigma: Tuple[float, float] = Field((0.1, 0.8))
    noise_p: float = Field(0.2, ge=0, le=1, description="Gaussian sensor noise")
    noise_std: Tuple[float, float] = Field((0.005, 0.02), description="noise std range, fraction of 255")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "crop_scale", "gamma", "blur_sigma", "noise_std"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ValueError(f"{name} must be a range (low <= high, >= 0), got ({lo}, {hi})")
        if self.scale[0] <= 0 or self.gamma[0] <= 0 or self.blur_sigma[0] <= 0:
            raise ValueError("scale, gamma and blur_sigma must be > 0")
        if not (self.crop_scale[0] > 0 and self.crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")
        if self.noise_std[1] > 0.5:
            raise ValueError(f"noise_std must be <= 0.5, got {self.noise_std}")
        return self


def _mask_pre(pre: Preprocess) -> Preprocess:
    return Preprocess(size=pre.size, channels=1, mean=[0.0], std=[1.0])


def resize_mask(pre: Preprocess, mask: np.ndarray) -> np.ndarray:
    """A binary mask (bool, 0/1 or 0/255, HxW) at the input size: the image's own resize (``pre.resize``,
    area down / linear up) applied to 0/255, then >= 128. Returns uint8 0/1."""
    m = np.where(mask > 0, np.uint8(255), np.uint8(0)) if mask.dtype != np.uint8 or mask.max() <= 1 else mask
    return (_mask_pre(pre).resize(m) >= 128).astype(np.uint8)


def _image_to_size(pre: Preprocess, img: np.ndarray, **_: Any) -> np.ndarray:
    return pre.resize(img)


def _mask_to_size(pre: Preprocess, m: np.ndarray, **_: Any) -> np.ndarray:
    return m if m.shape[:2] == tuple(pre.size) else resize_mask(pre, m)


def build_transform(cfg: AugmentConfig, pre: Preprocess) -> A.Compose:
    """The augmentation as one Compose over ``image`` (uint8, HxW or HxWx3) and ``mask`` (uint8 0/1).

    Inputs not yet at ``pre.size`` are first brought there (``pre.resize`` for the image,
    :func:`resize_mask` for the mask); at the input size that step is a no-op. Geometry moves image
    and mask together (mask: nearest neighbour, same reflected border); photometry touches the image
    only. Seed it per item with ``set_random_state`` (see :class:`DefectDataset`)."""
    h, w = pre.size
    to_size = A.Lambda(image=partial(_image_to_size, pre), mask=partial(_mask_to_size, pre), p=1.0)  # picklable
    ts: List[A.BasicTransform] = [to_size]
    if cfg.enabled:
        reflect = cv2.BORDER_REFLECT_101
        ts += [A.HorizontalFlip(p=cfg.hflip_p), A.VerticalFlip(p=cfg.vflip_p)]
        if cfg.rot90_p > 0:
            ts.append(A.RandomRotate90(p=cfg.rot90_p))
        if cfg.affine_p > 0:
            ts.append(A.Affine(translate_percent=(-cfg.shift, cfg.shift), scale=cfg.scale,
                               rotate=(-cfg.rotate, cfg.rotate), interpolation=cv2.INTER_LINEAR,
                               mask_interpolation=cv2.INTER_NEAREST, border_mode=reflect, p=cfg.affine_p))
        if cfg.crop_p > 0:
            r = w / h  # keep the input's aspect ratio within +-10 %
            ts.append(A.RandomResizedCrop(size=(h, w), scale=cfg.crop_scale, ratio=(r * 0.9, r / 0.9),
                                          interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                          p=cfg.crop_p))
        ts += [
            A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast,
                                       p=cfg.brightness_contrast_p),
            A.RandomGamma(gamma_limit=(cfg.gamma[0] * 100, cfg.gamma[1] * 100), p=cfg.gamma_p),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=cfg.blur_sigma, p=cfg.blur_p),
            A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise_p),
        ]
    return A.Compose(ts, p=1.0)


def _seed_words(*key: int) -> np.random.SeedSequence:
    if any(k < 0 for k in key):
        raise ValueError(f"seed, epoch and index must be >= 0, got {key}")
    return np.random.SeedSequence(list(key))


def class_counts(records: Sequence[Record], classes: Union[ClassFile, Sequence[str]]) -> List[int]:
    """Images per class, in class index order. A record with an unknown label is an error."""
    names = classes.classes if isinstance(classes, ClassFile) else list(classes)
    index = {c: i for i, c in enumerate(names)}
    out = [0] * len(names)
    for r in records:
        if r.label not in index:
            raise DatasetError(f"record {r.id}: label '{r.label}' is not one of the classes {names}")
        out[index[r.label]] += 1
    return out


def check_training_split(ds: Dataset, train_records: Sequence[Record], val_records: Sequence[Record]) -> None:
    """Raise :class:`DatasetError` when training cannot start: an empty split, or a class of
    ``classes.yaml`` without a training image (the model could never learn it)."""
    for name, rows in (("train", train_records), ("val", val_records)):
        if not rows:
            raise DatasetError(f"{ds.root}: split '{name}' is empty (run `lineguard data split`?)")
    counts = class_counts(train_records, ds.classes)
    class_counts(val_records, ds.classes)
    missing = [c for c, n in zip(ds.classes.classes, counts) if n == 0]
    if len(missing) == 1:
        raise DatasetError(f"{ds.root}: class '{missing[0]}' has no training images")
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise DatasetError(f"{ds.root}: classes {names} have no training images")


def synthetic_records(real: Dataset, synthetic: Dataset) -> List[Record]:
    """The records of a synthetic set that training may use beside ``real``: those without a split or
    in its train split. Their labels must be classes of ``real``; an empty set is an error."""
    recs = [r for r in synthetic.records if r.split in (None, "train")]
    if not recs:
        raise DatasetError(f"{synthetic.root}: no images without a split or in the train split")
    unknown = sorted({r.label for r in recs} - set(real.classes.classes))
    if unknown:
        raise DatasetError(f"{synthetic.root}: labels {unknown} are not classes of {real.root} "
                           f"({real.classes.classes})")
    return recs


def worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker process (workers already run in
    parallel). Augmentation seeds do not depend on it. Only for workers started by
    :func:`loader_context`: in a *forked* worker of a process whose OpenCV threads ran, OpenCV
    (this call included) can hang. The worker, and its fork server, die with the training process
    (:func:`lineguard.workers.init_worker`)."""
    from ..workers import init_worker

    init_worker()
    cv2.setNumThreads(1)


def loader_context() -> multiprocessing.context.BaseContext:
    """The start method for DataLoader workers: a fork server that has imported this module (each
    worker starts in milliseconds, without the parent's threads), else spawn.

    Not the Linux default ``fork``: a worker forked from a process whose OpenCV thread pool has run
    (any resize of a large image does that) hangs in its first parallel OpenCV call."""
    from ..workers import mp_context

    return mp_context(__name__)


def data_loader(dataset: torch.utils.data.Dataset, batch_size: int, sampler: Optional[Sampler] = None,
                shuffle: bool = False, num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader with safe worker processes (:func:`loader_context`, :func:`worker_init`), kept
    across epochs (``persistent_workers``; :meth:`DefectDataset.set_epoch` still reaches them).
    Each worker gets its own copy of a cached data set (pickled once when the workers start)."""
    extra: Dict[str, Any] = {}
    if num_workers > 0:
        extra = {"multiprocessing_context": loader_context(), "worker_init_fn": worker_init,
                 "persistent_workers": True}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, **extra)


class DefectDataset(torch.utils.data.Dataset):
    """``records`` of ``ds`` as training items::

        {"image": float32 (C,H,W) normalised, "label": int64, "mask": float32 (1,H,W) in {0,1},
         "has_mask": bool, "index": int}

    ``has_mask`` is False for a record without a mask (its mask is zeros; it trains the class head
    only). ``augment=None`` (or ``enabled: false``) gives exactly ``pre(image)``. Labels index
    ``classes`` (default: ``ds``'s own; another set's list for synthetic images trained beside real ones).

    ``cache=True`` decodes every image and mask in the constructor (so a corrupt file fails at once)
    and keeps them resized to the input size as uint8; ``cache=False`` decodes per item (for sets too
    big for memory) and fails on a bad file when that item is read. Either way the error is a
    :class:`DatasetError` naming the file and the record id. ``check_sha256`` (on by default; free, as
    every read hashes the bytes it decodes) also fails on an image whose bytes differ from the manifest's
    ``sha256`` (and a mask from its ``mask_sha256``, where the manifest has one): a file edited or replaced
    after import is never trained or evaluated on silently.

    Not thread-safe (the augmentation's random state is per data set); DataLoader workers are
    processes, which is fine (start them with :func:`data_loader`). The epoch lives in shared
    memory: ``set_epoch`` reaches persistent workers too.
    """

    def __init__(self, ds: Dataset, records: List[Record], pre: Preprocess, augment: Optional[AugmentConfig],
                 seed: int = 0, cache: bool = True, check_sha256: bool = True,
                 decode_threads: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.ds = ds
        self.records = list(records)
        self.pre = pre
        self.seed = seed
        self.check_sha256 = check_sha256
        self.augment = augment if augment is not None and augment.enabled else None
        self.transform = build_transform(self.augment, pre) if self.augment is not None else None
        self.labels: List[int] = []
        names = list(ds.classes.classes if classes is None else classes)
        index = {c: i for i, c in enumerate(names)}
        for r in self.records:
            if r.label not in index:
                raise DatasetError(f"{ds.root}: record {r.id}: label '{r.label}' is not one of the classes {names}")
            self.labels.append(index[r.label])
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._images: Optional[np.ndarray] = None
        self._masks: Optional[np.ndarray] = None
        self._has_mask = np.array([r.mask is not None for r in self.records], dtype=bool)
        if cache:
            self._fill_cache(decode_threads)

    # ------------------------------------------------------------------ decoding

    def _read(self, record: Record, rel: str) -> Tuple[np.ndarray, str]:
        path = self.ds.path(rel)
        try:
            return read_image(path)
        except ImageFileError as e:
            raise DatasetError(f"{path} (record {record.id}): {e}") from None

    def _check_sha(self, record: Record, rel: str, sha: str, want: Optional[str]) -> None:
        if self.check_sha256 and want is not None and sha != want:
            raise DatasetError(f"{self.ds.path(rel)} (record {record.id}): file changed since the manifest was "
                               f"written (sha256 {sha[:12]}..., manifest {want[:12]}...); restore it or "
                               "import the data set again")

    def load(self, i: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Item ``i`` decoded and at the input size: uint8 image (``pre.resize``) and uint8 0/1 mask
        (:func:`resize_mask`), or None for no mask. Strict: a bad file raises :class:`DatasetError`."""
        r = self.records[i]
        img, sha = self._read(r, r.image)
        self._check_sha(r, r.image, sha, r.sha256)
        mask = None
        if r.mask is not None:
            m, mask_sha = self._read(r, r.mask)
            self._check_sha(r, r.mask, mask_sha, r.mask_sha256)  # older manifests have no mask sha256
            if m.shape[:2] != img.shape[:2]:
                raise DatasetError(f"{self.ds.path(r.mask)} (record {r.id}): mask is {m.shape[1]}x{m.shape[0]} px, "
                                   f"the image {img.shape[1]}x{img.shape[0]}")
            mask = resize_mask(self.pre, binarize_mask(m))
        return self.pre.resize(img), mask

    def _fill_cache(self, threads: Optional[int]) -> None:
        h, w = self.pre.size
        shape = (len(self.records), h, w) + ((3,) if self.pre.channels == 3 else ())
        self._images = np.empty(shape, np.uint8)
        self._masks = np.zeros((len(self.records), h, w), np.uint8)
        threads = threads or min(4, os.cpu_count() or 1)

        def fill(i: int) -> None:
            img, mask = self.load(i)
            self._images[i] = img
            if mask is not None:
                self._masks[i] = mask

        if threads <= 1 or len(self.records) < 2:
            for i in range(len(self.records)):
                fill(i)
        else:  # decoding and resizing release the GIL; map re-raises the first error in record order
            with ThreadPoolExecutor(threads) as ex:
                for _ in ex.map(fill, range(len(self.records))):
                    pass

    @property
    def cached(self) -> bool:
        return self._images is not None

    # ------------------------------------------------------------------ items

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, i: int, epoch: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Item ``i`` as augmented uint8 pixels at the input size and its uint8 0/1 mask (zeros when
        the record has none), for ``epoch`` (default: the current one)."""
        if self._images is not None and self._masks is not None:
            image, mask = self._images[i], (self._masks[i] if self._has_mask[i] else None)
        else:
            image, mask = self.load(i)
        if self.transform is not None:
            image, mask = self._augment(image, mask, i, self.epoch if epoch is None else epoch)
        if mask is None:
            mask = np.zeros(self.pre.size, np.uint8)
        return image, mask

    def _augment(self, image: np.ndarray, mask: Optional[np.ndarray], i: int, epoch: int
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        assert self.transform is not None
        has_defect = mask is not None and bool(mask.any())
        for attempt in range(_TRIES):
            np_seq, py_seq = _seed_words(self.seed, epoch, i, attempt).spawn(2)
            self.transform.set_random_state(np.random.default_rng(np_seq),
                                            random.Random(int(py_seq.generate_state(1, np.uint64)[0])))
            out = self.transform(image=image) if mask is None else self.transform(image=image, mask=mask)
            # Retry a draw that moved the whole defect out of the picture; keep the last resort plain.
            if not has_defect or out["mask"].any():
                return out["image"], out.get("mask")
        return image, mask

    def __getitem__(self, i: int) -> Dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self.records):
            raise IndexError(f"index {i} out of range for {len(self.records)} items")
        image, mask = self.pixels(i)
        return {
            "image": torch.from_numpy(self.pre.normalize(image)),
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "has_mask": torch.tensor(bool(self._has_mask[i])),
            "index": i,
        }


class MixedDataset(torch.utils.data.ConcatDataset):
    """Real then synthetic :class:`DefectDataset` items under one index; ``set_epoch`` reaches both."""

    def __init__(self, real: DefectDataset, synthetic: DefectDataset) -> None:
        super().__init__([real, synthetic])
        self.real, self.synthetic = real, synthetic
        self.labels = real.labels + synthetic.labels
        self.groups = [0] * len(real) + [1] * len(synthetic)

    def set_epoch(self, epoch: int) -> None:
        self.real.set_epoch(epoch)
        self.synthetic.set_epoch(epoch)


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling, deterministic by (seed, epoch), split over distributed ranks.

    Each image is drawn with weight ``count(its class) ** -power`` (with replacement): ``power=1``
    gives every class the same share, ``0.5`` a square-root balance; ``power=0`` is a plain
    permutation (without replacement, repeated if ``num_samples`` exceeds the images).
    ``num_samples`` (default: the number of images) is per epoch over all ranks. Every rank draws
    the same global sequence, rounded up to a multiple of ``world_size``, and takes
    ``sequence[rank::world_size]``: disjoint, equally long slices (every rank runs as many steps).
    ``rank``/``world_size`` default to the initialised ``torch.distributed`` group, else 0/1.

    ``groups`` (a group id per image, e.g. 0 real / 1 synthetic) with ``group_shares`` (one share per
    group, summing to 1) leave the class mix as group 0's images set it (a class only other groups hold
    counts its own images) and split each class's draws between the groups that hold it, in proportion
    to their shares: synthetic images add variety to their classes without shifting the class prior.
    """

    def __init__(self, labels: Sequence[int], power: float = 1.0, num_samples: Optional[int] = None,
                 seed: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None,
                 groups: Optional[Sequence[int]] = None, group_shares: Optional[Sequence[float]] = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise ValueError("BalancedSampler needs a non-empty list of labels")
        if self.labels.min() < 0:
            raise ValueError("labels must be class indices >= 0")
        if power < 0:
            raise ValueError(f"power must be >= 0, got {power}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        if world_size is None:
            world_size = torch.distributed.get_world_size() if dist_on else 1
        if rank is None:
            rank = torch.distributed.get_rank() if dist_on else 0
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.power = float(power)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.probabilities = self._probabilities(groups, group_shares)
        self.per_rank = math.ceil(self.num_samples / world_size)

    def _probabilities(self, groups: Optional[Sequence[int]], shares: Optional[Sequence[float]]) -> np.ndarray:
        if groups is None:
            if shares is not None:
                raise ValueError("group_shares needs groups")
            g, shares = np.zeros(len(self.labels), np.int64), [1.0]
        else:
            g = np.asarray(groups, dtype=np.int64)
            if g.shape != self.labels.shape:
                raise ValueError(f"groups has {len(g)} entries for {len(self.labels)} labels")
            if shares is None or len(shares) != g.max() + 1 or g.min() < 0:
                raise ValueError("group_shares needs one share per group id 0..max(groups)")
            if min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
                raise ValueError(f"group_shares must be >= 0 and sum to 1, got {list(shares)}")
            if self.power == 0:
                raise ValueError("groups need power > 0 (sampling with replacement)")
        for k, share in enumerate(shares):
            if share > 0 and not (g == k).any():
                raise ValueError(f"group {k} has a share of {share} but no images")
        n_cls = int(self.labels.max()) + 1
        counts = np.bincount(self.labels[g == 0], minlength=n_cls)
        counts = np.where(counts > 0, counts, np.bincount(self.labels, minlength=n_cls))
        p = np.zeros(len(self.labels), np.float64)
        for c in np.flatnonzero(counts):
            in_c = self.labels == c
            held = {k: shares[k] for k in np.unique(g[in_c])}
            total = sum(held.values())
            for k, share in held.items():
                if share > 0:
                    inside = in_c & (g == k)
                    p[inside] = counts[c] ** (1 - self.power) * share / total / inside.sum()
        return p / p.sum()

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def global_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """The sequence of all ranks for ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else epoch
        rng = np.random.default_rng(_seed_words(self.seed, e))
        total = self.per_rank * self.world_size
        n = len(self.labels)
        if self.power == 0:
            reps = math.ceil(total / n)
            return np.concatenate([rng.permutation(n) for _ in range(reps)])[:total]
        return rng.choice(n, size=total, replace=True, p=self.probabilities)

    def __iter__(self):
        return iter(self.global_indices()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank
