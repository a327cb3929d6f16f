"""``lineguard cv``: a model per fold evaluated on its held-out fold, mean and sample std of every figure, the table,
a rerun that trains only what is missing, the final model on every fold, and a set without folds refused."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lineguard.data.format import Dataset, DatasetError
from lineguard.data.split import split_dataset
from lineguard.sim import SimulatorConfig, simulate_dataset
from lineguard.training.config import TrainConfig
from lineguard.training.cv import FIGURES, cross_validate

pytestmark = pytest.mark.slow
CFG = TrainConfig(arch="cnn_lite0", weights="none", img_size=64, epochs=1, batch_size=8, threads=1)


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv") / "ds"
    ds = simulate_dataset(root, n=48, seed=2, cfg=SimulatorConfig(size=64), workers=1, progress=False)
    split_dataset(ds, val=0.0, test=0.2, seed=0, folds=3)
    return root


def test_three_folds_their_mean_and_std_and_a_rerun_trains_only_what_is_missing(folded: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    rep = cross_validate(folded, out, CFG, folds=3, progress=False)
    ds = Dataset.load(folded)
    sizes = [sum(r.fold == k for r in ds.records) for k in range(3)]
    assert [r["fold"] for r in rep.per_fold] == [0, 1, 2] and [r["images"] for r in rep.per_fold] == sizes
    for k in range(3):  # fold k held out, fold k+1 the val split, the third trains; no test-split image is used
        fold = Dataset.load(out / f"fold-{k}" / "data")
        assert {r.id for r in fold.split("test")} == {r.id for r in ds.records if r.fold == k}
        assert {r.id for r in fold.split("val")} == {r.id for r in ds.records if r.fold == (k + 1) % 3}
        assert {r.id for r in fold.split("train")} == {r.id for r in ds.records if r.fold == (k + 2) % 3}
        metrics = json.loads((out / f"fold-{k}" / "model" / "metrics.json").read_text())
        assert rep.per_fold[k]["accuracy"] == metrics["test"]["accuracy"]
    acc = [r["accuracy"] for r in rep.per_fold]
    mean = sum(acc) / 3
    assert rep.mean["accuracy"] == pytest.approx(mean)
    assert rep.std["accuracy"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in acc) / 2))
    assert set(rep.mean) == set(FIGURES) and rep.mean["exact_match"] is None  # single-label: not applicable
    table = (out / "cv.md").read_text()
    assert table.count("\n| ") == 1 + 3 and "Mean +- sample std" in table
    assert json.loads((out / "cv.json").read_text())["mean"] == rep.mean

    done = (out / "fold-0" / "model" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(out / "fold-2" / "model")  # as if killed before fold 2 finished
    again = cross_validate(folded, out, CFG, folds=3, final=True, progress=False)
    assert (out / "fold-0" / "model" / "metrics.json").stat().st_mtime_ns == done  # not trained again
    assert again.per_fold[:2] == rep.per_fold[:2] and (out / "fold-2" / "model" / "metrics.json").is_file()
    assert again.final is not None and again.final["images"] == len(ds.split("test"))


def test_a_set_without_folds_is_one_line_saying_how(tmp_path: Path, folded: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(folded, plain)
    split_dataset(Dataset.load(plain), val=0.2, test=0.2, seed=0)  # no folds
    with pytest.raises(DatasetError, match=r"no fold numbers, cv needs 0\.\.2: run `lineguard data split"):
        cross_validate(plain, tmp_path / "cv", CFG, folds=3, progress=False)
    run = subprocess.run([sys.executable, "-m", "lineguard", "cv", "--data", str(folded), "--out",
                          str(tmp_path / "cv5"), "--folds", "5"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "folds [0, 1, 2], cv needs 0..4" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
