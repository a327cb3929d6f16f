"""Fuzz table for the model-folder loaders and the runners: `lineguard eval`, `lineguard export` and
`lineguard bench` on model folders with a bad model.yaml (missing keys, unknown arch keyword, img_size 60000,
non-UTF-8, ...), bad model.safetensors (zero-byte, truncated, random, huge header, foreign tensors), bad
model.onnx / model-int8.onnx (truncated, random, valid protobuf but not lineguard, broken metadata), bad
engine side-cars, and bad --data sets. Each copies one tiny shared model folder (fuzz_harness.Assets) and
corrupts it; see fuzz_harness.py for the checks every case gets (exit 2, one error line naming the file,
no traceback, nothing outside changed, the model folder unchanged after a failure)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest
import yaml
from fuzz_harness import (
    CLASSES,
    Case,
    Ctx,
    Setup,
    execute,
    make_fifo,
    png_bomb,
    symlink,
    tiny_onnx,
    write,
)

CASES: List[Case] = []
FAIL = {2: "error"}
EITHER = {0: "ok", 2: "error"}  # legitimately 0 or 2: the file is still named when it fails
SPEC_KEY = "lineguard.model"
WEIGHTS_KEY = "lineguard.weights_sha256"
BOMB_MEMORY = 3 << 30
REPORTS = ("model.onnx.parity.json", "model-int8.onnx.report.json")  # written even when the check fails (README)
QUIET_BENCH = ["--batch", "1", "--rounds", "1", "--seconds", "0.01", "--threads", "1", "--json"]


def add(cid: str, category: str, build: Callable[[Ctx], Setup]) -> None:
    CASES.append(Case(cid, category, build, needs_assets=True))


def eval_argv(model: Path, data: Path) -> List[str]:
    return ["eval", "--model", str(model), "--data", str(data), "--json", "-q"]


def export_argv(model: Path, *extra: str) -> List[str]:
    return ["export", "--model", str(model), "--format", "onnx", *extra, "--json"]


def bench_argv(model: Path, backend: str = "ort") -> List[str]:
    return ["bench", "--model", str(model), "--backend", backend, *QUIET_BENCH]


# --------------------------------------------------------------------------- model.yaml

def _spec_dict(change: Callable[[Dict[str, Any]], None]) -> Callable[[Ctx], bytes]:
    def make(ctx: Ctx) -> bytes:
        spec = copy.deepcopy(ctx.assets.spec)
        change(spec)
        return yaml.safe_dump(spec, sort_keys=False).encode()

    return make


def _set(path: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def change(spec: Dict[str, Any]) -> None:
        *parents, key = path.split(".")
        d = spec
        for p in parents:
            d = d[p]
        d[key] = value

    return change


def _del(path: str) -> Callable[[Dict[str, Any]], None]:
    def change(spec: Dict[str, Any]) -> None:
        *parents, key = path.split(".")
        d = spec
        for p in parents:
            d = d[p]
        del d[key]

    return change


def _raw(data: Any) -> Callable[[Ctx], bytes]:
    return lambda ctx: data.encode() if isinstance(data, str) else data


ALIAS = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
ALIAS_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + ALIAS

# (id, model.yaml bytes maker, expect, verbs, names (default: model.yaml), isolate)
Y = "model.yaml"
SPEC_CASES: List[tuple] = [
    ("arch-missing", _spec_dict(_del("arch")), FAIL, "eb"),
    ("classes-missing", _spec_dict(_del("classes")), FAIL, "e"),
    ("ok-class-missing", _spec_dict(_del("ok_class")), FAIL, "e"),
    ("preprocess-missing", _spec_dict(_del("preprocess")), FAIL, "e"),
    ("arch-name-unknown", _spec_dict(_set("arch.name", "two_stream_nope")), FAIL, "ext"),
    ("arch-unknown-keyword", _spec_dict(_set("arch.bogus", 1)), FAIL, "ext"),
    ("arch-name-missing", _spec_dict(_del("arch.name")), FAIL, "ex"),
    ("arch-a-list", _spec_dict(_set("arch", [1, 2])), FAIL, "e"),
    ("arch-img-size-60000", _spec_dict(_set("arch.img_size", 60000)), FAIL, "e", None, True),
    ("arch-img-size-text", _spec_dict(_set("arch.img_size", "abc")), FAIL, "ex"),
    ("arch-img-size-negative", _spec_dict(_set("arch.img_size", -32)), FAIL, "e"),
    ("arch-img-size-3-values", _spec_dict(_set("arch.img_size", [32, 32, 32])), FAIL, "e"),
    ("arch-num-classes-7", _spec_dict(_set("arch.num_classes", 7)), FAIL, "ex"),
    ("arch-num-classes-0", _spec_dict(_set("arch.num_classes", 0)), FAIL, "e"),
    ("arch-in-chans-3", _spec_dict(_set("arch.in_chans", 3)), FAIL, "ext"),
    ("arch-drop-rate-nan", _spec_dict(_set("arch.drop_rate", math.nan)), FAIL, "e"),
    ("arch-drop-rate-5", _spec_dict(_set("arch.drop_rate", 5.0)), FAIL, "e"),
    ("preprocess-size-60000", _spec_dict(_set("preprocess.size", [60000, 60000])), FAIL, "e", None, True),
    ("preprocess-size-8", _spec_dict(_set("preprocess.size", [8, 8])), FAIL, "e"),
    ("preprocess-size-other-than-arch", _spec_dict(_set("preprocess.size", [64, 64])), FAIL, "ex"),
    ("preprocess-std-zero", _spec_dict(_set("preprocess.std", [0.0])), FAIL, "e"),
    ("preprocess-std-nan", _spec_dict(_set("preprocess.std", [math.nan])), FAIL, "ex"),
    ("preprocess-mean-inf", _spec_dict(_set("preprocess.mean", [math.inf])), FAIL, "e"),
    ("preprocess-channels-3", _spec_dict(_set("preprocess.channels", 3)), FAIL, "e"),
    ("threshold-nan", _spec_dict(_set("threshold", math.nan)), EITHER, "e"),
    ("threshold-5", _spec_dict(_set("threshold", 5.0)), EITHER, "e"),
    ("threshold-text", _spec_dict(_set("threshold", "high")), FAIL, "e"),
    ("version-2", _spec_dict(_set("version", 2)), FAIL, "eb"),
    ("format-other", _spec_dict(_set("format", "keras")), FAIL, "e"),
    ("ok-class-unknown", _spec_dict(_set("ok_class", "good")), FAIL, "e"),
    ("classes-empty", _spec_dict(_set("classes", [])), FAIL, "e"),
    ("classes-duplicate", _spec_dict(_set("classes", ["dent", "dent", "ok"])), FAIL, "e"),
    ("classes-other-than-data", _spec_dict(_set("classes", ["crack", "hole", "ok"])), FAIL, "e",
     (Y, "classes", "data")),
    ("weights-dotdot", _spec_dict(_set("weights", "../../outside.safetensors")), FAIL, "ex",
     (Y, "outside.safetensors")),
    ("weights-etc-passwd", _spec_dict(_set("weights", "/etc/passwd")), FAIL, "ex", (Y, "passwd")),
    ("weights-dev-zero", _spec_dict(_set("weights", "/dev/zero")), FAIL, "e", (Y, "/dev/zero"), True),
    ("weights-the-folder", _spec_dict(_set("weights", ".")), FAIL, "e", (Y, "model")),
    ("extra-key", _spec_dict(_set("bogus", 1)), FAIL, "e"),
    ("zero-byte", _raw(""), FAIL, "eb"),
    ("a-list", _raw("- 1\n- 2\n"), FAIL, "e"),
    ("non-utf8", _raw(b"format: lineguard-model\nclasses: [d\xffent]\n"), FAIL, "ext"),
    ("binary", lambda ctx: ctx.rng.bytes(3000), FAIL, "e"),
    ("tab-indent", _raw("format: lineguard-model\narch:\n\tname: cnn_lite0\n"), FAIL, "ex"),
    ("python-tag", _raw("arch: !!python/object/apply:os.system ['true']\n"), FAIL, "e"),
    ("nesting-5000", _raw("classes: " + "[" * 5000 + "]" * 5000 + "\n"), FAIL, "e"),
    ("alias-bomb", _raw(ALIAS_BOMB + "classes: *i\n"), FAIL, "e", None, True),
]


def _spec_case(make: Callable[[Ctx], bytes], expect: Dict[int, str], verb: str, names: Optional[Sequence[str]],
               bomb: bool) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        a = ctx.assets
        model = a.model_dir(ctx.root, onnx=verb in "xb")
        write(model / "model.yaml", make(ctx))
        nm = tuple(str(ctx.root / "data") if n == "data" else n for n in (names or (Y,)))
        if verb == "e":  # bombs: in-process under an address-space limit
            return Setup(eval_argv(model, a.dataset(ctx.root)), expect, nm, memory=BOMB_MEMORY if bomb else None)
        if verb == "x":
            return Setup(export_argv(model), expect, nm, out=model, allow=REPORTS)
        if verb == "b":  # ONNX carries its own model description: a bad model.yaml beside it may not matter
            return Setup(bench_argv(model), EITHER, nm)
        return Setup(bench_argv(model, "torch"), expect, nm)

    return build


VERB_NAMES = {"e": "eval", "x": "export", "t": "bench-torch", "b": "bench-ort"}
for _row in SPEC_CASES:
    _cid, _make, _expect, _verbs, *_rest = _row
    _names = _rest[0] if _rest else None
    _bomb = bool(_rest[1]) if len(_rest) > 1 else False
    for _v in _verbs:
        add(f"{VERB_NAMES[_v]}-model-yaml-{_cid}", f"model-yaml:{VERB_NAMES[_v]}",
            _spec_case(_make, _expect, _v, _names, _bomb))


def _spec_file_special(make: Callable[[Path], Any], verb: str, timeout: float = 20.0) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        a = ctx.assets
        model = a.model_dir(ctx.root, onnx=verb == "x")
        (model / "model.yaml").unlink()
        make(model / "model.yaml")
        names = (Y, str(model))
        if verb == "e":
            return Setup(eval_argv(model, a.dataset(ctx.root)), FAIL, names, timeout=timeout)
        return Setup(export_argv(model), FAIL, names, out=model, timeout=timeout, allow=REPORTS)

    return build


for _v in "ex":
    add(f"{VERB_NAMES[_v]}-model-yaml-missing", f"model-yaml:{VERB_NAMES[_v]}", _spec_file_special(lambda p: None, _v))
    add(f"{VERB_NAMES[_v]}-model-yaml-is-a-folder", f"model-yaml:{VERB_NAMES[_v]}",
        _spec_file_special(lambda p: p.mkdir(), _v))
    add(f"{VERB_NAMES[_v]}-model-yaml-dangling-symlink", f"model-yaml:{VERB_NAMES[_v]}",
        _spec_file_special(lambda p: symlink(p, p.parent / "gone.yaml"), _v))
    add(f"{VERB_NAMES[_v]}-model-yaml-fifo", f"model-yaml:{VERB_NAMES[_v]}", _spec_file_special(make_fifo, _v))


# --------------------------------------------------------------------------- model.safetensors

def _cut(at: Callable[[int], int]) -> Callable[[Ctx], bytes]:
    return lambda ctx: ctx.assets.weights[: at(len(ctx.assets.weights))]


def _header(change: Callable[[Dict[str, Any]], None]) -> Callable[[Ctx], bytes]:
    """Edit the safetensors JSON header (keeping the tensor bytes)."""
    def make(ctx: Ctx) -> bytes:
        data = ctx.assets.weights
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        change(header)
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data[8 + n:]

    return make


def _beyond(header: Dict[str, Any]) -> None:
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 10 ** 12]


def _tensors(change: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Callable[[Ctx], bytes]:
    return lambda ctx: ctx.assets.weights_with(change)


def _wrong_shape(state: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    return state


def _all_nan(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.float().fill_(math.nan) if v.is_floating_point() else v for k, v in state.items()}


def _fp16(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _pickle(ctx: Ctx) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, buf)
    return buf.getvalue()


W = "model.safetensors"
WEIGHT_CASES: List[tuple] = [
    ("zero-byte", lambda ctx: b"", FAIL, "ext"),
    ("truncated-8", _cut(lambda n: 8), FAIL, "ex"),
    ("truncated-half", _cut(lambda n: n // 2), FAIL, "ext"),
    ("truncated-minus-1", _cut(lambda n: n - 1), FAIL, "ex"),
    ("random-bytes", lambda ctx: ctx.rng.bytes(4096), FAIL, "ex"),
    ("header-length-2e62", lambda ctx: struct.pack("<Q", 1 << 62) + ctx.assets.weights[8:], FAIL, "e"),
    ("header-not-json", lambda ctx: struct.pack("<Q", 64) + b"{" * 64 + ctx.assets.weights[72:], FAIL, "e"),
    ("offsets-beyond-file", _header(_beyond), FAIL, "ex"),
    ("no-tensors", _tensors(lambda s: {}), FAIL, "ext"),
    ("missing-tensor", _tensors(lambda s: dict(list(s.items())[1:])), FAIL, "ex"),
    ("extra-tensor", _tensors(lambda s: {**s, "bogus.weight": next(iter(s.values())).clone()}), FAIL, "e"),
    ("wrong-shape", _tensors(_wrong_shape), FAIL, "ex"),
    ("all-nan", _tensors(_all_nan), EITHER, "e"),
    ("float16", _tensors(_fp16), EITHER, "e"),
    ("torch-pickle-renamed", _pickle, FAIL, "e"),
]


def _weights_case(make: Callable[[Ctx], bytes], expect: Dict[int, str], verb: str) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        a = ctx.assets
        model = a.model_dir(ctx.root, onnx=verb == "x")
        write(model / W, make(ctx))
        if verb == "e":
            return Setup(eval_argv(model, a.dataset(ctx.root)), expect, (W,))
        if verb == "x":
            return Setup(export_argv(model), expect, (W,), out=model, allow=REPORTS)
        return Setup(bench_argv(model, "torch"), expect, (W,))

    return build


for _cid, _make, _expect, _verbs in WEIGHT_CASES:
    for _v in _verbs:
        add(f"{VERB_NAMES[_v]}-weights-{_cid}", f"weights:{VERB_NAMES[_v]}", _weights_case(_make, _expect, _v))


def _weights_special(make: Callable[[Path], Any], isolate: bool = False) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        a = ctx.assets
        model = a.model_dir(ctx.root)
        (model / W).unlink()
        make(model / W)
        return Setup(eval_argv(model, a.dataset(ctx.root)), FAIL, (W,), isolate=isolate, torch=True,
                     memory=None if isolate else BOMB_MEMORY, timeout=20.0)

    return build


add("eval-weights-missing", "weights:eval", _weights_special(lambda p: None))
add("eval-weights-is-a-folder", "weights:eval", _weights_special(lambda p: p.mkdir()))
add("eval-weights-dangling-symlink", "weights:eval", _weights_special(lambda p: symlink(p, p.parent / "gone")))
add("eval-weights-symlink-dev-zero", "weights:eval", _weights_special(lambda p: symlink(p, "/dev/zero")))
add("eval-weights-fifo", "weights:eval", _weights_special(make_fifo, True))


# --------------------------------------------------------------------------- eval --data

def _data_case(change: Callable[[Ctx, Path], Sequence[str]], split: Optional[str] = None, data_is_model: bool = False
               ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        a = ctx.assets
        model = a.model_dir(ctx.root)
        data = a.dataset(ctx.root)
        names = change(ctx, data)
        argv = eval_argv(model, model if data_is_model else data) + (["--split", split] if split else [])
        return Setup(argv, FAIL, names, memory=BOMB_MEMORY, timeout=20.0)

    return build


def _manifest_edit(edit: Callable[[List[dict]], None]) -> Callable[[Path], None]:
    def apply(data: Path) -> None:
        recs = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
        edit(recs)
        (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    return apply


def _test_image(ctx: Ctx, data: Path, content: Any) -> Sequence[str]:
    """Replace the first test image's bytes (its manifest record keeps the old sha256 and size)."""
    recs = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rec = next(r for r in recs if r.get("split") == "test")
    path = data / rec["image"]
    path.unlink()
    content(path)
    return (path.name,)


def _no_splits(ctx: Ctx, data: Path) -> Sequence[str]:
    _manifest_edit(lambda recs: [r.pop("split", None) for r in recs])(data)
    return (str(data), "test")


def _other_classes(ctx: Ctx, data: Path) -> Sequence[str]:
    text = (data / "classes.yaml").read_text().replace("scratch", "crack")
    (data / "classes.yaml").write_text(text)
    _manifest_edit(lambda recs: [r.update(label="crack") for r in recs if r["label"] == "scratch"])(data)
    return (str(data), "classes.yaml")


def _non_utf8_manifest(ctx: Ctx, data: Path) -> Sequence[str]:
    with (data / "manifest.jsonl").open("ab") as f:
        f.write(b'{"id": "\xff\xfe"}\n')
    return ("manifest.jsonl",)


def _remove(ctx: Ctx, data: Path) -> Sequence[str]:
    import shutil

    shutil.rmtree(data)
    return (data.name,)


DATA_CASES = [
    ("data-missing", _data_case(_remove)),
    ("data-classes-differ", _data_case(_other_classes)),
    ("data-no-test-split", _data_case(_no_splits)),
    ("data-split-bogus", _data_case(lambda c, d: (str(d), "nosuch"), split="nosuch")),
    ("data-test-image-truncated", _data_case(lambda c, d: _test_image(c, d, lambda p: write(
        p, (d / "images" / "i0.png").read_bytes()[:60])))),
    ("data-test-image-zero-byte", _data_case(lambda c, d: _test_image(c, d, lambda p: write(p, b"")))),
    ("data-test-image-bomb-20000", _data_case(lambda c, d: _test_image(c, d, lambda p: write(p, png_bomb(20000))))),
    ("data-test-image-dev-zero", _data_case(lambda c, d: _test_image(c, d, lambda p: symlink(p, "/dev/zero")))),
    ("data-test-image-fifo", _data_case(lambda c, d: _test_image(c, d, make_fifo))),
    ("data-manifest-non-utf8", _data_case(_non_utf8_manifest)),
    ("data-is-the-model-folder", _data_case(lambda c, d: (str(c.root / "model"), "manifest"), data_is_model=True)),
]
for _cid, _build in DATA_CASES:
    add(f"eval-{_cid}", "eval-data", _build)


# --------------------------------------------------------------------------- export: existing model.onnx, INT8

def _export_bad_data(ctx: Ctx) -> Setup:
    """A full export whose parity data set has a truncated test image: it fails, model.onnx stays the old one."""
    a = ctx.assets
    model = a.model_dir(ctx.root, onnx=True)
    data = a.dataset(ctx.root)
    names = _test_image(ctx, data, lambda p: write(p, (data / "images" / "i0.png").read_bytes()[:60]))
    return Setup(export_argv(model, "--data", str(data)), FAIL, names, out=model, allow=REPORTS)


def _export_unreadable_data(ctx: Ctx) -> Setup:
    a = ctx.assets
    model = a.model_dir(ctx.root, onnx=True)
    data = a.dataset(ctx.root)
    write(data / "classes.yaml", "classes: [unclosed\n")
    return Setup(export_argv(model, "--data", str(data)), FAIL, ("classes.yaml",), out=model, allow=REPORTS)


def _export_control(ctx: Ctx) -> Setup:
    a = ctx.assets
    model = a.model_dir(ctx.root)
    return Setup(export_argv(model), {0: "ok"}, (), out=model)


add("export-data-test-image-truncated", "export", _export_bad_data)
add("export-data-classes-unreadable", "export", _export_unreadable_data)
add("export-model-folder-missing", "export", lambda ctx: Setup(export_argv(ctx.root / "nomodel"), FAIL,
                                                               ("nomodel",)))
add("export-control-valid", "export", _export_control)


def _int8_case(make: Callable[[Ctx], bytes]) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        a = ctx.assets
        model = a.model_dir(ctx.root)
        write(model / "model.onnx", make(ctx))
        argv = ["export", "--model", str(model), "--format", "onnx-int8", "--data", str(a.dataset(ctx.root)),
                "--json"]
        # a model.onnx that is not this folder's export may be re-exported from the weights (then INT8 runs)
        return Setup(argv, EITHER, ("model.onnx",), out=model, allow=REPORTS)

    return build


INT8_CASES = [  # each one that re-exports costs a full export and quantisation (~5 s): two of them
    ("zero-byte", lambda ctx: b""),
    ("foreign-protobuf", lambda ctx: tiny_onnx()),
]
for _cid, _make in INT8_CASES:
    add(f"export-int8-model-onnx-{_cid}", "export", _int8_case(_make))


# --------------------------------------------------------------------------- bench: model.onnx, model-int8.onnx

def _meta(model: Any, key: str, value: Optional[str]) -> None:
    props = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in props + ([(key, value)] if value is not None else []):
        model.metadata_props.add(key=k, value=v)


def _spec_meta(change: Callable[[Dict[str, Any]], None]) -> Callable[[Ctx], bytes]:
    def make(ctx: Ctx) -> bytes:
        spec = ctx.assets.spec_json()
        change(spec)
        return ctx.assets.onnx_with(lambda m: _meta(m, SPEC_KEY, json.dumps(spec)))

    return make


def _foreign(ctx: Ctx, **kw: Any) -> bytes:
    a = ctx.assets
    meta = {SPEC_KEY: json.dumps(a.spec_json()), WEIGHTS_KEY: hashlib.sha256(a.weights).hexdigest()}
    return tiny_onnx(meta, **kw)


ONNX_FILE = "model.onnx"
ONNX_CASES: List[tuple] = [
    ("zero-byte", lambda ctx: b""),
    ("truncated-16", lambda ctx: ctx.assets.onnx_bytes[:16]),
    ("truncated-half", lambda ctx: ctx.assets.onnx_bytes[: len(ctx.assets.onnx_bytes) // 2]),
    ("truncated-minus-1", lambda ctx: ctx.assets.onnx_bytes[:-1]),
    ("random-bytes", lambda ctx: ctx.rng.bytes(4096)),
    ("text", lambda ctx: b"this is not an onnx file\n"),
    ("foreign-protobuf", lambda ctx: tiny_onnx()),
    ("lineguard-metadata-on-foreign-graph", lambda ctx: _foreign(ctx)),
    ("foreign-graph-input-renamed", lambda ctx: _foreign(ctx, input_name="x")),
    ("foreign-graph-float-input", lambda ctx: _foreign(ctx, uint8=False)),
    ("foreign-graph-outputs-renamed", lambda ctx: _foreign(ctx, outputs=("a", "b", "c"))),
    ("external-data-etc-passwd", lambda ctx: _foreign(ctx, external="../../../../../../../../etc/passwd")),
    ("external-data-absolute", lambda ctx: _foreign(ctx, external="/etc/passwd")),
    ("metadata-not-json", lambda ctx: ctx.assets.onnx_with(lambda m: _meta(m, SPEC_KEY, "{not json"))),
    ("metadata-json-list", lambda ctx: ctx.assets.onnx_with(lambda m: _meta(m, SPEC_KEY, "[1, 2]"))),
    ("metadata-nesting-100000", lambda ctx: ctx.assets.onnx_with(
        lambda m: _meta(m, SPEC_KEY, "[" * 100000 + "]" * 100000))),
    ("metadata-empty-object", lambda ctx: ctx.assets.onnx_with(lambda m: _meta(m, SPEC_KEY, "{}"))),
    ("metadata-missing", lambda ctx: ctx.assets.onnx_with(lambda m: _meta(m, SPEC_KEY, None))),
    ("metadata-version-2", _spec_meta(_set("version", 2))),
    ("metadata-size-96", _spec_meta(_set("preprocess.size", [96, 96]))),
    ("metadata-size-60000", _spec_meta(_set("preprocess.size", [60000, 60000]))),
    ("metadata-channels-3", _spec_meta(lambda s: s["preprocess"].update(channels=3, mean=[0.5] * 3, std=[0.25] * 3))),
    ("metadata-5-classes", _spec_meta(_set("classes", ["a", "b", "c", "d", "ok"]))),
    ("weights-sha-missing", lambda ctx: ctx.assets.onnx_with(lambda m: _meta(m, WEIGHTS_KEY, None))),
    ("weights-sha-other", lambda ctx: ctx.assets.onnx_with(lambda m: _meta(m, WEIGHTS_KEY, "0" * 64))),
]


def _onnx_case(make: Callable[[Ctx], bytes], filename: str = ONNX_FILE, backend: str = "ort") -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        model = ctx.assets.model_dir(ctx.root, onnx=True)
        write(model / filename, make(ctx))
        return Setup(bench_argv(model, backend), FAIL, (filename,))

    return build


for _cid, _make in ONNX_CASES:
    add(f"bench-model-onnx-{_cid}", "bench-onnx", _onnx_case(_make))
for _cid, _make in ONNX_CASES[:5]:
    add(f"bench-model-int8-onnx-{_cid}", "bench-onnx", _onnx_case(_make, "model-int8.onnx", "ort-int8"))


def _onnx_special(make: Callable[[Path], Any]) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        model = ctx.assets.model_dir(ctx.root)
        make(model / ONNX_FILE)
        return Setup(bench_argv(model), FAIL, (ONNX_FILE,), timeout=20.0)

    return build


add("bench-model-onnx-missing", "bench-onnx", _onnx_special(lambda p: None))
add("bench-model-onnx-is-a-folder", "bench-onnx", _onnx_special(lambda p: p.mkdir()))
add("bench-model-onnx-dangling-symlink", "bench-onnx", _onnx_special(lambda p: symlink(p, p.parent / "gone")))
add("bench-model-onnx-symlink-dev-zero", "bench-onnx", _onnx_special(lambda p: symlink(p, "/dev/zero")))
add("bench-model-onnx-fifo", "bench-onnx", _onnx_special(make_fifo))


def _bench_path(make: Callable[[Ctx], Path], names: Callable[[Path], Sequence[str]]) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        p = make(ctx)
        return Setup(bench_argv(p), FAIL, names(p))

    return build


add("bench-model-path-missing", "bench-onnx", _bench_path(lambda c: c.root / "nomodel", lambda p: (p.name,)))
add("bench-model-path-text-file", "bench-onnx", _bench_path(lambda c: write(c.root / "notes.txt", "x"),
                                                            lambda p: (p.name,)))
add("bench-model-path-truncated-onnx-file", "bench-onnx", _bench_path(
    lambda c: write(c.root / "cut.onnx", c.assets.onnx_bytes[:1000]), lambda p: (p.name,)))
add("bench-model-path-a-data-set", "bench-onnx", _bench_path(lambda c: c.assets.dataset(c.root),
                                                             lambda p: (str(p), ONNX_FILE)))


def _bench_control(ctx: Ctx) -> Setup:
    return Setup(bench_argv(ctx.assets.model_dir(ctx.root, onnx=True)), {0: "ok"}, ())


add("bench-control-valid", "bench-onnx", _bench_control)


# --------------------------------------------------------------------------- bench --backend trt: engine side-cars

def _sidecar(ctx: Ctx, **change: Any) -> Dict[str, Any]:
    a = ctx.assets
    info: Dict[str, Any] = {SPEC_KEY: a.spec_json(), "tensorrt": "8.5.2.2", "gpu": "Xavier", "device": "cuda:0",
                            "precision": "fp16", WEIGHTS_KEY: hashlib.sha256(a.weights).hexdigest()}
    for k, v in change.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    return info


def _engine_case(sidecar: Optional[Callable[[Ctx], Any]], names: Sequence[str] = ("k.json",),
                 engines: Sequence[str] = ("k",), engine_bytes: Optional[Callable[[Ctx, Path], Any]] = None
                 ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        model = ctx.assets.model_dir(ctx.root, onnx=True)
        folder = model / "engines"
        folder.mkdir()
        for key in engines:
            if engine_bytes is None:
                write(folder / f"{key}.engine", ctx.rng.bytes(2048))
            else:
                engine_bytes(ctx, folder / f"{key}.engine")
            if sidecar is not None:
                value = sidecar(ctx)
                if callable(value):
                    value(folder / f"{key}.json")
                else:
                    write(folder / f"{key}.json", value if isinstance(value, bytes) else json.dumps(value))
        nm = tuple(str(folder) if n == "FOLDER" else n for n in names)
        return Setup(bench_argv(model, "trt"), FAIL, nm, timeout=20.0)

    return build


ENGINE_CASES = [
    ("sidecar-missing", _engine_case(None)),
    ("sidecar-zero-byte", _engine_case(lambda c: b"")),
    ("sidecar-not-json", _engine_case(lambda c: b"{not json")),
    ("sidecar-non-utf8", _engine_case(lambda c: b'{"tensorrt": "\xff\xfe"}')),
    ("sidecar-json-list", _engine_case(lambda c: [1, 2])),
    ("sidecar-nesting-100000", _engine_case(lambda c: ("[" * 100000 + "]" * 100000).encode())),
    ("sidecar-20-mb", _engine_case(lambda c: b'{"pad": "' + b"x" * (20 << 20) + b'"}')),
    ("sidecar-keys-missing", _engine_case(lambda c: {"tensorrt": "8.5.2.2"})),
    ("sidecar-spec-empty", _engine_case(lambda c: _sidecar(c, **{SPEC_KEY: {}}))),
    ("sidecar-spec-not-object", _engine_case(lambda c: _sidecar(c, **{SPEC_KEY: "yes"}))),
    ("sidecar-tensorrt-a-number", _engine_case(lambda c: _sidecar(c, tensorrt=8.5))),
    ("sidecar-device-bogus", _engine_case(lambda c: _sidecar(c, device="tpu:0"))),
    ("sidecar-is-a-folder", _engine_case(lambda c: lambda p: p.mkdir())),
    ("sidecar-fifo", _engine_case(lambda c: make_fifo)),
    ("sidecar-valid-engine-dangling", _engine_case(lambda c: _sidecar(c), ("k.engine",),
                                                   engine_bytes=lambda c, p: symlink(p, p.parent / "gone"))),
    ("sidecar-valid-engine-random", _engine_case(lambda c: _sidecar(c), ("k.engine", "k.json", "tensorrt"))),
    ("two-engines", _engine_case(lambda c: _sidecar(c), ("FOLDER", "engines"), engines=("a", "b"))),
    ("no-engine", _engine_case(None, ("FOLDER", "engines"), engines=())),
]
for _cid, _build in ENGINE_CASES:
    add(f"bench-engine-{_cid}", "bench-engine", _build)


assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
assert CLASSES


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_model_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                         fuzz_log: List[Dict[str, Any]], fuzz_assets_factory: Any) -> None:
    fuzz_assets_factory()  # built once, outside the captured output of the first case
    execute(case, tmp_path, capsys, monkeypatch, fuzz_log, fuzz_assets_factory)
