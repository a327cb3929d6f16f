"""Model directory -> ONNX with the normalisation inside the graph, slimmed, checked against PyTorch.

    path = torch2onnx("runs/model", opset=17, batch=1, parity_data="data/mt")
    # runs/model/model.onnx + model.onnx.parity.json

The graph takes uint8 frames (N, H, W, C) at the input size and returns ``probs``, ``ng_score`` and
``heatmap`` (see ``lineguard.edge.runners.base``); the model description travels in its metadata.
Exported with the TorchScript exporter at opset 17 (TensorRT 8.5 reads opsets up to 17; the dynamo
exporter writes 18 for these models) and no ``LayerNormalization`` node.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import onnx
import torch
from torch import nn

from .. import LineguardError
from ..console import strict_json
from ..data.modelspec import ModelSpec
from ..files import atomic_path, atomic_write, sha256_file
from ..training.model_dir import load_model_dir
from .formats import ExportError, export_format
from .onnx_check import check_tensorrt
from .runners.base import INPUT, OUTPUTS, SPEC_KEY, WEIGHTS_KEY
from .runners.ort import OrtRunner
from .splits import load_frames

__all__ = ["PARITY_TOLERANCE", "FrameModel", "parity_report", "torch2onnx"]

PARITY_TOLERANCE = 1e-3  # max abs difference of probs / ng_score / heatmap, FP32 ONNX vs PyTorch
TRT_MAX_OPSET = 17


class FrameModel(nn.Module):
    """uint8 frames (N, H, W, C) -> (probs, ng_score, heatmap): ``Preprocess.normalize`` and the heads'
    activations (softmax, or sigmoid per class for a multi-label model) around the network, so a runner does no
    float work in Python. The NG score is :func:`lineguard.metrics.ng_scores`' rule."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model
        pre = spec.preprocess
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))  # (x / 255 - mean) / std = x * scale + shift
        self.register_buffer("shift", -mean / std)
        self.ok_index, self.multi_label = spec.ok_index, spec.multi_label
        self.defect = [i for i in range(len(spec.classes)) if i != spec.ok_index]

    def forward(self, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Cast first: TensorRT takes a uint8 network input only straight into a Cast (onnx_check.uint8_input_problems)
        x = frames.float().permute(0, 3, 1, 2) * self.scale + self.shift
        out = self.model(x)
        logits = out["logits"].float()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(1)
        if self.ok_index is None:  # a defect-type model: p(OK) = 0
            ng = torch.ones_like(probs[:, 0])
        elif self.multi_label:  # the most likely defect
            ng = probs[:, self.defect].amax(1)
        else:
            ng = 1.0 - probs[:, self.ok_index]
        return probs, ng, out["heatmap"].float().sigmoid()


def frame_model(model_dir: Union[str, Path]) -> Tuple[FrameModel, ModelSpec]:
    loaded = load_model_dir(model_dir)
    return FrameModel(loaded.model, loaded.spec).eval(), loaded.spec


def torch2onnx(model_dir: Union[str, Path], out: Optional[Union[str, Path]] = None, opset: int = TRT_MAX_OPSET,
               batch: Union[int, str] = 1, parity_data: Optional[Union[str, Path]] = None,
               parity_images: int = 400) -> Path:
    """Export ``model_dir`` to ``out`` (default: the onnx format's file, ``model_dir/model.onnx``); see the module
    docstring.

    ``batch``: a fixed batch size or ``"dynamic"``. With ``parity_data`` (a lineguard data set) the ONNX
    Runtime outputs are compared with PyTorch's on its test split (up to ``parity_images``) and the export
    fails unless every argmax agrees and no output differs by more than :data:`PARITY_TOLERANCE`; the
    report is written next to the file either way (``<file>.parity.json``). Without it, 8 random frames.
    The metadata records the weights file's sha256 (``lineguard.weights_sha256``): runners refuse the file
    once the weights change. A failed export leaves no temporary file and the old ``out`` as it was."""
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else export_format("onnx").path(model_dir)
    if not (isinstance(batch, int) and batch >= 1) and batch != "dynamic":
        raise ExportError(f"--batch must be a positive integer or 'dynamic', got {batch!r}")
    if not 11 <= opset <= 21:
        raise ExportError(f"--opset {opset} is outside 11..21")
    before = _weights_sha256(model_dir)
    fm, spec = frame_model(model_dir)  # a missing or corrupt weights file is a WeightsError here
    weights = _weights_sha256(model_dir)
    if weights is None or weights != before:
        raise ExportError(f"{model_dir / spec.weights}: changed while it was being exported; export again")
    h, w = spec.preprocess.size
    example = torch.zeros((batch if isinstance(batch, int) else 2, h, w, spec.preprocess.channels), dtype=torch.uint8)
    with atomic_path(out) as tmp:  # removed on every error: the old file stays as it was
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(fm, (example,), str(tmp), opset_version=opset, dynamo=False, input_names=[INPUT],
                              output_names=list(OUTPUTS), do_constant_folding=True,
                              dynamic_axes={k: {0: "batch"} for k in (INPUT, *OUTPUTS)} if batch == "dynamic"
                              else None)
        graph = _slim(onnx.load(str(tmp)))
        meta = {SPEC_KEY: json.dumps(spec.model_dump(mode="json")), "lineguard.precision": "fp32",
                "lineguard.source": str(model_dir.resolve()), WEIGHTS_KEY: weights}
        for k, v in meta.items():
            graph.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(graph)
        if opset <= TRT_MAX_OPSET:
            check_tensorrt(graph, trt="8.5")
        onnx.save(graph, str(tmp))
        report = {"file": out.name, **parity_report(fm, spec, tmp, parity_data, parity_images)}
        atomic_write(str(out) + ".parity.json", strict_json(report, indent=1))
        if not report["passed"]:
            raise ExportError(f"{out}: ONNX Runtime and PyTorch disagree (max abs diff {report['max_abs_diff']:.2e}, "
                              f"argmax agreement {report['argmax_agreement']:.4f}); see {out}.parity.json")
    return out


def _weights_sha256(model_dir: Path) -> Optional[str]:
    """sha256 of the weights file model.yaml names; None if it cannot be read (loading it says why)."""
    try:
        return sha256_file(model_dir / ModelSpec.load(model_dir).weights)
    except (OSError, LineguardError):
        return None


def _slim(graph: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding and dead-node removal; the graph keeps its opset and I/O names."""
    import onnxslim

    slim = onnxslim.slim(graph)
    return slim if slim is not None else graph


@torch.no_grad()
def parity_report(fm: FrameModel, spec: ModelSpec, onnx_path: Path, data: Optional[Union[str, Path]],
                  limit: int) -> Dict:
    """PyTorch vs ONNX Runtime (CPU) on the same frames: max abs diff per output and argmax agreement."""
    split: Optional[str] = None
    if data is not None:
        real = load_frames(data, spec, split="test", limit=limit)  # an error if the set has no test split
        frames, split = real.frames, real.split
        source = f"{data} ({split} split)"
    else:
        h, w = spec.preprocess.size
        frames = np.random.default_rng(0).integers(0, 256, (8, h, w, spec.preprocess.channels), dtype=np.uint8)
        source = "8 random frames (pass --data for real images)"
    runner = OrtRunner(onnx_path, threads=torch.get_num_threads())
    got = runner.predict(frames)
    runner.close()
    ref = {k: [] for k in OUTPUTS}
    for i in range(0, len(frames), 32):
        for k, v in zip(OUTPUTS, fm(torch.from_numpy(frames[i:i + 32]))):
            ref[k].append(v.numpy())
    diffs = {k: float(np.abs(np.concatenate(ref[k]) - getattr(got, k)).max()) for k in OUTPUTS}
    agree = float((np.concatenate(ref["probs"]).argmax(1) == got.probs.argmax(1)).mean())
    worst = max(diffs.values())
    return {"images": len(frames), "source": source, "data": None if data is None else str(data), "split": split,
            "max_abs_diff": worst, "max_abs_diff_per_output": diffs, "argmax_agreement": agree,
            "tolerance": PARITY_TOLERANCE, "passed": bool(agree == 1.0 and worst <= PARITY_TOLERANCE)}
