"""ONNX -> TensorRT engine, built on the machine that will run it and cached.

    engine = build_engine("model_dir/model.onnx", "model_dir", precision="fp16", batch="dynamic")
    with TrtRunner(engine) as r: ...

The engine goes to ``out_dir/engines/<key>.engine``; ``key`` hashes the TensorRT version, GPU name,
precision, batch profile, device and the ONNX file's sha256, because an engine runs only where it was
built. The side-car ``<key>.json`` holds the model description (ONNX metadata ``lineguard.model``) and
those facts, plus build seconds and DLA fallback; an engine whose side-car matches is reused.

Precision by TensorRT version:

=========  ==========================================  ==============================  ===========================
precision  8.x (JetPack 5)                              10.x                            11+ (strongly typed only)
=========  ==========================================  ==============================  ===========================
fp32       no flag                                      no flag                         ONNX types as they are
fp16       FP16 flag                                    FP16 flag                       the ONNX must be FP16 already
int8       float ONNX + ``calib_frames``:               Q/DQ ONNX required,             Q/DQ ONNX required
           IInt8EntropyCalibrator2, cache               INT8 + FP16 flags
           ``<key>.calib``; a Q/DQ ONNX: INT8 + FP16
=========  ==========================================  ==============================  ===========================

Q/DQ must be symmetric signed INT8 (zero point 0): TensorRT takes nothing else.
DLA (``dla:0``/``dla:1``, Xavier): static batch, fp16/int8, GPU fallback allowed. The network layers
that cannot run on the DLA (``IBuilderConfig.can_run_on_DLA`` per parsed layer, before fusion) go to
the side-car's ``dla_gpu_fallback`` and the log; ``null`` where this TensorRT lacks that call.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from lineguard.data.modelspec import ModelSpec
from lineguard.edge.formats import ExportError
from lineguard.edge.onnx_check import check_tensorrt, input_convs, iter_nodes, load_onnx
from lineguard.edge.runners.base import (
    INPUT,
    OUTPUTS,
    SPEC_KEY,
    WEIGHTS_KEY,
    RunnerError,
    check_weights,
    spec_of_model,
)
from lineguard.edge.runners.trt import (
    import_pycuda,
    import_tensorrt,
    open_device,
    pushed,
    read_sidecar,
    sidecar_path,
    trt_logger,
    trt_version,
)
from lineguard.files import atomic_write, sha256_file

__all__ = ["DEVICES", "DYNAMIC_PROFILE", "PRECISIONS", "build_engine"]

PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("gpu", "dla:0", "dla:1")
DYNAMIC_PROFILE = (1, 8, 32)  # batch "dynamic": min / opt / max frames per call
_QDQ = ("QuantizeLinear", "DequantizeLinear")

_log = logging.getLogger(__name__)


@contextmanager
def _as_export_error() -> Iterator[None]:
    try:
        yield
    except RunnerError as e:
        raise ExportError(str(e)) from None


def build_engine(onnx_path: Union[str, Path], out_dir: Union[str, Path], *, precision: str = "fp16",
                 batch: Union[int, str] = 1, workspace_gib: float = 2.0, device: str = "gpu",
                 calib_frames: Optional[Iterable[np.ndarray]] = None, cache: bool = True) -> Path:
    """Build (or reuse) the engine for ``onnx_path``; returns ``out_dir/engines/<key>.engine``.

    ``batch``: an int (fixed batch) or "dynamic" (profile 1/8/32). ``calib_frames``: a uint8 (n, H, W, C)
    array, or an iterable of such batches, for INT8 calibration of a float ONNX on TensorRT 8.x.
    ``cache=False`` rebuilds, and recalibrates instead of reading ``<key>.calib``."""
    onnx_path = Path(onnx_path)
    profile = _profile(precision, batch, workspace_gib, device)
    model = load_onnx(onnx_path)
    weights = {p.key: p.value for p in model.metadata_props}.get(WEIGHTS_KEY)
    with _as_export_error():
        spec = spec_of_model(model, str(onnx_path))
        check_weights(onnx_path, weights, spec, "onnx", model_dir=out_dir)  # never an engine of stale weights
    _check_graph_io(model, onnx_path, spec, batch)
    with _as_export_error():
        trt = import_tensorrt("building a TensorRT engine")
        cuda = import_pycuda("building a TensorRT engine")
    major = trt_version(trt)[0]
    if trt_version(trt) <= (8, 5):  # 8.6 reads more (LayerNormalization, opset 18)
        check_tensorrt(model, "8.5")
    quantized = any(node.op_type in _QDQ for node in iter_nodes(model.graph))
    _check_precision(model, onnx_path, precision, major, quantized, calib_frames)
    with _as_export_error():
        gpu, context = open_device(cuda, 0)
    try:
        with pushed(cuda, context):
            meta = {"tensorrt": trt.__version__, "gpu": gpu, "precision": precision, "batch": batch,
                    "profile": list(profile), "device": device, "onnx_sha256": sha256_file(onnx_path)}
            key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
            engine = Path(out_dir) / "engines" / f"{key}.engine"
            if cache and _cached(engine, meta, weights):
                return engine
            engine.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            builder = _Builder(trt, cuda, onnx_path, spec, major, input_convs(model))
            plan, fallback = builder.build(precision, profile, workspace_gib, device, quantized, calib_frames,
                                           engine.with_suffix(".calib"), cache)
            atomic_write(engine, plan)
            side = dict(meta, format="lineguard-engine", workspace_gib=workspace_gib,
                        build_seconds=round(time.perf_counter() - start, 1), dla_gpu_fallback=fallback)
            side[SPEC_KEY] = spec.model_dump(mode="json")
            side[WEIGHTS_KEY] = weights  # the runner refuses the engine once the model directory's weights change
            atomic_write(sidecar_path(engine), json.dumps(side, indent=2))
            return engine
    finally:
        context.detach()


def _profile(precision: str, batch: Union[int, str], workspace_gib: float, device: str) -> Tuple[int, int, int]:
    """Check the options; the (min, opt, max) batch profile."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise ExportError(f"device '{device}': choose one of {', '.join(DEVICES)}")
    if not workspace_gib > 0:
        raise ExportError(f"workspace_gib {workspace_gib}: must be > 0")
    if batch == "dynamic":
        profile = DYNAMIC_PROFILE
    elif isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
        profile = (batch, batch, batch)
    else:
        raise ExportError(f"batch {batch!r}: a positive int (fixed batch) or 'dynamic' "
                          f"(profile {'/'.join(map(str, DYNAMIC_PROFILE))})")
    if device != "gpu" and batch == "dynamic":
        raise ExportError(f"device {device}: the DLA needs static shapes (min = opt = max); build a fixed batch")
    if device != "gpu" and precision == "fp32":
        raise ExportError(f"device {device}: the DLA runs FP16 or INT8 only; use precision fp16 or int8")
    return profile


def _check_graph_io(model: onnx.ModelProto, path: Path, spec: ModelSpec, batch: Union[int, str]) -> None:
    """The graph takes uint8 frames (N, H, W, C) of the model's size and has lineguard's outputs."""
    weights = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in weights}
    if INPUT not in inputs:
        raise ExportError(f"{path}: no graph input '{INPUT}' (inputs: {', '.join(inputs) or 'none'})")
    tensor = inputs[INPUT].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.UINT8:
        raise ExportError(f"{path}: input '{INPUT}' is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                          "lineguard models take uint8 frames")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    h, w = spec.preprocess.size
    if len(dims) != 4 or dims[1:] != [h, w, spec.preprocess.channels]:
        raise ExportError(f"{path}: input '{INPUT}' has shape {dims}, the model description says "
                          f"(N, {h}, {w}, {spec.preprocess.channels})")
    if dims[0] is not None and batch != dims[0]:
        raise ExportError(f"{path}: exported with a fixed batch of {dims[0]}; build with batch={dims[0]} or "
                          "re-export with a dynamic batch")
    missing = sorted(set(OUTPUTS) - {o.name for o in model.graph.output})
    if missing:
        raise ExportError(f"{path}: graph outputs {', '.join(missing)} missing (a lineguard model has "
                          f"{', '.join(OUTPUTS)})")


def _check_precision(model: onnx.ModelProto, path: Path, precision: str, major: int, quantized: bool,
                     calib_frames: Optional[Iterable[np.ndarray]]) -> None:
    """Refuse a precision this TensorRT cannot build from this ONNX, naming the fix."""
    if precision == "int8" and quantized:
        _check_qdq(model, path)
    elif precision == "int8" and major >= 10:
        raise ExportError(f"{path}: INT8 with TensorRT {major} needs an ONNX that already holds QuantizeLinear/"
                          "DequantizeLinear nodes (the calibrator API is deprecated in 10 and gone in 11); build "
                          "from the `lineguard export --format onnx-int8` model (symmetric INT8 Q/DQ)")
    elif precision == "int8" and calib_frames is None:
        raise ExportError(f"{path}: INT8 on TensorRT 8.x calibrates on sample frames: pass calib_frames "
                          "(`--calib DIR`), or build from a Q/DQ model (`--format onnx-int8`)")
    if calib_frames is not None and (precision != "int8" or quantized):
        raise ExportError(f"calibration frames apply only to INT8 from a float ONNX on TensorRT 8.x, not to "
                          f"precision {precision} from a {'Q/DQ' if quantized else 'float'} ONNX")
    if precision == "fp16" and major >= 11 and not _is_fp16(model):
        raise ExportError(f"{path}: TensorRT {major} builds strongly typed networks only, so precision comes from "
                          "the ONNX; this one is FP32. Convert it first (ModelOpt AutoCast: `python -m "
                          "modelopt.onnx.autocast --onnx_path model.onnx`) or build precision fp32")


def _check_qdq(model: onnx.ModelProto, path: Path) -> None:
    """TensorRT takes symmetric signed INT8 Q/DQ only: every given zero point int8 and 0."""
    weights = {t.name: t for t in model.graph.initializer}
    bad = []
    for node in iter_nodes(model.graph):
        if node.op_type in _QDQ and len(node.input) > 2 and node.input[2] in weights:
            zero = weights[node.input[2]]
            if zero.data_type != onnx.TensorProto.INT8 or onnx.numpy_helper.to_array(zero).any():
                bad.append(node.name or node.output[0])
    if bad:
        raise ExportError(f"{path}: TensorRT takes symmetric signed INT8 Q/DQ only (int8 zero point 0); {len(bad)} "
                          f"Q/DQ node(s) have another zero point ({', '.join(bad[:5])}); quantize with QInt8 "
                          "activations and weights, symmetric activations (onnxruntime quantize_static: "
                          "activation_type=QuantType.QInt8, extra_options={'ActivationSymmetric': True})")


def _is_fp16(model: onnx.ModelProto) -> bool:
    """Does the graph compute in FP16 (FP16 weights or casts to FP16)?"""
    f16 = onnx.TensorProto.FLOAT16
    return (any(t.data_type == f16 for t in model.graph.initializer)
            or any(node.op_type == "Cast" and a.name == "to" and a.i == f16
                   for node in iter_nodes(model.graph) for a in node.attribute))


class _Builder:
    """One TensorRT build of one ONNX file, with a logger that keeps TensorRT's messages for errors."""

    def __init__(self, trt: Any, cuda: Any, onnx_path: Path, spec: ModelSpec, major: int,
                 input_convs: Sequence[str]) -> None:
        self.trt, self.cuda, self.path, self.spec, self.major = trt, cuda, onnx_path, spec, major
        self.input_convs = input_convs
        self.log = trt_logger(trt)
        self.mark = self.log.seq

    def errors(self) -> str:
        return "; ".join(self.log.errors(self.mark)[-5:]) or "no error logged"

    def build(self, precision: str, profile: Tuple[int, int, int], workspace_gib: float, device: str,
              quantized: bool, calib_frames: Optional[Iterable[np.ndarray]], calib_cache: Path,
              reuse_calib: bool) -> Tuple[bytes, Optional[List[str]]]:
        """(serialized engine, DLA fallback layers or None)."""
        trt, major = self.trt, self.major
        builder = trt.Builder(self.log)
        flags = 0
        if major < 10:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if major >= 11 and strongly_typed is not None:  # 11 is always strongly typed; the flag is accepted
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.log)
        if not parser.parse_from_file(str(self.path)):
            said = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 5)))
            raise ExportError(f"{self.path}: TensorRT {trt.__version__}'s ONNX parser rejected it: "
                              f"{said or self.errors()}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        h, w = self.spec.preprocess.size
        frame = (h, w, self.spec.preprocess.channels)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        opt_profile = None
        if any(t.name == INPUT and t.shape[0] == -1 for t in inputs):
            opt_profile = builder.create_optimization_profile()
            opt_profile.set_shape(INPUT, *((b, *frame) for b in profile))
            config.add_optimization_profile(opt_profile)
        calibrator = None
        if major < 11 and precision != "fp32":
            config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
                if not quantized:
                    calibrator = _calibrator(trt, self.cuda, calib_frames, (profile[1], *frame), calib_cache,
                                             reuse_calib)
                    config.int8_calibrator = calibrator
                    if opt_profile is not None:
                        config.set_calibration_profile(opt_profile)
                    _input_convs_fp16(trt, network, config, self.input_convs)
        fallback = None
        if device != "gpu":
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(device[4:])
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            fallback = _dla_fallback(network, config)
            if fallback:
                _log.warning("%s: %d layer(s) cannot run on %s and fall back to the GPU: %s", self.path,
                             len(fallback), device, ", ".join(fallback))
        try:
            plan = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.buffer.free()  # now, while the CUDA context is current
        if calibrator is not None and calibrator.error is not None:
            raise calibrator.error
        if plan is None:
            raise ExportError(f"{self.path}: TensorRT {trt.__version__} could not build the {precision} engine "
                              f"(batch profile {profile}, {device}): {self.errors()} (for 'insufficient memory' "
                              "or tactic errors raise the workspace)")
        return bytes(plan), fallback


def _input_convs_fp16(trt: Any, network: Any, config: Any, names: Sequence[str]) -> None:
    """Calibrated INT8 keeps the convolutions that read the frame in FP16, as the ONNX Runtime INT8 export keeps
    them in FP32 (see ``quantize``: quantising the first convolution cost 3 accuracy points there)."""
    wanted = set(names)
    pinned = [layer for layer in map(network.get_layer, range(network.num_layers)) if layer.name in wanted]
    for layer in pinned:
        layer.precision = trt.float16
    if pinned:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)


def _dla_fallback(network: Any, config: Any) -> Optional[List[str]]:
    """'name (type)' of each network layer the DLA cannot run, or None if this TensorRT cannot say."""
    if not hasattr(config, "can_run_on_DLA"):
        return None
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return [f"{layer.name} ({getattr(layer.type, 'name', layer.type)})" for layer in layers
            if not config.can_run_on_DLA(layer)]


def _rebatch(frames: Union[np.ndarray, Iterable[np.ndarray]], shape: Tuple[int, ...]) -> Iterator[np.ndarray]:
    """uint8 (n, H, W, C) arrays (or one such array) regrouped into C-contiguous batches of exactly shape[0]
    frames; the last partial batch is filled by repeating its frames."""
    size, frame = shape[0], tuple(shape[1:])
    if isinstance(frames, np.ndarray):
        frames = [frames]
    pending: List[np.ndarray] = []
    have = 0
    for i, arr in enumerate(frames):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != frame:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ExportError(f"calibration batch {i}: expected uint8 (n, {', '.join(map(str, frame))}) frames, "
                              f"got {got}")
        pending.append(arr)
        have += len(arr)
        while have >= size:
            joined = np.concatenate(pending)
            yield np.ascontiguousarray(joined[:size])
            pending, have = [joined[size:]], have - size
    if have:
        rest = np.concatenate(pending)
        yield np.ascontiguousarray(rest[np.arange(size) % len(rest)])


def _calibrator(trt: Any, cuda: Any, frames: Optional[Iterable[np.ndarray]], shape: Tuple[int, ...], cache: Path,
                reuse: bool) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``frames`` in batches of ``shape`` through one pycuda buffer;
    its calibration cache is ``cache`` (read back only when ``reuse``). Errors land in ``.error``:
    TensorRT swallows exceptions raised inside the callbacks."""

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = _rebatch(frames if frames is not None else (), shape)
            self.buffer = cuda.mem_alloc(int(np.prod(shape)))
            self.seen = 0
            self.error: Optional[ExportError] = None

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            try:
                batch = next(self.batches, None)
            except ExportError as e:
                self.error, batch = e, None
            if batch is None:
                if not self.seen and self.error is None:
                    self.error = ExportError("calib_frames held no frames to calibrate INT8 on")
                return None
            cuda.memcpy_htod(self.buffer, batch)
            self.seen += len(batch)
            return [int(self.buffer)]

        def read_calibration_cache(self) -> Optional[bytes]:
            return cache.read_bytes() if reuse and cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            atomic_write(cache, bytes(data))

    return _EntropyCalibrator()


def _cached(engine: Path, meta: dict, weights: Optional[str]) -> bool:
    """Is there an engine whose (valid) side-car records exactly ``meta`` and the weights' sha256?"""
    if not engine.is_file():
        return False
    try:
        info, _ = read_sidecar(engine)
    except RunnerError:
        return False
    return info.get(WEIGHTS_KEY) == weights and all(info.get(k) == v for k, v in meta.items())
