"""The format table (``formats.FORMATS``) and the device vocabulary (``lineguard.devices``), torch-free.

That export writes and load_runner finds each row's file is ``test_trt.py``'s
``test_every_format_file_is_what_export_writes_and_load_runner_finds`` (it has the TensorRT fakes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard import LineguardError
from lineguard.devices import Device, DeviceError, parse_device
from lineguard.edge.bench import BenchRow, bench, recommend
from lineguard.edge.formats import (
    BACKENDS,
    FORMATS,
    ExportError,
    backend_format,
    export_format,
    file_format,
)
from lineguard.edge.runners import RunnerError, resolve_model_file


@pytest.mark.parametrize("text, device", [
    ("cpu", Device("cpu")), ("cuda", Device("cuda", 0)), ("cuda:0", Device("cuda", 0)), ("cuda:3", Device("cuda", 3)),
    ("dla:0", Device("dla", 0)), ("dla:1", Device("dla", 1)), (Device("cuda", 2), Device("cuda", 2)),
])
def test_parse_device_good(text: object, device: Device) -> None:
    assert parse_device(text) == device  # type: ignore[arg-type]
    assert str(device) == {"cpu": "cpu"}.get(device.kind, f"{device.kind}:{device.index}")
    assert parse_device(str(device)) == device  # str() is the canonical form


@pytest.mark.parametrize("text", ["gpu", "GPU", "tensorrt", "dla", "cpu:0", "cuda:", "cuda:-1", "cuda:x", " cuda",
                                  "cuda:0 ", "dla:0:1", "", 0, None])
def test_parse_device_bad(text: object) -> None:
    with pytest.raises(DeviceError, match=r"not one of cpu; cuda, cuda:N \(GPU N\); dla:N \(DLA core N\)$") as exc:
        parse_device(text)  # type: ignore[arg-type]
    assert repr(text) in str(exc.value) and isinstance(exc.value, LineguardError)  # the CLI's one-line errors


def test_parse_device_allowed_kinds_and_error_type() -> None:
    assert parse_device("dla:1", ("cuda", "dla")) == Device("dla", 1)
    with pytest.raises(RunnerError, match=r"^device 'dla:0': not one of cpu; cuda, cuda:N \(GPU N\)$"):
        parse_device("dla:0", ("cpu", "cuda"), RunnerError)
    with pytest.raises(ExportError, match=r"^device 'cpu': not one of cuda, cuda:N \(GPU N\); dla:N"):
        parse_device("cpu", export_format("engine").devices, ExportError)


def test_table_rows() -> None:
    assert [f.name for f in FORMATS if f.exported] == ["onnx", "onnx-int8", "engine"]
    assert BACKENDS == ("ort", "ort-int8", "trt", "torch") and len(set(BACKENDS)) == len(FORMATS)
    for f in FORMATS:
        assert backend_format(f.backend) is f and set(f.devices) <= {"cpu", "cuda", "dla"}
    assert backend_format("openvino") is None
    torch = backend_format("torch")
    assert torch is not None and not torch.exported and torch.args == ()
    with pytest.raises(ExportError, match=r"unknown export format 'torch' \(formats: onnx, onnx-int8, engine\)"):
        export_format("torch")  # the reference reads the weights: nothing to export


def test_file_format_from_the_patterns(tmp_path: Path) -> None:
    names = {"model.onnx": "onnx", "model-int8.onnx": "onnx-int8", "engines/fp16-b1-cuda0.engine": "engine",
             "k.engine": "engine", "dyn.onnx": "onnx", "notes.txt": "onnx"}
    assert {n: file_format(tmp_path / n).name for n in names} == names


def test_keyed_files(tmp_path: Path) -> None:
    engine = export_format("engine")
    assert engine.keyed and not export_format("onnx").keyed
    assert engine.path(tmp_path, "int8-b1-dla0") == tmp_path / "engines" / "int8-b1-dla0.engine"
    assert engine.keys(tmp_path) == {}
    (tmp_path / "engines").mkdir()
    for name in ("fp16-b1-cuda0.engine", "fp16-b1-cuda0.json", "int8-b1-dla0.engine", "x.calib"):
        (tmp_path / "engines" / name).write_bytes(b"")
    assert engine.keys(tmp_path) == {k: engine.path(tmp_path, k) for k in ("fp16-b1-cuda0", "int8-b1-dla0")}


def test_table_drives_export_options() -> None:
    for f in FORMATS:
        if f.exported:
            f.check_args(dict.fromkeys(f.args, 1))
            others = sorted({a for g in FORMATS for a in g.args} - set(f.args))
            for a in others:
                with pytest.raises(ExportError, match=rf"--{a} do\(es\) not apply to --format {f.name}"):
                    f.check_args({a: 1})
    with pytest.raises(ExportError, match="did you mean 'onnx-int8'"):
        export_format("onnx_int8")


def test_table_drives_runner_files(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match=r"no model\.onnx; run `lineguard export --model .* --format onnx`"):
        resolve_model_file(tmp_path, "ort")
    with pytest.raises(RunnerError, match=r"no model-int8\.onnx; .*--format onnx-int8`"):
        resolve_model_file(tmp_path, "ort-int8")
    with pytest.raises(RunnerError, match=r"engines: no engine; run `lineguard export .* --format engine`"):
        resolve_model_file(tmp_path, "trt")
    assert resolve_model_file(tmp_path, "torch") == tmp_path  # the reference reads the model directory
    with pytest.raises(RunnerError, match=r"unknown backend 'openvino' \(backends: ort, ort-int8, trt, torch\)"):
        resolve_model_file(tmp_path, "openvino")


def test_table_drives_bench_families(tmp_path: Path) -> None:
    rows = [BenchRow("m", "ort", 1, False, p50_ms=2.0), BenchRow("m", "ort-int8", 1, False, p50_ms=1.0),
            BenchRow("m", "trt", 1, False, p50_ms=3.0), BenchRow("m", "torch", 1, False, error="no torch"),
            BenchRow("m", "ort", 8, False, p50_ms=0.1)]
    fam = {f.backend: f.family for f in FORMATS}
    assert recommend(rows) == {"m": {fam["ort"]: "ort-int8", fam["trt"]: "trt"}}  # one per family, batch 1
    assert fam["ort"] == fam["ort-int8"] != fam["trt"]
    with pytest.raises(RunnerError, match=r"unknown backend 'onnx' \(backends: ort, ort-int8, trt, torch\)"):
        bench([tmp_path], ["ort", "onnx"])
    rows = bench([tmp_path], ["trt", "ort"], rounds=0)
    assert [r.backend for r in rows] == ["trt", "ort"] and all(r.error for r in rows)  # families in given order
