"""Class-balanced sampling: deterministic by (seed, epoch), split over ranks (also under torchrun with gloo),
class balance, and synthetic draws on top of the real ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lineguard.training.sampler import BalancedSampler


def test_sampler_deterministic_and_distributed() -> None:
    labels = [0] * 30 + [1] * 8 + [2] * 3
    s = BalancedSampler(labels, seed=7)
    e0 = list(s)
    assert len(e0) == len(s) == len(labels) and e0 == list(BalancedSampler(labels, seed=7))
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0
    ranks = [BalancedSampler(labels, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(3)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(ranks[0]) == 21  # 41 rounded up to 42
    glob = ranks[0].global_indices().tolist()
    assert glob == ranks[1].global_indices().tolist() and len(glob) == 42
    assert a == glob[0::2] and b == glob[1::2]
    perm = BalancedSampler(labels, power=0, seed=1, rank=1, world_size=2)
    whole = perm.global_indices().tolist()
    assert sorted(whole[:41]) == list(range(41)) and list(perm) == whole[1::2]


def test_sampler_balances_classes() -> None:
    labels = [0] * 900 + [1] * 90 + [2] * 10
    full = Counter(labels[i] for i in BalancedSampler(labels, power=1.0, num_samples=30000, seed=0))
    assert all(abs(full[c] / 30000 - 1 / 3) < 0.02 for c in range(3)), full
    sqrt = Counter(labels[i] for i in BalancedSampler(labels, power=0.5, num_samples=30000, seed=0))
    expected = np.sqrt([900, 90, 10]) / np.sqrt([900, 90, 10]).sum()
    assert all(abs(sqrt[c] / 30000 - expected[c]) < 0.02 for c in range(3)), sqrt
    with pytest.raises(ValueError, match="rank"):
        BalancedSampler(labels, rank=2, world_size=2)


def test_synthetic_draws_come_on_top_of_the_real_epoch() -> None:
    """extra=0.5: the real draws are those of a run without synthetic images (count and class mix), and each
    class the synthetic set holds gets half as many synthetic draws again; a class only synthetic images
    hold is drawn at its own count's weight; a real-only epoch draws as many, all real."""
    labels = [0] * 800 + [1] * 50 + [1] * 40 + [2] * 10  # real: 800 OK + 50 NG; synthetic: 40 NG + 10 of class 2
    groups = [0] * 850 + [1] * 50
    plain = BalancedSampler(labels[:850], power=0.5, num_samples=20000, seed=0)
    s = BalancedSampler(labels, power=0.5, num_samples=20000, seed=0, groups=groups, extra=0.5)
    mass = np.sqrt([800, 50, 10])  # class 2 is only synthetic: its own count
    expected_total = 20000 * (mass[0] + 1.5 * mass[1] + mass[2]) / (mass[0] + mass[1])
    assert s.num_samples == round(expected_total) and plain.num_samples == 20000
    drawn = s.global_indices()
    lab, synthetic = np.asarray(labels)[drawn], drawn >= 850
    real_mix = Counter(lab[~synthetic])
    assert abs((~synthetic).sum() - 20000) < 300  # the real draws: as many as without synthetic images
    assert abs(real_mix[1] / (~synthetic).sum() - mass[1] / (mass[0] + mass[1])) < 0.01  # ... and their class mix
    assert not synthetic[lab == 0].any() and synthetic[lab == 2].all()  # OK only real; class 2 only synthetic
    assert abs(synthetic[lab == 1].sum() / (~synthetic[lab == 1]).sum() - 0.5) < 0.05  # half again, on top
    s.set_epoch(1, real_only=True)
    only = s.global_indices()
    assert len(only) == len(drawn) and (only < 850).all()  # as many draws, all real
    assert abs(Counter(np.asarray(labels)[only])[1] / len(only) - mass[1] / (mass[0] + mass[1])) < 0.01
    s.set_epoch(1)
    assert not np.array_equal(s.global_indices(), only)
    none = BalancedSampler(labels, power=0.5, num_samples=1000, seed=0, groups=groups, extra=0.0)
    assert (none.global_indices()[np.asarray(labels)[none.global_indices()] == 1] < 850).all()
    with pytest.raises(ValueError, match="groups are 0"):
        BalancedSampler(labels, groups=[0] * 450 + [2] * 450, extra=0.5)
    with pytest.raises(ValueError, match="power > 0"):
        BalancedSampler(labels, power=0, groups=groups, extra=0.5)
    with pytest.raises(ValueError, match="extra must be >= 0"):
        BalancedSampler(labels, groups=groups, extra=-1)


_DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from lineguard.training.sampler import BalancedSampler
    dist.init_process_group("gloo")
    s = BalancedSampler([0] * 30 + [1] * 8 + [2] * 3, seed=7)
    s.set_epoch(3)
    mine = torch.tensor(list(s))
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    print(json.dumps({"rank": s.rank, "world": s.world_size, "all": [t.tolist() for t in out]}))
    dist.destroy_process_group()
""")


def test_sampler_under_torchrun_gloo(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", _DDP_SCRIPT], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    glob = BalancedSampler([0] * 30 + [1] * 8 + [2] * 3, seed=7, rank=0, world_size=2).global_indices(epoch=3).tolist()
    assert results[0]["all"] == results[1]["all"] == [glob[0::2], glob[1::2]]


