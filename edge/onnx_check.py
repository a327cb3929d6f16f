"""Will TensorRT's ONNX parser take this graph? A check that needs only the ``onnx`` package.

    problems = tensorrt_problems(onnx.load("model.onnx"))     # [] when the graph fits TensorRT 8.5
    check_tensorrt("model.onnx")                               # ExportError listing the offending nodes

Targets:

- ``"8.5"`` (JetPack 5, Jetson AGX Xavier): default-domain opset <= 17 and every node's op_type in
  :data:`TRT85_OPS`, the operators onnx-tensorrt 8.5 marks supported.
- ``"10"``: default-domain opset <= 20 only (TensorRT 10.0 reads opset 9..20, the lowest ceiling of
  the 10.x line); no operator list: the 10.x parser supports far more, and the build itself parses
  the graph.

Both refuse a uint8 input that feeds anything but a Cast to FLOAT/FLOAT16 (:func:`uint8_input_problems`:
TensorRT 8.5 gives no other layer UINT8, 10.x supports UINT8 only as network input or output, so the frames
must go straight into a Cast; NVIDIA/TensorRT#3985). Both reject nodes outside the default ONNX domain
(``com.microsoft`` fused ops, ``ai.onnx.ml``, custom domains): TensorRT's parser knows only the default domain
without plugins.
Nodes inside subgraphs (``If``/``Loop``/``Scan`` bodies) are checked too.
:func:`input_convs` names the convolutions that read the (normalised) input frame: INT8 keeps them in
higher precision (see ``quantize``). :func:`check_engine_io` and :func:`check_engine_precision` refuse,
before TensorRT is started, an ONNX file the engine builder cannot make the asked-for engine of.
Torch-free, Python 3.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Set, Union

import onnx
from google.protobuf.message import DecodeError

from lineguard.data.modelspec import ModelSpec
from lineguard.edge.formats import ExportError
from lineguard.edge.runners.base import INPUT, OUTPUTS

__all__ = ["OPSET_LIMITS", "TRT85_OPS", "check_engine_io", "check_engine_precision", "check_tensorrt", "input_convs",
           "is_qdq", "iter_nodes", "load_onnx", "tensorrt_problems", "uint8_input_problems"]

# Highest default-domain opset each target's ONNX parser reads. 8.5: "TensorRT 8.5 supports operators up
# to Opset 17" (onnx-tensorrt docs/operators.md, 8.5 release); 10: "TensorRT 10.0 supports operators in
# the inclusive range of opset 9 to opset 20" (onnx-tensorrt docs/operators.md, 10.0 release).
OPSET_LIMITS = {"8.5": 17, "10": 20}

# The operators marked "Y" in onnx-tensorrt docs/operators.md of the TensorRT 8.5 release (header
# "TensorRT 8.5 supports operators up to Opset 17"; github.com/onnx/onnx-tensorrt, release/8.5-GA).
# LayerNormalization, GroupNormalization and IsInf are "N" there: they arrived with 8.6 (Changelog 8.6 EA).
TRT85_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
    "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
    "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GRU", "HardSigmoid",
    "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN", "LeakyRelu", "Less",
    "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul",
    "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
    "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
    "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax",
    "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})

_DEFAULT_DOMAINS = ("", "ai.onnx")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SHOWN = 10  # problems listed in an ExportError; the rest are counted


def load_onnx(path: Union[str, Path]) -> onnx.ModelProto:
    """The model in ``path`` without its external weights; :class:`ExportError` if missing, empty or unreadable."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise ExportError(f"{path}: no ONNX file (missing or empty)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as e:
        raise ExportError(f"{path}: not a readable ONNX file: {e}") from None


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the subgraphs in its nodes' attributes."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def tensorrt_problems(model: onnx.ModelProto, trt: str = "8.5") -> List[str]:
    """What keeps TensorRT ``trt`` ("8.5" or "10") from parsing ``model``; [] if nothing."""
    if trt not in OPSET_LIMITS:
        raise ExportError(f"unknown TensorRT target '{trt}' for the ONNX check (targets: {', '.join(OPSET_LIMITS)})")
    limit = OPSET_LIMITS[trt]
    problems = [f"default-domain opset {imp.version}: TensorRT {trt} reads opset <= {limit} "
                f"(export with opset_version={limit})"
                for imp in model.opset_import
                if imp.domain in _DEFAULT_DOMAINS and imp.version > limit]
    problems += uint8_input_problems(model)
    for i, node in enumerate(iter_nodes(model.graph)):
        what = f"node '{node.name}' ({node.op_type})" if node.name else f"unnamed node #{i} ({node.op_type})"
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{what}: domain '{node.domain}' is not ONNX's default domain")
        elif trt == "8.5" and node.op_type not in TRT85_OPS:
            problems.append(f"{what}: not supported by TensorRT 8.5's ONNX parser")
    return problems


def uint8_input_problems(model: onnx.ModelProto) -> List[str]:
    """Each consumer of a uint8 graph input that is not a Cast to FLOAT or FLOAT16 (TensorRT needs that Cast
    first); [] when every one goes straight into a Cast."""
    weights = {t.name for t in model.graph.initializer}
    uint8 = [i.name for i in model.graph.input
             if i.name not in weights and i.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
    to_float = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    problems = []
    for name in uint8:
        for node in model.graph.node:
            if name not in node.input:
                continue
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type != "Cast" or to not in to_float:
                what = f"'{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"
                problems.append(f"uint8 input '{name}' feeds {what}: TensorRT takes a uint8 input only straight "
                                "into a Cast to FLOAT/FLOAT16 (cast the frames before any other op)")
    return problems


def check_tensorrt(path_or_model: Union[str, Path, onnx.ModelProto], trt: str = "8.5") -> None:
    """Raise :class:`ExportError` listing what keeps TensorRT ``trt`` from parsing the ONNX file or model."""
    if isinstance(path_or_model, (str, Path)):
        model, where = load_onnx(path_or_model), str(path_or_model)
    else:
        model, where = path_or_model, "the ONNX model"
    problems = tensorrt_problems(model, trt)
    if problems:
        more = f"; ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise ExportError(f"{where}: TensorRT {trt} cannot parse it ({len(problems)} problem(s)): "
                          + "; ".join(problems[:_SHOWN]) + more)


def input_convs(model: onnx.ModelProto) -> List[str]:
    """Names of the first Conv on every path from the graph input (through the in-graph preprocessing)."""
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: List[str] = []
    seen: Set[str] = set()
    todo = [i.name for i in model.graph.input]
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                todo.extend(node.output)
    return found


def is_qdq(model: onnx.ModelProto) -> bool:
    """Does the graph hold QuantizeLinear/DequantizeLinear nodes (a quantized ONNX)?"""
    return any(node.op_type in _QDQ for node in iter_nodes(model.graph))


def check_engine_io(model: onnx.ModelProto, path: Path, spec: ModelSpec, batch: Union[int, str]) -> None:
    """The graph takes uint8 frames (N, H, W, C) of the model's size, in fixed batches of ``batch`` or a
    dynamic batch, and has lineguard's outputs: what an engine of ``batch`` needs."""
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
    order = uint8_input_problems(model)
    if order:
        raise ExportError(f"{path}: {order[0]}; re-export it with this lineguard (`lineguard export --format onnx`)")
    if dims[0] is not None and batch != dims[0]:
        raise ExportError(f"{path}: exported with a fixed batch of {dims[0]}; build with batch={dims[0]} or "
                          "re-export with a dynamic batch")
    missing = sorted(set(OUTPUTS) - {o.name for o in model.graph.output})
    if missing:
        raise ExportError(f"{path}: graph outputs {', '.join(missing)} missing (a lineguard model has "
                          f"{', '.join(OUTPUTS)})")


def check_engine_precision(model: onnx.ModelProto, path: Path, precision: str, major: int, quantized: bool,
                           calibrated: bool, dla: bool = False) -> None:
    """Refuse a precision TensorRT ``major`` cannot build from this ONNX (``quantized``: it holds Q/DQ nodes;
    ``calibrated``: calibration frames were given; ``dla``: for a DLA core), naming the fix."""
    if dla and quantized and major < 10:
        raise ExportError(f"{path}: TensorRT {major}'s DLA does not take explicitly quantized (Q/DQ) networks "
                          "(TensorRT-DLA guide); build DLA INT8 from the float ONNX with calibration frames "
                          "(`--calib DIR`), or build this one for a GPU (cuda:N)")
    if precision == "int8" and quantized:
        _check_qdq(model, path)
    elif precision == "int8" and major >= 10:
        raise ExportError(f"{path}: INT8 with TensorRT {major} needs an ONNX that already holds QuantizeLinear/"
                          "DequantizeLinear nodes (the calibrator API is deprecated in 10 and gone in 11); build "
                          "from the `lineguard export --format onnx-int8` model (symmetric INT8 Q/DQ)")
    elif precision == "int8" and not calibrated:
        raise ExportError(f"{path}: INT8 on TensorRT 8.x calibrates on sample frames: pass calib_frames "
                          "(`--calib DIR`), or build from a Q/DQ model (`--format onnx-int8`)")
    if calibrated and (precision != "int8" or quantized):
        raise ExportError(f"calibration frames apply only to INT8 from a float ONNX on TensorRT 8.x, not to "
                          f"precision {precision} from a {'Q/DQ' if quantized else 'float'} ONNX")
    if precision == "fp16" and major >= 11 and not _is_fp16(model):
        raise ExportError(f"{path}: TensorRT {major} builds strongly typed networks only, so precision comes from "
                          "the ONNX; this one is FP32. Convert it first, keeping the uint8 input and FP32 outputs the "
                          "runner takes (ModelOpt AutoCast: `python -m modelopt.onnx.autocast --onnx_path model.onnx "
                          "--keep_io_types`) or build precision fp32")


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
