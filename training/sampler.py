"""Class-balanced sampling, deterministic by (seed, epoch), split over distributed ranks, with optional
synthetic images drawn in addition to the real ones.

    sampler = BalancedSampler(train.labels, power=0.5, seed=0)      # rank/world from torch.distributed
    mixed = BalancedSampler(mix.labels, power=0.5, groups=mix.groups, extra=0.5)
    sampler.set_epoch(epoch)                                        # before each epoch
    sampler.set_epoch(epoch, real_only=True)                        # the same number of draws, all real
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["BalancedSampler"]


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling, deterministic by (seed, epoch), split over distributed ranks.

    Each image is drawn with weight ``count(its class) ** -power`` (with replacement): ``power=1``
    gives every class the same share, ``0.5`` a square-root balance; ``power=0`` is a plain
    permutation (without replacement, repeated if ``num_samples`` exceeds the images).
    ``num_samples`` (default: the number of images) is per epoch over all ranks. Every rank draws
    the same global sequence, rounded up to a multiple of ``world_size``, and takes
    ``sequence[rank::world_size]``: disjoint, equally long slices (every rank runs as many steps).
    ``rank``/``world_size`` default to the initialised ``torch.distributed`` group, else 0/1.

    ``groups`` (0 real, 1 synthetic per image) with ``extra``: the real images are drawn as without the
    synthetic ones (``num_samples`` real draws per epoch, the class mix the real images set), and in each
    class both groups hold, ``extra`` synthetic draws come on top of each real draw of that class (a class
    only synthetic images hold is drawn at the weight of its own count): synthetic images add to the real
    epoch, never replace real draws. The epoch grows to hold them (:attr:`num_samples` counts every draw);
    an epoch set ``real_only`` draws as many, all real.
    """

    def __init__(self, labels: Sequence[int], power: float = 1.0, num_samples: Optional[int] = None,
                 seed: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None,
                 groups: Optional[Sequence[int]] = None, extra: float = 0.0) -> None:
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
        real_draws = len(self.labels) if num_samples is None else int(num_samples)
        if real_draws < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.power = float(power)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch, self.real_only = 0, False
        self.probabilities, self.real_probabilities, growth = self._probabilities(groups, extra)
        self.num_samples = round(real_draws * growth)
        self.per_rank = math.ceil(self.num_samples / world_size)

    def _probabilities(self, groups: Optional[Sequence[int]], extra: float) -> Tuple[np.ndarray, np.ndarray, float]:
        """(probabilities of every draw, those of a real-only epoch, draws per real draw)."""
        g = np.zeros(len(self.labels), np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        if g.shape != self.labels.shape:
            raise ValueError(f"groups has {len(g)} entries for {len(self.labels)} labels")
        if not set(np.unique(g)) <= {0, 1} or not (g == 0).any():
            raise ValueError("groups are 0 (real, at least one image) and 1 (synthetic)")
        if extra < 0:
            raise ValueError(f"extra must be >= 0, got {extra}")
        if (g == 1).any() and self.power == 0:
            raise ValueError("synthetic images need power > 0 (sampling with replacement)")
        n_cls = int(self.labels.max()) + 1
        real_counts = np.bincount(self.labels[g == 0], minlength=n_cls)
        counts = np.where(real_counts > 0, real_counts, np.bincount(self.labels, minlength=n_cls))
        p = np.zeros(len(self.labels), np.float64)
        for c in np.flatnonzero(counts):
            mass = counts[c] ** (1 - self.power)
            real, syn = (self.labels == c) & (g == 0), (self.labels == c) & (g == 1)
            if real.any():
                p[real] = mass / real.sum()
                if syn.any():
                    p[syn] = mass * extra / syn.sum()
            else:  # a class only synthetic images hold
                p[syn] = mass / syn.sum()
        real_p = np.where(g == 0, p, 0.0)
        return p / p.sum(), real_p / real_p.sum(), p.sum() / real_p.sum()

    def set_epoch(self, epoch: int, real_only: bool = False) -> None:
        """The epoch to draw (and whether it draws real images only, as many draws)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch, self.real_only = epoch, real_only

    def global_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """The sequence of all ranks for ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, e])  # a function of (seed, epoch) only
        total = self.per_rank * self.world_size
        n = len(self.labels)
        if self.power == 0:
            reps = math.ceil(total / n)
            return np.concatenate([rng.permutation(n) for _ in range(reps)])[:total]
        p = self.real_probabilities if self.real_only else self.probabilities
        return rng.choice(n, size=total, replace=True, p=p)

    def __iter__(self):
        return iter(self.global_indices()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank
