"""The one table of export formats: it drives ``lineguard export`` argument checks and ``lineguard bench``.

    fmt = export_format("onnx-int8")
    fmt.check_args({"calib": "data/", "half": True})   # ExportError: --half does not apply to onnx-int8

Torch-free, Python 3.8.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from lineguard import LineguardError

__all__ = ["FORMATS", "ExportError", "ExportFormat", "export_format", "finite", "strict_json"]


class ExportError(LineguardError):
    """An export that cannot be made or that failed a check (parity, operator support, accuracy)."""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    filename: str  # in the model directory; {precision} and {key} filled by the converter
    backend: str  # the runner that loads it (``lineguard bench --backend``)
    cpu: bool
    gpu: bool
    args: Tuple[str, ...]  # export options that apply
    packages: str  # what the converter needs

    def check_args(self, given: Dict[str, object]) -> None:
        """Reject options set for a format they do not apply to (a silent no-op would mislead)."""
        extra = sorted(k for k, v in given.items() if v not in (None, False) and k not in self.args)
        if extra:
            flags = ", ".join("--" + k for k in extra)
            raise ExportError(f"{flags} do(es) not apply to --format {self.name} (it takes: "
                              f"{', '.join('--' + a for a in self.args) or 'no options'})")


FORMATS: Tuple[ExportFormat, ...] = (
    ExportFormat("onnx", "model.onnx", "ort", cpu=True, gpu=True, args=("opset", "batch", "data"),
                 packages="torch, onnx, onnxslim, onnxruntime (parity)"),
    ExportFormat("onnx-int8", "model-int8.onnx", "ort-int8", cpu=True, gpu=False,
                 args=("opset", "batch", "data", "calib", "max_drop"),
                 packages="onnx, onnxruntime (quantize_static, QDQ, QUInt8 activations)"),
    ExportFormat("engine", "engines/{key}.engine", "trt", cpu=False, gpu=True,
                 args=("opset", "batch", "data", "half", "int8", "calib", "workspace", "device"),
                 packages="tensorrt (8.5 on JetPack 5, 10+ elsewhere), pycuda"),
)


def export_format(name: str) -> ExportFormat:
    for f in FORMATS:
        if f.name == name:
            return f
    names = [f.name for f in FORMATS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ExportError(f"unknown export format '{name}'{hint} (formats: {', '.join(names)})")


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def strict_json(obj: Any, indent: Optional[int] = None) -> str:
    """Standard JSON for the reports export and bench write: no NaN/Infinity (null instead)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)
