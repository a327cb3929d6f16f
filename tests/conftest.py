"""Shared fixtures: the real data set (from LINEGUARD_REAL_DATA) and a small simulated one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The magnetic-tile folder. Skips without LINEGUARD_REAL_DATA; fails if it is set but wrong,
    so CI (which sets it) can never pass by skipping."""
    value = os.environ.get("LINEGUARD_REAL_DATA")
    if not value:
        pytest.skip("LINEGUARD_REAL_DATA is not set")
    path = Path(value)
    assert (path / "MT_Free" / "Imgs").is_dir(), f"LINEGUARD_REAL_DATA={value} is not the magnetic-tile set"
    return path


@pytest.fixture(scope="session")
def real_dataset(real_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The magnetic-tile set imported once per session (images referenced, not copied)."""
    from lineguard.data.importers import import_dataset

    out = tmp_path_factory.mktemp("mt")
    report = import_dataset(real_data, out, progress=False)
    return out, report
