"""A defect-type data set (every image defective, no OK class, as steel-surface sets are): imported with
``--ok-class none``, trained, evaluated (no OK/NG numbers), exported to ONNX with parity, run by ONNX Runtime; the
line daemon refuses it as an OK/NG decider with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lineguard.data.format import Dataset
from lineguard.data.importers import import_dataset
from lineguard.data.split import split_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def defect_set(split_sim, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's defective parts only, as class folders (an image-folder layout), imported as a
    defect-type set and split."""
    sim = Dataset.load(split_sim(60, 64, 3, 0.2, 0.2))
    src = tmp_path_factory.mktemp("folders")
    for r in sim.records:
        if r.label != sim.classes.ok_class:
            (src / r.label).mkdir(exist_ok=True)
            shutil.copyfile(sim.path(r.image), src / r.label / f"{r.id}.png")
    out = tmp_path_factory.mktemp("defects") / "ds"
    with pytest.raises(Exception, match="--ok-class none for a defect-type set"):
        import_dataset(src, out, progress=False)  # no folder says OK: the error names the way through
    rep = import_dataset(src, out, ok_class="none", progress=False)
    assert rep.ok_class is None and "ok" not in rep.classes and rep.images == sum(rep.classes.values())
    ds = Dataset.load(out)
    assert ds.classes.ok_class is None and ds.classes.defect_classes == ds.classes.classes
    split_dataset(ds, val=0.25, test=0.25, seed=0)
    return out


def _lg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lineguard", *args], capture_output=True, text=True, timeout=600)


def test_train_eval_export_and_the_daemon_refuses_it(defect_set: Path, tmp_path: Path) -> None:
    from lineguard.edge.torch2onnx import torch2onnx
    from lineguard.inspect.base import InspectError
    from lineguard.inspect.config import ModelConfig, PolicyConfig
    from lineguard.inspect.models import load_live
    from lineguard.training.config import TrainConfig
    from lineguard.training.engine import train

    model = tmp_path / "model"
    summary = train(TrainConfig(arch="cnn_lite0", weights="none", img_size=64, epochs=2, batch_size=8, threads=1),
                    defect_set, model, progress=False)
    for split in ("val", "test"):
        figures = summary[split]
        assert figures["task"] == "defect-type" and 0.0 <= figures["accuracy"] <= 1.0
        assert all(figures[k] is None for k in ("ok_ng_auroc", "threshold", "escape_rate", "false_reject_rate"))
    card = (model / "MODEL_CARD.md").read_text()
    assert "a defect-type model" in card and "OK/NG figures not applicable" in card
    assert _lg("train", "--data", str(defect_set), "--out", str(tmp_path / "m2"), "--weights", "none",
               "--target-escape", "0.01").stderr.count("no escape rate to target") == 1

    onnx = torch2onnx(model, parity_data=defect_set)
    parity = json.loads(Path(f"{onnx}.parity.json").read_text())
    assert parity["passed"] and parity["argmax_agreement"] == 1.0
    for backend in ("torch", "ort"):
        run = _lg("eval", "--model", str(model), "--data", str(defect_set), "--backend", backend, "--json")
        assert run.returncode == 0, run.stderr
        ev = json.loads(run.stdout.strip().splitlines()[-1])
        assert ev["task"] == "defect-type" and ev["images"] == len(Dataset.load(defect_set).split("test"))
        assert (ev["ok_ng_auroc"], ev["threshold"], ev["escape_rate"], ev["false_reject_rate"]) == (None,) * 4
        assert ev["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)  # the same argmax
        human = _lg("eval", "--model", str(model), "--data", str(defect_set), "--backend", backend)
        assert "OK/NG figures not applicable" in " ".join(human.stdout.split())
    with pytest.raises(InspectError) as err:
        load_live(ModelConfig(path=str(model), backend="ort", threads=1), PolicyConfig())
    assert "a defect-type model" in str(err.value) and "cannot decide OK/NG" in str(err.value)
    assert "\n" not in str(err.value)
