"""The repository layout rules: the root is the package, `inspect/` never shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_inspect_not_shadowed_from_repo_root() -> None:
    out = subprocess.run([sys.executable, "-c", "import inspect; print(inspect.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert not out.startswith(str(ROOT)), out
    assert Path(out).name == "inspect.py"


def test_inspect_is_a_namespace_package() -> None:
    assert not (ROOT / "inspect" / "__init__.py").exists()
    assert not (ROOT / "tests" / "__init__.py").exists()


def test_root_is_the_lineguard_package() -> None:
    import lineguard

    assert Path(lineguard.__file__).resolve() == ROOT / "__init__.py"
