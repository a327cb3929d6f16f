"""Bad model files, stale exports (weights' sha256) and ``bench`` errors, torch-free on a tiny ONNX model.

Every bad file must be one :class:`RunnerError` line naming the file (the CLI prints it, no traceback).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lineguard.console import strict_json
from lineguard.data.modelspec import ModelSpec
from lineguard.edge.bench import bench, nothing_ran, report
from lineguard.edge.runners import RunnerError, load_runner
from lineguard.edge.runners.base import SPEC_KEY, WEIGHTS_KEY, spec_of_onnx
from lineguard.edge.runners.ort import OrtRunner
from lineguard.edge.runners.trt import TrtRunner
from lineguard.edge.tensorrt import read_sidecar, sidecar_path

pytest.importorskip("onnxruntime")

H = W = 16
SPEC = ModelSpec(arch={"name": "tiny"}, classes=["ok", "ng"], ok_class="ok",
                 preprocess={"size": (H, W), "channels": 1, "mean": [0.5], "std": [0.5]})
WEIGHTS = b"not really safetensors, only hashed here"


def tiny(meta: Optional[Dict[str, str]] = None) -> onnx.ModelProto:
    """uint8 frames (N, 16, 16, 1) -> probs (N, 2), ng_score (N,), heatmap (N, 1, 2, 2)."""
    inits = [numpy_helper.from_array(np.float32(255.0), "c255"), numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.array([[-4.0, 4.0]], np.float32), "gw"),
             numpy_helper.from_array(np.array([2.0, -2.0], np.float32), "gb"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([1], np.int64), "s1"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Div", ["t", "c255"], ["x"]),
             helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Flatten", ["g"], ["fl"]),
             helper.make_node("Gemm", ["fl", "gw", "gb"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
             helper.make_node("Slice", ["probs", "s0", "s1", "s1"], ["p_ok"]),
             helper.make_node("Sub", ["one", "p_ok"], ["ng"]),
             helper.make_node("Reshape", ["ng", "flat"], ["ng_score"]),
             helper.make_node("AveragePool", ["x"], ["heatmap"], kernel_shape=[8, 8], strides=[8, 8])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["N", H, W, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("ng_score", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", 1, H // 8, W // 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {SPEC_KEY: json.dumps(SPEC.model_dump(mode="json"))} if meta is None else meta)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def model_dir(root: Path, weights: bytes = WEIGHTS, recorded: Optional[str] = "auto") -> Path:
    """A model directory: model.yaml, the weights file, model.onnx recording ``recorded`` (auto: the weights'
    sha256; None: no key, an export of before weights hashes)."""
    root.mkdir(parents=True, exist_ok=True)
    SPEC.save(root)
    (root / SPEC.weights).write_bytes(weights)
    meta = {SPEC_KEY: json.dumps(SPEC.model_dump(mode="json"))}
    if recorded is not None:
        meta[WEIGHTS_KEY] = hashlib.sha256(weights).hexdigest() if recorded == "auto" else recorded
    save(tiny(meta), root / "model.onnx")
    return root


def one_line_error(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
    return msg


# ---------------------------------------------------------------- unusable ONNX files

def _bad_bytes(kind: str) -> bytes:
    good = tiny().SerializeToString()
    return {"zero-byte": b"", "truncated": good[: len(good) // 2], "wrong-magic": b"\x89PNG\r\n\x1a\n" + good[8:],
            "random": np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()}[kind]


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "wrong-magic", "random"])
def test_unreadable_onnx_is_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    f = tmp_path / f"{kind}.onnx"
    f.write_bytes(_bad_bytes(kind))
    for load in (OrtRunner, spec_of_onnx, load_runner):
        with pytest.raises(RunnerError) as exc:
            load(f)
        msg = one_line_error(exc, f.name)
        if kind == "zero-byte":
            assert "missing or empty" in msg  # not "not exported by lineguard"


@pytest.mark.parametrize("value, match", [
    ("{not json", "embedded model description is unusable: Expecting property name"),
    ("[1, 2]", "embedded model description is unusable: Input should be a valid dictionary"),
    (json.dumps({"arch": {}}), "classes: Field required"),
    (json.dumps({**SPEC.model_dump(mode="json"), "ok_class": "nope"}), "ok_class 'nope' is not one of"),
    (json.dumps({**SPEC.model_dump(mode="json"), "preprocess": {"size": "big"}}), "preprocess.size"),
])
def test_bad_model_description_metadata_is_one_line(tmp_path: Path, value: str, match: str) -> None:
    f = save(tiny({SPEC_KEY: value}), tmp_path / "m.onnx")
    for load in (OrtRunner, spec_of_onnx, load_runner):
        with pytest.raises(RunnerError, match=match) as exc:
            load(f)
        one_line_error(exc, "m.onnx")


# ---------------------------------------------------------------- devices

def test_ort_device_vocabulary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """cuda:N is the CUDA provider on GPU N; the TensorRT provider is gone (TensorRT has its own runner)."""
    import onnxruntime as ort

    f = save(tiny(), tmp_path / "model.onnx")
    asked: List[Any] = []

    class Session(ort.InferenceSession):  # runs on the CPU, records the providers asked for, claims CUDA
        def __init__(self, path: str, opts: Any, providers: List[Any]) -> None:
            asked.append(providers)
            super().__init__(path, opts, providers=["CPUExecutionProvider"])

        def get_providers(self) -> List[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for device, gpu in (("cuda:1", 1), ("cuda", 0)):
        runner = load_runner(f, device=device)
        assert asked[-1] == [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
        described = runner.describe()
        assert described["device"] == f"cuda:{gpu}" and described["providers"][0] == "CUDAExecutionProvider"
    assert OrtRunner(f).describe()["device"] == "cpu" and asked[-1] == ["CPUExecutionProvider"]
    for bad in ("tensorrt", "gpu", "dla:0", "cuda:x"):
        for load in (OrtRunner, load_runner):
            with pytest.raises(RunnerError, match=rf"^device '{bad}': not one of cpu; cuda, cuda:N \(GPU N\)$"):
                load(f, device=bad)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # the CPU-only wheel
    with pytest.raises(RunnerError, match=r"model\.onnx: ONNX Runtime .* has no CUDAExecutionProvider \(available: "
                                          r"CPUExecutionProvider\); install onnxruntime-gpu"):
        OrtRunner(f, device="cuda:1")


def test_torch_device_is_checked_before_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "lineguard.edge.torch_runner", None)
    d = model_dir(tmp_path / "m")
    with pytest.raises(RunnerError, match=r"device 'dla:0': not one of cpu; cuda, cuda:N \(GPU N\)$"):
        load_runner(d, backend="torch", device="dla:0")
    with pytest.raises(RunnerError, match="backend torch needs torch"):
        load_runner(d, backend="torch", device="cuda:1")


# ---------------------------------------------------------------- engine side-car

def _sidecar(**change: Any) -> Dict[str, Any]:
    side = {SPEC_KEY: SPEC.model_dump(mode="json"), "tensorrt": "8.5.2.2", "gpu": "Xavier", "device": "cuda:0",
            "precision": "fp16", WEIGHTS_KEY: None}
    side.update(change)
    return {k: v for k, v in side.items() if v != "DROP"}


@pytest.mark.parametrize("text, match", [
    ("{", "not JSON"),
    (b"\xff\xfe\x00", "not JSON"),
    ("[1]", "a JSON list, not an object"),
    ('"engine"', "a JSON str, not an object"),
    (json.dumps(_sidecar(gpu="DROP", device="DROP")), "gpu: Field required; device: Field required"),
    (json.dumps(_sidecar(tensorrt=8.5)), "tensorrt: Input should be a valid string"),
    (json.dumps(_sidecar(gpu=None)), "gpu: Input should be a valid string"),
    (json.dumps(_sidecar(device=1)), "device: Input should be a valid string"),
    (json.dumps(_sidecar(device="npu")), "device: String should match"),
    (json.dumps(_sidecar(**{SPEC_KEY: 3})), "lineguard.model: Input should be a valid dictionary"),
    (json.dumps(_sidecar(**{SPEC_KEY: {"arch": {}}})), "lineguard.model.classes: Field required"),
    (json.dumps(_sidecar(**{WEIGHTS_KEY: 12})), "lineguard.weights_sha256: Input should be a valid string"),
    ("[" * 100000 + "]" * 100000, "not JSON"),
])
def test_corrupt_engine_sidecar_is_one_line_before_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            text: Any, match: str) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # validation must not need TensorRT
    engine = tmp_path / "engines" / "0123456789abcdef.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    side = sidecar_path(engine)
    side.write_bytes(text if isinstance(text, bytes) else text.encode())
    loaders = (read_sidecar, TrtRunner, lambda p: load_runner(p, backend="trt"), lambda p: load_runner(tmp_path, "trt"))
    for load in loaders:
        with pytest.raises(RunnerError, match=match) as exc:
            load(engine)
        one_line_error(exc, side.name)


def test_valid_sidecar_reaches_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "k.engine"
    engine.write_bytes(b"plan")
    sidecar_path(engine).write_text(json.dumps(_sidecar(build_seconds=1.5)))
    info, side = read_sidecar(engine)
    assert side.spec == SPEC and side.device == "cuda:0" and side.weights_sha256 is None
    assert info["build_seconds"] == 1.5
    with pytest.raises(RunnerError, match="needs the Python package 'tensorrt'"):
        TrtRunner(engine)


# ---------------------------------------------------------------- stale exports: the weights' sha256

def test_folder_load_refuses_an_onnx_of_other_weights(tmp_path: Path) -> None:
    d = model_dir(tmp_path / "m")
    assert load_runner(d).predict(np.zeros((2, H, W, 1), np.uint8)).probs.shape == (2, 2)
    (d / "model.safetensors").write_bytes(WEIGHTS + b" after train --resume")
    for path in (d, d / "model.onnx"):
        with pytest.raises(RunnerError, match=r"model\.onnx: stale, exported from other weights.*re-export it: "
                                              r"`lineguard export --model .* --format onnx`") as exc:
            load_runner(path)
        one_line_error(exc, "model.safetensors")


def test_onnx_without_a_weights_hash_is_refused_next_to_weights(tmp_path: Path) -> None:
    d = model_dir(tmp_path / "m", recorded=None)
    with pytest.raises(RunnerError, match=r"exported before weights hashes were recorded.*re-export") as exc:
        load_runner(d)
    one_line_error(exc, "model.onnx")
    int8 = save(tiny({SPEC_KEY: json.dumps(SPEC.model_dump(mode="json")), "lineguard.precision": "int8"}),
                d / "model-int8.onnx")
    with pytest.raises(RunnerError, match="--format onnx-int8"):
        load_runner(d, backend="ort-int8")
    with pytest.raises(RunnerError, match="--format onnx-int8"):
        load_runner(int8)


def test_a_model_file_without_weights_beside_it_loads(tmp_path: Path) -> None:
    """A line computer gets the exported files only: nothing to compare, old exports included."""
    jetson = tmp_path / "jetson"
    save(tiny(), jetson / "model.onnx")  # no weights key at all
    SPEC.save(jetson)  # model.yaml copied along, no weights
    assert load_runner(jetson).spec == SPEC
    assert load_runner(jetson / "model.onnx").spec == SPEC
    d = model_dir(tmp_path / "m", recorded="0" * 64)
    copy = save(onnx.load(str(d / "model.onnx")), tmp_path / "elsewhere" / "model.onnx")
    assert load_runner(copy).spec == SPEC  # its folder has no weights


def test_engine_of_other_weights_is_refused_before_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    d = model_dir(tmp_path / "m")
    engine = d / "engines" / "0123456789abcdef.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    sidecar_path(engine).write_text(json.dumps(_sidecar(**{WEIGHTS_KEY: hashlib.sha256(b"old").hexdigest()})))
    for path in (d, engine):
        with pytest.raises(RunnerError, match=r"0123456789abcdef\.engine: stale.*--format engine") as exc:
            load_runner(path, backend="trt")
        one_line_error(exc, "model.safetensors")
    sidecar_path(engine).write_text(json.dumps(_sidecar()))  # no weights recorded
    with pytest.raises(RunnerError, match="exported before weights hashes were recorded"):
        load_runner(d, backend="trt")
    sidecar_path(engine).write_text(json.dumps(_sidecar(**{WEIGHTS_KEY: hashlib.sha256(WEIGHTS).hexdigest()})))
    with pytest.raises(RunnerError, match="needs the Python package 'tensorrt'"):  # the check passed
        load_runner(d, backend="trt")


# ---------------------------------------------------------------- bench

def test_bench_unknown_backend_is_an_error_before_anything_runs(tmp_path: Path) -> None:
    d = model_dir(tmp_path / "m")
    with pytest.raises(RunnerError, match=r"unknown backend 'foo' \(backends: ort, ort-int8, trt, torch\)"):
        bench([d], ["ort", "foo"])
    with pytest.raises(RunnerError, match="positive integers"):
        bench([d], ["ort"], batches=[0])


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_bench_of_bad_files_reports_null_figures_and_nothing_ran(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_bad_bytes("truncated"))
    rows = bench([bad], ["ort"], batches=[1, 2], rounds=1, seconds=0.01, warmup=1)
    assert len(rows) == 2 and all(r.error and "bad.onnx" in r.error for r in rows)
    out = _strict(strict_json(report(rows).model_dump(mode="json")))
    assert [r["p50_ms"] for r in out["rows"]] == [None, None] and out["recommended"] == {}
    assert "nothing was measured" in nothing_ran(rows) and "bad.onnx" in nothing_ran(rows)
    good = bench([model_dir(tmp_path / "m"), bad], ["ort"], batches=[1], rounds=1, seconds=0.01, warmup=1,
                 options={"ort": {"threads": 1}})
    assert nothing_ran(good) is None and sum(r.error is None for r in good) == 1
    rows_out = _strict(strict_json(report(good).model_dump(mode="json")))["rows"]
    assert all(math.isfinite(r["p50_ms"]) for r in rows_out if not r["error"])


def test_cli_bench_exits_2_when_nothing_ran_and_writes_strict_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_bad_bytes("random"))
    out = tmp_path / "res" / "bench.json"
    env = dict(os.environ, COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lineguard", "bench", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    res = cli("--model", str(bad), "--batch", "1", "--batch", "2", "--rounds", "1", "--seconds", "0.01", "--json",
              "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "nothing was measured" in res.stderr
    printed = _strict(res.stdout.strip().splitlines()[-1])
    assert [r["p50_ms"] for r in printed["rows"]] == [None, None]
    assert _strict(out.read_text())["rows"] == printed["rows"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    res = cli("--model", str(bad), "--rounds", "1", "--seconds", "0.01")
    assert res.returncode == 2 and "bad.onnx" in res.stdout and "nothing was measured" in res.stderr
    res = cli("--model", str(bad), "--backend", "foo")
    assert res.returncode == 2 and "unknown backend 'foo'" in res.stderr and "Traceback" not in res.stderr


def test_export_without_torch_says_a_stale_onnx_needs_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lineguard.data.format import DatasetError
    from lineguard.edge.export import export
    from lineguard.edge.formats import ExportError

    monkeypatch.setitem(sys.modules, "lineguard.edge.torch2onnx", None)  # as on a line computer
    monkeypatch.setitem(sys.modules, "lineguard.edge.torch_runner", None)
    d = model_dir(tmp_path / "m", recorded=hashlib.sha256(b"older weights").hexdigest())
    with pytest.raises(ExportError, match=r"model\.onnx: stale or unreadable, and exporting it again needs torch"):
        export(d, "onnx-int8", data=tmp_path / "no-data")
    with pytest.raises(RunnerError, match="backend torch needs torch"):
        load_runner(d, backend="torch")
    (d / "model.safetensors").unlink()  # a copied directory: model.onnx is used as it is, never re-exported
    with pytest.raises(DatasetError, match="no-data: not a lineguard data set"):
        export(d, "onnx-int8", data=tmp_path / "no-data")
