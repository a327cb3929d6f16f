"""Will TensorRT's ONNX parser take this graph? A check that needs only the ``onnx`` package.

    problems = tensorrt_problems(onnx.load("model.onnx"))     # [] when the graph fits TensorRT 8.5
    check_tensorrt("model.onnx")                               # ExportError listing the offending nodes

Targets:

- ``"8.5"`` (JetPack 5, Jetson AGX Xavier): default-domain opset <= 17 and every node's op_type in
  :data:`TRT85_OPS`, the operators onnx-tensorrt 8.5 marks supported.
- ``"10"``: default-domain opset <= 20 only (TensorRT 10.0 reads opset 9..20, the lowest ceiling of
  the 10.x line); no operator list: the 10.x parser supports far more, and the build itself parses
  the graph.

Both reject nodes outside the default ONNX domain (``com.microsoft`` fused ops, ``ai.onnx.ml``,
custom domains): TensorRT's parser knows only the default domain without plugins.
Nodes inside subgraphs (``If``/``Loop``/``Scan`` bodies) are checked too.
:func:`input_convs` names the convolutions that read the (normalised) input frame: INT8 keeps them in
higher precision (see ``quantize``). Torch-free, Python 3.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Set, Union

import onnx
from google.protobuf.message import DecodeError

from lineguard.edge.formats import ExportError

__all__ = ["OPSET_LIMITS", "TRT85_OPS", "check_tensorrt", "input_convs", "iter_nodes", "load_onnx", "tensorrt_problems"]

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
    for i, node in enumerate(iter_nodes(model.graph)):
        what = f"node '{node.name}' ({node.op_type})" if node.name else f"unnamed node #{i} ({node.op_type})"
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{what}: domain '{node.domain}' is not ONNX's default domain")
        elif trt == "8.5" and node.op_type not in TRT85_OPS:
            problems.append(f"{what}: not supported by TensorRT 8.5's ONNX parser")
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
