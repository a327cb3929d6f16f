"""Splits: stratified, deterministic by seed, duplicates together, k folds."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from lineguard.data.format import ClassFile, Dataset, DatasetError, Origin, Record
from lineguard.data.split import split_dataset

ORIGIN = Origin(kind="importer", name="test", version="1")


def make_dataset(root: Path, per_class: dict, dup_every: int = 0) -> Dataset:
    recs = []
    for label, n in per_class.items():
        for i in range(n):
            key = f"{label}{i - 1 if dup_every and i % dup_every == 1 else i}"  # i-1 and i: same image
            recs.append(Record(id=f"{label}/{i}", image=f"{label}/{i}.png", label=label, source="real",
                               origin=ORIGIN, sha256=hashlib.sha256(key.encode()).hexdigest(), width=8, height=8))
    ds = Dataset(root, ClassFile(classes=list(per_class), ok_class=list(per_class)[-1]), recs)
    ds.save()
    return ds


def test_stratified_and_deterministic(tmp_path: Path) -> None:
    sizes = {"a": 50, "b": 20, "ok": 300}
    rep = split_dataset(make_dataset(tmp_path / "x", sizes), val=0.1, test=0.2, seed=3)
    for label, n in sizes.items():
        assert rep.counts["test"][label] == round(n * 0.2)
        assert abs(rep.counts["val"][label] - n * 0.1) <= 1
        assert sum(rep.counts[s][label] for s in rep.counts) == n
    again = Dataset.load(tmp_path / "x")
    split_dataset(make_dataset(tmp_path / "y", sizes), val=0.1, test=0.2, seed=3)
    other = Dataset.load(tmp_path / "y")
    assert [r.split for r in again.records] == [r.split for r in other.records]
    split_dataset(other, val=0.1, test=0.2, seed=4)
    assert [r.split for r in again.records] != [r.split for r in other.records]


def test_duplicates_share_a_split(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, {"a": 40, "ok": 60}, dup_every=4)
    by_sha = Counter(r.sha256 for r in ds.records)
    assert max(by_sha.values()) == 2  # the fixture really has duplicates
    split_dataset(ds, seed=0)
    splits: dict = {}
    for r in ds.records:
        splits.setdefault(r.sha256, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())


def test_rare_class_gets_into_every_split(tmp_path: Path) -> None:
    rep = split_dataset(make_dataset(tmp_path, {"rare": 3, "ok": 100}), val=0.1, test=0.2, seed=0)
    assert [rep.counts[s]["rare"] for s in ("train", "val", "test")] == [1, 1, 1]


def test_folds(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, {"a": 30, "ok": 90})
    rep = split_dataset(ds, seed=0, folds=5)
    assert rep.folds == 5
    non_test = [r for r in ds.records if r.split != "test"]
    assert all(r.fold is None for r in ds.records if r.split == "test")
    per_fold = Counter((r.label, r.fold) for r in non_test)
    for label in ("a", "ok"):
        sizes = [per_fold[(label, k)] for k in range(5)]
        assert max(sizes) - min(sizes) <= 1, sizes


@pytest.mark.parametrize("kw", [{"val": 0.5, "test": 0.6}, {"val": -0.1}, {"folds": 1}])
def test_bad_arguments(tmp_path: Path, kw: dict) -> None:
    with pytest.raises(DatasetError):
        split_dataset(make_dataset(tmp_path, {"a": 5, "ok": 5}), **kw)
