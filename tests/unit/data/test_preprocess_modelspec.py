"""The shared preprocessing definition and model.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.data.format import DatasetError
from lineguard.data.modelspec import ModelSpec
from lineguard.data.preprocess import Preprocess


def test_gray_pipeline_values() -> None:
    pre = Preprocess(size=(16, 24), channels=1, mean=[0.5], std=[0.25])
    img = np.full((32, 48), 255, np.uint8)
    x = pre(img)
    assert x.shape == (1, 16, 24) and x.dtype == np.float32
    assert np.allclose(x, (1.0 - 0.5) / 0.25)


def test_channel_conversion_and_resize() -> None:
    rgb = Preprocess(size=(16, 16), channels=3, mean=[0.5] * 3, std=[0.5] * 3)
    gray_in = (np.arange(1024) % 256).astype(np.uint8).reshape(32, 32)
    x = rgb(gray_in)
    assert x.shape == (3, 16, 16) and np.array_equal(x[0], x[2])
    gray = Preprocess(size=(16, 16))
    color_in = np.zeros((5, 7, 3), np.uint8)
    color_in[..., 0] = 255
    out = gray.resize(color_in)
    assert out.shape == (16, 16) and 70 <= out.mean() <= 80  # red -> gray 0.299 * 255


@pytest.mark.parametrize("kw", [{"channels": 3}, {"std": [0.0]}, {"size": (8, 8)}, {"nope": 1}])
def test_bad_preprocess(kw: dict) -> None:
    with pytest.raises(ValueError):
        Preprocess(**kw)


def test_modelspec_roundtrip(tmp_path: Path) -> None:
    spec = ModelSpec(arch={"name": "cnn_lite0", "num_classes": 2}, classes=["scratch", "ok"], ok_class="ok",
                     preprocess=Preprocess(), threshold=0.3)
    spec.save(tmp_path)
    back = ModelSpec.load(tmp_path)
    assert back == spec and back.ok_index == 1
    path = tmp_path / "model.yaml"
    path.write_text(path.read_text().replace("ok_class: ok", "ok_class: good"))
    with pytest.raises(DatasetError, match="ok_class 'good'"):
        ModelSpec.load(tmp_path)
    with pytest.raises(DatasetError, match="not a lineguard model directory"):
        ModelSpec.load(tmp_path / "missing")
