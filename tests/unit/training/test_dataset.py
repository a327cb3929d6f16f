"""The training data set: items, eval == Preprocess, deterministic augmentation over DataLoader workers,
errors naming file and record, and the split checks training starts with (``lineguard.data.split``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lineguard.data.format import Dataset, DatasetError
from lineguard.data.imaging import read_image, write_png
from lineguard.data.preprocess import Preprocess
from lineguard.data.split import check_training_split, label_indices, synthetic_records
from lineguard.training.augment import AugmentConfig
from lineguard.training.dataset import DefectDataset, MixedDataset, data_loader
from lineguard.training.sampler import BalancedSampler

GRAY = Preprocess(size=(64, 80), channels=1, mean=[0.5], std=[0.25])
RGB = Preprocess(size=(48, 48), channels=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def sim(split_sim) -> Dataset:
    return Dataset.load(split_sim(n=40, size=96, seed=0, val=0.2, test=0.2))


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
    assert label_indices(sim, train) == [sim.classes.classes.index(r.label) for r in train]
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        check_training_split(sim, train, [])
    with pytest.raises(DatasetError, match="split 'train' is empty"):
        check_training_split(sim, [], val)
    with pytest.raises(DatasetError, match="class 'stain' has no training images"):
        check_training_split(sim, [r for r in train if r.label != "stain"], val)
    with pytest.raises(DatasetError, match="classes 'dent', 'stain' have no training images"):
        check_training_split(sim, [r for r in train if r.label not in ("dent", "stain")], val)


def test_an_unknown_label_is_one_error_naming_the_record(sim: Dataset) -> None:
    train, val = sim.split("train"), sim.split("val")
    bad = train[0].model_copy(update={"label": "Fray"})
    want = re.escape(f"{sim.root}: record {bad.id}: label 'Fray' is not one of the classes ['dent', ")
    for call in (lambda: DefectDataset(sim, [bad], GRAY, None), lambda: check_training_split(sim, [*train, bad], val),
                 lambda: check_training_split(sim, train, [*val, bad]), lambda: label_indices(sim, [bad])):
        with pytest.raises(DatasetError, match=want):
            call()
    # a synthetic set's labels index the real set's classes
    assert label_indices(sim, train[:3], classes=["x", *sim.classes.classes]) == [
        1 + sim.classes.classes.index(r.label) for r in train[:3]]


def test_synthetic_records_are_unsplit_or_train_and_of_known_classes(sim: Dataset, tmp_path: Path) -> None:
    syn = _copy(sim, tmp_path / "syn")
    assert synthetic_records(sim, syn) == syn.split("train")
    for r in syn.records[:5]:
        r.split = None
    assert synthetic_records(sim, syn) == [r for r in syn.records if r.split in (None, "train")]
    train = sim.split("train")
    mixed = MixedDataset(DefectDataset(sim, train, GRAY, None),
                         DefectDataset(syn, syn.records[:5], GRAY, None, classes=sim.classes.classes))
    assert mixed.groups == [0] * len(train) + [1] * 5 and len(mixed) == len(train) + 5
    assert torch.equal(mixed[len(train)]["image"], DefectDataset(syn, syn.records[:1], GRAY, None)[0]["image"])
    with pytest.raises(DatasetError, match="no images without a split or in the train split"):
        synthetic_records(sim, Dataset(syn.root, syn.classes, [r for r in syn.records if r.split == "val"]))
    other = Dataset(syn.root, syn.classes, [r.model_copy(update={"label": "crack"}) for r in syn.records])
    with pytest.raises(DatasetError, match=r"labels \['crack'\] are not classes of"):
        synthetic_records(sim, other)
