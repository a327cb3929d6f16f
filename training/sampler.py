"""Class-balanced sampling, deterministic by (seed, epoch), split over distributed ranks, with an optional
mix of groups (real and synthetic images) that keeps the real class prior.

    sampler = BalancedSampler(train.labels, power=0.5, seed=0)      # rank/world from torch.distributed
    mixed = BalancedSampler(mix.labels, power=0.5, groups=mix.groups, group_shares=[0.7, 0.3])
    sampler.set_epoch(epoch)                                        # before each epoch
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

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
        rng = np.random.default_rng([self.seed, e])  # a function of (seed, epoch) only
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
