"""Export a model directory to ONNX and INT8, run it on ONNX Runtime, benchmark it; bad model files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from lineguard import LineguardError
from lineguard.data.format import Dataset, DatasetError
from lineguard.edge.bench import bench, recommend
from lineguard.edge.export import export
from lineguard.edge.formats import ExportError
from lineguard.edge.onnx_check import input_convs, uint8_input_problems
from lineguard.edge.quantize import onnx2int8
from lineguard.edge.runners import RunnerError, load_runner
from lineguard.edge.runners.base import WEIGHTS_KEY
from lineguard.edge.runners.ort import OrtRunner
from lineguard.edge.splits import dataset_frames
from lineguard.edge.torch_runner import TorchRunner
from lineguard.files import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SIZE = 64


@pytest.fixture(scope="module")
def sim(split_sim) -> Path:
    return split_sim(n=48, size=96, seed=1, val=0.2, test=0.3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, sim: Path, random_model_dir) -> Path:
    model_dir = random_model_dir(tmp_path_factory.mktemp("m") / "model", sim, "two_stream_lite0", SIZE, bn_stats=True)
    export(model_dir, "onnx", data=sim)
    return model_dir


def _frames_go_straight_into_a_cast(graph: onnx.ModelProto) -> None:
    """What TensorRT needs of a uint8 input (NVIDIA/TensorRT#3985): every consumer a Cast to FLOAT."""
    readers = [n for n in graph.graph.node if "frames" in n.input]
    assert [n.op_type for n in readers] == ["Cast"], [n.op_type for n in readers]
    assert readers[0].attribute[0].i == onnx.TensorProto.FLOAT and uint8_input_problems(graph) == []


def test_onnx_takes_uint8_frames_and_matches_pytorch(exported: Path, sim: Path) -> None:
    graph = onnx.load(str(exported / "model.onnx"))
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert "LayerNormalization" not in {n.op_type for n in graph.graph.node}
    inp = graph.graph.input[0]
    assert inp.name == "frames" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, SIZE, SIZE, 1]
    _frames_go_straight_into_a_cast(graph)
    parity = json.loads((exported / "model.onnx.parity.json").read_text())
    assert parity["passed"] and parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-3
    assert parity["images"] == len(Dataset.load(sim).split("test"))
    assert parity["split"] == "test" and parity["data"] == str(sim)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta[WEIGHTS_KEY] == sha256_file(exported / "model.safetensors")

    runner = load_runner(exported)
    frames, _ = dataset_frames(sim, runner.spec, split="test")
    got = runner.predict(frames)
    ref = TorchRunner(exported).predict(frames)
    assert np.abs(got.probs - ref.probs).max() < 1e-4 and np.abs(got.heatmap - ref.heatmap).max() < 1e-4
    assert np.allclose(got.ng_score, 1 - got.probs[:, runner.spec.ok_index], atol=1e-6)
    assert got.heatmap.shape == (len(frames), 1, SIZE // 8, SIZE // 8)


def test_dynamic_batch_gives_the_same_scores(exported: Path, sim: Path, tmp_path: Path) -> None:
    dyn = tmp_path / "dyn.onnx"
    from lineguard.edge.torch2onnx import torch2onnx

    torch2onnx(exported, out=dyn, batch="dynamic")
    _frames_go_straight_into_a_cast(onnx.load(str(dyn)))
    r = OrtRunner(dyn, threads=1)
    assert r.batch_range == (1, 64)
    frames, _ = dataset_frames(sim, r.spec, split="test", limit=5)
    assert np.abs(r.predict(frames).probs - OrtRunner(exported / "model.onnx").predict(frames).probs).max() < 1e-5


def test_int8_is_qdq_with_unsigned_activations_and_reports(exported: Path, sim: Path, tmp_path: Path) -> None:
    out = onnx2int8(exported / "model.onnx", sim, out=tmp_path / "model-int8.onnx", calib_images=16, max_drop=None)
    graph = onnx.load(str(out))
    _frames_go_straight_into_a_cast(graph)  # the quantiser keeps the order
    ops = [n.op_type for n in graph.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: t for t in graph.graph.initializer}
    zps = [inits[n.input[2]] for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert zps and all(z.data_type == onnx.TensorProto.UINT8 for z in zps)  # QUInt8 activations
    report = json.loads(Path(str(out) + ".report.json").read_text())
    stem = input_convs(onnx.load(str(exported / "model.onnx")))
    assert len(stem) == 1 and [c["fp32_nodes"] for c in report["candidates"]] == [[], stem]
    kept = next(c for c in report["candidates"] if c["fp32_nodes"] == report["fp32_nodes"])
    assert kept["latency_ms"] == min(c["latency_ms"] for c in report["candidates"])  # max_drop=None: the faster
    assert report["latency_ms"]["int8"] == kept["latency_ms"] and report["accuracy"]["int8"] == kept["accuracy"]
    convs = {n.name: n for n in graph.graph.node if n.op_type == "Conv"}
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    for name, conv in convs.items():  # the kept FP32 convolution has float weights, every other one INT8 ones
        assert producers.get(conv.input[1]) == (None if name in report["fp32_nodes"] else "DequantizeLinear")
    assert report["calibration"]["images"] == 16 and report["calibration"]["method"] == "entropy"
    assert "Clip" in report["ops"]
    assert 0 < report["size_ratio"] < 0.5 and report["faster"] in ("fp32", "int8")
    assert report["test_images"] == len(Dataset.load(sim).split("test"))
    assert report["calibration"]["split"] == "train" and report["test"]["split"] == "test"
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta[WEIGHTS_KEY] == sha256_file(exported / "model.safetensors")  # carried from model.onnx
    r = load_runner(out)
    assert r.backend == "ort-int8" and r.predict(dataset_frames(sim, r.spec, limit=3)[0]).probs.shape[0] == 3
    sym = onnx2int8(exported / "model.onnx", sim, out=tmp_path / "model-int8-trt.onnx", calib_images=8,
                    max_drop=None, symmetric=True)  # TensorRT's flavour: its frames too go straight into a Cast
    _frames_go_straight_into_a_cast(onnx.load(str(sym)))
    with pytest.raises(ExportError, match="accuracy points"):  # a limit nothing can meet: the check bites
        onnx2int8(exported / "model.onnx", sim, out=tmp_path / "strict.onnx", calib_images=8, max_drop=-1.0)
    assert not (tmp_path / "strict.onnx").exists() and (tmp_path / "strict.onnx.report.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_interleaves_and_reports_errors_per_row(exported: Path, sim: Path, tmp_path: Path,
                                                      random_model_dir) -> None:
    other = random_model_dir(tmp_path / "cnn", sim, "cnn_lite0", SIZE, bn_stats=True)
    export(other, "onnx")
    rows = bench([exported, other], ["ort", "ort-int8"], batches=[1, 2], rounds=1, seconds=0.05, warmup=1,
                 options={"ort": {"threads": 1}})
    ok = [r for r in rows if r.error is None]
    assert {(r.model, r.batch) for r in ok} == {(str(m), b) for m in (exported, other) for b in (1, 2)}
    assert all(r.p50_ms > 0 and r.images_per_s > 0 for r in ok)
    # the runners are the ones asked for: the model's model.onnx, with the options given
    assert all(r.runner["file"] == str(Path(r.model) / "model.onnx") and r.runner["threads"] == 1
               and r.runner["device"] == "cpu" for r in ok)
    errors = [r for r in rows if r.error]
    assert len(errors) == 4 and all("onnx-int8" in r.error for r in errors)  # no model-int8.onnx made
    assert recommend(rows) == {str(m): {"onnxruntime": "ort"} for m in (exported, other)}


def test_bad_model_files_are_clear_errors(exported: Path, tmp_path: Path) -> None:
    data = (exported / "model.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunnerError, match=r"cut\.onnx: ONNX Runtime cannot load it"):
        OrtRunner(tmp_path / "cut.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(RunnerError, match="missing or empty"):
        OrtRunner(tmp_path / "empty.onnx")
    graph = onnx.load(str(exported / "model.onnx"))
    spec = json.loads(graph.metadata_props[0].value)
    spec["preprocess"]["size"] = [96, 96]  # a description of another input size than the graph's
    graph.metadata_props[0].value = json.dumps(spec)
    onnx.save(graph, str(tmp_path / "other.onnx"))
    with pytest.raises(RunnerError, match=r"does not match its model description \(N, 96, 96, 1\)"):
        OrtRunner(tmp_path / "other.onnx")
    del graph.metadata_props[:]
    onnx.save(graph, str(tmp_path / "plain.onnx"))
    with pytest.raises(RunnerError, match="not exported by lineguard"):
        OrtRunner(tmp_path / "plain.onnx")



def test_cuda_where_onnxruntime_has_it_and_a_clear_error_where_not(exported: Path, sim: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu and a GPU
        frames, _ = dataset_frames(sim, load_runner(exported).spec, split="test", limit=8)
        with OrtRunner(exported / "model.onnx", device="cuda:0") as gpu:
            assert gpu.describe()["providers"][0] == "CUDAExecutionProvider"
            cpu = OrtRunner(exported / "model.onnx")
            assert np.abs(gpu.predict(frames).probs - cpu.predict(frames).probs).max() < 1e-3
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # the CPU-only wheel
    with pytest.raises(RunnerError, match=r"model\.onnx: ONNX Runtime .* no CUDAExecutionProvider.*onnxruntime-gpu"):
        OrtRunner(exported / "model.onnx", device="cuda")


def test_cli_export_and_bench(exported: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lineguard", *args], capture_output=True, text=True)

    res = cli("export", "--model", str(exported), "--format", "onnx", "--half")
    assert res.returncode == 2 and "--half do(es) not apply to --format onnx" in res.stderr
    res = cli("bench", "--model", str(exported), "--batch", "1", "--rounds", "1", "--seconds", "0.05", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rows"][0]["backend"] == "ort" and out["rows"][0]["p50_ms"] > 0 and out["machine"]["cores"]


def _temps(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_failed_export_leaves_no_temp_and_the_old_onnx(exported: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    d = shutil.copytree(exported, tmp_path / "model")
    old = (d / "model.onnx").read_bytes()

    def broken_checker(graph: object) -> None:
        raise ExportError("checker says no")  # after torch.onnx.export wrote the temporary file

    with monkeypatch.context() as m:
        m.setattr(onnx.checker, "check_model", broken_checker)
        with pytest.raises(ExportError, match="checker says no"):
            export(d, "onnx")
    assert _temps(d) == [] and (d / "model.onnx").read_bytes() == old

    import lineguard.edge.torch2onnx as t2o

    def failing_parity(*args: object) -> dict:
        return {"images": 8, "source": "test", "split": None, "max_abs_diff": float("nan"),
                "argmax_agreement": 0.5, "passed": False}

    monkeypatch.setattr(t2o, "parity_report", failing_parity)
    with pytest.raises(ExportError, match="ONNX Runtime and PyTorch disagree"):
        export(d, "onnx")
    assert _temps(d) == [] and (d / "model.onnx").read_bytes() == old
    text = (d / "model.onnx.parity.json").read_text()
    assert "NaN" not in text and json.loads(text)["max_abs_diff"] is None and not json.loads(text)["passed"]


def test_failed_int8_copy_leaves_no_temp_and_the_old_file(exported: Path, sim: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import lineguard.edge.quantize as quantize

    out = tmp_path / "model-int8.onnx"
    out.write_bytes(b"the previous INT8 model")

    def half_copy(src: str, dst: str) -> None:
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(quantize.shutil, "copyfile", half_copy)
    with pytest.raises(OSError, match="No space left"):
        onnx2int8(exported / "model.onnx", sim, out=out, calib_images=8, max_drop=None)
    assert _temps(tmp_path) == [] and out.read_bytes() == b"the previous INT8 model"


def _change_weights(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_dir / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] + 0.5  # what `train --resume` does to the file, in short
    save_file(state, str(model_dir / "model.safetensors"))


def test_stale_onnx_is_refused_and_reexported(exported: Path, sim: Path, tmp_path: Path) -> None:
    d = shutil.copytree(exported, tmp_path / "model")
    _change_weights(d)
    with pytest.raises(RunnerError, match=r"model\.onnx: stale, exported from other weights.*re-export"):
        load_runner(d)
    rows = bench([d], ["ort"], batches=[1], rounds=1, seconds=0.01, warmup=1)
    assert len(rows) == 1 and "stale" in rows[0].error
    out = export(d, "onnx-int8", data=sim, max_drop=1.0)  # re-exports model.onnx from the new weights first
    now = sha256_file(d / "model.safetensors")
    for f in (d / "model.onnx", out):
        assert {p.key: p.value for p in onnx.load(str(f)).metadata_props}[WEIGHTS_KEY] == now
    assert load_runner(d).spec.classes and load_runner(d, backend="ort-int8").backend == "ort-int8"
    (d / "model.safetensors").write_bytes(b"garbage, not safetensors")
    old = (d / "model.onnx").read_bytes()
    with pytest.raises(LineguardError, match=r"model\.safetensors: not a readable safetensors file"):
        export(d, "onnx-int8", data=sim, max_drop=1.0)
    assert (d / "model.onnx").read_bytes() == old and _temps(d) == []
    with pytest.raises(RunnerError, match="stale"):
        load_runner(d, backend="ort-int8")


def _copy_set(sim: Path, dest: Path) -> Dataset:
    shutil.copytree(sim, dest)
    return Dataset.load(dest)


def test_missing_split_and_shared_calibration_images_are_errors(exported: Path, sim: Path, tmp_path: Path) -> None:
    spec = load_runner(exported).spec
    unsplit = _copy_set(sim, tmp_path / "unsplit")
    unsplit.records = [r.model_copy(update={"split": None}) for r in unsplit.records]
    unsplit.save()
    with pytest.raises(DatasetError, match=r"unsplit: no images in the 'test' split \(48 images, splits: none\); "
                                           r"run `lineguard data split .*unsplit`"):
        dataset_frames(unsplit.root, spec, split="test")
    assert len(dataset_frames(unsplit.root, spec, split=None)[0]) == 48
    from lineguard.edge.torch2onnx import torch2onnx

    with pytest.raises(DatasetError, match="no images in the 'test' split"):
        torch2onnx(exported, out=tmp_path / "x.onnx", parity_data=unsplit.root)
    with pytest.raises(DatasetError, match="no images in the 'train' split"):
        onnx2int8(exported / "model.onnx", unsplit.root, out=tmp_path / "i8.onnx")
    assert not (tmp_path / "x.onnx").exists() and _temps(tmp_path) == []

    leaky = _copy_set(sim, tmp_path / "leaky")
    train = leaky.split("train")
    leaky.records += [r.model_copy(update={"id": r.id + "-again", "split": "test"}) for r in train[:2]]
    leaky.save()
    with pytest.raises(DatasetError, match=r"2 image\(s\) of the 'test' split .* are also calibration images"):
        onnx2int8(exported / "model.onnx", leaky.root, out=tmp_path / "i8.onnx")
    with pytest.raises(DatasetError, match="also calibration images"):  # --calib of another set, same images
        onnx2int8(exported / "model.onnx", sim, data=leaky.root, out=tmp_path / "i8.onnx")
    assert not (tmp_path / "i8.onnx").exists()
