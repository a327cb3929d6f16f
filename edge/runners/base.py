"""The one runner interface: uint8 frames in, scores out. Torch-free, Python 3.8 (the line computer).

Every exported model has the same I/O, whatever the backend (see ``lineguard.edge.formats``)::

    frames    uint8   (N, H, W, C)   pixels at the model's input size (``Preprocess.resize``), C = 1 or 3
    probs     float32 (N, K)         class probabilities (softmax inside the graph)
    ng_score  float32 (N,)           1 - p(OK class); NG when >= the model's threshold
    heatmap   float32 (N, 1, h, w)   defect probability per cell (stride 8)

Normalisation is inside the graph; the runner's caller only resizes (:meth:`Runner.prepare`).

    with load_runner("model_dir/model.onnx") as r:
        scores = r.predict(r.prepare(image))      # image: any size, gray or RGB
        scores.ng_score[0] >= r.spec.threshold
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from lineguard import LineguardError
from lineguard.data.modelspec import ModelSpec

__all__ = ["INPUT", "OUTPUTS", "SPEC_KEY", "Runner", "RunnerError", "Scores", "optional_import", "spec_from_json",
           "spec_of_model", "spec_of_onnx"]

INPUT = "frames"
OUTPUTS = ("probs", "ng_score", "heatmap")
SPEC_KEY = "lineguard.model"  # ONNX metadata / engine side-car key holding model.yaml as JSON


class RunnerError(LineguardError):
    """A model file a runner cannot use, or frames that do not fit the model."""


@dataclass
class Scores:
    """Outputs for a batch of N frames."""

    probs: np.ndarray  # (N, K)
    ng_score: np.ndarray  # (N,)
    heatmap: np.ndarray  # (N, 1, h, w)

    def __len__(self) -> int:
        return len(self.ng_score)

    def labels(self, classes: Sequence[str]) -> List[str]:
        return [classes[i] for i in self.probs.argmax(1)]


def spec_from_json(text: str, where: str) -> ModelSpec:
    """The :class:`ModelSpec` stored with an exported model; ``where`` names the file in errors."""
    try:
        return ModelSpec.model_validate(json.loads(text))
    except (ValueError, TypeError) as e:
        raise RunnerError(f"{where}: the embedded model description is unusable: {e}") from None


def spec_of_onnx(path: Union[str, Path]) -> ModelSpec:
    """The :class:`ModelSpec` in a lineguard ONNX file's metadata (reads the graph, not the weights' data)."""
    onnx: Any = optional_import("onnx", "pip install onnx", "reading an ONNX file")
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common type
        raise RunnerError(f"{path}: not a readable ONNX file: {e}") from None
    return spec_of_model(model, str(path))


def spec_of_model(model: Any, where: str) -> ModelSpec:
    """The :class:`ModelSpec` in a loaded ``onnx.ModelProto``'s metadata; ``where`` names it in errors."""
    meta = {p.key: p.value for p in model.metadata_props}
    if SPEC_KEY not in meta:
        raise RunnerError(f"{where}: not exported by lineguard (no '{SPEC_KEY}' metadata, the model description); "
                          "export it with `lineguard export --format onnx`")
    return spec_from_json(meta[SPEC_KEY], where)


class Runner(ABC):
    """Base of every backend: checks frames, splits them to the model's batch sizes, returns :class:`Scores`.

    Subclasses set ``spec``, ``backend`` and ``batch_range`` ((min, max) frames per call the model
    takes; (1, 1) for a fixed batch-1 model) and implement :meth:`_infer`."""

    backend: str = "?"
    spec: ModelSpec
    batch_range = (1, 1)

    @property
    def input_shape(self) -> tuple:
        """(H, W, C) of one frame."""
        h, w = self.spec.preprocess.size
        return (h, w, self.spec.preprocess.channels)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Any uint8 gray/RGB image -> one frame (H, W, C) at the input size (the shared ``Preprocess.resize``)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise RunnerError(f"{self.backend}: images must be uint8 numpy arrays, got "
                              f"{getattr(image, 'dtype', type(image).__name__)}")
        px = self.spec.preprocess.resize(image)
        return px[..., None] if px.ndim == 2 else px

    def check_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8, C-contiguous; one frame (H, W, C) or a gray (H, W) becomes N = 1."""
        if not isinstance(frames, np.ndarray):
            raise RunnerError(f"{self.backend}: frames must be a numpy array, got {type(frames).__name__}")
        if frames.dtype != np.uint8:
            raise RunnerError(f"{self.backend}: frames must be uint8 pixels, got {frames.dtype} "
                              "(normalisation is inside the model)")
        h, w, c = self.input_shape
        if frames.ndim == 2 and c == 1:
            frames = frames[None, :, :, None]
        elif frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[1:] != (h, w, c) or frames.shape[0] < 1:
            raise RunnerError(f"{self.backend}: frames of shape {tuple(frames.shape)} do not fit the model's "
                              f"(N, {h}, {w}, {c}); resize with Runner.prepare")
        return np.ascontiguousarray(frames)

    def predict(self, frames: np.ndarray) -> Scores:
        """Scores for uint8 frames (see :meth:`check_frames`), in chunks the model accepts."""
        x = self.check_frames(frames)
        lo, hi = self.batch_range
        parts: List[Dict[str, np.ndarray]] = []
        for start in range(0, len(x), hi):
            chunk = x[start:start + hi]
            n = len(chunk)
            if n < lo:  # pad to the smallest batch the model takes, drop the padding after
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - n, axis=0)])
            out = self._infer(chunk)
            parts.append({k: v[:n] for k, v in out.items()})
        return Scores(*(np.concatenate([p[k] for p in parts]) for k in OUTPUTS))

    @abstractmethod
    def _infer(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        """One call of the model: ``frames`` (n, H, W, C) with ``batch_range[0] <= n <= batch_range[1]``."""

    def close(self) -> None:  # noqa: B027 (a no-op unless the backend holds resources)
        """Free backend resources (idempotent)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> Dict[str, object]:
        return {"backend": self.backend, "batch_range": list(self.batch_range), "input": list(self.input_shape)}


def optional_import(module: str, extra: str, what: str) -> object:
    """Import an optional dependency or raise :class:`RunnerError` saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RunnerError(f"{what} needs the Python package '{module}' ({e}); install it: {extra}") from None
