"""Runners with one interface (``predict(frames) -> Scores``): ONNX Runtime, TensorRT, PyTorch reference.

    runner = load_runner("runs/model", backend="ort")        # a model directory or a model file
    runner = load_runner("runs/model/model-int8.onnx")       # backend from the file
    runner = load_runner("runs/model", "trt", key="int8-b1-cuda0")   # one of several engines

Which file a backend loads from a model directory is the format table's (``lineguard.edge.formats``).
A model directory may hold several TensorRT engines (``engines/<key>.engine``, listed by
``lineguard.edge.tensorrt.list_engines``): with one, it is loaded; with more, ``key`` picks one.

A model file whose model directory (its folder; ``engines/``' parent for an engine) holds the weights file
must record that file's sha256 (``lineguard.weights_sha256``, written at export): a stale export (the
weights changed since, e.g. ``train --resume``) is refused, never run. Without a weights file (the line
computer gets the exported files only) there is nothing to compare and the file loads.

Torch-free and Python 3.8 (the line computer); ``torch`` is imported only for ``backend="torch"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from lineguard.devices import parse_device

from ..formats import BACKENDS, FORMATS, Format, backend_format, file_format
from .base import INPUT, OUTPUTS, WEIGHTS_KEY, Runner, RunnerError, Scores, check_weights

__all__ = ["BACKENDS", "INPUT", "OUTPUTS", "Runner", "RunnerError", "Scores", "load_runner", "resolve_model_file"]


def _format(backend: str) -> Format:
    fmt = backend_format(backend)
    if fmt is None:
        raise RunnerError(f"unknown backend '{backend}' (backends: {', '.join(BACKENDS)})")
    return fmt


def resolve_model_file(path: Union[str, Path], backend: str, key: Optional[str] = None) -> Path:
    """The file ``backend`` runs: ``path`` itself, or the backend's file in the model directory ``path``
    (``key``: which of its engines)."""
    path = Path(path)
    fmt = _format(backend)
    if not path.exists():
        raise RunnerError(f"{path}: no such model file or directory")
    if key is not None and not (path.is_dir() and fmt.keyed):
        what = f"backend {backend}" if path.is_dir() else "a model file"
        raise RunnerError(f"{path}: key '{key}' picks one of a model directory's engines; it does not apply to {what}")
    if not path.is_dir() or not fmt.exported:
        return path
    if fmt.keyed:
        return _pick(path, fmt, key)
    f = fmt.path(path)
    if not f.is_file():
        raise RunnerError(f"{path}: no {fmt.file}; run `lineguard export --model {path} --format {fmt.name}`")
    return f


def _pick(model_dir: Path, fmt: Format, key: Optional[str]) -> Path:
    """The engine ``key`` of ``model_dir``, or its only engine when ``key`` is None."""
    found: Dict[str, Path] = fmt.keys(model_dir)
    where = fmt.path(model_dir, "*").parent
    if key is None and len(found) == 1:
        return next(iter(found.values()))
    if key in found:
        return found[key]
    if not found:
        raise RunnerError(f"{where}: no engine; run `lineguard export --model {model_dir} --format {fmt.name}`")
    keys = ", ".join(found)
    if key is None:
        raise RunnerError(f"{where}: {len(found)} engines, pick one by key (keys: {keys})")
    raise RunnerError(f"{where}: no engine '{key}' (keys: {keys})")


def _auto(path: Path, key: Optional[str]) -> Format:
    """The format ``backend="auto"`` loads: a file's by its name; of a directory, its engine ``key`` if one is
    given, else model.onnx."""
    if not path.is_dir():
        return file_format(path)
    return next(f for f in FORMATS if f.keyed == (key is not None))


def load_runner(path: Union[str, Path], backend: str = "auto", key: Optional[str] = None, **options: Any) -> Runner:
    """A runner for ``path`` (a model directory or file). ``backend`` "auto": from the file's name (a
    directory: ort, or trt with a ``key``). ``key``: which engine of a directory with several.
    ``options`` go to the runner's constructor (ONNX Runtime: device, threads; TensorRT: device,
    cuda_graph; torch: device, half, threads), those set to None left at the runner's default; ``device`` is
    checked against the format's devices first (``devices.parse_device``).
    A stale export (see the module docstring) is a :class:`RunnerError` saying to re-export."""
    path = Path(path)
    fmt = _auto(path, key) if backend == "auto" else _format(backend)
    f = resolve_model_file(path, fmt.backend, key)
    options = {k: v for k, v in options.items() if v is not None}
    if "device" in options:
        options["device"] = str(parse_device(options["device"], fmt.devices, RunnerError))
    if fmt.family == "onnxruntime":
        from .ort import OrtRunner

        runner = OrtRunner(f, **options)
        try:
            check_weights(f, runner.metadata.get(WEIGHTS_KEY), runner.spec, _format(runner.backend).name)
        except BaseException:
            runner.close()
            raise
        return runner
    if fmt.family == "tensorrt":
        from ..tensorrt import read_sidecar
        from .trt import TrtRunner

        _, side = read_sidecar(f)  # before TensorRT is imported or the GPU opened
        check_weights(f, side.weights_sha256, side.spec, fmt.name)
        return TrtRunner(f, **options)
    try:
        from lineguard.edge.torch_runner import TorchRunner  # needs torch: development machines only
    except ImportError as e:
        raise RunnerError(f"{path}: backend torch needs torch ({e}); on the line use ort, ort-int8 or trt") from None

    return TorchRunner(f, **options)
