"""Shared fixtures: the real data set (from LINEGUARD_REAL_DATA), a small simulated one, the bench scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
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


@pytest.fixture()
def pg_engine():
    """A fresh database in the PostgreSQL cluster at LINEGUARD_TEST_POSTGRES (`.ci/postgres start`), dropped
    after the test. Skips without it, except under CI=true, where it fails: CI never passes by skipping."""
    url = os.environ.get("LINEGUARD_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("LINEGUARD_TEST_POSTGRES is not set under CI (.ci/run starts the cluster)")
        pytest.skip("LINEGUARD_TEST_POSTGRES is not set (eval \"$(.ci/postgres start)\")")
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"lg_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine = sa.create_engine(sa.make_url(url).set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(scope="session")
def real_dataset(real_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The magnetic-tile set imported once per session (images referenced, not copied)."""
    from lineguard.data.importers import import_dataset

    out = tmp_path_factory.mktemp("mt")
    report = import_dataset(real_data, out, progress=False)
    return out, report


@pytest.fixture(scope="session")
def split_sim(tmp_path_factory: pytest.TempPathFactory):
    """``split_sim(n, size, seed, val, test)``: a simulated data set (1 worker), split; a new folder per call."""
    from lineguard.data.split import split_dataset
    from lineguard.sim import SimulatorConfig, simulate_dataset

    def make(n: int, size: int, seed: int, val: float, test: float) -> Path:
        root = tmp_path_factory.mktemp("sim") / "ds"
        ds = simulate_dataset(root, n=n, seed=seed, cfg=SimulatorConfig(size=size), workers=1, progress=False)
        split_dataset(ds, val=val, test=test, seed=0)
        return root

    return make


@pytest.fixture(scope="session")
def random_model_dir():
    """``random_model_dir(out, data, arch, size, bn_stats=False)``: a model folder with random weights (seed 0)
    for ``data``'s classes, 1 channel; ``bn_stats`` draws non-trivial BatchNorm statistics (real arithmetic)."""
    import torch

    from lineguard.data.format import Dataset
    from lineguard.data.modelspec import ModelSpec
    from lineguard.data.preprocess import Preprocess
    from lineguard.training.model_dir import save_model_files
    from lineguard.training.models import create_model, model_config

    def make(out: Path, data: Path, arch: str, size: int, bn_stats: bool = False) -> Path:
        ds = Dataset.load(data)
        torch.manual_seed(0)
        model = create_model(arch, num_classes=len(ds.classes.classes), in_chans=1, img_size=size).eval()
        if bn_stats:
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.1, 0.1)
                        m.running_var.uniform_(0.5, 1.5)
        spec = ModelSpec(arch=model_config(model), classes=ds.classes.classes, ok_class=ds.classes.ok_class,
                         preprocess=Preprocess(size=(size, size), channels=1, mean=[0.45], std=[0.22]))
        save_model_files(out, model, spec, ds.classes)
        return out

    return make


@pytest.fixture()
def small_tmpfs(tmp_path: Path):
    """``small_tmpfs(size)``: a tmpfs of ``size`` ("1m", "256k") mounted in a new folder, so a test can fill a real
    disk (ENOSPC); unmounted after the test. Skips where mounting is not allowed (needs root / CAP_SYS_ADMIN).
    ``small_tmpfs.fill(folder)`` writes ``folder/filler`` until its file system is full and returns it."""
    import errno
    import subprocess

    mounted = []

    def fill(folder: Path) -> Path:
        filler = folder / "filler"
        fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT)
        try:
            for block in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        return filler

    def make(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {res.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    make.fill = fill  # type: ignore[attr-defined]
    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def bench_script(monkeypatch: pytest.MonkeyPatch):
    """``bench_script(name)``: ``bench/NAME.py`` as a module, registered in ``sys.modules`` while the test runs
    (its dataclasses need that), with ``bench/`` on the import path as when it runs as a script."""
    bench = Path(__file__).parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))

    def load(name: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load
