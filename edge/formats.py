"""The one table of model formats (:data:`FORMATS`); devices are ``lineguard.devices``.

Each row names a format (``lineguard export --format``), the file it writes in the model directory, the
runner backend that loads it (``load_runner(..., backend=)``, ``lineguard bench --backend``), the runtime
family ``bench`` groups by, the devices its runner takes, the export options that apply and the packages
it needs. The last row is the PyTorch reference: it reads the weights (``model.yaml`` names them) and is
not exported. Export, the runners and bench all read this table; nothing else names these files.

    fmt = export_format("onnx-int8")
    fmt.check_args({"calib": "data/", "half": True})   # ExportError: --half does not apply to onnx-int8

Torch-free, Python 3.8.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from lineguard import LineguardError

__all__ = ["BACKENDS", "FORMATS", "ExportError", "Format", "backend_format",
           "export_format", "file_format"]


class ExportError(LineguardError):
    """An export that cannot be made or that failed a check (parity, operator support, accuracy)."""


@dataclass(frozen=True)
class Format:
    """One row of :data:`FORMATS`."""

    name: str  # ``lineguard export --format``; "torch": the weights themselves (not exported)
    file: Optional[str]  # in the model directory, "{key}" an engine key; None: the weights file model.yaml names
    backend: str  # the runner that loads it
    family: str  # the runtime (``bench`` runs one family at a time and recommends one backend per family)
    devices: Tuple[str, ...]  # device kinds its runner takes (``lineguard.devices.parse_device``)
    args: Tuple[str, ...]  # export options that apply
    packages: str  # what exporting (torch: running) it needs

    @property
    def exported(self) -> bool:
        return self.file is not None

    @property
    def keyed(self) -> bool:
        """Several files per model directory, told apart by a key (TensorRT engines)."""
        return self.file is not None and "{key}" in self.file

    def path(self, model_dir: Union[str, Path], key: Optional[str] = None) -> Path:
        """This format's file in ``model_dir``; ``key`` fills a keyed pattern."""
        if self.file is None:
            raise ValueError(f"format {self.name} has no file of its own")
        return Path(model_dir) / (self.file.format(key=key) if self.keyed else self.file)

    def keys(self, model_dir: Union[str, Path]) -> Dict[str, Path]:
        """key -> file for each file of this keyed format in ``model_dir``, in key order."""
        head, tail = str(self.file).split("{key}")
        found = {}
        for p in sorted(Path(model_dir).glob(head + "*" + tail)):
            name = p.relative_to(model_dir).as_posix()
            found[name[len(head):len(name) - len(tail)]] = p
        return found

    def check_args(self, given: Dict[str, object]) -> None:
        """Reject options set for a format they do not apply to (a silent no-op would mislead)."""
        extra = sorted(k for k, v in given.items() if v not in (None, False) and k not in self.args)
        if extra:
            flags = ", ".join("--" + k for k in extra)
            raise ExportError(f"{flags} do(es) not apply to --format {self.name} (it takes: "
                              f"{', '.join('--' + a for a in self.args) or 'no options'})")


FORMATS: Tuple[Format, ...] = (
    Format("onnx", "model.onnx", "ort", "onnxruntime", devices=("cpu", "cuda"), args=("opset", "batch", "data"),
           packages="torch, onnx, onnxslim, onnxruntime (parity)"),
    Format("onnx-int8", "model-int8.onnx", "ort-int8", "onnxruntime", devices=("cpu", "cuda"),
           args=("opset", "batch", "data", "calib", "max_drop"),
           packages="onnx, onnxruntime (quantize_static, QDQ, QUInt8 activations: made for the CPU)"),
    Format("engine", "engines/{key}.engine", "trt", "tensorrt", devices=("cuda", "dla"),
           args=("opset", "batch", "data", "half", "int8", "calib", "workspace", "device"),
           packages="tensorrt (8.5 on JetPack 5, 10+ elsewhere), pycuda"),
    Format("torch", None, "torch", "torch", devices=("cpu", "cuda"), args=(),
           packages="torch (development machines only)"),
)
BACKENDS = tuple(f.backend for f in FORMATS)


def export_format(name: str) -> Format:
    """The exported format ``name``; :class:`ExportError` (with a close match) for another name."""
    names = [f.name for f in FORMATS if f.exported]
    if name in names:
        return FORMATS[names.index(name)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ExportError(f"unknown export format '{name}'{hint} (formats: {', '.join(names)})")


def backend_format(backend: str) -> Optional[Format]:
    """The row whose runner backend is ``backend``, None for an unknown one."""
    return next((f for f in FORMATS if f.backend == backend), None)


def file_format(path: Union[str, Path]) -> Format:
    """The exported format of a model file: the row whose file pattern names it, else the first with its
    suffix (``dyn.onnx``: onnx), else onnx (whose runner says why it cannot load it)."""
    path = Path(path)
    rows = [f for f in FORMATS if f.exported]
    for f in rows:
        if path.match(str(f.file).format(key="*")):
            return f
    return next((f for f in rows if Path(str(f.file)).suffix == path.suffix), rows[0])
