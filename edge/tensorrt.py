"""What the TensorRT engine builder (``onnx2engine``) and runner (``runners.trt``) share: the lazy imports
with their install hints, the version, the logger, the CUDA device context, and the engine side-car.

An engine is ``engines/<key>.engine`` in the model directory (``formats.FORMATS``), ``key`` naming its
precision, batch profile and device (``fp16-b1-cuda0``, ``int8-b4-dla0``, ``fp16-b1-32-cuda0``), so FP16 and
INT8 engines sit side by side; :func:`list_engines` lists them. Its side-car ``<key>.json`` records the
TensorRT version and GPU that built it (an engine runs nowhere else) and the model description.

``tensorrt``, ``pycuda`` and cuda-python are imported only when called for; nothing here needs them to
list engines or read side-cars. Torch-free, Python 3.8.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from lineguard.data.modelspec import ModelSpec
from lineguard.devices import Device
from lineguard.edge.formats import export_format
from lineguard.edge.runners.base import SPEC_KEY, WEIGHTS_KEY, RunnerError, one_line, optional_import
from lineguard.files import FileError, read_regular

__all__ = ["ENGINE", "MIN_TENSORRT", "REBUILD", "EngineEntry", "EngineSidecar", "engine_key", "import_cudart",
           "import_pycuda", "import_tensorrt", "list_engines", "open_device", "pushed", "read_sidecar", "sidecar_path",
           "trt_logger", "trt_version"]

ENGINE = export_format("engine")
TRT_HINT = ("on a Jetson, JetPack ships TensorRT for the system Python 3.8 through apt (python3-libnvinfer): "
            "make the venv with `python3 -m venv --system-site-packages`; elsewhere `pip install tensorrt`")
PYCUDA_HINT = "pip install pycuda (it compiles against CUDA: nvcc on PATH or CUDA_ROOT set)"
CUDA_PYTHON_HINT = ("pip install cuda-python (on JetPack 5 / CUDA 11.4 an 11.x release with a cp38 aarch64 "
                    "wheel); pycuda has no stream capture")
REBUILD = "rebuild it with `lineguard export --format engine` on this machine"
MIN_TENSORRT = (8, 5)  # uint8 network inputs (DataType.UINT8) arrived in 8.5; JetPack 4's 8.2 lacks them
MAX_SIDECAR_BYTES = 1 << 24  # a side-car is a few kB of JSON
SUMMARY = ("precision", "batch", "profile", "device", "tensorrt", "gpu", "build_seconds")  # list_engines

_log = logging.getLogger(__name__)
_LOGGERS: Dict[Any, Any] = {}  # one capturing logger per tensorrt module: TensorRT 8 treats the logger as global


def import_tensorrt(what: str) -> Any:
    """The ``tensorrt`` module, or :class:`RunnerError` saying how to install it, or that it is older than
    :data:`MIN_TENSORRT`."""
    trt = optional_import("tensorrt", TRT_HINT, what)
    if trt_version(trt) < MIN_TENSORRT:
        raise RunnerError(f"{what} needs TensorRT {'.'.join(map(str, MIN_TENSORRT))} or newer (JetPack 5 on a "
                          f"Jetson); this one is {trt.__version__}, which has no uint8 network inputs")
    return trt


def import_pycuda(what: str) -> Any:
    """The ``pycuda.driver`` module, or :class:`RunnerError` saying how to install it."""
    return optional_import("pycuda.driver", PYCUDA_HINT, what)


def import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+), else the older ``cuda.cudart``."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RunnerError(f"cuda_graph=True needs cuda-python's runtime bindings; {CUDA_PYTHON_HINT}")


def trt_version(trt: Any) -> Tuple[int, int]:
    """(major, minor) of the installed TensorRT: (8, 5) on JetPack 5."""
    major, minor = str(trt.__version__).split(".")[:2]
    return int(major), int(minor)


def trt_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps the last 200 messages (``messages``: (seq, severity, text)) and passes
    warnings and errors on to :mod:`logging`; ``errors(since)`` lists error texts after sequence ``since``."""
    if trt not in _LOGGERS:
        severity = trt.ILogger.Severity
        errors = (severity.ERROR, severity.INTERNAL_ERROR)

        class _Log(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.seq = 0
                self.messages: Deque[Tuple[int, Any, str]] = deque(maxlen=200)

            def log(self, sev: Any, msg: str) -> None:
                self.seq += 1
                self.messages.append((self.seq, sev, msg))
                if sev in errors or sev == severity.WARNING:
                    _log.log(logging.ERROR if sev in errors else logging.WARNING, "TensorRT: %s", msg)

            def errors(self, since: int) -> List[str]:
                return [m for s, sev, m in self.messages if s > since and sev in errors]

        _LOGGERS[trt] = _Log()
    return _LOGGERS[trt]


def open_device(cuda: Any, index: int) -> Tuple[str, Any]:
    """(GPU name, retained primary context) of CUDA device ``index``; ``detach()`` the context when done.

    The primary context (not ``pycuda.autoinit``'s, current in the importing thread only) is pushed
    around each use with :func:`pushed`, so any thread may use it; TensorRT's runtime calls share it."""
    try:
        cuda.init()
        count = cuda.Device.count()
        if not 0 <= index < count:
            raise RunnerError(f"CUDA device {index} does not exist ({count} device(s) on this machine)")
        device = cuda.Device(index)
        return str(device.name()), device.retain_primary_context()
    except cuda.Error as e:
        raise RunnerError(f"CUDA device {index} is not usable: {e}") from None


@contextmanager
def pushed(cuda: Any, context: Any) -> Iterator[None]:
    """Make ``context`` current in this thread for the block."""
    context.push()
    try:
        yield
    finally:
        cuda.Context.pop()


def engine_key(precision: str, profile: Tuple[int, int, int], device: Device) -> str:
    """The key of an engine: ``fp16-b1-cuda0``, ``fp16-b1-32-cuda0`` (dynamic batch 1..32), ``int8-b4-dla1``."""
    lo, _, hi = profile
    batch = f"b{lo}" if lo == hi else f"b{lo}-{hi}"
    return f"{precision}-{batch}-{device.kind}{device.index}"


def sidecar_path(engine_path: Union[str, Path]) -> Path:
    """``<key>.json`` next to ``<key>.engine``."""
    return Path(engine_path).with_suffix(".json")


class EngineSidecar(BaseModel):
    """What the runner needs of ``<key>.json`` (the builder writes more: profile, build seconds, ...)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    spec: ModelSpec = Field(alias=SPEC_KEY)
    tensorrt: StrictStr
    gpu: StrictStr
    device: str = Field(pattern=r"^(cuda|dla):[0-9]+$")  # devices.parse_device's canonical form
    precision: Optional[StrictStr] = None
    weights_sha256: Optional[StrictStr] = Field(default=None, alias=WEIGHTS_KEY)


def read_sidecar(engine: Union[str, Path]) -> Tuple[Dict[str, Any], EngineSidecar]:
    """(the side-car's JSON object, its checked fields) of ``engine``; one :class:`RunnerError` line naming the
    side-car for a missing, unreadable or malformed one. Needs no TensorRT."""
    engine = Path(engine)
    path = sidecar_path(engine)
    if not path.is_file():
        raise RunnerError(f"{path}: missing; it is written next to {engine.name} by `lineguard export --format "
                          "engine` and records the TensorRT version, GPU and model description")
    try:
        info = json.loads(read_regular(path, max_bytes=MAX_SIDECAR_BYTES).decode("utf-8"))
    except FileError as e:
        raise RunnerError(str(e)) from None
    except (ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise RunnerError(f"{path}: unreadable engine side-car (not JSON): {one_line(e)}; {REBUILD}") from None
    if not isinstance(info, dict):
        raise RunnerError(f"{path}: engine side-car is a JSON {type(info).__name__}, not an object; {REBUILD}")
    try:
        checked = EngineSidecar.model_validate(info)
    except ValidationError as e:
        raise RunnerError(f"{path}: engine side-car is not usable ({one_line(e)}); {REBUILD}") from None
    return info, checked


@dataclass(frozen=True)
class EngineEntry:
    """One engine of a model directory: its file, its side-car's facts (:data:`SUMMARY`), or why the
    side-car is unusable (then the engine cannot be loaded)."""

    file: Path
    summary: Dict[str, Any]
    error: Optional[str] = None


def list_engines(model_dir: Union[str, Path]) -> Dict[str, EngineEntry]:
    """key -> :class:`EngineEntry` for every engine of ``model_dir``, in key order (side-cars only, no TensorRT)."""
    entries = {}
    for key, f in ENGINE.keys(model_dir).items():
        try:
            info, _ = read_sidecar(f)
        except RunnerError as e:
            entries[key] = EngineEntry(f, {}, str(e))
        else:
            entries[key] = EngineEntry(f, {k: info.get(k) for k in SUMMARY})
    return entries
