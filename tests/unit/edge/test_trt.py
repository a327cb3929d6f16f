"""TensorRT path: ONNX compatibility check, engine builder, engine runner.

TensorRT and pycuda cannot be installed here, so most tests run against minimal fakes of ``tensorrt``,
``pycuda.driver`` and cuda-python's runtime module (put into ``sys.modules``). The fake engine
"executes" the tiny test model in numpy from the device buffers it is given, so the tests check the
runner's buffer, shape and batch wiring. ``test_real_tensorrt`` builds and runs a real engine where
TensorRT, pycuda and a GPU exist.
"""

from __future__ import annotations

import enum
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lineguard.data.modelspec import ModelSpec
from lineguard.edge.export import export
from lineguard.edge.formats import FORMATS, ExportError, Format, export_format
from lineguard.edge.onnx2engine import build_engine
from lineguard.edge.onnx_check import (
    TRT85_OPS,
    check_engine_io,
    check_tensorrt,
    tensorrt_problems,
    uint8_input_problems,
)
from lineguard.edge.runners import load_runner, resolve_model_file
from lineguard.edge.runners.base import INPUT, OUTPUTS, SPEC_KEY, WEIGHTS_KEY, RunnerError
from lineguard.edge.runners.trt import TrtRunner
from lineguard.edge.tensorrt import list_engines, sidecar_path
from lineguard.files import sha256_file

H, W = 16, 24  # not square: the profiles, buffers and checks keep height and width apart
GEMM_W = np.array([[-4.0, 4.0]], np.float32)
GEMM_B = np.array([2.0, -2.0], np.float32)
SPEC = ModelSpec(arch={"name": "tiny"}, classes=["ok", "ng"], ok_class="ok",
                 preprocess={"size": (H, W), "channels": 1, "mean": [0.5], "std": [0.5]})


# ---------------------------------------------------------------- the tiny model and its numpy twin

def reference(frames: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the tiny model computes: probs, ng_score, heatmap."""
    x = frames.astype(np.float32) / 255.0
    logits = x.mean(axis=(1, 2, 3))[:, None] @ GEMM_W + GEMM_B
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    heat = x[..., 0].reshape(len(x), H // 8, 8, W // 8, 8).mean(axis=(2, 4))[:, None]
    return probs, 1.0 - probs[:, 0], heat


def tiny_model(batch: Any = "N", qdq: Optional[int] = None, fp16: bool = False, spec: bool = True,
               extra: Optional[List[onnx.NodeProto]] = None, opset: int = 17,
               transpose_first: bool = False) -> onnx.ModelProto:
    """uint8 frames (batch, H, W, 1) -> Cast -> Transpose -> Conv/Relu -> pool/Gemm/Softmax -> probs, ng_score,
    heatmap (the exporter's order). ``qdq``: add a QuantizeLinear/DequantizeLinear pair whose zero point has
    that TensorProto type; ``transpose_first``: the frames go through the Transpose before the Cast (what the
    exporter wrote before it cast first, which TensorRT cannot build)."""
    inits = [numpy_helper.from_array(np.float32(255.0), "c255"), numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.pad(np.ones((1, 1, 1, 1), np.float32), ((0, 0), (0, 0), (1, 1), (1, 1))),
                                     "conv_w"),
             numpy_helper.from_array(GEMM_W, "gemm_w"), numpy_helper.from_array(GEMM_B, "gemm_b"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([1], np.int64),
                                                                                           "s1"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    x = "x01"
    if transpose_first:
        nodes = [helper.make_node("Transpose", [INPUT], ["u8t"], perm=[0, 3, 1, 2], name="nchw"),
                 helper.make_node("Cast", ["u8t"], ["t"], to=TensorProto.FLOAT, name="cast")]
    else:
        nodes = [helper.make_node("Cast", [INPUT], ["f"], to=TensorProto.FLOAT, name="cast"),
                 helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2], name="nchw")]
    nodes.append(helper.make_node("Div", ["t", "c255"], [x], name="scale"))
    if qdq is not None:
        zero = np.zeros((), helper.tensor_dtype_to_np_dtype(qdq))
        inits += [numpy_helper.from_array(np.float32(1 / 127), "q_scale"), numpy_helper.from_array(zero, "q_zero")]
        nodes += [helper.make_node("QuantizeLinear", [x, "q_scale", "q_zero"], ["q"], name="q"),
                  helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"], name="dq")]
        x = "dq"
    if fp16:
        inits.append(numpy_helper.from_array(np.zeros(1, np.float16), "unused_half"))
    nodes += [helper.make_node("Conv", [x, "conv_w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Relu", ["conv"], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["fl"], name="flatten"),
              helper.make_node("Gemm", ["fl", "gemm_w", "gemm_b"], ["logits"], name="fc"),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
              helper.make_node("Slice", ["probs", "s0", "s1", "s1"], ["p_ok"], name="p_ok"),
              helper.make_node("Sub", ["one", "p_ok"], ["ng"], name="ng"),
              helper.make_node("Reshape", ["ng", "flat"], ["ng_score"], name="ng_flat"),
              helper.make_node("AveragePool", ["r"], ["heatmap"], kernel_shape=[8, 8], strides=[8, 8], name="heat"),
              *(extra or [])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, [batch, H, W, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 2]),
         helper.make_tensor_value_info("ng_score", TensorProto.FLOAT, [batch]),
         helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [batch, 1, H // 8, W // 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if spec:
        helper.set_model_props(model, {SPEC_KEY: json.dumps(SPEC.model_dump(mode="json"))})
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def frames_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 1), dtype=np.uint8)


def test_reference_is_the_tiny_model() -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(tiny_model().SerializeToString(), providers=["CPUExecutionProvider"])
    x = frames_of(3)
    for got, want in zip(session.run(list(OUTPUTS), {INPUT: x}), reference(x)):
        np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------- ONNX compatibility check

def _graph_of(nodes: List[onnx.NodeProto], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_check_accepts_conv_relu_gemm_softmax() -> None:
    assert tensorrt_problems(tiny_model()) == []
    assert tensorrt_problems(tiny_model(qdq=TensorProto.INT8)) == []
    check_tensorrt(tiny_model())


def test_uint8_frames_must_go_straight_into_a_cast(tmp_path: Path) -> None:
    """TensorRT takes a uint8 input only into a Cast (8.5 has no UINT8 Transpose; 10 has UINT8 only at the I/O):
    the check refuses the old exporter order on both targets, and the builder refuses it before TensorRT."""
    ort = pytest.importorskip("onnxruntime")
    old = tiny_model(transpose_first=True)
    session = ort.InferenceSession(old.SerializeToString(), providers=["CPUExecutionProvider"])
    x = frames_of(2)
    np.testing.assert_allclose(session.run(["probs"], {INPUT: x})[0], reference(x)[0], atol=1e-5)  # ORT runs it
    for target in ("8.5", "10"):
        (problem,) = tensorrt_problems(old, target)
        assert "uint8 input 'frames' feeds 'nchw' (Transpose)" in problem and "Cast" in problem
    assert uint8_input_problems(tiny_model()) == []
    not_float = tiny_model()
    not_float.graph.node[0].attribute[0].i = TensorProto.INT32
    assert "feeds 'cast' (Cast)" in uint8_input_problems(not_float)[0]
    with pytest.raises(ExportError, match=r"old\.onnx: uint8 input 'frames' feeds 'nchw' \(Transpose\).*re-export"):
        check_engine_io(old, tmp_path / "old.onnx", SPEC, "dynamic")


def test_check_rejects_layernorm_on_85_only() -> None:
    assert "LayerNormalization" not in TRT85_OPS
    model = _graph_of([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln1")])
    problems = tensorrt_problems(model)
    assert len(problems) == 1 and "'ln1'" in problems[0] and "LayerNormalization" in problems[0]
    with pytest.raises(ExportError, match=r"ln1.*LayerNormalization"):
        check_tensorrt(model)
    assert tensorrt_problems(model, trt="10") == []


def test_check_opset_ceiling() -> None:
    model = _graph_of([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=18)
    assert any("opset 18" in p and "17" in p for p in tensorrt_problems(model))
    assert tensorrt_problems(model, trt="10") == []
    assert tensorrt_problems(_graph_of([helper.make_node("Relu", ["x"], ["y"])], opset=21), trt="10")
    with pytest.raises(ExportError, match="unknown TensorRT target"):
        tensorrt_problems(model, trt="9")


def test_check_domains_subgraphs_and_the_count(tmp_path: Path) -> None:
    branch = helper.make_graph([helper.make_node("LayerNormalization", ["x", "s", "b"], ["z"], name="inner_ln")],
                               "then", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])])
    nodes = [helper.make_node("FusedGemm", ["x"], ["a"], domain="com.microsoft", name="fused"),
             helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch, name="if")]
    nodes += [helper.make_node("Hardmax", ["x"], [f"h{i}"]) for i in range(11)]
    model = _graph_of(nodes)
    problems = tensorrt_problems(model)
    assert "com.microsoft" in problems[0] and sum("inner_ln" in p for p in problems) == 2
    assert any("unnamed node" in p and "Hardmax" in p for p in problems)
    with pytest.raises(ExportError, match=rf"{len(problems)} problem\(s\).*and {len(problems) - 10} more"):
        check_tensorrt(save(model, tmp_path / "m.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage\xff")
    with pytest.raises(ExportError, match=r"bad\.onnx: not a readable ONNX file"):
        check_tensorrt(tmp_path / "bad.onnx")


# ---------------------------------------------------------------- fakes: pycuda.driver, tensorrt, cuda-python

class CudaState:
    """Fake device memory and context bookkeeping shared by the fake modules."""

    def __init__(self, gpu: str) -> None:
        self.gpu = gpu
        self.memory: Dict[int, np.ndarray] = {}
        self.next_address = 0x1000
        self.depth = self.pushes = self.pops = self.detached = 0
        self.capturing: Dict[int, List[Callable[[], None]]] = {}
        self.launches = self.graphs_destroyed = 0

    def current(self) -> None:
        if self.depth <= 0:
            raise RuntimeError("fake CUDA: no current context")


def make_pycuda(state: CudaState) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")

    class Alloc:
        def __init__(self, nbytes: int) -> None:
            state.current()
            self.address = state.next_address
            state.next_address += nbytes + 256
            state.memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            state.current()
            del state.memory[self.address]

    class PrimaryContext:
        def push(self) -> None:
            state.depth += 1
            state.pushes += 1

        def detach(self) -> None:
            state.detached += 1

    class Context:
        @staticmethod
        def pop() -> None:
            state.depth -= 1
            state.pops += 1

    class Device:
        def __init__(self, i: int) -> None:
            self.i = i

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return state.gpu

        def retain_primary_context(self) -> PrimaryContext:
            return PrimaryContext()

    class Stream:
        handle = 0xBEEF

        def synchronize(self) -> None:
            state.current()

    def htod(dest: Alloc, src: np.ndarray, stream: Any = None) -> None:
        state.current()
        raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        state.memory[int(dest)][:raw.size] = raw

    def dtoh(dest: np.ndarray, src: Alloc, stream: Any = None) -> None:
        state.current()
        out = dest.reshape(-1).view(np.uint8)
        out[:] = state.memory[int(src)][:out.size]

    def init() -> None:
        if state.gpu == "":
            raise cuda.Error("cuInit failed: no CUDA-capable device is detected")

    cuda.Error = type("Error", (Exception,), {})
    cuda.init = init
    cuda.Device, cuda.Context, cuda.Stream, cuda.mem_alloc = Device, Context, Stream, Alloc
    cuda.memcpy_htod = cuda.memcpy_htod_async = htod
    cuda.memcpy_dtoh_async = dtoh
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    return cuda


class Recorder:
    """What the fake TensorRT saw."""

    def __init__(self) -> None:
        self.builds: List[Tuple[Any, Any]] = []
        self.calib_batches: List[np.ndarray] = []
        self.deserialized = 0
        self.contexts: List[Any] = []
        self.runtimes: List[Any] = []
        self.fail_build = False


def make_tensorrt(version: str, state: CudaState, rec: Recorder) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])

    class Severity(enum.Enum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, min_severity: Any = None) -> None:
            super().__init__()

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, **({"STRONGLY_TYPED": 5} if major >= 10 else {})})
    trt.BuilderFlag = enum.Enum("BuilderFlag", ["GPU_FALLBACK", "TF32", "PREFER_PRECISION_CONSTRAINTS"]
                                + (["FP16", "INT8"] if major < 11 else []))
    trt.float16 = "float16"
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "UINT8"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Tensor:
        def __init__(self, name: str, shape: Tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: List[Tensor] = []
            self.outputs: Dict[str, Tuple[int, ...]] = {}
            self.layers: List[Any] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Any:
            return self.layers[i]

    def dims(info: onnx.ValueInfoProto) -> Tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim)

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            model = onnx.load(path)
            weights = {t.name for t in model.graph.initializer}
            self.network.inputs = [Tensor(i.name, dims(i)) for i in model.graph.input if i.name not in weights]
            self.network.outputs = {o.name: dims(o) for o in model.graph.output}
            self.network.layers = [types.SimpleNamespace(name=n.name, type=types.SimpleNamespace(name=n.op_type))
                                   for n in model.graph.node]
            self.errors = [f"No importer registered for op: {n.op_type}" for n in model.graph.node if n.domain]
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: Dict[str, Tuple[Any, ...]] = {}

        def set_shape(self, name: str, lo: Tuple[int, ...], opt: Tuple[int, ...], hi: Tuple[int, ...]) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Config:
        def __init__(self) -> None:
            self.flags: set = set()
            self.pools: Dict[Any, int] = {}
            self.profiles: List[Profile] = []
            self.calibration_profile: Optional[Profile] = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            if major < 11:
                self.int8_calibrator = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile: Profile) -> None:
            self.calibration_profile = profile

        def can_run_on_DLA(self, layer: Any) -> bool:
            return layer.type.name not in ("Softmax", "Cast")

    class Builder:
        num_DLA_cores = 2  # Xavier

        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> Optional[bytes]:
            state.current()
            rec.builds.append((network, config))
            if rec.fail_build:
                self.logger.log(Severity.ERROR, "fake: could not find any implementation for node fc")
                return None
            calibrator = getattr(config, "int8_calibrator", None)
            if calibrator is not None and calibrator.read_calibration_cache() is None:
                shape = (calibrator.get_batch_size(), H, W, 1)
                while True:
                    pointers = calibrator.get_batch([INPUT])
                    if pointers is None:
                        break
                    raw = state.memory[pointers[0]][:int(np.prod(shape))]
                    rec.calib_batches.append(raw.reshape(shape).copy())
                if not rec.calib_batches:
                    return None
                calibrator.write_calibration_cache(b"fake calibration table")
            (frames,) = network.inputs
            plan = {"input": list(frames.shape), "outputs": {k: list(v) for k, v in network.outputs.items()},
                    "profile": [list(s) for s in config.profiles[0].shapes[INPUT]] if config.profiles else None}
            return b"FAKEPLAN" + json.dumps(plan).encode()

    class Engine:
        def __init__(self, plan: Dict[str, Any]) -> None:
            self.plan = plan
            self.names = [INPUT, *OUTPUTS]

        num_io_tensors = 4

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name == INPUT else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return trt.DataType.UINT8 if name == INPUT else trt.DataType.FLOAT

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            return tuple(self.plan["input"] if name == INPUT else self.plan["outputs"][name])

        def get_tensor_profile_shape(self, name: str, index: int) -> List[Tuple[int, ...]]:
            assert name == INPUT and index == 0 and self.plan["profile"]
            return [tuple(s) for s in self.plan["profile"]]

        def create_execution_context(self) -> Context:
            context = Context(self)
            rec.contexts.append(context)
            return context

    class Context:
        """Like TensorRT's: after a shape change the next enqueue does per-shape work, so a CUDA graph captured
        before the change is stale on this context (replaying it is an error here)."""

        def __init__(self, engine: Engine) -> None:
            self.engine, self.n = engine, 0
            self.addresses: Dict[str, int] = {}
            self.shapes: List[int] = []
            self.runs: List[int] = []
            self.shape_changes = 0

        def set_input_shape(self, name: str, shape: Tuple[int, ...]) -> bool:
            static = self.engine.plan["input"]
            lo, hi = (static[0], static[0]) if static[0] > 0 else (self.engine.plan["profile"][0][0],
                                                                    self.engine.plan["profile"][2][0])
            if name != INPUT or list(shape[1:]) != static[1:] or not lo <= shape[0] <= hi:
                return False
            self.shape_changes += self.n != shape[0]
            self.n = shape[0]
            self.shapes.append(self.n)
            return True

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            return (self.n, *self.engine.get_tensor_shape(name)[1:])

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            state.current()
            if stream in state.capturing:
                state.capturing[stream].append(lambda n=self.n, seen=self.shape_changes: self.replay(n, seen))
            else:
                self.run(self.n)
            return True

        def replay(self, n: int, seen: int) -> None:
            if self.shape_changes != seen:
                raise RuntimeError(f"fake TensorRT: a graph captured at batch {n} replayed on a context whose "
                                   "shape changed since")
            self.run(n)

        def run(self, n: int) -> None:
            size = n * H * W
            frames = state.memory[self.addresses[INPUT]][:size].reshape(n, H, W, 1)
            for name, value in zip(OUTPUTS, reference(frames)):
                raw = np.ascontiguousarray(value, np.float32).reshape(-1).view(np.uint8)
                state.memory[self.addresses[name]][:raw.size] = raw
            self.runs.append(n)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger, self.DLA_core = logger, -1
            rec.runtimes.append(self)

        def deserialize_cuda_engine(self, data: bytes) -> Optional[Engine]:
            rec.deserialized += 1
            try:
                assert data.startswith(b"FAKEPLAN")
                return Engine(json.loads(data[8:]))
            except (AssertionError, ValueError):
                self.logger.log(Severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: "
                                "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
                return None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def make_cudart(state: CudaState) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = enum.Enum("cudaError_t", ["cudaSuccess", "cudaErrorStreamCaptureInvalidated"], start=0)
    rt.cudaError_t = ok
    rt.cudaStreamCaptureMode = enum.Enum("cudaStreamCaptureMode", ["cudaStreamCaptureModeGlobal",
                                                                    "cudaStreamCaptureModeThreadLocal"])
    rt.cudaStream_t = int

    def begin(stream: int, mode: Any) -> Tuple[Any]:
        state.capturing[stream] = []
        return (ok.cudaSuccess,)

    def end(stream: int) -> Tuple[Any, Any]:
        return ok.cudaSuccess, list(state.capturing.pop(stream))

    def launch(graph_exec: List[Callable[[], None]], stream: int) -> Tuple[Any]:
        state.current()
        for op in graph_exec:
            op()
        state.launches += 1
        return (ok.cudaSuccess,)

    def destroy_exec(graph_exec: Any) -> Tuple[Any]:
        state.graphs_destroyed += 1
        return (ok.cudaSuccess,)

    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture, rt.cudaGraphLaunch = begin, end, launch
    rt.cudaGraphInstantiateWithFlags = lambda graph, flags: (ok.cudaSuccess, graph)
    rt.cudaGraphDestroy = lambda graph: (ok.cudaSuccess,)
    rt.cudaGraphExecDestroy = destroy_exec
    return rt


class Fakes:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def install(self, version: str = "8.5.2.2", gpu: str = "Xavier", cudart: bool = False) -> Fakes:
        self.state, self.rec = CudaState(gpu), Recorder()
        self.trt = make_tensorrt(version, self.state, self.rec)
        driver = make_pycuda(self.state)
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = driver
        mods: Dict[str, Any] = {"tensorrt": self.trt, "pycuda": pycuda, "pycuda.driver": driver}
        if cudart:
            mods["cuda.bindings.runtime"] = make_cudart(self.state)
        for name, module in mods.items():
            self.monkeypatch.setitem(sys.modules, name, module)
        return self

    @property
    def network(self) -> Any:
        return self.rec.builds[-1][0]

    @property
    def config(self) -> Any:
        return self.rec.builds[-1][1]

    def balanced(self) -> bool:
        return self.state.depth == 0 and self.state.pushes == self.state.pops


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(monkeypatch).install()


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return save(tiny_model(), tmp_path / "model.onnx")


# ---------------------------------------------------------------- builder

def test_build_85_explicit_batch_fp16_workspace_sidecar(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path / "m", workspace_gib=1.5)
    assert engine == tmp_path / "m" / "engines" / "fp16-b1-cuda0.engine"
    trt = fakes.trt
    assert fakes.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert fakes.config.pools == {trt.MemoryPoolType.WORKSPACE: int(1.5 * (1 << 30))}
    assert fakes.config.flags == {trt.BuilderFlag.FP16}
    assert fakes.config.profiles[0].shapes[INPUT] == ((1, H, W, 1),) * 3  # fixed batch 1 from a dynamic ONNX
    side = json.loads(sidecar_path(engine).read_text())
    assert side[SPEC_KEY] == SPEC.model_dump(mode="json")
    assert (side["tensorrt"], side["gpu"], side["precision"], side["batch"], side["device"]) == (
        "8.5.2.2", "Xavier", "fp16", 1, "cuda:0")
    assert side["profile"] == [1, 1, 1] and len(side["onnx_sha256"]) == 64 and side["dla_gpu_fallback"] is None
    assert "build_seconds" in side and sorted(p.name for p in engine.parent.iterdir()) == sorted(
        [engine.name, sidecar_path(engine).name])  # no temporary files left
    assert fakes.balanced() and fakes.state.detached == 1


def test_build_85_runs_the_85_operator_check(fakes: Fakes, tmp_path: Path) -> None:
    ln = helper.make_node("LayerNormalization", ["r", "one", "one"], ["unused"], name="ln")
    model_file = save(tiny_model(extra=[ln]), tmp_path / "ln.onnx")
    with pytest.raises(ExportError, match=r"TensorRT 8.5 cannot parse.*'ln' \(LayerNormalization\)"):
        build_engine(model_file, tmp_path)
    assert not fakes.rec.builds
    fakes.install(version="10.3.0")
    build_engine(model_file, tmp_path)  # 10 parses LayerNormalization
    assert fakes.network.flags == 0  # no EXPLICIT_BATCH from 10 on
    assert fakes.config.flags == {fakes.trt.BuilderFlag.FP16}


def test_build_refuses_bad_options_and_models(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    for kwargs, message in [({"precision": "bf16"}, "precision 'bf16'"),
                            ({"device": "gpu"}, r"device 'gpu': not one of cuda, cuda:N \(GPU N\); dla:N"),
                            ({"device": "cpu"}, "device 'cpu': not one of cuda"),
                            ({"device": "dla:2"}, r"device dla:2: this machine has 2 DLA core\(s\) \(dla:0..dla:1\)"),
                            ({"batch": 0}, "batch 0"), ({"batch": "auto"}, "batch 'auto'"),
                            ({"workspace_gib": 0}, "workspace_gib"),
                            ({"device": "dla:0", "batch": "dynamic"}, "DLA needs static shapes"),
                            ({"device": "dla:1", "precision": "fp32"}, "FP16 or INT8 only"),
                            ({"calib_frames": [frames_of(2)]}, "calibration frames apply only")]:
        with pytest.raises(ExportError, match=message):
            build_engine(onnx_file, tmp_path, **kwargs)
    with pytest.raises(ExportError, match=f"no '{SPEC_KEY}' metadata"):
        build_engine(save(tiny_model(spec=False), tmp_path / "nospec.onnx"), tmp_path)
    with pytest.raises(ExportError, match="fixed batch of 1; build with batch=1"):
        build_engine(save(tiny_model(batch=1), tmp_path / "b1.onnx"), tmp_path, batch="dynamic")
    assert not fakes.rec.builds


def test_build_failure_reports_tensorrt_errors(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    fakes.rec.fail_build = True
    with pytest.raises(ExportError, match=r"could not build the fp16 engine.*could not find any implementation"):
        build_engine(onnx_file, tmp_path)
    assert not (tmp_path / "engines").exists() or not list((tmp_path / "engines").iterdir())
    fakes.install(version="10.3.0")
    odd = helper.make_node("Frobnicate", ["r"], ["odd"], domain="com.example", name="odd")
    with pytest.raises(ExportError, match="ONNX parser rejected it: No importer registered for op: Frobnicate"):
        build_engine(save(tiny_model(extra=[odd]), tmp_path / "odd.onnx"), tmp_path)
    assert fakes.balanced()


def test_int8_on_85_calibrates_with_a_cache_file(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="pass calib_frames"):
        build_engine(onnx_file, tmp_path, precision="int8", batch=4)
    batches = [frames_of(3, seed=1), frames_of(4, seed=2), frames_of(3, seed=3)]
    engine = build_engine(onnx_file, tmp_path, precision="int8", batch=4, calib_frames=iter(batches))
    trt = fakes.trt
    assert fakes.config.flags == {trt.BuilderFlag.INT8, trt.BuilderFlag.FP16,
                                  trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS}
    assert isinstance(fakes.config.int8_calibrator, trt.IInt8EntropyCalibrator2)
    pinned = {layer.name: getattr(layer, "precision", None) for layer in fakes.network.layers}
    assert pinned["conv"] == trt.float16 and pinned["fc"] is None  # the frame's convolution stays FP16
    everything = np.concatenate(batches)
    fed = fakes.rec.calib_batches
    assert [len(b) for b in fed] == [4, 4, 4]  # 10 frames regrouped; the last batch repeats its 2 frames
    np.testing.assert_array_equal(np.concatenate(fed)[:10], everything)
    np.testing.assert_array_equal(fed[2][2:], everything[8:10])
    assert engine.with_suffix(".calib").read_bytes() == b"fake calibration table"
    assert list(fakes.state.memory) == [] and fakes.balanced()  # the calibration buffer was freed
    with pytest.raises(ExportError, match=rf"calibration batch 0: expected uint8 \(n, {H}, {W}, 1\)"):
        build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=[frames_of(2)[..., 0]])


def test_int8_85_dynamic_uses_the_calibration_profile(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    build_engine(onnx_file, tmp_path, precision="int8", batch="dynamic", calib_frames=frames_of(20))
    assert fakes.config.calibration_profile is fakes.config.profiles[0]
    assert [len(b) for b in fakes.rec.calib_batches] == [8, 8, 8]  # calibrates at the profile's opt batch


def test_int8_from_10_needs_symmetric_qdq(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    fakes.install(version="10.3.0")
    with pytest.raises(ExportError, match=r"QuantizeLinear/DequantizeLinear.*onnx-int8"):
        build_engine(onnx_file, tmp_path, precision="int8", calib_frames=[frames_of(2)])
    u8 = save(tiny_model(qdq=TensorProto.UINT8), tmp_path / "u8.onnx")
    with pytest.raises(ExportError, match=r"symmetric signed INT8.*\(q, dq\).*QInt8"):
        build_engine(u8, tmp_path, precision="int8")
    s8 = save(tiny_model(qdq=TensorProto.INT8), tmp_path / "s8.onnx")
    with pytest.raises(ExportError, match=r"not to precision int8 from a Q/DQ ONNX"):
        build_engine(s8, tmp_path, precision="int8", calib_frames=[frames_of(2)])
    build_engine(s8, tmp_path, precision="int8")
    trt = fakes.trt
    assert fakes.network.flags == 0 and fakes.config.int8_calibrator is None
    assert fakes.config.flags == {trt.BuilderFlag.INT8, trt.BuilderFlag.FP16}


def test_trt11_is_strongly_typed_without_precision_flags(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    trt = fakes.install(version="11.0.0").trt
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt, "IInt8EntropyCalibrator2")
    with pytest.raises(ExportError, match=r"strongly typed.*FP32.*ModelOpt AutoCast.*--keep_io_types"):
        build_engine(onnx_file, tmp_path, precision="fp16")
    for model, precision in [(tiny_model(), "fp32"), (tiny_model(fp16=True), "fp16"),
                             (tiny_model(qdq=TensorProto.INT8), "int8")]:
        build_engine(save(model, tmp_path / f"{precision}.onnx"), tmp_path, precision=precision)
        assert fakes.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert fakes.config.flags == set()


def test_dla_build_reports_gpu_fallback_layers(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path, device="dla:1")
    trt = fakes.trt
    assert fakes.config.default_device_type == trt.DeviceType.DLA and fakes.config.DLA_core == 1
    assert fakes.config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.GPU_FALLBACK}
    side = json.loads(sidecar_path(engine).read_text())
    assert side["device"] == "dla:1" and side["dla_gpu_fallback"] == ["cast (Cast)", "softmax (Softmax)"]
    assert engine.name == "fp16-b1-dla1.engine"
    with TrtRunner(engine) as runner:  # where it was built
        assert fakes.rec.runtimes[-1].DLA_core == 1 and runner.describe()["device"] == "dla:1"
        assert runner.predict(frames_of(2)).probs.shape == (2, 2)
    with TrtRunner(engine, device="dla:0"):  # the other core
        assert fakes.rec.runtimes[-1].DLA_core == 0
    with pytest.raises(RunnerError, match=r"built for dla:1, so it runs on a DLA core \(dla:N\), not device cuda:0"):
        TrtRunner(engine, device="cuda")
    with pytest.raises(RunnerError, match=r"device 'cpu': not one of cuda, cuda:N \(GPU N\); dla:N"):
        TrtRunner(engine, device="cpu")
    assert fakes.balanced() and fakes.state.detached == 3  # the build and the two runners that opened the GPU


def test_engine_cache(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    first = build_engine(onnx_file, tmp_path)
    assert build_engine(onnx_file, tmp_path) == first and len(fakes.rec.builds) == 1
    other = build_engine(onnx_file, tmp_path, precision="fp32")
    assert other.name == "fp32-b1-cuda0.engine" and len(fakes.rec.builds) == 2
    dynamic = build_engine(onnx_file, tmp_path, batch="dynamic")
    assert dynamic.name == "fp16-b1-32-cuda0.engine" and len(fakes.rec.builds) == 3
    assert build_engine(onnx_file, tmp_path, cache=False) == first and len(fakes.rec.builds) == 4
    side = sidecar_path(first)
    side.write_text(side.read_text().replace('"Xavier"', '"Orin"'))
    assert build_engine(onnx_file, tmp_path) == first and len(fakes.rec.builds) == 5  # side-car mismatch
    fakes.install(version="8.5.3.1")
    assert build_engine(onnx_file, tmp_path) == first and len(fakes.rec.builds) == 1  # another TensorRT: rebuilt
    assert json.loads(side.read_text())["tensorrt"] == "8.5.3.1"
    save(tiny_model(fp16=True), onnx_file)
    assert build_engine(onnx_file, tmp_path) == first and len(fakes.rec.builds) == 2  # another ONNX file: rebuilt
    assert json.loads(side.read_text())["onnx_sha256"] == sha256_file(onnx_file)
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        f"{key}.{ext}" for key in ("fp16-b1-cuda0", "fp32-b1-cuda0", "fp16-b1-32-cuda0") for ext in ("engine", "json"))


def test_calibration_cache_is_reused_only_for_the_same_onnx(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=frames_of(4))
    assert engine.name == "int8-b2-cuda0.engine" and len(fakes.rec.calib_batches) == 2
    side = sidecar_path(engine)
    assert json.loads(side.read_text())["calibrated_on"] == 4
    side.write_text(side.read_text().replace('"profile"', '"old_profile"'))  # not this build's side-car any more
    build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=frames_of(4))
    assert len(fakes.rec.builds) == 2 and len(fakes.rec.calib_batches) == 2  # rebuilt from <key>.calib
    assert json.loads(side.read_text())["calibrated_on"] == 0
    save(tiny_model(fp16=True), onnx_file)
    build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=frames_of(4))
    assert len(fakes.rec.builds) == 3 and len(fakes.rec.calib_batches) == 4  # another ONNX: calibrated again


def test_other_calibration_frames_calibrate_and_build_again(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    """The calibration set is part of the cache key: the same frames reuse the INT8 engine, other frames (even
    one changed pixel) calibrate and build it again instead of silently keeping the old one."""
    a = frames_of(4, seed=1)
    engine = build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=a)
    digest = json.loads(sidecar_path(engine).read_text())["calib_sha256"]
    assert len(digest) == 64 and len(fakes.rec.builds) == 1 and len(fakes.rec.calib_batches) == 2
    assert build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=[a[:1], a[1:]]) == engine
    assert len(fakes.rec.builds) == 1  # the same frames, batched otherwise: cached
    b = a.copy()
    b[3, 0, 0, 0] ^= 1
    build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=b)
    assert len(fakes.rec.builds) == 2 and len(fakes.rec.calib_batches) == 4  # calibrated again, not from .calib
    assert json.loads(sidecar_path(engine).read_text())["calib_sha256"] != digest
    assert json.loads(sidecar_path(build_engine(onnx_file, tmp_path)).read_text())["calib_sha256"] is None


def test_calibration_errors_fail_the_build(fakes: Fakes, onnx_file: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT prints an exception raised in a calibrator callback and builds on; the builder fails instead,
    with the error, and writes no engine."""
    driver = sys.modules["pycuda.driver"]

    def broken(*args: Any) -> None:
        raise driver.Error("cuMemcpyHtoD failed: an illegal memory access was encountered")

    monkeypatch.setattr(driver, "memcpy_htod", broken)
    with pytest.raises(ExportError, match=r"INT8 calibration failed while feeding a batch: Error: cuMemcpyHtoD"):
        build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=frames_of(4))
    assert not list((tmp_path / "engines").glob("*.engine")) and fakes.balanced()
    monkeypatch.undo()
    fakes.install()
    (tmp_path / "engines" / "int8-b2-cuda0.calib").mkdir(parents=True)  # the cache cannot be written
    with pytest.raises(ExportError, match=r"INT8 calibration failed while writing .*int8-b2-cuda0\.calib"):
        build_engine(onnx_file, tmp_path, precision="int8", batch=2, calib_frames=frames_of(4))
    assert not list((tmp_path / "engines").glob("*.engine"))


@pytest.mark.parametrize("version", ["8.4.3.1", "8.2.1.8", "7.1.3"])
def test_tensorrt_older_than_85_is_refused(monkeypatch: pytest.MonkeyPatch, onnx_file: Path, tmp_path: Path,
                                           version: str) -> None:
    fakes = Fakes(monkeypatch).install()
    engine = build_engine(onnx_file, tmp_path)
    fakes.install(version=version)
    with pytest.raises(ExportError, match=rf"needs TensorRT 8\.5 or newer.*this one is {version}"):
        build_engine(onnx_file, tmp_path)
    with pytest.raises(RunnerError, match=rf"the TensorRT runner needs TensorRT 8\.5 or newer.*{version}"):
        TrtRunner(engine)
    assert not fakes.rec.builds and fakes.rec.deserialized == 0


def test_dla_refuses_a_qdq_model_on_8(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    """TensorRT 8's DLA takes no explicitly quantized network: refused with the way that works (calibration)."""
    s8 = save(tiny_model(qdq=TensorProto.INT8), tmp_path / "s8.onnx")
    for precision in ("int8", "fp16"):
        with pytest.raises(ExportError, match=r"s8\.onnx: TensorRT 8's DLA does not take explicitly quantized.*"
                                              r"--calib DIR"):
            build_engine(s8, tmp_path, precision=precision, device="dla:0")
    assert not fakes.rec.builds
    engine = build_engine(onnx_file, tmp_path, precision="int8", device="dla:0", calib_frames=frames_of(2))
    assert engine.name == "int8-b1-dla0.engine" and fakes.rec.calib_batches  # calibrated DLA INT8 builds
    build_engine(s8, tmp_path, precision="int8")  # the Q/DQ model on the GPU builds


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch, onnx_file: Path,
                                             tmp_path: Path) -> None:
    Fakes(monkeypatch).install()
    engine = build_engine(onnx_file, tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match=r"'tensorrt'.*apt.*--system-site-packages.*pip install tensorrt"):
        build_engine(onnx_file, tmp_path)
    with pytest.raises(RunnerError, match=r"'tensorrt'.*--system-site-packages"):
        TrtRunner(engine)
    Fakes(monkeypatch).install()
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(RunnerError, match=r"'pycuda\.driver'.*pip install pycuda"):
        TrtRunner(engine)


def test_export_int8_without_tensorrt_is_an_export_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """export's INT8 path asks the TensorRT version before building: a missing package is an ExportError there
    too (the CLI's export verb reports ExportErrors), with the install hint."""
    d = model_folder(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match=r"building a TensorRT engine needs the Python package 'tensorrt'"):
        export(d, "engine", int8=True, calib=tmp_path / "images")


def test_engine_records_the_weights_and_refuses_stale_ones(fakes: Fakes, tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    SPEC.save(d)
    (d / SPEC.weights).write_bytes(b"weights v1")
    model = tiny_model()
    helper.set_model_props(model, {SPEC_KEY: json.dumps(SPEC.model_dump(mode="json")),
                                   WEIGHTS_KEY: sha256_file(d / SPEC.weights)})
    onnx_path = save(model, d / "model.onnx")
    engine = build_engine(onnx_path, d)
    assert json.loads(sidecar_path(engine).read_text())[WEIGHTS_KEY] == sha256_file(d / SPEC.weights)
    with load_runner(d, backend="trt") as runner:
        assert runner.predict(frames_of(2)).probs.shape == (2, 2)
    (d / SPEC.weights).write_bytes(b"weights v2")  # train --resume
    deserialized = fakes.rec.deserialized
    for path in (d, engine):
        with pytest.raises(RunnerError, match=rf"{engine.name}: stale.*--format engine"):
            load_runner(path, backend="trt")
    assert fakes.rec.deserialized == deserialized  # refused before TensorRT saw the engine
    with pytest.raises(ExportError, match=r"model\.onnx: stale.*--format onnx"):
        build_engine(onnx_path, d)
    save(tiny_model(), onnx_path)  # an export of before weights hashes
    with pytest.raises(ExportError, match="exported before weights hashes were recorded"):
        build_engine(onnx_path, d)
    assert not [p for p in d.rglob("*") if p.name.endswith(".tmp")]


def test_invalid_sidecar_is_not_a_cached_engine(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path)
    side = sidecar_path(engine)
    info = json.loads(side.read_text())
    del info[SPEC_KEY]  # the build facts still match, but the runner cannot use it: rebuilt, not reused
    side.write_text(json.dumps(info))
    assert build_engine(onnx_file, tmp_path) == engine and len(fakes.rec.builds) == 2
    with TrtRunner(engine) as runner:
        assert runner.describe()["gpu"] == "Xavier"


# ---------------------------------------------------------------- model directories: the format table, several engines

def model_folder(root: Path) -> Path:
    """A model directory: model.yaml, a weights file, and the model.onnx exported from it."""
    root.mkdir()
    SPEC.save(root)
    (root / SPEC.weights).write_bytes(b"weights")
    model = tiny_model()
    helper.set_model_props(model, {SPEC_KEY: json.dumps(SPEC.model_dump(mode="json")),
                                   WEIGHTS_KEY: sha256_file(root / SPEC.weights)})
    save(model, export_format("onnx").path(root))
    return root


def _fake_converters(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch2onnx and onnx2int8 without torch or a data set: they copy model.onnx to the file they are given."""
    def convert(src: Any, out: Path, precision: str) -> Path:
        model = onnx.load(str(src))
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                       "lineguard.precision": precision})
        return save(model, out)

    t2o = types.ModuleType("lineguard.edge.torch2onnx")
    t2o.torch2onnx = lambda model_dir, out, **kw: convert(Path(model_dir) / "model.onnx", out, "fp32")
    quantize = types.ModuleType("lineguard.edge.quantize")
    quantize.MAX_ACCURACY_DROP = 0.01
    quantize.onnx2int8 = lambda fp32, calib, data, out, max_drop: convert(fp32, out, "int8")
    monkeypatch.setitem(sys.modules, "lineguard.edge.torch2onnx", t2o)
    monkeypatch.setitem(sys.modules, "lineguard.edge.quantize", quantize)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.exported], ids=lambda f: f.name)
def test_every_format_file_is_what_export_writes_and_load_runner_finds(fakes: Fakes, monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path, fmt: Format) -> None:
    pytest.importorskip("onnxruntime")
    _fake_converters(monkeypatch)
    d = model_folder(tmp_path / "m")
    written = export(d, fmt.name, data=tmp_path / "images" if fmt.name == "onnx-int8" else None)
    found = fmt.keys(d) if fmt.keyed else {None: fmt.path(d)}
    assert list(found.values()) == [written]  # the table's file pattern names what export wrote
    key = next(iter(found))
    with load_runner(d, fmt.backend) as runner:  # ... and load_runner finds it in the folder
        assert runner.path == written and runner.backend == fmt.backend
    with load_runner(written) as runner:  # ... and knows the backend from the file
        assert runner.backend == fmt.backend
    assert resolve_model_file(d, fmt.backend, key) == written


def test_export_engine_reexports_an_onnx_that_transposes_before_its_cast(fakes: Fakes, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A model.onnx from before the Cast-first export is not current: `export --format engine` exports it again
    (here a stand-in for torch2onnx writes the fixed graph) instead of handing TensorRT what it cannot build."""
    d = model_folder(tmp_path / "m")
    old = tiny_model(transpose_first=True)
    helper.set_model_props(old, {SPEC_KEY: json.dumps(SPEC.model_dump(mode="json")),
                                 WEIGHTS_KEY: sha256_file(d / SPEC.weights)})
    save(old, d / "model.onnx")
    fixed = onnx.load(str(model_folder(tmp_path / "fixed") / "model.onnx"))
    calls: List[Path] = []
    t2o = types.ModuleType("lineguard.edge.torch2onnx")
    t2o.torch2onnx = lambda model_dir, out, **kw: calls.append(out) or save(fixed, out)
    monkeypatch.setitem(sys.modules, "lineguard.edge.torch2onnx", t2o)
    engine = export(d, "engine")
    assert calls == [d / "model.onnx"] and engine.is_file()
    assert uint8_input_problems(onnx.load(str(d / "model.onnx"))) == []


def test_export_engine_devices(fakes: Fakes, tmp_path: Path) -> None:
    d = model_folder(tmp_path / "m")
    assert export(d, "engine", device="cuda:0") == d / "engines" / "fp32-b1-cuda0.engine"
    assert export(d, "engine", half=True, device="dla:1") == d / "engines" / "fp16-b1-dla1.engine"
    assert fakes.config.DLA_core == 1
    for bad in ("gpu", "dla", "cpu", "cuda:x", "dla:0:1", " cuda"):
        with pytest.raises(ExportError, match=rf"device '{bad}': not one of cuda, cuda:N \(GPU N\); dla:N"):
            export(d, "engine", device=bad)
    with pytest.raises(ExportError, match="--device do"):
        export(d, "onnx-int8", device="cuda")
    assert len(fakes.rec.builds) == 2


def test_several_engines_need_a_key(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    fp16 = build_engine(onnx_file, tmp_path)
    with load_runner(tmp_path, "trt") as runner:  # one engine: that one
        assert runner.path == fp16
    fp32 = build_engine(onnx_file, tmp_path, precision="fp32")
    dla = build_engine(onnx_file, tmp_path, device="dla:0")
    keys = "fp16-b1-cuda0, fp16-b1-dla0, fp32-b1-cuda0"
    with pytest.raises(RunnerError, match=rf"engines: 3 engines, pick one by key \(keys: {keys}\)") as exc:
        load_runner(tmp_path, "trt")
    assert "\n" not in str(exc.value) and str(tmp_path / "engines") in str(exc.value)
    with pytest.raises(RunnerError, match=rf"no engine 'int8-b1-cuda0' \(keys: {keys}\)"):
        load_runner(tmp_path, "trt", key="int8-b1-cuda0")
    for key, engine in (("fp32-b1-cuda0", fp32), ("fp16-b1-dla0", dla)):
        with load_runner(tmp_path, key=key) as runner:  # backend auto: a key picks an engine
            assert runner.path == engine and runner.backend == "trt"
    assert fakes.rec.runtimes[-1].DLA_core == 0
    for path, backend in ((fp16, "trt"), (tmp_path, "ort")):
        with pytest.raises(RunnerError, match="key 'fp16-b1-cuda0' picks one of a model directory's engines"):
            load_runner(path, backend, key="fp16-b1-cuda0")
    assert not list(fakes.state.memory) and fakes.balanced()


def test_list_engines_summarises_the_sidecars(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    assert list_engines(tmp_path) == {}
    fp16 = build_engine(onnx_file, tmp_path, batch="dynamic")
    dla = build_engine(onnx_file, tmp_path, device="dla:1", batch=2)
    entries = list_engines(tmp_path)
    assert list(entries) == ["fp16-b1-32-cuda0", "fp16-b2-dla1"]
    entry = entries["fp16-b2-dla1"]
    assert entry.file == dla and entry.error is None and isinstance(entry.summary.pop("build_seconds"), float)
    assert entry.summary == {"precision": "fp16", "batch": 2, "profile": [2, 2, 2], "device": "dla:1",
                             "tensorrt": "8.5.2.2", "gpu": "Xavier"}
    assert entries["fp16-b1-32-cuda0"].summary["profile"] == [1, 8, 32]
    sidecar_path(fp16).write_text("{")
    broken = list_engines(tmp_path)["fp16-b1-32-cuda0"]
    assert broken.file == fp16 and broken.summary == {} and "unreadable engine side-car" in str(broken.error)
    with load_runner(tmp_path, key="fp16-b2-dla1") as runner:  # a broken neighbour does not matter
        assert runner.batch_range == (2, 2)


# ---------------------------------------------------------------- runner

@pytest.mark.parametrize(("batch", "expected_range", "n", "calls"), [
    (1, (1, 1), 3, [1, 1, 1]),
    (4, (4, 4), 1, [4]),  # fewer frames than the fixed batch: padded, padding dropped
    (4, (4, 4), 9, [4, 4, 4]),
    ("dynamic", (1, 32), 37, [32, 5]),
    ("dynamic", (1, 32), 1, [1]),
])
def test_runner_wires_buffers_and_batches(fakes: Fakes, onnx_file: Path, tmp_path: Path, batch: Any,
                                          expected_range: Tuple[int, int], n: int, calls: List[int]) -> None:
    with TrtRunner(build_engine(onnx_file, tmp_path, batch=batch)) as runner:
        assert runner.batch_range == expected_range and runner.backend == "trt"
        context = fakes.rec.contexts[-1]
        assert context.shapes == [expected_range[1]]  # buffers sized once at the largest batch
        x = frames_of(n, seed=n)
        scores = runner.predict(x)
        assert context.runs == calls and context.shapes[1:] == calls
        for got, want in zip((scores.probs, scores.ng_score, scores.heatmap), reference(x)):
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-6)
        assert runner.describe()["engine"].endswith(".engine")
    assert fakes.balanced() and fakes.state.detached == 2 and fakes.state.memory == {}  # build + runner


def test_runner_rejects_bad_frames(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    with TrtRunner(build_engine(onnx_file, tmp_path)) as runner:
        with pytest.raises(RunnerError, match="uint8"):
            runner.predict(frames_of(2).astype(np.float32))
        with pytest.raises(RunnerError, match=r"\(2, 20, 20, 1\) do not fit"):
            runner.predict(np.zeros((2, 20, 20, 1), np.uint8))
        assert runner.predict(frames_of(1)[0, ..., 0]).probs.shape == (1, 2)  # one gray frame


def test_close_is_idempotent(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    runner = TrtRunner(build_engine(onnx_file, tmp_path, batch="dynamic"))
    runner.close()
    runner.close()
    assert fakes.state.detached == 2 and fakes.balanced() and fakes.state.memory == {}  # build + runner
    with pytest.raises(RunnerError, match="closed"):
        runner.predict(frames_of(1))


def test_foreign_engine_is_refused_before_deserializing(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path)
    fakes.install(version="8.5.3.1")
    with pytest.raises(RunnerError, match=r"built for TensorRT 8\.5\.2\.2 on GPU Xavier, this machine has TensorRT "
                                          r"8\.5\.3\.1 on GPU Xavier; rebuild it with `lineguard export --format "
                                          "engine`"):
        TrtRunner(engine)
    fakes.install(gpu="Orin")
    with pytest.raises(RunnerError, match="on GPU Orin"):
        TrtRunner(engine)
    assert fakes.rec.deserialized == 0 and fakes.state.detached == 1 and fakes.balanced()


def test_missing_sidecar_and_corrupt_engine(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path)
    side = sidecar_path(engine)
    text = side.read_text()
    side.unlink()
    with pytest.raises(RunnerError, match=rf"{side.name}: missing"):
        TrtRunner(engine)
    side.write_text("{")
    with pytest.raises(RunnerError, match="unreadable engine side-car"):
        TrtRunner(engine)
    side.write_text(text)
    plan = engine.read_bytes()
    engine.write_bytes(plan[:5])
    with pytest.raises(RunnerError, match=rf"{engine}: TensorRT 8.5.2.2 cannot deserialize.*magicTagRead"):
        TrtRunner(engine)
    engine.write_bytes(plan[:-7])
    with pytest.raises(RunnerError, match="truncated or corrupt"):
        TrtRunner(engine)
    assert fakes.balanced() and fakes.state.detached == 3  # the build and the two runners that opened the GPU


def test_engine_that_does_not_fit_the_model(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path)
    side = sidecar_path(engine)
    info = json.loads(side.read_text())
    info[SPEC_KEY]["preprocess"]["size"] = [32, 32]
    side.write_text(json.dumps(info))
    with pytest.raises(RunnerError, match=rf"engine input \(-1, {H}, {W}, 1\) does not take the model's frames "
                                          r"\(N, 32, 32, 1\)"):
        TrtRunner(engine)
    info[SPEC_KEY]["preprocess"]["size"] = [H, W]
    info[SPEC_KEY]["classes"] = ["ok", "scratch", "dent"]
    side.write_text(json.dumps(info))
    with pytest.raises(RunnerError, match="engine has 2 classes, the model description 3"):
        TrtRunner(engine)
    assert fakes.balanced() and fakes.state.memory == {}


def test_no_cuda_device(fakes: Fakes, onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path)
    fakes.state.gpu = ""
    with pytest.raises(RunnerError, match="CUDA device 0 is not usable: cuInit failed"):
        TrtRunner(engine)
    with pytest.raises(ExportError, match="CUDA device 0 is not usable"):
        build_engine(onnx_file, tmp_path)
    fakes.state.gpu = "Xavier"
    with pytest.raises(RunnerError, match="CUDA device 1 does not exist"):
        TrtRunner(engine, device="cuda:1")


def test_cuda_graph_one_context_per_batch_size(monkeypatch: pytest.MonkeyPatch, onnx_file: Path,
                                               tmp_path: Path) -> None:
    """Batch sizes that come and go ([1, 8, 3, 8, 1, 32], as the smoke script runs them): each captured graph
    replays on a context of its own whose shape never changed (the fake fails a graph replayed on a context
    that ran another shape since its capture), with the outputs of the runner without graphs."""
    fakes = Fakes(monkeypatch).install(cudart=True)
    engine = build_engine(onnx_file, tmp_path, batch="dynamic")
    sizes = (1, 8, 3, 8, 1, 32)
    with TrtRunner(engine) as plain:
        want = [plain.predict(frames_of(n, seed=i)) for i, n in enumerate(sizes)]
    first = len(fakes.rec.contexts)
    with TrtRunner(engine, cuda_graph=True) as runner:
        for i, n in enumerate(sizes):
            got = runner.predict(frames_of(n, seed=i))
            for a, b in zip(got.__dict__.values(), want[i].__dict__.values()):
                np.testing.assert_allclose(a, b, rtol=1e-6)
        assert sorted(runner._graphs) == [1, 3, 8, 32] and fakes.state.launches == len(sizes)
        main, *graphs = fakes.rec.contexts[first:]
        assert main.runs == [] and [c.shapes for c in graphs] == [[1], [8], [3], [32]]  # set once, never changed
        assert [c.runs for c in graphs] == [[1, 1, 1], [8, 8, 8], [3, 3], [32, 32]]  # warm-up, then launches
        assert runner.describe()["cuda_graph"] is True
    assert fakes.state.graphs_destroyed == 4 and fakes.balanced() and fakes.state.memory == {}


def test_the_fake_context_fails_a_graph_replayed_after_a_shape_change(monkeypatch: pytest.MonkeyPatch,
                                                                       onnx_file: Path, tmp_path: Path) -> None:
    """What the test above relies on: capturing on one context and changing its shape breaks the replay."""
    fakes = Fakes(monkeypatch).install(cudart=True)
    with TrtRunner(build_engine(onnx_file, tmp_path, batch="dynamic")) as runner:
        context, state, stream = runner._context, fakes.state, 7
        state.depth += 1  # a current context, as the runner pushes one
        context.set_input_shape(INPUT, (1, H, W, 1))
        state.capturing[stream] = []
        context.execute_async_v3(stream)
        (replay,) = state.capturing.pop(stream)
        replay()  # same shape: fine
        context.set_input_shape(INPUT, (8, H, W, 1))
        context.set_input_shape(INPUT, (1, H, W, 1))
        with pytest.raises(RuntimeError, match="shape changed since"):
            replay()
        state.depth -= 1


def test_cuda_graph_without_cuda_python_is_an_error(fakes: Fakes, monkeypatch: pytest.MonkeyPatch,
                                                    onnx_file: Path, tmp_path: Path) -> None:
    engine = build_engine(onnx_file, tmp_path)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(RunnerError, match=r"cuda_graph=True needs cuda-python.*pip install cuda-python"):
        TrtRunner(engine, cuda_graph=True)
    assert fakes.state.detached == 1  # the build's: the runner never opened the device


# ---------------------------------------------------------------- the hardware smoke script, against the fakes

@pytest.fixture
def smoke(bench_script) -> types.ModuleType:
    return bench_script("trt_smoke")


def test_smoke_script_dry_run_lists_every_check(smoke: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["trt_smoke.py", "--dry-run"])
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    smoke.main()
    plan = json.loads(capsys.readouterr().out)["checks"]
    assert [c["check"] for c in plan] == [c.name for c in smoke.CHECKS] and len(plan) == 9
    assert all(c["would"].startswith("skip: no tensorrt") for c in plan if c["check"] != "export-order")


def test_smoke_script_runs_its_checks_against_the_fakes(smoke: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """The script the first GPU will run, run here on the fakes (8.5, a Xavier with 2 DLA cores, cuda-python):
    every check passes (the export check on model.onnx as it is), so a hardware run spends its minutes on the
    hardware, not on the script's own mistakes."""
    pytest.importorskip("onnxruntime")
    fakes = Fakes(monkeypatch).install(cudart=True)
    have = smoke._have
    monkeypatch.setattr(smoke, "_have", lambda m: m != "torch" and have(m))  # no torch: model.onnx as it is
    out = tmp_path / "smoke.json"
    monkeypatch.setattr(sys, "argv", ["trt_smoke.py", "--model", str(model_folder(tmp_path / "m")), "--work",
                                      str(tmp_path / "work"), "--out", str(out)])
    smoke.main()
    checks = json.loads(out.read_text())["checks"]
    assert {k: v["status"] for k, v in checks.items()} == {c.name: "passed" for c in smoke.CHECKS}, checks
    assert checks["versions"]["tensorrt"] == "8.5.2.2" and checks["versions"]["dla_cores"] == 2
    assert checks["float-engines"]["fp16-dynamic"]["max_abs_diff_probs"] < 1e-5
    assert checks["int8"] == {**checks["int8"], "calibrated_on": 64, "rebuilt_from_cache": True}
    assert checks["dla"]["gpu_fallback"] == ["cast (Cast)", "softmax (Softmax)"]
    assert "TensorRT 0.0.0" in checks["refusals"]["other-tensorrt"]
    assert "cannot deserialize" in checks["refusals"]["truncated"]
    assert {"b1", "b8", "b32"} <= set(checks["latency"]) and fakes.balanced()


# ---------------------------------------------------------------- the real thing, where it exists

@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    onnx_file = save(tiny_model(), tmp_path / "model.onnx")
    x = frames_of(37)
    for precision, tolerance in [("fp32", 1e-4), ("fp16", 2e-2)]:
        engine = build_engine(onnx_file, tmp_path, precision=precision, batch="dynamic")
        with TrtRunner(engine) as runner:
            assert runner.batch_range == (1, 32)
            for got, want in zip(runner.predict(x).__dict__.values(), reference(x)):
                np.testing.assert_allclose(got, want, atol=tolerance)
        assert build_engine(onnx_file, tmp_path, precision=precision, batch="dynamic") == engine  # cached
