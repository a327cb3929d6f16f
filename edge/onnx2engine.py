"""ONNX -> TensorRT engine, built on the machine that will run it and cached.

    engine = build_engine("model_dir/model.onnx", "model_dir", precision="fp16", batch="dynamic")
    with TrtRunner(engine) as r: ...

The engine goes to ``out_dir/engines/<key>.engine`` (the format table's file), ``key`` naming precision,
batch profile and device (:func:`~lineguard.edge.tensorrt.engine_key`: ``fp16-b1-cuda0``, ``int8-b4-dla0``),
so engines of other precisions or devices sit side by side. The side-car ``<key>.json`` holds the model
description (ONNX metadata ``lineguard.model``), the TensorRT version, GPU name and the ONNX file's sha256
(an engine runs only where it was built), plus build seconds, DLA fallback and, for calibrated INT8, the frames
the calibrator fed (``calibrated_on``; 0 when the scales came from the ``<key>.calib`` cache). An engine whose side-car
records exactly this build is reused; otherwise it is rebuilt in place.

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
Devices (``devices.parse_device``): ``cuda``/``cuda:N`` builds on GPU N; ``dla:N`` on DLA core N of GPU 0
(Xavier: dla:0, dla:1): static batch, fp16/int8, GPU fallback allowed. The network layers that cannot run
on the DLA (``IBuilderConfig.can_run_on_DLA`` per parsed layer, before fusion) go to the side-car's
``dla_gpu_fallback`` and the log; ``null`` where this TensorRT lacks that call.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from lineguard.data.modelspec import ModelSpec
from lineguard.devices import Device, parse_device
from lineguard.edge.formats import ExportError
from lineguard.edge.onnx_check import (
    check_engine_io,
    check_engine_precision,
    check_tensorrt,
    input_convs,
    is_qdq,
    load_onnx,
)
from lineguard.edge.runners.base import INPUT, SPEC_KEY, WEIGHTS_KEY, RunnerError, check_weights, spec_of_model
from lineguard.edge.tensorrt import (
    ENGINE,
    engine_key,
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

__all__ = ["DYNAMIC_PROFILE", "PRECISIONS", "build_engine", "installed_major"]

PRECISIONS = ("fp32", "fp16", "int8")
DYNAMIC_PROFILE = (1, 8, 32)  # batch "dynamic": min / opt / max frames per call
# side-car facts under which <key>.calib still holds
_SAME_CALIBRATION = ("tensorrt", "gpu", "onnx_sha256", "calib_sha256")

_log = logging.getLogger(__name__)


@contextmanager
def _as_export_error() -> Iterator[None]:
    try:
        yield
    except RunnerError as e:
        raise ExportError(str(e)) from None


def installed_major() -> int:
    """The major version of the installed TensorRT; :class:`ExportError` when it is missing or too old."""
    with _as_export_error():
        return trt_version(import_tensorrt("building a TensorRT engine"))[0]


def build_engine(onnx_path: Union[str, Path], out_dir: Union[str, Path], *, precision: str = "fp16",
                 batch: Union[int, str] = 1, workspace_gib: float = 2.0, device: Union[str, Device] = "cuda",
                 calib_frames: Optional[Iterable[np.ndarray]] = None, cache: bool = True) -> Path:
    """Build (or reuse) the engine for ``onnx_path``; returns ``out_dir/engines/<key>.engine``.

    ``batch``: an int (fixed batch) or "dynamic" (profile 1/8/32). ``device``: cuda, cuda:N or dla:N.
    ``calib_frames``: a uint8 (n, H, W, C) array, or an iterable of such batches, for INT8 calibration of a
    float ONNX on TensorRT 8.x; their sha256 is part of the cache key (other frames: calibrated and built again).
    ``cache=False`` rebuilds, and recalibrates instead of reading ``<key>.calib``."""
    onnx_path = Path(onnx_path)
    target = parse_device(device, ENGINE.devices, ExportError)
    profile = _profile(precision, batch, workspace_gib, target)
    model = load_onnx(onnx_path)
    weights = {p.key: p.value for p in model.metadata_props}.get(WEIGHTS_KEY)
    with _as_export_error():
        spec = spec_of_model(model, str(onnx_path))
        check_weights(onnx_path, weights, spec, "onnx", model_dir=out_dir)  # never an engine of stale weights
    check_engine_io(model, onnx_path, spec, batch)
    h, w = spec.preprocess.size
    calib, calib_sha256 = _calibration_set(calib_frames, (h, w, spec.preprocess.channels))
    with _as_export_error():
        trt = import_tensorrt("building a TensorRT engine")
        cuda = import_pycuda("building a TensorRT engine")
    if trt_version(trt) <= (8, 5):  # 8.6 reads more (LayerNormalization, opset 18)
        check_tensorrt(model, "8.5")
    quantized = is_qdq(model)
    check_engine_precision(model, onnx_path, precision, trt_version(trt)[0], quantized, calib is not None,
                           dla=target.kind == "dla")
    with _as_export_error():
        gpu, context = open_device(cuda, target.index if target.kind == "cuda" else 0)
    try:
        with pushed(cuda, context):
            meta = {"tensorrt": trt.__version__, "gpu": gpu, "precision": precision, "batch": batch,
                    "profile": list(profile), "device": str(target), "onnx_sha256": sha256_file(onnx_path),
                    "calib_sha256": calib_sha256}
            engine = ENGINE.path(out_dir, engine_key(precision, profile, target))
            previous = _previous(engine)
            if cache and engine.is_file() and previous.get(WEIGHTS_KEY) == weights and _same(previous, meta):
                return engine
            job = _Build(trt, cuda, onnx_path, spec, input_convs(model), quantized, precision=precision,
                         profile=profile, workspace_gib=workspace_gib, device=target, calib_frames=calib,
                         calib_cache=engine.with_suffix(".calib"),
                         reuse_calib=cache and _same(previous, meta, _SAME_CALIBRATION))
            _build_and_write(engine, job, meta, weights)
            return engine
    finally:
        context.detach()


def _previous(engine: Path) -> Dict[str, Any]:
    """The usable side-car of ``engine`` as it is before this build; {} if there is none."""
    try:
        return read_sidecar(engine)[0]
    except RunnerError:
        return {}


def _same(info: Dict[str, Any], meta: Dict[str, Any], keys: Optional[Sequence[str]] = None) -> bool:
    """Does side-car ``info`` record ``meta``'s values (for ``keys``, default all)?"""
    return bool(info) and all(info.get(k) == meta[k] for k in (meta if keys is None else keys))


def _build_and_write(engine: Path, job: _Build, meta: Dict[str, Any], weights: Optional[str]) -> None:
    """Run ``job``; write the engine and its side-car (the old side-car goes first: an engine never sits
    next to the side-car of another build)."""
    engine.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plan, fallback = job.run()
    sidecar_path(engine).unlink(missing_ok=True)
    atomic_write(engine, plan)
    side = dict(meta, format="lineguard-engine", workspace_gib=job.workspace_gib,
                build_seconds=round(time.perf_counter() - start, 1), dla_gpu_fallback=fallback,
                calibrated_on=job.calibrated_on)
    side[SPEC_KEY] = job.spec.model_dump(mode="json")
    side[WEIGHTS_KEY] = weights  # the runner refuses the engine once the model directory's weights change
    atomic_write(sidecar_path(engine), json.dumps(side, indent=2))


def _profile(precision: str, batch: Union[int, str], workspace_gib: float, device: Device) -> Tuple[int, int, int]:
    """Check the options; the (min, opt, max) batch profile."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if not workspace_gib > 0:
        raise ExportError(f"workspace_gib {workspace_gib}: must be > 0")
    if batch == "dynamic":
        profile = DYNAMIC_PROFILE
    elif isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
        profile = (batch, batch, batch)
    else:
        raise ExportError(f"batch {batch!r}: a positive int (fixed batch) or 'dynamic' "
                          f"(profile {'/'.join(map(str, DYNAMIC_PROFILE))})")
    if device.kind == "dla" and batch == "dynamic":
        raise ExportError(f"device {device}: the DLA needs static shapes (min = opt = max); build a fixed batch")
    if device.kind == "dla" and precision == "fp32":
        raise ExportError(f"device {device}: the DLA runs FP16 or INT8 only; use precision fp16 or int8")
    return profile


@dataclass
class _Build:
    """One TensorRT build of one ONNX file, with a logger that keeps TensorRT's messages for errors."""

    trt: Any
    cuda: Any
    path: Path
    spec: ModelSpec
    input_convs: Sequence[str]
    quantized: bool
    precision: str
    profile: Tuple[int, int, int]
    workspace_gib: float
    device: Device
    calib_frames: Optional[List[np.ndarray]]
    calib_cache: Path
    reuse_calib: bool

    def __post_init__(self) -> None:
        self.major = trt_version(self.trt)[0]
        self.log = trt_logger(self.trt)
        self.mark = self.log.seq
        h, w = self.spec.preprocess.size
        self.frame = (h, w, self.spec.preprocess.channels)
        self.calibrated_on: Optional[int] = None  # INT8 calibration: frames fed (0: the scales came from .calib)

    def errors(self) -> str:
        return "; ".join(self.log.errors(self.mark)[-5:]) or "no error logged"

    def run(self) -> Tuple[bytes, Optional[List[str]]]:
        """(serialized engine, DLA fallback layers or None)."""
        builder = self.trt.Builder(self.log)
        network = self._network(builder)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(self.workspace_gib * (1 << 30)))
        opt_profile = self._optimization_profile(builder, network, config)
        calibrator = self._precision(network, config, opt_profile)
        fallback = self._dla(builder, network, config) if self.device.kind == "dla" else None
        try:
            plan = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.buffer.free()  # now, while the CUDA context is current
                self.calibrated_on = calibrator.seen
        if calibrator is not None and calibrator.error is not None:
            raise calibrator.error
        if plan is None:
            raise ExportError(f"{self.path}: TensorRT {self.trt.__version__} could not build the {self.precision} "
                              f"engine (batch profile {self.profile}, {self.device}): {self.errors()} (for "
                              "'insufficient memory' or tactic errors raise the workspace)")
        return bytes(plan), fallback

    def _network(self, builder: Any) -> Any:
        """The parsed network: explicit batch before 10, strongly typed from 11."""
        flag = self.trt.NetworkDefinitionCreationFlag
        flags = 1 << int(flag.EXPLICIT_BATCH) if self.major < 10 else 0
        strongly_typed = getattr(flag, "STRONGLY_TYPED", None)
        if self.major >= 11 and strongly_typed is not None:  # 11 is always strongly typed; the flag is accepted
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = self.trt.OnnxParser(network, self.log)
        if not parser.parse_from_file(str(self.path)):
            said = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 5)))
            raise ExportError(f"{self.path}: TensorRT {self.trt.__version__}'s ONNX parser rejected it: "
                              f"{said or self.errors()}")
        return network

    def _optimization_profile(self, builder: Any, network: Any, config: Any) -> Any:
        """The batch profile for a dynamic-batch network (None for a fixed one)."""
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        if not any(t.name == INPUT and t.shape[0] == -1 for t in inputs):
            return None
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(INPUT, *((b, *self.frame) for b in self.profile))
        config.add_optimization_profile(opt_profile)
        return opt_profile

    def _precision(self, network: Any, config: Any, opt_profile: Any) -> Any:
        """Set the precision flags (none from 11: strongly typed); the INT8 calibrator, if one is used."""
        trt = self.trt
        if self.major >= 11 or self.precision == "fp32":
            return None
        config.set_flag(trt.BuilderFlag.FP16)
        if self.precision != "int8":
            return None
        config.set_flag(trt.BuilderFlag.INT8)
        if self.quantized:
            return None
        calibrator = _calibrator(trt, self.cuda, self.calib_frames, (self.profile[1], *self.frame),
                                 self.calib_cache, self.reuse_calib)
        config.int8_calibrator = calibrator
        if opt_profile is not None:
            config.set_calibration_profile(opt_profile)
        _input_convs_fp16(trt, network, config, self.input_convs)
        return calibrator

    def _dla(self, builder: Any, network: Any, config: Any) -> Optional[List[str]]:
        """Build for DLA core ``device.index`` with GPU fallback; the layers that fall back (see module doc)."""
        cores = int(builder.num_DLA_cores)
        if self.device.index >= cores:
            have = f"dla:0..dla:{cores - 1}" if cores else "none"
            raise ExportError(f"device {self.device}: this machine has {cores} DLA core(s) ({have})")
        config.default_device_type = self.trt.DeviceType.DLA
        config.DLA_core = self.device.index
        config.set_flag(self.trt.BuilderFlag.GPU_FALLBACK)
        fallback = _dla_fallback(network, config)
        if fallback:
            _log.warning("%s: %d layer(s) cannot run on %s and fall back to the GPU: %s", self.path,
                         len(fallback), self.device, ", ".join(fallback))
        return fallback


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


def _calibration_set(frames: Optional[Union[np.ndarray, Iterable[np.ndarray]]], frame: Tuple[int, int, int]
                     ) -> Tuple[Optional[List[np.ndarray]], Optional[str]]:
    """The calibration batches, each checked to be uint8 (n, *frame), and the sha256 of their frames in order
    (None, None without any)."""
    if frames is None:
        return None, None
    batches = [frames] if isinstance(frames, np.ndarray) else list(frames)
    digest = hashlib.sha256()
    for i, arr in enumerate(batches):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != frame:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ExportError(f"calibration batch {i}: expected uint8 (n, {', '.join(map(str, frame))}) frames, "
                              f"got {got}")
        digest.update(np.ascontiguousarray(arr).tobytes())
    return batches, digest.hexdigest()


def _rebatch(frames: Sequence[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """uint8 (n, H, W, C) arrays regrouped into C-contiguous batches of exactly ``size`` frames; the last partial
    batch is filled by repeating its frames."""
    pending: List[np.ndarray] = []
    have = 0
    for arr in frames:
        pending.append(arr)
        have += len(arr)
        while have >= size:
            joined = np.concatenate(pending)
            yield np.ascontiguousarray(joined[:size])
            pending, have = [joined[size:]], have - size
    if have:
        rest = np.concatenate(pending)
        yield np.ascontiguousarray(rest[np.arange(size) % len(rest)])


def _calibrator(trt: Any, cuda: Any, frames: Optional[List[np.ndarray]], shape: Tuple[int, ...], cache: Path,
                reuse: bool) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``frames`` in batches of ``shape`` through one pycuda buffer;
    its calibration cache is ``cache`` (read back only when ``reuse``). TensorRT prints an exception raised
    inside a callback and goes on (calibration ends early, the build "succeeds"), so every callback catches
    everything into ``.error``, the first one kept, and the builder fails with it."""

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = _rebatch(frames or [], shape[0])
            self.buffer = cuda.mem_alloc(int(np.prod(shape)))
            self.seen = 0
            self.error: Optional[ExportError] = None

        def failed(self, what: str, e: Exception) -> None:
            if self.error is None:
                self.error = e if isinstance(e, ExportError) else ExportError(
                    f"INT8 calibration failed while {what}: {type(e).__name__}: {e}")

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            if self.error is not None:
                return None
            try:
                batch = next(self.batches, None)
                if batch is None:
                    if not self.seen:
                        self.error = ExportError("calib_frames held no frames to calibrate INT8 on")
                    return None
                cuda.memcpy_htod(self.buffer, batch)
                self.seen += len(batch)
                return [int(self.buffer)]
            except Exception as e:  # see the docstring: TensorRT would swallow it
                self.failed("feeding a batch", e)
                return None

        def read_calibration_cache(self) -> Optional[bytes]:
            try:
                return cache.read_bytes() if reuse and cache.is_file() else None
            except Exception as e:  # TensorRT would swallow it
                self.failed(f"reading {cache}", e)
                return None

        def write_calibration_cache(self, data: Any) -> None:
            try:
                atomic_write(cache, bytes(data))
            except Exception as e:  # TensorRT would swallow it
                self.failed(f"writing {cache}", e)

    return _EntropyCalibrator()

