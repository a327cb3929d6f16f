"""ONNX Runtime runner: CPU and CUDA execution providers (torch-free, Python 3.8).

    r = OrtRunner("model_dir/model.onnx", device="cpu", threads=2)     # or device="cuda:1"
    scores = r.predict(frames)            # uint8 (N, H, W, C)

A provider that is asked for and missing is an error, never a silent fall-back to the CPU
(ONNX Runtime itself falls back silently). TensorRT runs engines through its own runner
(``runners.trt``), not through ONNX Runtime's TensorRT provider.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from lineguard.devices import Device, parse_device

from ..formats import backend_format
from .base import INPUT, OUTPUTS, SPEC_KEY, Runner, RunnerError, one_line, optional_import, spec_from_json

__all__ = ["PROVIDERS", "OrtRunner"]

MAX_DYNAMIC_BATCH = 64  # frames per call for a model exported with a dynamic batch
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}  # per device kind


class OrtRunner(Runner):
    """An ONNX file exported by lineguard (``model.onnx`` or ``model-int8.onnx``) on ONNX Runtime.

    ``device``: cpu, cuda or cuda:N (GPU N). ``threads``: intra-op threads (default: all cores); set it
    explicitly when other work shares the machine. IO binding is used on the GPU, where it saves the
    output copies' allocations."""

    backend = "ort"

    def __init__(self, path: Union[str, Path], device: Union[str, Device] = "cpu",
                 threads: Optional[int] = None) -> None:
        ort: Any = optional_import("onnxruntime", "pip install 'lineguard[runtime]' (or onnxruntime-gpu)",
                                   "the ONNX Runtime runner")
        self.path = Path(path)
        self.device = parse_device(device, backend_format(self.backend).devices, RunnerError)
        provider = PROVIDERS[self.device.kind]
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise RunnerError(f"{self.path}: no model file (missing or empty)")
        available = ort.get_available_providers()
        if provider not in available:
            raise RunnerError(f"{self.path}: ONNX Runtime {ort.__version__} here has no {provider} "
                              f"(available: {', '.join(available)}); install onnxruntime-gpu for cuda")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: List[Any] = ["CPUExecutionProvider"]
        if self.device.kind == "cuda":
            providers.insert(0, (provider, {"device_id": self.device.index}))
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise RunnerError(f"{self.path}: ONNX Runtime cannot load it: {one_line(e)}") from None
        if provider not in self.session.get_providers():  # e.g. CUDA libraries that failed to load
            raise RunnerError(f"{self.path}: ONNX Runtime could not start {provider} "
                              f"(running: {', '.join(self.session.get_providers())})")
        self.threads = opts.intra_op_num_threads
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata: Dict[str, str] = meta  # the ONNX metadata (model description, precision, weights' sha256)
        if SPEC_KEY not in meta:
            raise RunnerError(f"{self.path}: not exported by lineguard (no '{SPEC_KEY}' metadata); "
                              "export with `lineguard export`")
        self.spec = spec_from_json(meta[SPEC_KEY], str(self.path))
        self.batch_range = self._check_io()
        if "int8" in meta.get("lineguard.precision", ""):
            self.backend = "ort-int8"
        self._binding = self.session.io_binding() if self.device.kind == "cuda" else None

    def _check_io(self) -> Tuple[int, int]:
        inputs = self.session.get_inputs()
        h, w, c = self.input_shape
        if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].type != "tensor(uint8)":
            got = [(i.name, i.type) for i in inputs]
            raise RunnerError(f"{self.path}: expects one uint8 input '{INPUT}', the file has {got}")
        shape = inputs[0].shape
        if len(shape) != 4 or list(shape[1:]) != [h, w, c]:
            raise RunnerError(f"{self.path}: input shape {shape} does not match its model description "
                              f"(N, {h}, {w}, {c})")
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if tuple(names) != OUTPUTS:
            raise RunnerError(f"{self.path}: outputs {names}, expected {list(OUTPUTS)}")
        k = len(self.spec.classes)
        for o, want in zip(outputs, (["N", k], ["N"], ["N", 1, "h", "w"])):
            if o.type != "tensor(float)" or len(o.shape) != len(want) or any(
                    isinstance(d, int) and isinstance(e, int) and d != e for d, e in zip(o.shape, want)):
                raise RunnerError(f"{self.path}: output '{o.name}' is {o.type} {o.shape}, the model description "
                                  f"needs float {want} ({k} classes)")
        if isinstance(shape[0], int) and shape[0] < 1:
            raise RunnerError(f"{self.path}: input batch dimension {shape[0]}; re-export the model")
        return (shape[0], shape[0]) if isinstance(shape[0], int) else (1, MAX_DYNAMIC_BATCH)

    def _infer(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        if self._binding is None:
            return dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), {INPUT: frames})))
        b = self._binding
        b.bind_cpu_input(INPUT, frames)
        for name in OUTPUTS:
            b.bind_output(name, "cuda", self.device.index)
        self.session.run_with_iobinding(b)
        return dict(zip(OUTPUTS, b.copy_outputs_to_cpu()))

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "file": str(self.path), "device": str(self.device), "threads": self.threads,
                "providers": self.session.get_providers()}

    def close(self) -> None:
        self.__dict__.pop("session", None)
        self._binding = None
