"""The synthetic-set filter: the class band on a classifier whose probabilities are known, the real-vs-synthetic
probe on copies and noise, the filtered set and its report, the command, the model's provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lineguard.data.format import Dataset, Record
from lineguard.data.imaging import sha256_bytes, write_png
from lineguard.data.split import synthetic_records
from lineguard.training.cli import synth_filter
from lineguard.training.config import TrainConfig
from lineguard.training.model_dir import load_model_dir
from lineguard.training.report import _provenance, _synthetic_line
from lineguard.training.synth_filter import FILTER_REPORT, FilterConfig, filter_synthetic, probe_scores
from lineguard.training.synth_score import ScoreError
from lineguard.weights import save_weights

SIZE = 64
INPUT = 32
P_FAVOURED = 0.8


@pytest.fixture(scope="module")
def real(split_sim) -> Path:
    return split_sim(n=240, size=SIZE, seed=3, val=0.1, test=0.1)


@pytest.fixture(scope="module")
def model_dir(real: Path, tmp_path_factory: pytest.TempPathFactory, random_model_dir) -> Path:
    return random_model_dir(tmp_path_factory.mktemp("m") / "model", real, "cnn_resnet18", INPUT, bn_stats=True)


@pytest.fixture(scope="module")
def favouring(real: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A copy of ``model_dir`` whose head ignores the image: p(favoured class) = P_FAVOURED for every image."""
    import shutil

    out = tmp_path_factory.mktemp("fav") / "model"
    shutil.copytree(model_dir, out)
    loaded = load_model_dir(out)
    classes = loaded.spec.classes
    favoured = max(Dataset.load(real).counts(Dataset.load(real).split("train")).items(), key=lambda kv: kv[1])[0]
    head = loaded.model.head
    head.weight.data.zero_()
    head.bias.data.zero_()
    head.bias.data[classes.index(favoured)] = math.log(P_FAVOURED * (len(classes) - 1) / (1 - P_FAVOURED))
    save_weights(loaded.model.state_dict(), out / loaded.spec.weights)
    return out, favoured


def _copy_of_train(real: Path, out: Path) -> Path:
    ds = Dataset.load(real)
    recs = [r.model_copy(update={"id": f"copy-{r.id}", "image": str(ds.path(r.image)), "mask": None, "split": None,
                                 "source": "synthetic"}) for r in ds.split("train")]
    Dataset(out, ds.classes, recs).save()
    return out


def _noise_set(real: Path, out: Path) -> Path:
    """A noise image for each real train image, with its label (relative paths: the filtered set makes them
    absolute)."""
    ds = Dataset.load(real)
    rng = np.random.default_rng(0)
    (out / "images").mkdir(parents=True)
    recs = []
    for r in ds.split("train"):
        data = write_png(out / "images" / f"{r.id}.png", rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        recs.append(Record(id=f"noise-{r.id}", image=f"images/{r.id}.png", label=r.label, source="synthetic",
                           origin=r.origin, sha256=sha256_bytes(data), width=SIZE, height=SIZE))
    Dataset(out, ds.classes, recs).save()
    return out


def test_probe_scores_separate_shifted_rows_not_copies() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    assert np.median(probe_scores(real, real[:100].copy())) < 0.6  # copies share a fold with their twins
    far = probe_scores(real, rng.normal(size=(100, 8)) + 3.0)
    assert far.shape == (100,) and np.median(far) > 0.95 and far.min() > 0.8


def test_class_band_keeps_what_the_classifier_assigns(real: Path, favouring: tuple, tmp_path: Path) -> None:
    model, favoured = favouring
    synth = _copy_of_train(real, tmp_path / "syn")
    recs = Dataset.load(synth).records
    rep = filter_synthetic(real, synth, model, tmp_path / "kept", FilterConfig(band=(0.5, 0.99), probe_max=1.0),
                           progress=False)
    n_fav = sum(r.label == favoured for r in recs)
    assert 0 < n_fav < len(recs) and rep.images == len(recs) and rep.kept == n_fav
    kept = Dataset.load(tmp_path / "kept")
    assert {r.label for r in kept.records} == {favoured} and len(kept) == n_fav
    others = (1 - P_FAVOURED) / (len(Dataset.load(real).classes.classes) - 1)
    assert len(rep.dropped) == len(recs) - n_fav
    for d in rep.dropped:
        assert d.reasons == ["off_class"] and d.predicted == favoured and d.p_synthetic is None
        assert d.p_class == pytest.approx(others, abs=1e-4)
    assert rep.per_class[favoured].p_class_median == pytest.approx(P_FAVOURED, abs=1e-4)
    assert rep.per_class[favoured].reasons == {"off_class": 0, "too_easy": 0, "told_apart": 0}
    assert not rep.not_probed  # the probe was off, not failing
    # an upper bound below the favoured class's probability: those are too easy, nothing is left
    with pytest.raises(ScoreError, match=r"keeps none of its \d+ images \(off_class \d+, too_easy \d+"):
        filter_synthetic(real, synth, model, tmp_path / "none", FilterConfig(band=(0.5, 0.75), probe_max=1.0),
                         progress=False)
    assert not (tmp_path / "none").exists()


def test_probe_drops_noise_and_keeps_copies(real: Path, model_dir: Path, tmp_path: Path) -> None:
    synth = _noise_set(real, tmp_path / "syn")
    out = tmp_path / "kept"
    rep = filter_synthetic(real, synth, model_dir, out, FilterConfig(band=(0.0, 1.0), probe_max=0.9),
                           progress=False)
    probed = {c for c, r in rep.per_class.items() if r.probed}
    train = Dataset.load(real).counts(Dataset.load(real).split("train"))
    assert probed == {c for c, n in train.items() if n >= 2} and probed
    for c in set(train) - probed:  # a class with one real image is not probed, and the report says why
        if train[c]:
            assert "needs 2 of each" in rep.not_probed[c]
    dropped = {d.id: d for d in rep.dropped}
    noise_probed = [r.id for r in Dataset.load(synth).records if r.label in probed]
    # random-weight features and a few dozen real images per class: most noise is told apart, not all
    assert set(dropped) <= set(noise_probed) and len(dropped) >= 0.8 * len(noise_probed)
    assert all(d.reasons == ["told_apart"] and d.p_synthetic >= 0.9 for d in dropped.values())
    kept = Dataset.load(out)
    assert len(kept) == rep.kept == rep.images - len(rep.dropped) > 0
    for r in kept.records:  # absolute paths to the generator's files: the set trains from anywhere
        assert Path(r.image).is_absolute() and Path(r.image).is_file()
    assert len(synthetic_records(Dataset.load(real), kept)) == len(kept)
    on_disk = json.loads((out / FILTER_REPORT).read_text())
    assert on_disk["kept"] == rep.kept and len(on_disk["dropped"]) == len(rep.dropped)
    assert on_disk["config"]["probe_max"] == 0.9
    # the model trained on the filtered set names the filter and its figures
    prov = _provenance(Dataset.load(real), TrainConfig(synthetic=str(out), synthetic_extra=0.5))
    f = prov["synthetic"]["filter"]
    assert f["kept_share"] == pytest.approx(rep.kept / rep.images) and f["probe_max"] == 0.9
    assert f"told_apart {len(dropped)}" in f["dropped"] and "Filtered from" in _synthetic_line(prov["synthetic"])
    with pytest.raises(ScoreError, match="exists and is not empty"):
        filter_synthetic(real, synth, model_dir, out, progress=False)
    # copies of the real images look real: the probe keeps every one
    copies = filter_synthetic(real, _copy_of_train(real, tmp_path / "copies"), model_dir, tmp_path / "kept-copies",
                              FilterConfig(band=(0.0, 1.0), probe_max=0.9), progress=False)
    assert copies.kept == copies.images and not copies.dropped


def test_filter_command_and_errors(real: Path, model_dir: Path, favouring: tuple, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth_filter)
    synth = _copy_of_train(real, tmp_path / "syn")
    args = ["--data", str(real), "--synthetic", str(synth), "--model", str(model_dir)]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a"), "--band", "0", "1", "--probe-max", "1",
                                   "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.strip().splitlines()[-1])
    assert rep["kept"] == rep["images"] == len(Dataset.load(synth)) and rep["config"]["band"] == [0.0, 1.0]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--band", "0.9", "0.1"])
    assert res.exit_code != 0 and "band must be 0 <= lo <= hi <= 1, got [0.9, 0.1]" in str(res.exception)
    res = CliRunner().invoke(app, ["--data", str(real), "--synthetic", str(synth), "--model", str(favouring[0]),
                                   "--out", str(tmp_path / "c"), "--probe-max", "1"])
    assert res.exit_code == 0 and "off class" in res.output
