"""``edge.evaluate.evaluate`` through the torch and ONNX Runtime runners on a small simulated set: its figures
equal scikit-learn's from the same runner probabilities, and the INT8 gate's FP32 figures equal eval's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss

from lineguard.data.format import Dataset, DatasetError
from lineguard.data.imaging import read_image, write_png
from lineguard.data.modelspec import ModelSpec
from lineguard.edge.evaluate import EvalReport, evaluate
from lineguard.edge.quantize import onnx2int8
from lineguard.edge.runners import load_runner
from lineguard.edge.splits import load_frames
from lineguard.edge.torch2onnx import torch2onnx
from lineguard.metrics import pick_threshold

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIZE = 32


@pytest.fixture(scope="module")
def sim(split_sim) -> Path:
    return split_sim(n=40, size=64, seed=2, val=0.25, test=0.3)


@pytest.fixture(scope="module")
def model_dir(sim: Path, tmp_path_factory: pytest.TempPathFactory, random_model_dir) -> Path:
    """A random-weight model whose threshold is the median test NG score (so both calls occur), exported."""
    out = random_model_dir(tmp_path_factory.mktemp("m") / "model", sim, "cnn_lite0", SIZE, bn_stats=True)
    spec = ModelSpec.load(out)
    with load_runner(out, "torch") as runner:
        spec.threshold = float(np.median(runner.predict(load_frames(sim, spec, split="test").frames).ng_score))
    spec.save(out)
    torch2onnx(out)
    return out


def _sklearn_figures(report: EvalReport, model_dir: Path, sim: Path, backend: str) -> bool:
    """``report``'s figures against scikit-learn's on the probabilities the same runner gives; whether some
    images were called NG and some not."""
    with load_runner(model_dir, backend) as runner:
        spec = runner.spec
        test = load_frames(sim, spec, split="test")
        probs = runner.predict(test.frames).probs
    labels, idx = test.labels, list(range(len(spec.classes)))
    pred = probs.argmax(1)
    is_ng, called = labels != spec.ok_index, 1.0 - probs[:, spec.ok_index] >= report.threshold
    assert report.images == len(labels) and report.backend == backend
    assert report.accuracy == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert report.macro_f1 == pytest.approx(f1_score(labels, pred, labels=idx, average="macro", zero_division=0),
                                            abs=1e-12)
    assert report.confusion == confusion_matrix(labels, pred, labels=idx).tolist()
    assert report.escape_rate == pytest.approx((is_ng & ~called).sum() / is_ng.sum(), abs=1e-12)
    assert report.false_reject_rate == pytest.approx((~is_ng & called).sum() / (~is_ng).sum(), abs=1e-12)
    p = probs.astype(np.float64)
    assert report.loss == pytest.approx(log_loss(labels, p / p.sum(1, keepdims=True), labels=idx), rel=1e-4)
    return bool(called.any() and not called.all())


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_eval_figures_equal_sklearn_on_the_runner_probabilities(model_dir: Path, sim: Path, backend: str) -> None:
    report = evaluate(model_dir, sim, backend=backend, progress=False, threads=1)
    assert _sklearn_figures(report, model_dir, sim, backend)  # the median threshold: both calls occur
    assert report.threshold == ModelSpec.load(model_dir).threshold
    assert report.target_escape is None and report.split == "test"
    assert report.heatmap_iou is not None and 0.0 <= report.heatmap_iou <= 1.0  # the set's defects have masks
    assert 0 < report.latency.p50_ms <= report.latency.p90_ms
    assert json.loads(report.model_dump_json())["per_class"].keys() == set(load_runner(model_dir, "ort").spec.classes)


def test_target_escape_picks_the_threshold_on_val(model_dir: Path, sim: Path) -> None:
    report = evaluate(model_dir, sim, backend="ort", target_escape=0.3, progress=False, threads=1)
    with load_runner(model_dir, "ort", threads=1) as runner:
        val = load_frames(sim, runner.spec, split="val")
        ng = runner.predict(val.frames).ng_score
    assert report.threshold == pick_threshold(ng, val.labels != runner.spec.ok_index, 0.3)
    assert report.target_escape == 0.3
    _sklearn_figures(report, model_dir, sim, "ort")


def test_int8_gate_reports_evals_fp32_figures(model_dir: Path, sim: Path, tmp_path: Path) -> None:
    out = onnx2int8(model_dir / "model.onnx", sim, out=tmp_path / "model-int8.onnx", calib_images=8,
                    max_drop=None, threads=1)
    gate = json.loads(Path(str(out) + ".report.json").read_text())
    report = evaluate(model_dir, sim, backend="ort", progress=False, threads=1)
    assert gate["test"]["split"] == report.split and gate["test_images"] == report.images
    assert gate["accuracy"]["fp32"] == report.accuracy and gate["macro_f1"]["fp32"] == report.macro_f1
    int8 = evaluate(out, sim, backend="ort-int8", progress=False, threads=1)
    assert gate["accuracy"]["int8"] == int8.accuracy and gate["macro_f1"]["int8"] == int8.macro_f1


def test_changed_image_and_other_classes_are_refused(model_dir: Path, sim: Path, tmp_path: Path) -> None:
    data = tmp_path / "ds"
    shutil.copytree(sim, data)
    victim = next(r for r in Dataset.load(data).records if r.split == "test")
    img, _ = read_image(data / victim.image)
    write_png(data / victim.image, np.ascontiguousarray(255 - img))
    with pytest.raises(DatasetError, match=r"changed since the manifest was written") as e:
        evaluate(model_dir, data, backend="ort", progress=False)
    assert Path(victim.image).name in str(e.value)
    spec = yaml.safe_load((data / "classes.yaml").read_text())
    spec["classes"] = spec["classes"][::-1]  # the same names in another order: other class indices
    (data / "classes.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match="differ from the model's"):
        evaluate(model_dir, data, backend="ort", progress=False)
