"""``lineguard export``: one entry point over the format table (``formats.FORMATS``).

    export("runs/model", "onnx", data="data/mt")                 # model.onnx + parity report
    export("runs/model", "onnx-int8", data="data/mt")            # model-int8.onnx + accuracy/speed report
    export("runs/model", "engine", half=True, workspace=2)       # engines/fp16-b1-cuda0.engine (TensorRT)
    export("runs/model", "engine", int8=True, data="data/mt", device="dla:0")   # engines/int8-b1-dla0.engine

The files are the format table's (``formats.FORMATS``); an option that does not apply to the format
is an error. ``device`` (engine): cuda, cuda:N (GPU N) or dla:N (DLA core N), default cuda.

``onnx`` needs torch (development machine); ``onnx-int8`` and ``engine`` start from the model
directory's ``model.onnx`` and need no torch, so a Jetson builds its engine from a copied directory.
A ``model.onnx`` that is missing, unreadable or stale (its ``lineguard.weights_sha256`` is not the sha256 of
the directory's weights file, e.g. after ``train --resume``) is exported again first (that needs torch);
without a weights file (a copied directory) ``model.onnx`` is used as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from lineguard.devices import Device, parse_device

from ..data.modelspec import SPEC_FILE, ModelSpec
from .formats import ExportError, export_format
from .runners.base import WEIGHTS_KEY, RunnerError, check_weights

__all__ = ["export"]


def export(model_dir: Union[str, Path], fmt: str, *, opset: Optional[int] = None, batch: Union[int, str, None] = None,
           data: Optional[Union[str, Path]] = None, calib: Optional[Union[str, Path]] = None, half: bool = False,
           int8: bool = False, workspace: Optional[float] = None, device: Optional[str] = None,
           max_drop: Optional[float] = None) -> Path:
    """Export ``model_dir`` to ``fmt``; options that do not apply to the format are an error.

    ``data``: a lineguard data set of real images (parity on its test split; INT8 calibration on its
    train split and the accuracy check on its test split). ``calib`` overrides the calibration set.
    ``max_drop``: INT8 accuracy loss allowed, as a fraction (default 0.01 = 1 point)."""
    f = export_format(fmt)
    f.check_args({"opset": opset, "batch": batch, "data": data, "calib": calib, "half": half, "int8": int8,
                  "workspace": workspace, "device": device, "max_drop": max_drop})
    target = parse_device(device or "cuda", f.devices, ExportError)  # before any work; only the engine takes --device
    model_dir = Path(model_dir)
    if not (model_dir / SPEC_FILE).is_file():
        raise ExportError(f"{model_dir}: not a lineguard model directory ({SPEC_FILE} missing)")
    onnx_path = export_format("onnx").path(model_dir)
    if f.name == "onnx" or not _current(model_dir, onnx_path):
        try:
            from .torch2onnx import torch2onnx  # needs torch
        except ImportError as e:
            state = "stale or unreadable" if onnx_path.is_file() else "missing"
            raise ExportError(f"{onnx_path}: {state}, and exporting it again needs torch ({e}); run `lineguard "
                              f"export --model {model_dir} --format onnx` where torch is installed") from None

        onnx_path = torch2onnx(model_dir, onnx_path, opset=opset or 17, batch=batch or 1, parity_data=data)
        if f.name == "onnx":
            return onnx_path
    if f.name == "onnx-int8":
        from .quantize import MAX_ACCURACY_DROP, onnx2int8

        if calib is None and data is None:
            raise ExportError("--format onnx-int8 needs real images: --data DIR (or --calib DIR)")
        return onnx2int8(onnx_path, calib or data, data=data, out=f.path(model_dir),
                         max_drop=MAX_ACCURACY_DROP if max_drop is None else max_drop)
    return _engine(model_dir, onnx_path, batch=batch or 1, data=data, calib=calib, half=half, int8=int8,
                   workspace=workspace or 2.0, device=target)


def _engine(model_dir: Path, onnx_path: Path, *, batch: Union[int, str], data: Optional[Union[str, Path]],
            calib: Optional[Union[str, Path]], half: bool, int8: bool, workspace: float, device: Device) -> Path:
    """TensorRT engine. INT8: on TensorRT 8.x the entropy calibrator over ``calib``'s train split; on 10+ a
    symmetric Q/DQ ONNX (``model-int8-trt.onnx``, calibrated the same way) that TensorRT builds as is."""
    from .onnx2engine import build_engine, installed_major

    frames = None
    if int8:
        if calib is None and data is None:
            raise ExportError("--int8 needs calibration images: --calib DIR (or --data DIR)")
        if installed_major() >= 10:
            from .quantize import onnx2int8

            int8_onnx = export_format("onnx-int8").path(model_dir)  # the TensorRT flavour of it, beside it
            onnx_path = onnx2int8(onnx_path, calib or data, data=data, symmetric=True,
                                  out=int8_onnx.with_name(f"{int8_onnx.stem}-trt{int8_onnx.suffix}"))
        else:
            from .runners.base import spec_of_onnx
            from .splits import dataset_frames

            frames, _ = dataset_frames(calib or data, spec_of_onnx(onnx_path), split="train", limit=500)
    return build_engine(onnx_path, model_dir, precision="int8" if int8 else "fp16" if half else "fp32",
                        batch=batch, workspace_gib=workspace, device=device, calib_frames=frames)


def _current(model_dir: Path, onnx_path: Path) -> bool:
    """Can ``onnx_path`` be used as it is: it exists, is readable, records the sha256 of the model directory's
    weights file (:func:`~lineguard.edge.runners.base.check_weights`; no weights file: it is used) and casts its
    frames first (an export of an older lineguard transposed them before the cast, which TensorRT cannot build)?"""
    if not onnx_path.is_file():
        return False
    from .onnx_check import load_onnx, uint8_input_problems

    try:
        model = load_onnx(onnx_path)
        recorded = {p.key: p.value for p in model.metadata_props}.get(WEIGHTS_KEY)
        check_weights(onnx_path, recorded, ModelSpec.load(model_dir), "onnx", model_dir)
    except (ExportError, RunnerError):
        return False  # unreadable or stale: export it again
    return not uint8_input_problems(model)
