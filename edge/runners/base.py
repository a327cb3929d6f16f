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
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from pydantic import ValidationError

from lineguard import LineguardError
from lineguard.config import describe
from lineguard.data.modelspec import SPEC_FILE, ModelSpec
from lineguard.files import sha256_file

__all__ = ["INPUT", "OUTPUTS", "SPEC_KEY", "WEIGHTS_KEY", "Runner", "RunnerError", "Scores", "check_weights",
           "model_dir_of", "one_line", "optional_import", "spec_from_json", "spec_of_model", "spec_of_onnx",
           "weights_file"]

INPUT = "frames"
OUTPUTS = ("probs", "ng_score", "heatmap")
SPEC_KEY = "lineguard.model"  # ONNX metadata / engine side-car key holding model.yaml as JSON
# ONNX metadata / engine side-car key: sha256 of the model directory's weights file the model was exported from
WEIGHTS_KEY = "lineguard.weights_sha256"


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


def one_line(e: BaseException) -> str:
    """An exception as one short line: pydantic's errors as 'field: message; ...', others' first line."""
    if isinstance(e, ValidationError):
        return describe(e, quote=False, limit=3)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def spec_from_json(text: Any, where: str) -> ModelSpec:
    """The :class:`ModelSpec` stored with an exported model (JSON text, or the parsed object); ``where``
    names the file in errors."""
    try:
        return ModelSpec.model_validate(json.loads(text) if isinstance(text, (str, bytes)) else text)
    except (ValueError, TypeError, RecursionError) as e:  # pydantic's ValidationError is a ValueError
        raise RunnerError(f"{where}: the embedded model description is unusable: {one_line(e)}") from None


def spec_of_onnx(path: Union[str, Path]) -> ModelSpec:
    """The :class:`ModelSpec` in a lineguard ONNX file's metadata (reads the graph, not the weights' data)."""
    onnx: Any = optional_import("onnx", "pip install onnx", "reading an ONNX file")
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise RunnerError(f"{path}: no model file (missing or empty)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common type
        raise RunnerError(f"{path}: not a readable ONNX file: {one_line(e)}") from None
    return spec_of_model(model, str(path))


def spec_of_model(model: Any, where: str) -> ModelSpec:
    """The :class:`ModelSpec` in a loaded ``onnx.ModelProto``'s metadata; ``where`` names it in errors."""
    meta = {p.key: p.value for p in model.metadata_props}
    if SPEC_KEY not in meta:
        raise RunnerError(f"{where}: not exported by lineguard (no '{SPEC_KEY}' metadata, the model description); "
                          "export it with `lineguard export --format onnx`")
    return spec_from_json(meta[SPEC_KEY], where)


def model_dir_of(model_file: Union[str, Path]) -> Path:
    """The model directory an exported file belongs to: its folder (``engines/<key>.engine``: the one above)."""
    folder = Path(model_file).parent
    return folder.parent if Path(model_file).suffix == ".engine" and folder.name == "engines" else folder


def weights_file(model_dir: Union[str, Path], spec: ModelSpec) -> Optional[Path]:
    """The weights file of ``model_dir`` (named by its model.yaml, else by ``spec``), None where it has none
    (a line computer gets the exported files only)."""
    model_dir = Path(model_dir)
    name = spec.weights
    if (model_dir / SPEC_FILE).is_file():
        with suppress(LineguardError):  # an unreadable model.yaml: the description exported with the model names it
            name = ModelSpec.load(model_dir).weights
    path = model_dir / name
    return path if path.is_file() else None


def check_weights(model_file: Union[str, Path], recorded: Optional[str], spec: ModelSpec, fmt: str,
                  model_dir: Optional[Union[str, Path]] = None) -> None:
    """Refuse an exported ``model_file`` whose model directory (default :func:`model_dir_of`) holds a weights
    file whose sha256 is not ``recorded`` (the one the export wrote) or when the export recorded none.
    ``fmt`` names the ``lineguard export --format`` that remakes it."""
    folder = Path(model_dir) if model_dir is not None else model_dir_of(model_file)
    weights = weights_file(folder, spec)
    if weights is None:
        return
    redo = f"re-export it: `lineguard export --model {folder} --format {fmt}`"
    if not isinstance(recorded, str) or not recorded:
        raise RunnerError(f"{model_file}: exported before weights hashes were recorded, so it cannot be matched "
                          f"to {weights}; {redo}")
    try:
        actual = sha256_file(weights)
    except OSError as e:
        raise RunnerError(f"{weights}: cannot read the weights file ({e.strerror or e})") from None
    if actual != recorded:
        raise RunnerError(f"{model_file}: stale, exported from other weights than {weights} now holds (sha256 "
                          f"{recorded[:12]}... recorded, {actual[:12]}... now); {redo}")


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
            self._check_outputs(out, len(chunk))
            parts.append({k: v[:n] for k, v in out.items()})
        return Scores(*(np.concatenate([p[k] for p in parts]) for k in OUTPUTS))

    def _check_outputs(self, out: Dict[str, np.ndarray], n: int) -> None:
        """The model's outputs for ``n`` frames have the shapes the interface promises (a foreign graph with
        lineguard's names and metadata is refused, not trusted)."""
        k = len(self.spec.classes)
        probs, ng, heat = (np.asarray(out.get(name)) for name in OUTPUTS)
        if probs.shape != (n, k) or ng.shape != (n,) or heat.ndim != 4 or heat.shape[:2] != (n, 1):
            raise RunnerError(f"{self.backend}: the model returned probs {probs.shape}, ng_score {ng.shape}, heatmap "
                              f"{heat.shape} for {n} frames; expected ({n}, {k}), ({n},), ({n}, 1, h, w)")

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
