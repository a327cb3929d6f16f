"""Runners with one interface (``predict(frames) -> Scores``): ONNX Runtime, TensorRT, PyTorch reference.

    runner = load_runner("runs/model", backend="ort")        # a model directory or a model file
    runner = load_runner("runs/model/model-int8.onnx")       # backend from the file

A model file whose model directory (its folder; ``engines/``' parent for an engine) holds the weights file
must record that file's sha256 (``lineguard.weights_sha256``, written at export): a stale export (the
weights changed since, e.g. ``train --resume``) is refused, never run. Without a weights file (the line
computer gets the exported files only) there is nothing to compare and the file loads.

Torch-free and Python 3.8 (the line computer); ``torch`` is imported only for ``backend="torch"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .base import INPUT, OUTPUTS, WEIGHTS_KEY, Runner, RunnerError, Scores, check_weights

__all__ = ["BACKENDS", "INPUT", "OUTPUTS", "Runner", "RunnerError", "Scores", "load_runner", "resolve_model_file"]

BACKENDS = ("ort", "ort-int8", "trt", "torch")
_FILES = {"ort": "model.onnx", "ort-int8": "model-int8.onnx"}
_EXPORT_FORMAT = {"ort": "onnx", "ort-int8": "onnx-int8", "trt": "engine"}


def resolve_model_file(path: Union[str, Path], backend: str) -> Path:
    """The file ``backend`` runs: ``path`` itself, or the backend's file in the model directory ``path``."""
    path = Path(path)
    if backend not in BACKENDS:
        raise RunnerError(f"unknown backend '{backend}' (backends: {', '.join(BACKENDS)})")
    if not path.exists():
        raise RunnerError(f"{path}: no such model file or directory")
    if not path.is_dir() or backend == "torch":
        return path
    if backend in _FILES:
        f = path / _FILES[backend]
        if not f.is_file():
            fmt = "onnx" if backend == "ort" else "onnx-int8"
            raise RunnerError(f"{path}: no {_FILES[backend]}; run `lineguard export --model {path} --format {fmt}`")
        return f
    engines = sorted((path / "engines").glob("*.engine"))
    if len(engines) != 1:
        found = ", ".join(e.name for e in engines) or "none"
        raise RunnerError(f"{path}/engines: need exactly one engine to pick, found {found}; pass the .engine file")
    return engines[0]


def backend_of(path: Path) -> str:
    if path.is_dir():
        return "ort"
    if path.suffix == ".engine":
        return "trt"
    return "ort-int8" if path.name.endswith("-int8.onnx") else "ort"


def load_runner(path: Union[str, Path], backend: str = "auto", **options: Any) -> Runner:
    """A runner for ``path`` (a model directory or file). ``options`` go to the runner's constructor
    (ONNX Runtime: device, threads, ...; TensorRT: device_id, cuda_graph; torch: device, half).
    A stale export (see the module docstring) is a :class:`RunnerError` saying to re-export."""
    path = Path(path)
    if backend == "auto":
        backend = backend_of(path)
    f = resolve_model_file(path, backend)
    fmt = "onnx-int8" if f.name.endswith("-int8.onnx") else _EXPORT_FORMAT.get(backend, "onnx")
    if backend in ("ort", "ort-int8"):
        from .ort import OrtRunner

        runner = OrtRunner(f, **options)
        try:
            check_weights(f, runner.metadata.get(WEIGHTS_KEY), runner.spec, fmt)
        except BaseException:
            runner.close()
            raise
        return runner
    if backend == "trt":
        from .trt import TrtRunner, read_sidecar

        _, side = read_sidecar(f)  # before TensorRT is imported or the GPU opened
        check_weights(f, side.weights_sha256, side.spec, fmt)
        return TrtRunner(f, **options)
    try:
        from lineguard.edge.torch_runner import TorchRunner  # needs torch: development machines only
    except ImportError as e:
        raise RunnerError(f"{path}: backend torch needs torch ({e}); on the line use ort, ort-int8 or trt") from None

    return TorchRunner(f, **options)
