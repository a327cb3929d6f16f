"""FP32 ONNX -> INT8 ONNX for ONNX Runtime: static QDQ, per-channel weights, unsigned activations,
entropy calibration on real frames, Conv/Gemm/MatMul only (with their Clip/Relu), the input convolution
in INT8 or FP32, whichever is faster within the accuracy limit; accuracy delta and size ratio reported.

    path = onnx2int8("runs/model/model.onnx", calib="data/mt")   # runs/model/model-int8.onnx + .report.json

Why these choices (measured on our 2-core AVX2 CPUs, ONNX Runtime 1.32): signed (QInt8) activations
ran 1-4.6x *slower* than FP32, unsigned (QUInt8) ones faster; only dense convolutions and matrix
products gain (resnet18 conv time 0.61x of FP32 here: AVX2 without VNNI), depthwise-heavy nets gain
little or slow down, so the report says which precision is faster for this model instead of assuming INT8 wins.

Two choices keep the accuracy (two_stream_lite0 on the magnetic-tile test split, FP32 98.51%):
- Clip/Relu are quantised with the layer before them, so that layer's output takes the activation's
  range (ReLU6: 0..6). Left out, the raw convolution output was quantised over its own range (BN-folded
  stem weights reach +-119 here): 73.9%; with them 95.5%.
- The first convolution (the one reading the normalised frame) may stay FP32. Its input is the camera's
  8-bit image, already exact; a calibrated scale re-rounds those 256 levels and its large folded
  weights amplify that: 95.5% -> 98.51% (= FP32) with it in FP32. Where that costs nothing in accuracy
  it costs time (resnet18's 7x7 stem and its float max-pool: 0.60x -> 0.72x of FP32), so both
  candidates are built and measured, and the faster one within ``max_drop`` is kept; the report lists both.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import onnx

from ..console import strict_json
from ..data.format import Dataset
from ..data.split import label_sets
from ..files import atomic_path, atomic_write
from .evaluate import figures
from .formats import ExportError, export_format
from .onnx_check import input_convs
from .runners.base import INPUT, WEIGHTS_KEY, RunnerError, check_weights
from .runners.ort import OrtRunner
from .splits import Frames, check_disjoint, load_frames

__all__ = ["INT8_OPS", "MAX_ACCURACY_DROP", "onnx2int8"]

INT8_OPS = ["Conv", "Gemm", "MatMul"]
FUSED_ACTIVATIONS = ["Clip", "Relu"]  # quantised with (folded into) the Conv/Gemm before them
MAX_ACCURACY_DROP = 0.01  # the export fails above this (1 point), unless allowed
# ONNX Runtime's entropy calibration keeps every intermediate output of every frame: ~60 MB a frame
# for two_stream_lite0 at 224 px, so 300 frames were killed at 24 GB here. 64 fit in ~4 GB.
CALIB_IMAGES = 64
CALIBRATION_METHODS = {"entropy": "Entropy", "minmax": "MinMax", "percentile": "Percentile"}  # CalibrationMethod


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
    """Quantise ``fp32`` (a lineguard ``model.onnx``) with frames of ``calib``'s train split, as two candidates
    (all quantised; input convolution in FP32); run them and FP32 on the test split of ``data`` (default:
    ``calib``), keep the faster candidate within ``max_drop`` accuracy points and write ``<out>.report.json``
    (accuracy and macro-F1, delta, sizes, batch-1 latencies, the faster precision, every candidate). Fails
    when no candidate is within ``max_drop``. Accuracy is ``lineguard.edge.evaluate.figures`` (the decision
    rule and metrics of ``lineguard eval``). ``symmetric``: signed activations with zero point 0, the only
    Q/DQ TensorRT builds (for ``--format engine --int8`` on TensorRT >= 10; slower than unsigned on ONNX
    Runtime x86); then only the FP32-input candidate is built. Either split missing, or an image in both
    (same record or same content), is a ``DatasetError``; so is an ``fp32`` older than its model directory's
    weights (``lineguard.weights_sha256``, carried into the INT8 file's metadata). A failure leaves no
    temporary file and the old ``out`` as it was."""
    fp32 = Path(fp32)
    out = Path(out) if out is not None else export_format("onnx-int8").path(fp32.parent)
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method '{method}' ({', '.join(CALIBRATION_METHODS)})")
    ref = _reference(fp32, threads)
    try:
        calib_set, test_set = _split_frames(calib, data or calib, ref.spec, calib_images, ref.batch_range[0])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths, keeps = _candidates(fp32, Path(tmp), ref, calib_set.frames, method, symmetric)
            seconds = time.perf_counter() - t0
            report = _measure(ref, paths, keeps, test_set, threads)
            chosen, fits = _choose(report["candidates"], max_drop)
            _summarise(report, report["candidates"][chosen], fp32, paths[chosen])
            report.update(file=out.name, calibration={"data": str(calib), "split": calib_set.split,
                                                      "images": len(calib_set), "method": method,
                                                      "seconds": seconds},
                          test={"data": str(data or calib), "split": test_set.split})
            atomic_write(str(out) + ".report.json", strict_json(report, indent=1))
            if not fits:
                raise ExportError(f"{out}: INT8 loses {-report['accuracy_delta'] * 100:.2f} accuracy points on "
                                  f"{data or calib} (limit {max_drop * 100:.1f}); see {out}.report.json")
            with atomic_path(out) as final:  # the temporary folder may be on another file system
                shutil.copyfile(paths[chosen], final)
    finally:
        ref.close()
    return out


def _reference(fp32: Path, threads: Optional[int]) -> OrtRunner:
    """The FP32 model on ONNX Runtime; one older than its model directory's weights is an ``ExportError``
    (it would carry stale weights into INT8)."""
    ref = OrtRunner(fp32, threads=threads)
    try:
        check_weights(fp32, ref.metadata.get(WEIGHTS_KEY), ref.spec, "onnx")
    except RunnerError as e:
        ref.close()
        raise ExportError(str(e)) from None
    return ref


def _split_frames(calib: Union[str, Path], data: Union[str, Path], spec: Any, calib_images: int,
                  batch: int) -> Tuple[Frames, Frames]:
    """Calibration frames (``calib``'s train split, a sample of ``calib_images``) and the test frames of
    ``data``, checked to share no image; fewer calibration frames than one ``batch`` is an error."""
    calib_set = load_frames(calib, spec, split="train", limit=calib_images)
    test_set = load_frames(data, spec, split="test")
    check_disjoint(calib_set, test_set)
    if len(calib_set) < batch:
        raise ExportError(f"{calib}: {len(calib_set)} calibration images, need at least {batch}")
    return calib_set, test_set


def _candidates(fp32: Path, tmp: Path, ref: OrtRunner, frames: np.ndarray, method: str,
                symmetric: bool) -> Tuple[List[Path], List[List[str]]]:
    """The INT8 candidates in ``tmp`` and the nodes each keeps in FP32: everything quantised, and the frame's
    convolution(s) in FP32 (see the module docstring). TensorRT's Q/DQ (``symmetric``) gets the second only:
    its calibrated path keeps them in FP16 too."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    inputs = input_convs(onnx.load(str(pre), load_external_data=False))
    keeps = [inputs] if symmetric or not inputs else [[], inputs]
    paths = [tmp / f"int8-{i}.onnx" for i in range(len(keeps))]
    for path, keep in zip(paths, keeps):
        _quantize(pre, path, keep, _Frames(frames, ref.batch_range[0]), method, symmetric, dict(ref.metadata))
    return paths, keeps


def _quantize(pre: Path, path: Path, keep: List[str], reader: _Frames, method: str, symmetric: bool,
              meta: Dict[str, str]) -> None:
    """One static QDQ quantisation of ``pre`` into ``path`` with the nodes ``keep`` in FP32; the model's
    metadata (description, weights' sha256) travels on, with the precision added."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    acts = "symmetric QInt8" if symmetric else "QUInt8"
    quantize_static(str(pre), str(path), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=INT8_OPS + FUSED_ACTIVATIONS, nodes_to_exclude=keep,
                    per_channel=True, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod,
                                                                          CALIBRATION_METHODS[method]),
                    extra_options={"CalibMovingAverage": False, "ActivationSymmetric": symmetric,
                                   "WeightSymmetric": True})
    graph = onnx.load(str(path))
    _set_meta(graph, {**meta, "lineguard.precision": f"int8 (QDQ, {acts} activations, per-channel, "
                                                     f"{method}{', FP32 input convolution' if keep else ''})"})
    onnx.save(graph, str(path))


def _measure(ref: OrtRunner, paths: List[Path], keeps: List[List[str]], test: Frames,
             threads: Optional[int]) -> Dict:
    """:func:`_compare` of FP32 and the candidates in ``paths``, each candidate's entry with its FP32 nodes."""
    candidates = [OrtRunner(p, threads=threads) for p in paths]
    try:
        report = _compare(ref, candidates, ref.spec, test)
    finally:
        for r in candidates:
            r.close()
    for cand, keep in zip(report["candidates"], keeps):
        cand["fp32_nodes"] = keep
    return report


def _choose(candidates: List[Dict], max_drop: Optional[float]) -> Tuple[int, bool]:
    """The index of the candidate to keep: the fastest within ``max_drop`` accuracy points (True), else the
    most accurate (False)."""
    fits = [c for c in candidates if max_drop is None or -c["accuracy_delta"] <= max_drop]
    chosen = min(fits, key=lambda c: c["latency_ms"]) if fits else max(candidates, key=lambda c: c["accuracy"])
    return candidates.index(chosen), bool(fits)


def _summarise(report: Dict, chosen: Dict, fp32: Path, chosen_path: Path) -> None:
    """The report's top-level figures from the ``chosen`` candidate: its FP32 nodes, deltas, sizes, faster."""
    report.update(fp32_nodes=chosen["fp32_nodes"], argmax_agreement=chosen["argmax_agreement"],
                  accuracy_delta=chosen["accuracy_delta"], ops=INT8_OPS + FUSED_ACTIVATIONS,
                  size_mb={"fp32": fp32.stat().st_size / 1e6, "int8": chosen_path.stat().st_size / 1e6})
    for key in ("accuracy", "macro_f1", "latency_ms"):
        report[key]["int8"] = chosen[key]
    report["faster"] = min(report["latency_ms"], key=report["latency_ms"].get)
    report["size_ratio"] = report["size_mb"]["int8"] / report["size_mb"]["fp32"]


def _set_meta(graph: onnx.ModelProto, meta: Dict[str, str]) -> None:
    del graph.metadata_props[:]
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)


def _compare(ref: OrtRunner, candidates: List[OrtRunner], spec: Any, test: Frames) -> Dict:
    """FP32 figures and one entry per INT8 candidate, in order (accuracy, macro-F1, argmax agreement with FP32,
    batch-1 latency) on the ``test`` frames, all timed in the same interleaved rounds."""
    frames, labels = test.frames, test.labels
    targets = label_sets(Dataset.load(test.root), test.records, spec.classes) if spec.multi_label else None
    runners = {"fp32": ref, **{i: r for i, r in enumerate(candidates)}}
    probs, metrics = {}, {}
    for name, r in runners.items():
        probs[name] = r.predict(frames).probs
        metrics[name] = figures(probs[name], labels, spec, targets=targets)
    one = frames[:1]
    times: Dict[Any, List[float]] = {name: [] for name in runners}
    for _ in range(5):
        for r in runners.values():
            r.predict(one)
    for _ in range(6):  # interleaved blocks: all see the same machine state, and no call starts while another
        for name, r in runners.items():  # session's threads still spin (alternating calls doubled every time)
            for _ in range(8):
                t0 = time.perf_counter()
                r.predict(one)
                times[name].append((time.perf_counter() - t0) * 1000)
    ms = {name: float(np.median(t)) for name, t in times.items()}
    fp32 = metrics["fp32"]
    return {"test_images": len(frames), "accuracy": {"fp32": fp32["accuracy"]},
            "macro_f1": {"fp32": fp32["macro_f1"]}, "latency_ms": {"fp32": ms["fp32"]},
            "candidates": [{"accuracy": metrics[i]["accuracy"], "macro_f1": metrics[i]["macro_f1"],
                            "accuracy_delta": metrics[i]["accuracy"] - fp32["accuracy"],
                            "argmax_agreement": float((probs[i].argmax(1) == probs["fp32"].argmax(1)).mean()),
                            "latency_ms": ms[i]} for i in range(len(candidates))]}
