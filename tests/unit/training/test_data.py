"""Training data: items, eval == Preprocess, deterministic augmentation, mask alignment, sampling, errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lineguard.data.format import ClassFile, Dataset, DatasetError, Origin, Record
from lineguard.data.imaging import read_image, sha256_bytes, write_png
from lineguard.data.preprocess import Preprocess
from lineguard.data.split import split_dataset
from lineguard.synth.simulator import SimulatorConfig, simulate_dataset
from lineguard.training.data import (
    AugmentConfig,
    BalancedSampler,
    DefectDataset,
    build_transform,
    check_training_split,
    class_counts,
    data_loader,
    resize_mask,
)

GRAY = Preprocess(size=(64, 80), channels=1, mean=[0.5], std=[0.25])
RGB = Preprocess(size=(48, 48), channels=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("sim") / "ds"
    ds = simulate_dataset(root, n=40, seed=0, cfg=SimulatorConfig(size=96), workers=1, progress=False)
    split_dataset(ds, val=0.2, test=0.2, seed=0)
    return Dataset.load(root)


def _copy(ds: Dataset, dst: Path) -> Dataset:
    shutil.copytree(ds.root, dst)
    return Dataset.load(dst)


def _batches(loader: DataLoader) -> List[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in loader]


# ------------------------------------------------------------------ items


@pytest.mark.parametrize("pre", [GRAY, RGB], ids=["gray", "rgb"])
def test_item_shapes_and_types(sim: Dataset, pre: Preprocess) -> None:
    train = sim.split("train")
    data = DefectDataset(sim, train, pre, AugmentConfig(), seed=1)
    assert len(data) == len(train) and data.cached
    h, w = pre.size
    for i in (0, len(data) - 1):
        item = data[i]
        assert item["image"].shape == (pre.channels, h, w) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, h, w) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert int(item["label"]) == sim.classes.index(train[i].label)
        assert item["has_mask"].dtype == torch.bool and bool(item["has_mask"])
        assert item["index"] == i
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, pre.channels, h, w) and batch["index"].tolist() == [0, 1, 2, 3]


def test_eval_items_are_exactly_preprocess(sim: Dataset) -> None:
    recs = sim.split("val")
    for pre in (GRAY, RGB):
        cached = DefectDataset(sim, recs, pre, None)
        lazy = DefectDataset(sim, recs, pre, AugmentConfig(enabled=False), cache=False)
        assert not lazy.cached and lazy.transform is None
        mask_pre = Preprocess(size=pre.size, channels=1, mean=[0.0], std=[1.0])
        for i, r in enumerate(recs):
            img, _ = read_image(sim.path(r.image))
            expected = torch.from_numpy(pre(img))
            mask_png, _ = read_image(sim.path(r.mask))
            expected_mask = (mask_pre.resize(mask_png) >= 128).astype(np.float32)[None]
            for data in (cached, lazy):
                item = data[i]
                assert torch.equal(item["image"], expected)
                assert np.array_equal(item["mask"].numpy(), expected_mask)
        defects = [i for i, r in enumerate(recs) if r.label != sim.classes.ok_class]
        assert defects and all(cached[i]["mask"].sum() > 0 for i in defects)


def test_records_without_mask(sim: Dataset, tmp_path: Path) -> None:
    recs = [r.model_copy(update={"mask": None}) for r in sim.split("train")[:3]]
    for aug in (None, AugmentConfig()):
        for cache in (True, False):
            data = DefectDataset(sim, recs, GRAY, aug, cache=cache)
            for i in range(len(data)):
                item = data[i]
                assert not bool(item["has_mask"]) and float(item["mask"].abs().sum()) == 0.0


# ------------------------------------------------------------------ augmentation


def test_augmentation_deterministic_by_seed_epoch_index(sim: Dataset) -> None:
    train = sim.split("train")
    a = DefectDataset(sim, train, GRAY, AugmentConfig(), seed=5)
    b = DefectDataset(sim, train, GRAY, AugmentConfig(), seed=5, cache=False)
    other_seed = DefectDataset(sim, train, GRAY, AugmentConfig(), seed=6)
    plain = DefectDataset(sim, train, GRAY, None)
    for i in range(6):
        first = a[i]
        assert torch.equal(first["image"], a[i]["image"]) and torch.equal(first["mask"], a[i]["mask"])
        assert torch.equal(first["image"], b[i]["image"]) and torch.equal(first["mask"], b[i]["mask"])
        assert not torch.equal(first["image"], other_seed[i]["image"])
        assert not torch.equal(first["image"], plain[i]["image"])
    e0 = [a[i]["image"] for i in range(6)]
    a.set_epoch(1)
    assert a.epoch == 1
    assert all(not torch.equal(x, a[i]["image"]) for i, x in enumerate(e0))
    a.set_epoch(0)
    assert all(torch.equal(x, a[i]["image"]) for i, x in enumerate(e0))


def test_dataloader_workers_do_not_change_batches(sim: Dataset) -> None:
    train = sim.split("train")
    data = DefectDataset(sim, train, GRAY, AugmentConfig(), seed=3)
    sampler = BalancedSampler(data.labels, power=0.5, seed=3)
    serial = DataLoader(data, batch_size=5, sampler=sampler, num_workers=0)
    parallel = data_loader(data, batch_size=5, sampler=sampler, num_workers=2)  # persistent, fork server
    seen = []
    for epoch in (0, 1):  # persistent workers must see set_epoch too
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        x, y = _batches(serial), _batches(parallel)
        assert len(x) == len(y) == -(-len(train) // 5)
        for bx, by in zip(x, y):
            for k in bx:
                assert torch.equal(bx[k], by[k]), k
        seen.append(torch.cat([b["image"] for b in x]))
    assert not torch.equal(seen[0], seen[1])
    # Order-independent: item i of epoch 1 is the same when read alone.
    data.set_epoch(1)
    first = x[0]
    for j, idx in enumerate(first["index"].tolist()):
        assert torch.equal(data[idx]["image"], first["image"][j])


def _square_dataset(root: Path, n: int = 6, size: int = 120) -> Dataset:
    """Bright squares (with texture) on a dark textured field; the mask is the square."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    recs = []
    origin = Origin(kind="generator", name="test", version="1")
    for i in range(n):
        img = rng.integers(20, 60, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        s = int(rng.integers(20, 40))
        y, x = (int(v) for v in rng.integers(10, size - s - 10, 2))
        img[y:y + s, x:x + s] = rng.integers(190, 230, (s, s), dtype=np.uint8)
        mask[y:y + s, x:x + s] = 255
        data = write_png(root / "images" / f"{i}.png", img)
        write_png(root / "masks" / f"{i}.png", mask)
        recs.append(Record(id=f"sq-{i}", image=f"images/{i}.png", mask=f"masks/{i}.png", label="defect",
                           source="synthetic", origin=origin, sha256=sha256_bytes(data), width=size, height=size))
    ds = Dataset(root, ClassFile(classes=["defect", "ok"], ok_class="ok"), recs)
    ds.save()
    return ds


def test_image_and_mask_stay_aligned(tmp_path: Path) -> None:
    ds = _square_dataset(tmp_path / "sq")
    strong = AugmentConfig(affine_p=1.0, rotate=30, shift=0.1, scale=(0.8, 1.2), crop_p=1.0, crop_scale=(0.7, 1.0),
                           rot90_p=0.5)
    pre = Preprocess(size=(96, 80), channels=1)
    data = DefectDataset(ds, ds.records, pre, strong, seed=0)
    ious = []
    for epoch in range(4):
        for i in range(len(data)):
            image, mask = data.pixels(i, epoch=epoch)
            bright, m = image > 120, mask > 0
            assert m.any()
            ious.append((bright & m).sum() / (bright | m).sum())
    assert min(ious) > 0.8, min(ious)
    # The same Compose brings full-size inputs to the input size itself, image and mask alike.
    img, _ = read_image(ds.path(ds.records[0].image))
    m = read_image(ds.path(ds.records[0].mask))[0] // 255
    out = build_transform(AugmentConfig(enabled=False), pre)(image=img, mask=m)
    assert np.array_equal(out["image"], pre.resize(img)) and np.array_equal(out["mask"], resize_mask(pre, m))


def test_defect_is_never_moved_out(tmp_path: Path) -> None:
    """A draw that loses the whole defect is redrawn (then left plain): a defect image keeps its defect."""
    root = tmp_path / "corner"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img = np.full((64, 64), 40, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    img[1:4, 1:4], mask[1:4, 1:4] = 220, 255
    data = write_png(root / "images" / "0.png", img)
    write_png(root / "masks" / "0.png", mask)
    rec = Record(id="corner", image="images/0.png", mask="masks/0.png", label="defect", source="synthetic",
                 origin=Origin(kind="generator", name="test", version="1"), sha256=sha256_bytes(data),
                 width=64, height=64)
    ds = Dataset(root, ClassFile(classes=["defect", "ok"], ok_class="ok"), [rec])
    harsh = AugmentConfig(affine_p=1.0, shift=0.3, scale=(1.5, 2.0), crop_p=1.0, crop_scale=(0.2, 0.3))
    data_set = DefectDataset(ds, [rec], Preprocess(size=(64, 64)), harsh)
    assert all(data_set.pixels(0, epoch=e)[1].any() for e in range(30))


# ------------------------------------------------------------------ sampler


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


def test_sampler_groups_split_each_class_and_keep_the_class_mix() -> None:
    labels = [0] * 800 + [1] * 50 + [1] * 40 + [2] * 10  # real: 800 OK + 50 NG; synthetic: 40 NG + 10 of class 2
    groups = [0] * 850 + [1] * 50
    s = BalancedSampler(labels, power=0.5, num_samples=60000, seed=0, groups=groups, group_shares=[0.7, 0.3])
    drawn = s.global_indices()
    synthetic = drawn >= 850
    got = Counter(labels[i] for i in drawn)
    mass = np.sqrt([800, 50, 10])  # class 2 is only synthetic: its own count
    assert all(abs(got[c] / len(drawn) - mass[c] / mass.sum()) < 0.01 for c in range(3)), got
    assert not synthetic[np.asarray(labels)[drawn] == 0].any()  # OK only real
    ng = np.asarray(labels)[drawn] == 1
    assert abs(synthetic[ng].mean() - 0.3) < 0.02  # the class's draws split 70 / 30
    assert synthetic[np.asarray(labels)[drawn] == 2].all()
    real_only = BalancedSampler(labels[:850], power=0.5, num_samples=60000, seed=0).global_indices()
    mix = Counter(labels[i] for i in real_only)
    assert abs(mix[1] / len(real_only) - (got[1]) / (got[0] + got[1])) < 0.01  # same OK/NG prior as real only
    with pytest.raises(ValueError, match="sum to 1"):
        BalancedSampler(labels, groups=groups, group_shares=[0.5, 0.3])
    with pytest.raises(ValueError, match="no images"):
        BalancedSampler(labels, groups=[0] * 450 + [2] * 450, group_shares=[0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="power > 0"):
        BalancedSampler(labels, power=0, groups=groups, group_shares=[0.7, 0.3])


_DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from lineguard.training.data import BalancedSampler
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
    import json

    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    glob = BalancedSampler([0] * 30 + [1] * 8 + [2] * 3, seed=7, rank=0, world_size=2).global_indices(epoch=3).tolist()
    assert results[0]["all"] == results[1]["all"] == [glob[0::2], glob[1::2]]


# ------------------------------------------------------------------ errors


def _break(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"not a png at all")


@pytest.mark.parametrize("what", ["image", "mask"])
def test_corrupt_file_names_file_and_record(sim: Dataset, tmp_path: Path, what: str) -> None:
    ds = _copy(sim, tmp_path / "ds")
    train = ds.split("train")
    victim = train[3]
    path = ds.path(getattr(victim, what))
    _break(path, "truncate" if what == "image" else "garbage")
    with pytest.raises(DatasetError) as err:
        DefectDataset(ds, train, GRAY, None)
    assert str(path) in str(err.value) and f"record {victim.id}" in str(err.value)
    lazy = DefectDataset(ds, train, GRAY, AugmentConfig(), cache=False)  # lazy: fails when read
    lazy[0]
    with pytest.raises(DatasetError, match=f"record {victim.id}"):
        lazy[3]


def test_missing_and_mismatched_files(sim: Dataset, tmp_path: Path) -> None:
    ds = _copy(sim, tmp_path / "ds")
    recs = ds.split("train")[:2]
    ds.path(recs[0].image).unlink()
    with pytest.raises(DatasetError, match=rf"record {recs[0].id}\): cannot read file"):
        DefectDataset(ds, recs, GRAY, None)
    write_png(ds.path(recs[1].mask), np.zeros((10, 12), np.uint8))
    with pytest.raises(DatasetError, match=f"record {recs[1].id}.*changed since the manifest"):
        DefectDataset(ds, recs[1:], GRAY, None)  # the manifest holds the mask's sha256
    with pytest.raises(DatasetError, match=f"record {recs[1].id}.*mask is 12x10 px"):
        DefectDataset(ds, recs[1:], GRAY, None, check_sha256=False)
    changed = recs[1].model_copy(update={"sha256": "0" * 64, "mask": None})
    DefectDataset(ds, [changed], GRAY, None, check_sha256=False)
    with pytest.raises(DatasetError, match="changed since the manifest"):
        DefectDataset(ds, [changed], GRAY, None, check_sha256=True)


def test_split_checks(sim: Dataset) -> None:
    train, val = sim.split("train"), sim.split("val")
    check_training_split(sim, train, val)
    assert class_counts(train, sim.classes) == list(sim.counts(train).values())
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        check_training_split(sim, train, [])
    with pytest.raises(DatasetError, match="split 'train' is empty"):
        check_training_split(sim, [], val)
    with pytest.raises(DatasetError, match="class 'stain' has no training images"):
        check_training_split(sim, [r for r in train if r.label != "stain"], val)
    with pytest.raises(DatasetError, match="classes 'dent', 'stain' have no training images"):
        check_training_split(sim, [r for r in train if r.label not in ("dent", "stain")], val)
    bad: Optional[Record] = train[0].model_copy(update={"label": "Fray"})
    with pytest.raises(DatasetError, match=f"record {train[0].id}: label 'Fray'"):
        DefectDataset(sim, [bad], GRAY, None)
