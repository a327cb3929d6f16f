"""Line-side code (plumbing, metrics, data, sim, inspect/, edge/ but its exporter, quantizer and PyTorch runner)
imports and runs without torch, training or synth.

The Jetson on the line has Python 3.8 and no torch; vermin checks the syntax (`make lint`). This imports
every line-side module in a fresh interpreter where those imports fail, and runs the line-side verbs
(`lineguard --help`, `data ...`, `eval`/`bench` with ONNX Runtime, `inspect run/config/status/bench`) there, end to
end. It also covers inspect/, a namespace package that import-linter cannot scan.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "timm", "albumentations")
UPPER = ("lineguard.training", "lineguard.synth")
EDGE_DEV = ("torch2onnx.py", "torch_runner.py", "quantize.py")  # development-side (Makefile: EDGE_DEV)


def line_side_modules() -> List[str]:
    """Module names of the line-side code, found on disk so new modules are covered by default."""
    files = [ROOT / f for f in ("cli.py", "config.py", "console.py", "files.py", "metrics.py", "options.py",
                                "workers.py")]
    files += [f for folder in ("data", "sim", "inspect") for f in sorted((ROOT / folder).rglob("*.py"))]
    files += [f for f in sorted((ROOT / "edge").rglob("*.py")) if f.name not in EDGE_DEV]
    names = []
    for f in files:
        parts = f.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(("lineguard", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


def _run(code: str, blocked: Sequence[str]) -> subprocess.CompletedProcess:
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {tuple(blocked)!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(name + " is blocked: line-side code must not need it")
        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, cwd="/")


def test_blocker_blocks() -> None:
    for name in ("torch", "lineguard.synth.generate"):
        res = _run(f"import {name}", HEAVY + UPPER)
        assert res.returncode != 0 and "is blocked" in res.stderr


def test_line_side_modules_import_without_torch_training_synth() -> None:
    modules = line_side_modules()
    assert "lineguard.data.importers.base" in modules and "lineguard.config" in modules
    assert "lineguard.edge.runners.ort" in modules and "lineguard.edge.bench" in modules
    res = _run(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
               f"print(sorted(k for k in sys.modules if k.split('.')[0] in {HEAVY!r}))", HEAVY + UPPER)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _verb(args: Sequence[str]) -> subprocess.CompletedProcess:
    """``lineguard ARGS`` in a fresh interpreter with torch, training and synth blocked."""
    return _run(f"import sys\nfrom lineguard.cli import main\ntry:\n    main({list(args)!r})\n"
                "except SystemExit as e:\n    sys.exit(e.code)\n", HEAVY + UPPER)


def _last_json(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr + res.stdout
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_line_side_verbs_run_without_torch_training_synth(tmp_path: Path, random_model_dir) -> None:
    for args in (["--help"], ["data", "--help"], ["data", "stats", "--help"], ["eval", "--help"]):
        res = _verb(args)
        assert res.returncode == 0, res.stderr
    assert "simulate" in _verb(["data", "--help"]).stdout and "bench" in _verb(["--help"]).stdout

    ds = tmp_path / "sim"
    sim = _last_json(_verb(["data", "simulate", "--n", "40", "--size", "64", "--out", str(ds), "--workers", "1",
                            "--json", "-q"]))
    assert sim["images"] == 40
    assert _last_json(_verb(["data", "split", str(ds), "--val", "0.2", "--test", "0.3", "--json"]))["counts"]
    assert _last_json(_verb(["data", "validate", str(ds), "--json", "-q"]))["valid"] is True
    assert _last_json(_verb(["data", "stats", str(ds), "--json"]))["images"] == 40
    assert _last_json(_verb(["data", "preview", str(ds), "--out", str(tmp_path / "p.png"), "--json"]))["sheets"]

    model = random_model_dir(tmp_path / "model", ds, "cnn_lite0", 64)
    from lineguard.edge.torch2onnx import torch2onnx  # in this (torch) process: the line gets exported files

    torch2onnx(model)
    bench = _last_json(_verb(["bench", "--model", str(model), "--backend", "ort", "--batch", "1", "--rounds", "1",
                              "--seconds", "0.05", "--json"]))
    assert bench["rows"][0]["images_per_s"] > 0
    ev = _last_json(_verb(["eval", "--model", str(model), "--data", str(ds), "--backend", "ort", "--json", "-q"]))
    assert ev["backend"] == "ort" and ev["images"] > 0 and 0 <= ev["accuracy"] <= 1

    assert "run" in _verb(["inspect", "--help"]).stdout
    example = _verb(["inspect", "config", "--example"])
    assert example.returncode == 0 and "outputs:" in example.stdout
    db = tmp_path / "line.db"
    run = _last_json(_verb(["inspect", "run", "--model", str(model), "--set", "source.parts=20", "--set",
                            "source.sim.size=64", "--set", f"db={db}", "--set", "metrics.port=0", "--set",
                            "outputs=[{kind: log}]", "--json", "-q"]))
    assert run["handed_over"] == run["decided"] == 20 and run["totals"]["parts"] == 20
    assert _last_json(_verb(["inspect", "status", "--db", str(db), "--json"]))["parts"] == 20
    line_bench = _last_json(_verb(["inspect", "bench", "--model", str(model), "--parts", "30", "--out",
                                   str(tmp_path / "ib"), "--json"]))
    assert line_bench["decided"] == 30 and line_bench["runner_fps"] > 0
    assert "--to" in _verb(["sync", "--help"]).stdout

    res = _verb(["train", "--data", str(ds), "--out", str(tmp_path / "m2")])  # a development verb: one clear line
    assert res.returncode == 2 and "lineguard train needs" in res.stderr and "Traceback" not in res.stderr
