"""FP32 ONNX -> INT8 ONNX for ONNX Runtime: static QDQ, per-channel weights, unsigned activations,
entropy calibration on real frames, Conv/Gemm/MatMul only (with their Clip/Relu), the input convolution
kept in FP32; accuracy delta and size ratio reported.

    path = onnx2int8("runs/model/model.onnx", calib="data/mt")   # runs/model/model-int8.onnx + .report.json

Why these choices (measured on our 2-core AVX2 CPUs, ONNX Runtime 1.32): signed (QInt8) activations
ran 1-4.6x *slower* than FP32, unsigned (QUInt8) ones faster; only dense convolutions and matrix
products gain (resnet18 8.0 -> 2.6 ms), depthwise-heavy nets gain nothing or slow down, so the
report says which precision is faster for this model instead of assuming INT8 wins.

Two choices keep the accuracy (two_stream_lite0 on the magnetic-tile test split, FP32 98.51%):
- Clip/Relu are quantised with the layer before them, so that layer's output takes the activation's
  range (ReLU6: 0..6). Left out, the raw convolution output was quantised over its own range (BN-folded
  stem weights reach +-119 here): 73.9%; with them 95.5%.
- The first convolution (the one reading the normalised frame) stays FP32. Its input is the camera's
  8-bit image, already exact; a calibrated scale re-rounds those 256 levels and its large folded
  weights amplify that: 95.5% -> 98.51% (= FP32) with it in FP32. It is 1-3 input channels: cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import onnx

from ..training.metrics import classification_metrics
from .formats import ExportError
from .frames import dataset_frames
from .onnx_check import input_convs
from .runners.base import INPUT, SPEC_KEY, spec_from_json
from .runners.ort import OrtRunner

__all__ = ["INT8_OPS", "MAX_ACCURACY_DROP", "onnx2int8"]

INT8_OPS = ["Conv", "Gemm", "MatMul"]
FUSED_ACTIVATIONS = ["Clip", "Relu"]  # quantised with (folded into) the Conv/Gemm before them
MAX_ACCURACY_DROP = 0.01  # the export fails above this (1 point), unless allowed
# ONNX Runtime's entropy calibration keeps every intermediate output of every frame: ~60 MB a frame
# for two_stream_lite0 at 224 px, so 300 frames were killed at 24 GB here. 64 fit in ~4 GB.
CALIB_IMAGES = 64


class _Frames:
    """``CalibrationDataReader`` over uint8 frames, a few per call (ORT's reader protocol: dict or None)."""

    def __init__(self, frames: np.ndarray, batch: int) -> None:
        self.frames, self.batch = frames, batch
        self._it: Optional[Iterator[Dict[str, np.ndarray]]] = None
        self.rewind()

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = ({INPUT: self.frames[i:i + self.batch]} for i in range(0, len(self.frames) - self.batch + 1,
                                                                         self.batch))


def onnx2int8(fp32: Union[str, Path], calib: Union[str, Path], data: Optional[Union[str, Path]] = None,
              out: Optional[Union[str, Path]] = None,
              calib_images: int = CALIB_IMAGES, method: str = "entropy", max_drop: Optional[float] = MAX_ACCURACY_DROP,
              threads: Optional[int] = None, symmetric: bool = False) -> Path:
    """Quantise ``fp32`` (a lineguard ``model.onnx``) with frames of ``calib``'s train split; then run both
    models on the test split of ``data`` (default: ``calib``) and write ``<out>.report.json`` (accuracy and
    macro-F1 of each, delta, sizes, batch-1 latency of each, the faster one). Fails when accuracy drops
    more than ``max_drop``. ``symmetric``: signed activations with zero point 0, the only Q/DQ TensorRT
    builds (for ``--format engine --int8`` on TensorRT >= 10; slower than unsigned on ONNX Runtime x86)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = Path(fp32)
    out = Path(out) if out is not None else fp32.with_name("model-int8.onnx")
    ref = OrtRunner(fp32, threads=threads)
    spec, batch = ref.spec, ref.batch_range[0]
    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"unknown calibration method '{method}' ({', '.join(methods)})")
    calib_frames, _ = dataset_frames(calib, spec, split="train", limit=calib_images)
    if len(calib_frames) < batch:
        raise ExportError(f"{calib}: {len(calib_frames)} calibration images, need at least {batch}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        tmp_out = Path(tmp) / "int8.onnx"
        fp32_nodes = input_convs(onnx.load(str(pre), load_external_data=False))
        quantize_static(str(pre), str(tmp_out), _Frames(calib_frames, batch), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=INT8_OPS + FUSED_ACTIVATIONS, nodes_to_exclude=fp32_nodes,
                        per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method],
                        extra_options={"CalibMovingAverage": False, "ActivationSymmetric": symmetric,
                                       "WeightSymmetric": True})
        graph = onnx.load(str(tmp_out))
        acts = "symmetric QInt8" if symmetric else "QUInt8"
        _set_meta(graph, fp32, {"lineguard.precision": f"int8 (QDQ, {acts} activations, per-channel, {method})"})
        final = out.with_name(out.name + ".tmp")
        onnx.save(graph, str(final))
    seconds = time.perf_counter() - t0
    int8 = OrtRunner(final, threads=threads)
    report = _compare(ref, int8, spec, data or calib)
    report.update(file=out.name, calibration={"data": str(calib), "split": "train", "images": len(calib_frames),
                                              "method": method, "seconds": seconds},
                  ops=INT8_OPS + FUSED_ACTIVATIONS, fp32_nodes=fp32_nodes,
                  size_mb={"fp32": fp32.stat().st_size / 1e6, "int8": final.stat().st_size / 1e6})
    report["size_ratio"] = report["size_mb"]["int8"] / report["size_mb"]["fp32"]
    ref.close()
    int8.close()
    Path(str(out) + ".report.json").write_text(json.dumps(report, indent=1))
    drop = report["accuracy"]["fp32"] - report["accuracy"]["int8"]
    if max_drop is not None and drop > max_drop:
        final.unlink()
        raise ExportError(f"{out}: INT8 loses {drop * 100:.2f} accuracy points on {data or calib} (limit "
                          f"{max_drop * 100:.1f}); see {out}.report.json")
    os.replace(final, out)
    return out


def _set_meta(graph: onnx.ModelProto, source: Path, extra: Dict[str, str]) -> None:
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if SPEC_KEY not in meta:
        raise ExportError(f"{source}: not exported by lineguard (no model description)")
    spec_from_json(meta[SPEC_KEY], str(source))
    meta.update(extra)
    del graph.metadata_props[:]
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)


def _compare(ref: OrtRunner, int8: OrtRunner, spec: Any, data: Union[str, Path]) -> Dict:
    frames, labels = dataset_frames(data, spec, split="test")
    result: Dict[str, Any] = {"test_images": len(frames), "accuracy": {}, "macro_f1": {}, "latency_ms": {}}
    probs = {}
    for name, r in (("fp32", ref), ("int8", int8)):
        probs[name] = r.predict(frames).probs
        m = classification_metrics(probs[name], labels, spec.classes, spec.ok_class, spec.threshold)
        result["accuracy"][name], result["macro_f1"][name] = m["accuracy"], m["macro_f1"]
    result["argmax_agreement"] = float((probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean())
    result["accuracy_delta"] = result["accuracy"]["int8"] - result["accuracy"]["fp32"]
    one = frames[:1]
    times: Dict[str, list] = {"fp32": [], "int8": []}
    for _ in range(5):
        ref.predict(one)
        int8.predict(one)
    for _ in range(6):  # interleaved blocks: both see the same machine state, and no call starts while the
        for name, r in (("fp32", ref), ("int8", int8)):  # other session's threads still spin (that doubled both)
            for _ in range(8):
                t0 = time.perf_counter()
                r.predict(one)
                times[name].append((time.perf_counter() - t0) * 1000)
    result["latency_ms"] = {k: float(np.median(v)) for k, v in times.items()}
    result["faster"] = min(result["latency_ms"], key=result["latency_ms"].get)
    return result
