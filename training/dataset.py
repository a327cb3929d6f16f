"""The torch data set over a lineguard data set, and DataLoaders with safe worker processes.

    pre = Preprocess(size=(224, 224), channels=1)
    check_training_split(ds, ds.split("train"), ds.split("val"))        # lineguard.data.split
    train = DefectDataset(ds, ds.split("train"), pre, AugmentConfig(), seed=0)
    sampler = BalancedSampler(train.labels, power=0.5, seed=0)          # lineguard.training.sampler
    loader = data_loader(train, batch_size=32, sampler=sampler, num_workers=2)   # fork-safe workers
    for epoch in range(epochs):
        train.set_epoch(epoch); sampler.set_epoch(epoch)
        for batch in loader: ...  # image (B,C,H,W) float32, label int64, mask (B,1,H,W), has_mask, index

Images are squash-resized to the model's input size with :class:`Preprocess` (the one shared
definition) and masks with the same geometry; augmentation (:mod:`.augment`) runs on those uint8
pixels, image and mask together, and ``pre.normalize`` makes the tensor. Without augmentation an item
is exactly ``pre(image)``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.format import Dataset, DatasetError, Record
from ..data.imaging import ImageFileError, binarize_mask, read_image
from ..data.preprocess import Preprocess
from ..data.split import label_indices, label_sets
from ..workers import init_worker, mp_context
from .augment import AugmentConfig, augment_item, build_transform

__all__ = ["DefectDataset", "MixedDataset", "data_loader"]


def _init_worker(_: int) -> None:
    """DataLoader ``worker_init_fn``: the worker dies with the training process
    (:func:`lineguard.workers.init_worker`) and runs one OpenCV thread (workers already run in parallel)."""
    init_worker()
    cv2.setNumThreads(1)


def data_loader(dataset: torch.utils.data.Dataset, batch_size: int, sampler: Optional[Sampler] = None,
                shuffle: bool = False, num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose workers come from :func:`lineguard.workers.mp_context` (a fork server that has
    imported this module, not a ``fork`` of a process whose OpenCV threads ran: that hangs) and are kept
    across epochs (``persistent_workers``; :meth:`DefectDataset.set_epoch` still reaches them). Each worker
    gets its own copy of a cached data set (pickled once when the workers start)."""
    extra: Dict[str, Any] = {}
    if num_workers > 0:
        extra = {"multiprocessing_context": mp_context(__name__), "worker_init_fn": _init_worker,
                 "persistent_workers": True}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, **extra)


class DefectDataset(torch.utils.data.Dataset):
    """``records`` of ``ds`` as training items::

        {"image": float32 (C,H,W) normalised, "label": int64, "targets": float32 (K,) multi-hot (the label and
         every box's class), "mask": float32 (1,H,W) in {0,1}, "has_mask": bool, "index": int}

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
        self.labels: List[int] = label_indices(ds, self.records, classes)
        self.targets = label_sets(ds, self.records, classes)  # every class on the part (multi-label training)
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
        (``data.imaging.resize_mask``), or None for no mask. Strict: a bad file raises :class:`DatasetError`."""
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
            mask = self.pre.resize_mask(binarize_mask(m)).astype(np.uint8)
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
            key = (self.seed, self.epoch if epoch is None else epoch, i)
            image, mask = augment_item(self.transform, image, mask, key)
        if mask is None:
            mask = np.zeros(self.pre.size, np.uint8)
        return image, mask

    def __getitem__(self, i: int) -> Dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self.records):
            raise IndexError(f"index {i} out of range for {len(self.records)} items")
        image, mask = self.pixels(i)
        return {
            "image": torch.from_numpy(self.pre.normalize(image)),
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
            "targets": torch.from_numpy(self.targets[i]),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "has_mask": torch.tensor(bool(self._has_mask[i])),
            "index": i,
        }


class MixedDataset(torch.utils.data.ConcatDataset):
    """Real then synthetic :class:`DefectDataset` items under one index; ``set_epoch`` reaches both.
    ``groups`` (0 real, 1 synthetic per item) is what :class:`~.sampler.BalancedSampler` mixes by; every item
    carries its loss ``weight`` (1 real, ``synthetic_weight`` synthetic)."""

    def __init__(self, real: DefectDataset, synthetic: DefectDataset, synthetic_weight: float = 1.0) -> None:
        super().__init__([real, synthetic])
        self.real, self.synthetic, self.synthetic_weight = real, synthetic, synthetic_weight
        self.labels = real.labels + synthetic.labels
        self.groups = [0] * len(real) + [1] * len(synthetic)

    def __getitem__(self, i: int) -> Dict:
        item = dict(super().__getitem__(i))
        item["weight"] = torch.tensor(1.0 if i < len(self.real) else self.synthetic_weight)
        return item

    def set_epoch(self, epoch: int) -> None:
        self.real.set_epoch(epoch)
        self.synthetic.set_epoch(epoch)
