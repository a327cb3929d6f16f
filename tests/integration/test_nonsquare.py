"""A non-square model end to end: trained at 96 x 224 (``--img-size 96x224 --fit pad``: the two-stream network's
token grid 6 x 14), described in model.yaml, exported to ONNX with Torch <-> ORT parity, run by ONNX Runtime (frames
of that shape taken, others refused), and deciding wide parts on the line daemon with boxes inside the image."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.data.format import Dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(split_sim, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = split_sim(48, 96, 5, 0.25, 0.25)
    out = tmp_path_factory.mktemp("nonsquare") / "model"
    run = subprocess.run([sys.executable, "-m", "lineguard", "train", "--data", str(data), "--out", str(out),
                          "--weights", "none", "--img-size", "96x224", "--fit", "pad", "--epochs", "1", "--batch", "8",
                          "--json", "-q"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return out


def test_the_model_description_holds_the_shape_and_the_fit(model: Path) -> None:
    from lineguard.data.modelspec import ModelSpec

    spec = ModelSpec.load(model)
    assert spec.preprocess.size == (96, 224) and spec.preprocess.fit == "pad"
    assert spec.arch["img_size"] == [96, 224] and spec.arch["name"] == "two_stream_lite0"


def test_onnx_parity_and_the_runner_takes_that_shape_only(model: Path, split_sim, tmp_path: Path) -> None:
    from lineguard.edge.runners import load_runner
    from lineguard.edge.runners.base import RunnerError
    from lineguard.edge.torch2onnx import torch2onnx

    data = split_sim(48, 96, 5, 0.25, 0.25)
    onnx = torch2onnx(model, parity_data=data)
    parity = json.loads(Path(f"{onnx}.parity.json").read_text())
    assert parity["passed"] and parity["argmax_agreement"] == 1.0
    with load_runner(onnx, "ort", threads=1) as runner:
        assert runner.input_shape == (96, 224, 1)
        frame = runner.prepare(np.full((300, 120), 90, np.uint8))  # a tall part: padded left and right
        assert frame.shape == (96, 224, 1) and frame[0, 0, 0] == runner.spec.preprocess.pad_value[0]
        assert runner.predict(frame).probs.shape == (1, len(runner.spec.classes))
        with pytest.raises(RunnerError, match="do not fit"):
            runner.predict(np.zeros((1, 224, 96, 1), np.uint8))  # the transposed shape
        with pytest.raises(RunnerError, match="do not fit"):
            runner.predict(np.zeros((1, 96, 96, 1), np.uint8))
    ev = [subprocess.run([sys.executable, "-m", "lineguard", "eval", "--model", str(model), "--data", str(data),
                          "--backend", b, "--json", "-q"], capture_output=True, text=True, timeout=300)
          for b in ("torch", "ort")]
    assert all(e.returncode == 0 for e in ev), [e.stderr for e in ev]
    a, b = (json.loads(e.stdout.strip().splitlines()[-1]) for e in ev)
    assert a["confusion"] == b["confusion"] and a["images"] == len(Dataset.load(data).split("test"))


def test_the_daemon_decides_wide_parts_with_boxes_inside_the_image(model: Path, split_sim, tmp_path: Path) -> None:
    from lineguard.edge.torch2onnx import torch2onnx
    from lineguard.inspect.config import LineConfig
    from lineguard.inspect.daemon import Line

    if not (model / "model.onnx").is_file():
        torch2onnx(model)
    ds = Dataset.load(split_sim(48, 96, 5, 0.25, 0.25))
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, r in enumerate(ds.records[:12]):  # wide parts: 96 x 240, the simulated surface side by side
        img = cv2.imread(str(ds.path(r.image)), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.hstack([img, img[:, ::-1], img[:, :48]]))
    cfg = LineConfig.model_validate({
        "source": {"kind": "folder", "path": str(frames)},
        "model": {"path": str(model), "threads": 1, "backend": "ort"},
        "db": str(tmp_path / "r.db"), "metrics": {"port": 0}, "outputs": [], "deadline": {"ms": 5000},
        "policy": {"box_threshold": 0.0}})  # every cell hot: a box over the whole part
    Line(cfg).run(install_signals=False)
    with sqlite3.connect(cfg.db) as c:
        rows = c.execute("SELECT decision, reason, boxes FROM parts ORDER BY source_seq").fetchall()
    assert len(rows) == 12 and all(reason is None for _, reason, _ in rows)
    for _, _, boxes in rows:
        found = json.loads(boxes)
        assert found and all(0 <= b["x0"] < b["x1"] <= 240 and 0 <= b["y0"] < b["y1"] <= 96 for b in found)
        assert max(b["x1"] - b["x0"] for b in found) == 240  # the map, padding cut off, spans the part exactly
