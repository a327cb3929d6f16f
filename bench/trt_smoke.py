"""The TensorRT path on real hardware, in one run of about five minutes: for the first machine with a GPU and
TensorRT (the Jetson AGX Xavier, or a lent GPU with TensorRT installed). Every check is recorded in the JSON
(passed / failed with the error / skipped with the reason); one failing check does not stop the others.

    python bench/trt_smoke.py --model MODEL_DIR [--data DIR] --work runs/trt_smoke --out trt_smoke.json
    python bench/trt_smoke.py --dry-run            # lists the checks and what this machine lacks for each

On a Jetson (JetPack 5: TensorRT 8.5 for the system Python 3.8 from apt):

    python3 -m venv --system-site-packages ~/lg && . ~/lg/bin/activate   # sees the apt tensorrt
    pip install pycuda cuda-python==11.8.* && pip install -e '.[runtime]'   # cuda-python: the CUDA-graph check
    python bench/trt_smoke.py --model MODEL_DIR --data DIR --out trt_smoke.json

``MODEL_DIR`` holds ``model.onnx`` (``lineguard export --format onnx``; made here when torch is installed);
``--data`` gives real frames (its test split; without it, frames from the line simulator) and the INT8
calibration images (its train split). Engines go to ``--work``, a copy of the model folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

FRAMES = 37  # not a multiple of any batch: the runners' chunking and padding run too
GRAPH_BATCHES = (1, 8, 3, 8, 1, 32)
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # max |probs - ORT fp32 probs|
MIN_INT8_AGREEMENT = 0.9  # argmax agreement of INT8 with the fp32 engine


@dataclass(frozen=True)
class Check:
    name: str
    needs: Tuple[str, ...]  # what must be importable or present: tensorrt, pycuda, cuda-python, dla, torch, ...
    what: str
    run: Callable[[Smoke], Dict[str, Any]]


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


NEEDS = {"tensorrt": lambda: _have("tensorrt"), "pycuda": lambda: _have("pycuda.driver"),
         "cuda-python": lambda: _have("cuda.bindings.runtime") or _have("cuda.cudart"),
         "onnxruntime": lambda: _have("onnxruntime")}


class Smoke:
    """What the checks share: the model folder copy, frames, the ORT reference and the engines built."""

    def __init__(self, model: Path, data: Optional[Path], work: Path) -> None:
        from lineguard.data.modelspec import ModelSpec

        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(model, work, ignore=shutil.ignore_patterns("engines", "*.engine"))
        self.model, self.data, self.spec = work, data, ModelSpec.load(work)
        self.onnx = work / "model.onnx"
        self.engines: Dict[str, Path] = {}
        self._frames: Optional[np.ndarray] = None
        self._reference: Optional[Any] = None

    def engine(self, key: str) -> Path:
        """An engine an earlier check built (``fp16-dynamic``, ...); skipped when that check failed."""
        if key not in self.engines:
            raise SkipCheck(f"needs the {key} engine, which an earlier check did not build")
        return self.engines[key]

    def dla_cores(self) -> int:
        import tensorrt as trt

        return int(trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores)

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = self._load_frames("test", FRAMES)
        return self._frames

    def _load_frames(self, split: str, n: int) -> np.ndarray:
        h, w = self.spec.preprocess.size
        if self.data is not None:
            from lineguard.edge.splits import dataset_frames

            return dataset_frames(self.data, self.spec, split=split, limit=n)[0]
        import cv2

        from lineguard.sim import SimulatorConfig, render_part

        c = self.spec.preprocess.channels
        cfg = SimulatorConfig(size=max(h, w, 64), channels=c)
        out = [cv2.resize(render_part(cfg, 7 if split == "test" else 8, i).image, (w, h), interpolation=cv2.INTER_AREA)
               for i in range(n)]
        return np.stack(out).reshape(n, h, w, c)

    def calibration_frames(self, n: int = 64) -> np.ndarray:
        return self._load_frames("train", n)

    @property
    def reference(self) -> Any:
        """ONNX Runtime fp32 scores of :attr:`frames` (CPU)."""
        if self._reference is None:
            from lineguard.edge.runners.ort import OrtRunner

            self._reference = OrtRunner(self.onnx).predict(self.frames)
        return self._reference

    def build(self, precision: str, batch: Any, **kw: Any) -> Path:
        from lineguard.edge.onnx2engine import build_engine

        return build_engine(kw.pop("onnx", self.onnx), self.model, precision=precision, batch=batch, **kw)

    def trt(self, engine: Path, **kw: Any) -> Any:
        from lineguard.edge.runners.trt import TrtRunner

        return TrtRunner(engine, **kw)


# ------------------------------------------------------------------------------------------------ the checks

def versions(s: Smoke) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name in ("tensorrt", "pycuda", "cuda.bindings", "cuda", "onnxruntime", "numpy"):
        try:
            module = importlib.import_module(name)
            out[name] = str(getattr(module, "__version__", "installed"))
        except ImportError:
            out[name] = None
    out["dla_cores"] = s.dla_cores()
    import pycuda.driver as cuda

    cuda.init()
    out["gpus"] = [cuda.Device(i).name() for i in range(cuda.Device.count())]
    return out


def export_order(s: Smoke) -> Dict[str, Any]:
    """model.onnx (exported now when torch is here) takes its uint8 frames straight into a Cast."""
    import onnx

    from lineguard.edge.onnx_check import uint8_input_problems

    exported = False
    if _have("torch"):
        from lineguard.edge.torch2onnx import torch2onnx

        torch2onnx(s.model, batch="dynamic", parity_data=s.data)
        exported = True
    problems = uint8_input_problems(onnx.load(str(s.onnx), load_external_data=False))
    assert not problems, problems
    return {"exported_here": exported}


def _parity(s: Smoke, engine: Path, precision: str) -> Dict[str, Any]:
    with s.trt(engine) as runner:
        got = runner.predict(s.frames)
    diff = float(np.abs(got.probs - s.reference.probs).max())
    agree = float((got.probs.argmax(1) == s.reference.probs.argmax(1)).mean())
    assert diff <= TOLERANCE[precision], f"{precision}: max |probs - ORT| {diff:.2e} > {TOLERANCE[precision]}"
    return {"max_abs_diff_probs": diff, "argmax_agreement": agree}


def float_engines(s: Smoke) -> Dict[str, Any]:
    """fp32 and fp16 at batch 4 and dynamic: 37 frames against ONNX Runtime; the second build is the cache."""
    out = {}
    for precision in ("fp32", "fp16"):
        for batch in (4, "dynamic"):
            start = time.perf_counter()
            engine = s.build(precision, batch)
            built = time.perf_counter() - start
            mtime = engine.stat().st_mtime_ns
            start = time.perf_counter()
            again = s.build(precision, batch)
            cached = time.perf_counter() - start
            assert again == engine and engine.stat().st_mtime_ns == mtime, "the second build did not reuse the engine"
            s.engines[f"{precision}-{batch}"] = engine
            out[f"{precision}-{batch}"] = {"build_s": round(built, 1), "cached_s": round(cached, 2),
                                           **_parity(s, engine, precision)}
    return out


def int8_engine(s: Smoke) -> Dict[str, Any]:
    """8.x: calibrated on 64 frames, the cache written and read back on a rebuild; 10+: from a symmetric Q/DQ
    ONNX. Argmax agreement with the fp32 engine."""
    from lineguard.edge.onnx2engine import installed_major
    from lineguard.edge.tensorrt import sidecar_path

    if installed_major() < 10:
        engine = s.build("int8", 4, calib_frames=s.calibration_frames())
        calib = engine.with_suffix(".calib")
        assert calib.is_file(), "no calibration cache written"
        side = json.loads(sidecar_path(engine).read_text())
        first, side["batch"] = side["calibrated_on"], "stale"  # not this build's engine any more: rebuilt, and
        sidecar_path(engine).write_text(json.dumps(side))  # the same ONNX and frames: the scales from .calib
        engine = s.build("int8", 4, calib_frames=s.calibration_frames())
        again = json.loads(sidecar_path(engine).read_text())["calibrated_on"]
        assert first >= 64 and again == 0, f"calibrated on {first} frames, then {again} (expected 0: the cache)"
        how = {"calibrated_on": first, "rebuilt_from_cache": True}
    else:
        if s.data is None:
            raise SkipCheck("TensorRT 10+ builds INT8 from a Q/DQ ONNX, calibrated on --data: give --data")
        from lineguard.edge.quantize import onnx2int8

        qdq = onnx2int8(s.onnx, s.data, data=s.data, symmetric=True, out=s.model / "model-int8-trt.onnx",
                        max_drop=None)
        engine = s.build("int8", 4, onnx=qdq)
        how = {"qdq_onnx": qdq.name}
    with s.trt(engine) as runner, s.trt(s.engine("fp32-4")) as fp32:
        agree = float((runner.predict(s.frames).probs.argmax(1) == fp32.predict(s.frames).probs.argmax(1)).mean())
    assert agree >= MIN_INT8_AGREEMENT, f"INT8 argmax agreement with fp32 {agree:.3f} < {MIN_INT8_AGREEMENT}"
    s.engines["int8-4"] = engine
    return {**how, "argmax_agreement_with_fp32": agree}


def dla(s: Smoke) -> Dict[str, Any]:
    """Jetson: dla:0 fp16 at batch 1 (the layers that fall back to the GPU listed) against ORT; a Q/DQ ONNX
    refused for the DLA on TensorRT 8."""
    from lineguard.edge.formats import ExportError
    from lineguard.edge.onnx2engine import installed_major
    from lineguard.edge.tensorrt import sidecar_path

    if not s.dla_cores():
        raise SkipCheck("no DLA core on this machine")
    engine = s.build("fp16", 1, device="dla:0")
    fallback = json.loads(sidecar_path(engine).read_text())["dla_gpu_fallback"]
    out: Dict[str, Any] = {"gpu_fallback": fallback, **_parity(s, engine, "fp16")}
    qdq = s.model / "model-int8-trt.onnx"
    if installed_major() < 10 and qdq.is_file():
        try:
            s.build("int8", 1, device="dla:0", onnx=qdq)
        except ExportError as e:
            out["qdq_refused"] = str(e)
        else:
            raise AssertionError("a Q/DQ ONNX was built for the DLA on TensorRT 8")
    return out


def cuda_graphs(s: Smoke) -> Dict[str, Any]:
    """Batch sizes 1, 8, 3, 8, 1, 32 through CUDA graphs, against the runner without graphs."""
    engine = s.engine("fp16-dynamic")
    rng = np.random.default_rng(0)
    picks = [s.frames[rng.integers(0, len(s.frames), n)] for n in GRAPH_BATCHES]
    with s.trt(engine) as plain, s.trt(engine, cuda_graph=True) as graphs:
        diffs = [float(np.abs(graphs.predict(x).probs - plain.predict(x).probs).max()) for x in picks]
    assert max(diffs) <= 1e-5, f"CUDA-graph outputs differ from the plain runner's by up to {max(diffs):.2e}"
    return {"batches": list(GRAPH_BATCHES), "max_abs_diff": max(diffs)}


def threads(s: Smoke) -> Dict[str, Any]:
    """Two runners of one engine in two threads, 20 calls each, against one runner alone."""
    engine = s.engine("fp16-dynamic")
    with s.trt(engine) as alone:
        want = alone.predict(s.frames).probs
    results: List[float] = []
    errors: List[str] = []

    def work() -> None:
        try:
            with s.trt(engine) as runner:
                for _ in range(20):
                    results.append(float(np.abs(runner.predict(s.frames).probs - want).max()))
        except Exception as e:  # reported as the check's failure
            errors.append(f"{type(e).__name__}: {e}")

    pool = [threading.Thread(target=work) for _ in range(2)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert len(results) == 40 and max(results) <= 1e-5, f"threads differ by up to {max(results):.2e}"
    return {"calls": len(results), "max_abs_diff": max(results)}


def refusals(s: Smoke) -> Dict[str, Any]:
    """A side-car naming another TensorRT version, and a truncated engine: one clear RunnerError each."""
    from lineguard.edge.runners.base import RunnerError
    from lineguard.edge.tensorrt import sidecar_path

    engine = s.engine("fp16-4")
    out = {}
    for case in ("other-tensorrt", "truncated"):
        copy = s.model / "engines" / f"{case}.engine"
        shutil.copy(engine, copy)
        side = json.loads(sidecar_path(engine).read_text())
        if case == "other-tensorrt":
            side["tensorrt"] = "0.0.0"
        else:
            copy.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
        sidecar_path(copy).write_text(json.dumps(side))
        try:
            s.trt(copy).close()
        except RunnerError as e:
            out[case] = str(e)
        else:
            raise AssertionError(f"{case}: the runner loaded it")
    return out


def latency(s: Smoke) -> Dict[str, Any]:
    """Median ms per call at batch 1, 8 and 32 (fp16 dynamic engine; 5 warm-up and 30 timed calls each)."""
    out = {}
    with s.trt(s.engine("fp16-dynamic")) as runner:
        for n in (1, 8, 32):
            x = s.frames[np.arange(n) % len(s.frames)]
            for _ in range(5):
                runner.predict(x)
            times = []
            for _ in range(30):
                start = time.perf_counter()
                runner.predict(x)
                times.append((time.perf_counter() - start) * 1000)
            out[f"b{n}"] = {"ms": round(float(np.median(times)), 3), "frames_per_s": round(n * 1000 / np.median(times))}
    return out


class SkipCheck(Exception):
    """A check that does not apply on this machine; its message says why."""


CHECKS = (
    Check("versions", ("tensorrt", "pycuda"), "TensorRT, pycuda, cuda-python versions, GPUs, DLA cores",
          versions),
    Check("export-order", ("onnxruntime",), "model.onnx (exported now if torch is here) casts its uint8 frames first",
          export_order),
    Check("float-engines", ("tensorrt", "pycuda", "onnxruntime"),
          "fp32 and fp16 at batch 4 and dynamic: 37 frames vs ONNX Runtime (1e-4 / 2e-2), the second build cached",
          float_engines),
    Check("int8", ("tensorrt", "pycuda", "onnxruntime"),
          "8.x: calibrated on 64 frames, cache written and reused; 10+: from Q/DQ; argmax agreement with fp32",
          int8_engine),
    Check("dla", ("tensorrt", "pycuda", "onnxruntime"),
          "Jetson: dla:0 fp16 batch 1 with its GPU-fallback layers; a Q/DQ ONNX refused for the DLA on 8.x", dla),
    Check("cuda-graphs", ("tensorrt", "pycuda", "cuda-python"),
          f"batch sizes {list(GRAPH_BATCHES)} through CUDA graphs vs the plain runner", cuda_graphs),
    Check("threads", ("tensorrt", "pycuda"), "two runners of one engine in two threads", threads),
    Check("refusals", ("tensorrt", "pycuda"), "a side-car of another TensorRT version and a truncated engine refused",
          refusals),
    Check("latency", ("tensorrt", "pycuda"), "median ms per call at batch 1, 8, 32 (fp16, dynamic)", latency),
)


def missing(check: Check) -> List[str]:
    return [need for need in check.needs if not NEEDS[need]()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a model folder (model.yaml, weights, model.onnx)")
    ap.add_argument("--data", type=Path, help="real images: frames (test split) and calibration (train split)")
    ap.add_argument("--work", type=Path, default=Path("runs/trt_smoke"))
    ap.add_argument("--out", type=Path, default=Path("trt_smoke.json"))
    ap.add_argument("--dry-run", action="store_true", help="list the checks and what this machine lacks for them")
    args = ap.parse_args()
    if args.dry_run:
        plan = [{"check": c.name, "what": c.what, "would": "run" if not missing(c) else
                 f"skip: no {', '.join(missing(c))}"} for c in CHECKS]
        print(json.dumps({"dry_run": True, "checks": plan}, indent=1))
        return
    if args.model is None:
        raise SystemExit("--model MODEL_DIR is needed (or --dry-run)")
    smoke = Smoke(args.model, args.data, args.work)
    report: Dict[str, Any] = {"model": str(args.model), "data": str(args.data) if args.data else None, "checks": {}}
    for check in CHECKS:
        start = time.perf_counter()
        lacking = missing(check)
        try:
            if lacking:
                raise SkipCheck(f"no {', '.join(lacking)}")
            result = {"status": "passed", **check.run(smoke)}
        except SkipCheck as e:
            result = {"status": "skipped", "why": str(e)}
        except Exception as e:  # every check is reported; one failure does not stop the rest
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["checks"][check.name] = result
        print(f"{check.name}: {result['status']} ({result['seconds']} s)", flush=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))  # kept as it goes: a hang loses nothing
    report["passed"] = all(r["status"] != "failed" for r in report["checks"].values())
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v["status"] for k, v in report["checks"].items()}))


if __name__ == "__main__":
    main()
