"""Line-side code (data layer, inspect/, edge/ but its exporter, quantizer and PyTorch runner) imports
without torch, training or synth.

The Jetson on the line has Python 3.8 and no torch; vermin checks the syntax (`make lint`), and
this imports every line-side module in a fresh interpreter where those imports fail. It also
covers inspect/, a namespace package that import-linter cannot scan.
"""

from __future__ import annotations

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
    files = [ROOT / "config.py", ROOT / "console.py", ROOT / "files.py", ROOT / "workers.py"]
    files += sorted((ROOT / "data").rglob("*.py")) + sorted((ROOT / "inspect").rglob("*.py"))
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
    for name in ("torch", "lineguard.synth.simulator"):
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


def test_cli_runs_without_torch() -> None:
    res = _run("import sys; sys.argv = ['lineguard', 'data', '--help']\n"
               "from lineguard.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
               "    assert e.code == 0, e.code\n", HEAVY)
    assert res.returncode == 0, res.stderr
    assert "import" in res.stdout and "simulate" in res.stdout
