"""Offline synthetic-vs-real scores: the metrics on known distributions, and ``score`` on real vs itself and vs
noise in the features of a (random-weight) lineguard model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lineguard.data.format import Dataset, Record
from lineguard.data.imaging import sha256_bytes, write_png
from lineguard.training.cli import synth_score
from lineguard.training.synth_score import (
    ScoreError,
    c2st_auc,
    frechet_distance,
    kid,
    near_copy_rate,
    precision_recall,
    score,
)

SIZE = 64  # images
INPUT = 32  # model input: small, for speed


@pytest.fixture(scope="module")
def real(split_sim) -> Path:
    return split_sim(n=60, size=SIZE, seed=1, val=0.1, test=0.1)


@pytest.fixture(scope="module")
def model_dir(real: Path, tmp_path_factory: pytest.TempPathFactory, random_model_dir) -> Path:
    return random_model_dir(tmp_path_factory.mktemp("m") / "model", real, "cnn_resnet18", INPUT, bn_stats=True)


def _copy_of_train(real: Path, out: Path) -> Path:
    """A 'synthetic' set holding exactly the real train images (referenced by absolute path)."""
    ds = Dataset.load(real)
    recs = [r.model_copy(update={"image": str(ds.path(r.image)), "mask": None, "split": None})
            for r in ds.split("train")]
    Dataset(out, ds.classes, recs).save()
    return out


def _noise_set(real: Path, out: Path) -> Path:
    """Uniform noise images with the labels of the real train images."""
    ds = Dataset.load(real)
    rng = np.random.default_rng(0)
    (out / "images").mkdir(parents=True)
    recs = []
    for r in ds.split("train"):
        data = write_png(out / "images" / f"{r.id}.png", rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        recs.append(Record(id=r.id, image=f"images/{r.id}.png", label=r.label, source="synthetic",
                           origin=r.origin, sha256=sha256_bytes(data), width=SIZE, height=SIZE))
    Dataset(out, ds.classes, recs).save()
    return out


def test_metrics_on_known_distributions() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1500, 4)), rng.normal(size=(1500, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) < 0.05
    assert frechet_distance(a, b + 1.0) == pytest.approx(4.0, abs=0.2)  # ||mean shift||^2 = 4
    wide = b * 2.0  # covariance 4 I: tr(I + 4I - 2 * 2I) = 4
    assert frechet_distance(a, wide) == pytest.approx(4.0, abs=0.3)
    same, _ = kid(a, b, subsets=20, subset_size=500)
    far, far_std = kid(a, b + 1.0, subsets=20, subset_size=500)
    assert abs(same) < 0.01 < far - 3 * far_std
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8
    assert precision_recall(a, b + 10.0) == (0.0, 0.0)
    p, r = precision_recall(a, b * 0.1)  # collapsed onto the middle: precise, little recall
    assert p > 0.95 and r < 0.3
    assert c2st_auc(a[:300], b[:300]) == pytest.approx(0.5, abs=0.1)
    assert c2st_auc(a[:300], b[:300] + 1.0) > 0.9
    assert near_copy_rate(a, a[:100]) == 1.0 and near_copy_rate(a, b + 10.0) == 0.0


def test_real_against_itself_and_against_noise(real: Path, model_dir: Path, tmp_path: Path) -> None:
    itself = score(real, _copy_of_train(real, tmp_path / "self"), model_dir, kid_subsets=20, progress=False)
    noise = score(real, _noise_set(real, tmp_path / "noise"), model_dir, kid_subsets=20, progress=False)
    ds = Dataset.load(real)
    n_train = len(ds.split("train"))
    s, z = itself["overall"], noise["overall"]
    assert s["real"] == s["synthetic"] == n_train and itself["feature_dim"] == 512
    assert s["fd"] < 1e-6 * z["fd"] and z["fd"] > 1.0
    assert abs(s["kid_mean"]) < 0.1 * z["kid_mean"]  # unbiased: slightly negative for identical sets
    assert s["precision"] == s["recall"] == 1.0 and z["recall"] < 0.5  # noise covers little of the real manifold
    assert s["c2st_auc"] == pytest.approx(0.5, abs=0.05) and z["c2st_auc"] > 0.95
    assert s["near_copy_rate"] == 1.0 and z["near_copy_rate"] == 0.0
    counts = ds.counts(ds.split("train"))
    for c, n in counts.items():  # every class either scored or skipped with the reason
        if n > 3:
            assert itself["per_class"][c]["real"] == n and itself["per_class"][c]["fd"] < 1e-6 * max(z["fd"], 1)
        else:
            assert "needs > 3" in itself["skipped"][c]


def test_score_command_and_errors(real: Path, model_dir: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth_score)
    synth = _noise_set(real, tmp_path / "noise")
    res = CliRunner().invoke(app, ["--data", str(real), "--synthetic", str(synth), "--model", str(model_dir),
                                   "--max-images", "20", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.strip().splitlines()[-1])
    assert rep["overall"]["real"] == rep["overall"]["synthetic"] == 20 and rep["overall"]["c2st_auc"] > 0.9
    res = CliRunner().invoke(app, ["--data", str(real), "--synthetic", str(synth), "--model", str(model_dir),
                                   "--max-images", "8"])
    assert res.exit_code == 0 and "overall" in res.output
    with pytest.raises(ScoreError, match="split 'nope' has 0 images"):
        score(real, synth, model_dir, split="nope", progress=False)
