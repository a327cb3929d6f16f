"""The runner interface (frames check, batch splitting, padding) and the export-format table, torch-free."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest

from lineguard.data.modelspec import ModelSpec
from lineguard.data.preprocess import Preprocess
from lineguard.edge.formats import FORMATS, ExportError, export_format
from lineguard.edge.runners import BACKENDS, RunnerError, resolve_model_file
from lineguard.edge.runners.base import Runner


class MeanRunner(Runner):
    """probs from each frame's mean pixel; records the batch sizes it was called with."""

    backend = "fake"

    def __init__(self, batch_range=(1, 4), channels: int = 1) -> None:
        self.spec = ModelSpec(arch={"name": "x"}, classes=["ng", "ok"], ok_class="ok",
                              preprocess=Preprocess(size=(16, 24), channels=channels, mean=[0.5] * channels,
                                                    std=[0.5] * channels))
        self.batch_range = batch_range
        self.calls: List[int] = []

    def _infer(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        assert self.batch_range[0] <= len(frames) <= self.batch_range[1]
        self.calls.append(len(frames))
        m = frames.reshape(len(frames), -1).mean(1) / 255.0
        probs = np.stack([1 - m, m], 1).astype(np.float32)
        return {"probs": probs, "ng_score": 1 - probs[:, 1], "heatmap": np.zeros((len(frames), 1, 1, 2), np.float32)}


def _frames(n: int, channels: int = 1) -> np.ndarray:
    return (np.arange(n, dtype=np.uint8)[:, None, None, None] * 20 + np.zeros((n, 16, 24, channels), np.uint8))


def test_predict_splits_into_allowed_batches_and_keeps_order() -> None:
    r = MeanRunner(batch_range=(1, 4))
    s = r.predict(_frames(10))
    assert r.calls == [4, 4, 2] and len(s) == 10
    assert np.allclose(s.probs[:, 1], np.arange(10) * 20 / 255)
    assert s.labels(r.spec.classes)[:1] == ["ng"]


def test_fixed_batch_pads_the_last_chunk_and_drops_the_padding() -> None:
    r = MeanRunner(batch_range=(4, 4))
    s = r.predict(_frames(6))
    assert r.calls == [4, 4] and s.probs.shape == (6, 2)
    assert np.allclose(s.probs[:, 1], np.arange(6) * 20 / 255)


def test_single_frames_and_gray_2d_are_accepted() -> None:
    r = MeanRunner()
    assert len(r.predict(_frames(1)[0])) == 1  # (H, W, C)
    assert len(r.predict(_frames(1)[0, :, :, 0])) == 1  # gray (H, W)
    rgb = MeanRunner(channels=3)
    with pytest.raises(RunnerError, match="do not fit"):
        rgb.predict(_frames(1)[0, :, :, 0])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 16, 24, 1), np.float32), "uint8"),
    (np.zeros((2, 24, 16, 1), np.uint8), r"\(N, 16, 24, 1\)"),
    (np.zeros((2, 16, 24, 3), np.uint8), "do not fit"),
    ([[0, 1]], "numpy array"),
])
def test_frames_of_wrong_shape_or_dtype_are_clear_errors(bad, match) -> None:
    with pytest.raises(RunnerError, match=match):
        MeanRunner().predict(bad)


def test_prepare_resizes_any_image_to_one_frame() -> None:
    r = MeanRunner()
    frame = r.prepare(np.full((480, 640, 3), 200, np.uint8))
    assert frame.shape == (16, 24, 1) and frame.dtype == np.uint8 and abs(int(frame[0, 0, 0]) - 200) <= 1
    with pytest.raises(RunnerError, match="uint8"):
        r.prepare(np.zeros((10, 10), np.float64))


def test_format_table_checks_options() -> None:
    assert [f.name for f in FORMATS if f.exported] == ["onnx", "onnx-int8", "engine"]
    assert {f.backend for f in FORMATS} <= set(BACKENDS)
    export_format("engine").check_args({"half": True, "workspace": 2.0, "device": "dla:0"})
    with pytest.raises(ExportError, match="--half do"):
        export_format("onnx").check_args({"half": True, "opset": 17})
    with pytest.raises(ExportError, match="did you mean 'onnx-int8'"):
        export_format("onnx_int8")


def test_resolve_model_file(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert resolve_model_file(tmp_path, "ort") == tmp_path / "model.onnx"
    with pytest.raises(RunnerError, match="--format onnx-int8"):
        resolve_model_file(tmp_path, "ort-int8")
    with pytest.raises(RunnerError, match="engines: no engine"):
        resolve_model_file(tmp_path, "trt")
    with pytest.raises(RunnerError, match="no such model"):
        resolve_model_file(tmp_path / "nope", "ort")
    with pytest.raises(RunnerError, match="unknown backend"):
        resolve_model_file(tmp_path, "openvino")
