"""TensorRT engine runner (``backend = "trt"``): Jetson (TensorRT 8.5, Python 3.8) and x86 GPUs (TensorRT 10+).

    with TrtRunner("model_dir/engines/fp16-b1-cuda0.engine") as r:
        scores = r.predict(frames)                 # uint8 (N, H, W, C), any N

An engine only runs on the TensorRT version and GPU that built it. Its side-car ``<key>.json`` (written
by :func:`lineguard.edge.onnx2engine.build_engine`, read by :func:`lineguard.edge.tensorrt.read_sidecar`)
records both plus the model description; the runner refuses a foreign engine before deserialising it.

CUDA goes through pycuda's driver API with the device's *primary* context (``tensorrt.open_device``),
pushed around every call and popped after it, so any thread of a daemon may call
:meth:`TrtRunner.predict`; a lock serialises calls.

Only the named-tensor API is used (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``): it exists in 8.5 and is the only one left in 10.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from lineguard.devices import Device, parse_device
from lineguard.edge.runners.base import INPUT, OUTPUTS, Runner, RunnerError
from lineguard.edge.tensorrt import (
    ENGINE,
    REBUILD,
    import_cudart,
    import_pycuda,
    import_tensorrt,
    open_device,
    pushed,
    read_sidecar,
    trt_logger,
)

__all__ = ["TrtRunner"]


def _dims(dims: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in dims)


class TrtRunner(Runner):
    """Runs a serialized TensorRT engine built by ``build_engine``.

    Buffers (page-locked host, device) are allocated once at the largest batch; ``batch_range`` is the
    optimisation profile's (min, max) for a dynamic-batch engine, else (b, b). ``cuda_graph=True`` captures
    one CUDA graph per batch size through cuda-python and replays it; without cuda-python that is a
    :class:`RunnerError`, never a silent fallback. Each captured batch size gets an execution context of its
    own, set to that shape once (one warm-up enqueue, then the capture) and never changed: a graph replayed on
    a context that has run another shape since would skip the work TensorRT does after a shape change. Each
    such context holds its own activation memory, so capture the few batch sizes the line uses."""

    backend = "trt"

    def __init__(self, engine_path: Union[str, Path], device: Optional[Union[str, Device]] = None,
                 cuda_graph: bool = False) -> None:
        """``device``: where to run it, default where it was built (the side-car's): ``cuda:N`` for an engine
        built for a GPU, ``dla:N`` (on GPU 0) for one built for a DLA core."""
        self.path = Path(engine_path)
        self._closed = True
        self._lock = threading.Lock()
        self._host: Dict[str, np.ndarray] = {}
        self._dev: Dict[str, Any] = {}
        self._graphs: Dict[int, Tuple[Any, Any]] = {}  # batch size -> (its context, its graph)
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self.info, self.sidecar = read_sidecar(self.path)
        self.spec = self.sidecar.spec
        self.device = self._placement(device)
        if not self.path.is_file():
            raise RunnerError(f"{self.path}: engine file missing; {REBUILD}")
        trt = import_tensorrt("the TensorRT runner")
        cuda = import_pycuda("the TensorRT runner")
        self._cudart = import_cudart() if cuda_graph else None
        gpu, ctx = open_device(cuda, self.device.index if self.device.kind == "cuda" else 0)
        side = self.sidecar
        if side.tensorrt != trt.__version__ or side.gpu != gpu:
            ctx.detach()
            raise RunnerError(f"{self.path}: engine built for TensorRT {side.tensorrt} on GPU "
                              f"{side.gpu}, this machine has TensorRT {trt.__version__} on GPU {gpu}; "
                              f"{REBUILD}")
        self._trt, self._cuda, self._ctx = trt, cuda, ctx
        self._closed = False
        try:
            with pushed(cuda, ctx):
                self._load()
        except cuda.Error as e:
            self.close()
            raise RunnerError(f"{self.path}: CUDA error while loading the engine: {e}") from None
        except BaseException:
            self.close()
            raise

    def _placement(self, device: Optional[Union[str, Device]]) -> Device:
        """The device to run on: ``device``, of the kind the engine was built for, or the side-car's."""
        built = parse_device(self.sidecar.device, ENGINE.devices, RunnerError)
        if device is None:
            return built
        wanted = parse_device(device, ENGINE.devices, RunnerError)
        if wanted.kind != built.kind:
            runs_on = "a GPU (cuda:N)" if built.kind == "cuda" else "a DLA core (dla:N)"
            raise RunnerError(f"{self.path}: built for {built}, so it runs on {runs_on}, not device {wanted}")
        return wanted

    def _load(self) -> None:
        trt, cuda = self._trt, self._cuda
        log = trt_logger(trt)
        mark = log.seq
        self._runtime = trt.Runtime(log)
        if self.device.kind == "dla":
            self._runtime.DLA_core = self.device.index
        try:
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except (RuntimeError, TypeError, ValueError):
            self._engine = None
        if self._engine is None:
            raise RunnerError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine (truncated "
                              f"or corrupt file?){self._errors(mark)}; {REBUILD}")
        self.batch_range = self._check_io()
        self._context = self._new_context(self.batch_range[1], mark)
        self._stream = cuda.Stream()
        for name in (INPUT, *OUTPUTS):
            host = cuda.pagelocked_empty(_dims(self._context.get_tensor_shape(name)),
                                         np.uint8 if name == INPUT else np.float32)
            self._host[name] = host
            self._dev[name] = cuda.mem_alloc(host.nbytes)
            self._context.set_tensor_address(name, int(self._dev[name]))

    def _check_io(self) -> Tuple[int, int]:
        """Engine I/O against base.py's names and the model description; returns (min, max) batch."""
        trt, engine = self._trt, self._engine
        names = sorted(engine.get_tensor_name(i) for i in range(engine.num_io_tensors))
        if names != sorted((INPUT, *OUTPUTS)):
            raise RunnerError(f"{self.path}: engine tensors {names}; a lineguard engine has {INPUT} -> "
                              f"{', '.join(OUTPUTS)}; {REBUILD}")
        for name in names:
            mode, dtype = ((trt.TensorIOMode.INPUT, trt.DataType.UINT8) if name == INPUT
                           else (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT))
            if engine.get_tensor_mode(name) != mode or engine.get_tensor_dtype(name) != dtype:
                raise RunnerError(f"{self.path}: engine tensor '{name}' is {engine.get_tensor_mode(name)} "
                                  f"{engine.get_tensor_dtype(name)}, expected {mode} {dtype}; {REBUILD}")
        shape = _dims(engine.get_tensor_shape(INPUT))
        if len(shape) != 4 or shape[1:] != self.input_shape:
            raise RunnerError(f"{self.path}: engine input {shape} does not take the model's frames "
                              f"(N, {', '.join(map(str, self.input_shape))}); {REBUILD}")
        k = _dims(engine.get_tensor_shape("probs"))[-1]
        if k != len(self.spec.classes):
            raise RunnerError(f"{self.path}: engine has {k} classes, the model description {len(self.spec.classes)}")
        if shape[0] >= 1:
            return shape[0], shape[0]
        lo, _opt, hi = (_dims(s) for s in engine.get_tensor_profile_shape(INPUT, 0))
        return lo[0], hi[0]

    def _errors(self, since: int) -> str:
        said = trt_logger(self._trt).errors(since)
        return ": " + "; ".join(said[-3:]) if said else ""

    def _infer(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        n = len(frames)
        h, w, c = self.input_shape
        cuda, host, dev, stream = self._cuda, self._host, self._dev, self._stream
        with self._lock:
            if self._closed:
                raise RunnerError(f"{self.path}: the runner is closed")
            with pushed(cuda, self._ctx), self._cuda_errors():
                mark = trt_logger(self._trt).seq
                host[INPUT][:n] = frames
                cuda.memcpy_htod_async(dev[INPUT], host[INPUT][:n], stream)
                if self._cudart is None:
                    if not self._context.set_input_shape(INPUT, (n, h, w, c)):
                        raise RunnerError(f"{self.path}: the engine refused a batch of {n}{self._errors(mark)}")
                    self._enqueue(self._context, mark)
                else:
                    self._launch_graph(n, mark)
                for name in OUTPUTS:
                    cuda.memcpy_dtoh_async(host[name][:n], dev[name], stream)
                stream.synchronize()
                return {name: host[name][:n].copy() for name in OUTPUTS}

    @contextmanager
    def _cuda_errors(self) -> Iterator[None]:
        try:
            yield
        except self._cuda.Error as e:
            raise RunnerError(f"{self.path}: CUDA error: {e}") from None

    def _enqueue(self, context: Any, mark: int) -> None:
        if not context.execute_async_v3(self._stream.handle):
            raise RunnerError(f"{self.path}: TensorRT execution failed{self._errors(mark)}")

    def _cuda_ok(self, result: Tuple[Any, ...], what: str) -> Any:
        """Check a cuda-python call's (error, value...) tuple; the value, if any."""
        rt = self._cudart
        if result[0] != rt.cudaError_t.cudaSuccess:
            raise RunnerError(f"{self.path}: CUDA graph {what} failed: {result[0]}")
        return result[1] if len(result) > 1 else None

    def _new_context(self, n: int, mark: int) -> Any:
        """A new execution context set to a batch of ``n`` frames (its tensor addresses not yet set)."""
        h, w, c = self.input_shape
        context = self._engine.create_execution_context()
        if context is None or not context.set_input_shape(INPUT, (n, h, w, c)):
            raise RunnerError(f"{self.path}: TensorRT could not create an execution context for {n} frames"
                              f"{self._errors(mark)}")
        return context

    def _launch_graph(self, n: int, mark: int) -> None:
        """Replay the CUDA graph for batch ``n``; the first time, give ``n`` its own context (see the class
        docstring), enqueue once outside the capture (TensorRT's deferred per-shape work), then capture."""
        rt = self._cudart
        stream = rt.cudaStream_t(self._stream.handle)
        if n not in self._graphs:
            context = self._new_context(n, mark)
            for name, buffer in self._dev.items():  # the shared buffers
                context.set_tensor_address(name, int(buffer))
            self._enqueue(context, mark)
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            self._cuda_ok(rt.cudaStreamBeginCapture(stream, mode), "capture")
            try:
                enqueued = context.execute_async_v3(self._stream.handle)
            finally:
                graph = self._cuda_ok(rt.cudaStreamEndCapture(stream), "capture")
            try:
                if not enqueued:
                    raise RunnerError(f"{self.path}: TensorRT execution failed during CUDA graph capture"
                                      f"{self._errors(mark)}")
                graph_exec = self._cuda_ok(rt.cudaGraphInstantiateWithFlags(graph, 0), "instantiation")
            finally:
                rt.cudaGraphDestroy(graph)
            self._graphs[n] = (context, graph_exec)
        self._cuda_ok(rt.cudaGraphLaunch(self._graphs[n][1], stream), "launch")

    def close(self) -> None:
        """Free graphs, buffers and TensorRT objects, release the CUDA context (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with pushed(self._cuda, self._ctx):
                    for _context, graph_exec in self._graphs.values():
                        self._cudart.cudaGraphExecDestroy(graph_exec)
                    for buffer in self._dev.values():
                        buffer.free()
                    for host in self._host.values():  # pycuda's HostAllocation is the array's base
                        free = getattr(host.base, "free", None)
                        if free is not None:
                            free()
                    self._graphs, self._dev, self._host = {}, {}, {}
                    self._context = self._engine = self._runtime = self._stream = None
            finally:
                self._ctx.detach()

    def describe(self) -> Dict[str, object]:
        out = super().describe()
        side = self.sidecar
        out.update(engine=str(self.path), tensorrt=side.tensorrt, gpu=side.gpu, device=str(self.device),
                   precision=side.precision, cuda_graph=self._cudart is not None)
        return out

