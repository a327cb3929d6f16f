"""Synthetic data sets: format and provenance, determinism over workers and shards, kill-and-resume, near copies,
the patch sources and the ``generate`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lineguard.data.format import Dataset
from lineguard.data.imaging import read_image, sha256_bytes
from lineguard.data.split import split_dataset
from lineguard.sim import SimulatorConfig, simulate_dataset
from lineguard.synth.baselines import CopyPasteSource, PerlinSource, SourceError
from lineguard.synth.cli import generate as generate_command
from lineguard.synth.generate import (
    GenerateError,
    NearCopyConfig,
    NearCopyIndex,
    generate,
    merge_shards,
)
from lineguard.synth.patches import Patch, PatchSource

SIZE = 96
N = 40
CHUNK = 4
OFF = NearCopyConfig(enabled=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base") / "sim"
    ds = simulate_dataset(root, n=30, seed=0, cfg=SimulatorConfig(size=SIZE), workers=1, progress=False)
    split_dataset(ds, val=0.1, test=0.1, seed=0)
    return root


@pytest.fixture(scope="module")
def reference(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted Perlin run, one process."""
    out = tmp_path_factory.mktemp("ref") / "perlin"
    generate(PerlinSource.from_dataset(Dataset.load(base)), base, N, out, workers=1, size=SIZE, chunk=CHUNK,
             progress=False)
    return out


def _files(out: Path) -> Dict[str, str]:
    """sha256 of every image and mask, by path inside the set."""
    return {p.relative_to(out).as_posix(): sha256_bytes(p.read_bytes())
            for d in ("images", "masks") for p in sorted((out / d).rglob("*.png"))}


def _stray(out: Path) -> List[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_copy_paste_set_is_a_valid_dataset_with_provenance(base: Path, tmp_path: Path) -> None:
    real = Dataset.load(base)
    src = CopyPasteSource.from_dataset(real)
    res = generate(src, base, N, tmp_path / "cp", seed=3, workers=1, size=SIZE, chunk=CHUNK, near_copy=OFF,
                   progress=False)
    assert res.merged and res.rendered == N and res.reused == 0
    ds = Dataset.load(tmp_path / "cp")
    assert ds.classes == real.classes  # training can mix the two sets
    assert [r.id for r in ds.records] == [f"gen-{i:06d}" for i in range(N)]
    counts = Counter(r.label for r in ds.records)
    assert set(counts) == set(src.classes) and max(counts.values()) - min(counts.values()) <= 1
    for i, r in enumerate(ds.records):
        assert r.label == src.classes[i % len(src.classes)]
        assert r.source == "synthetic" and r.split is None
        assert r.origin.kind == "generator" and r.origin.name == "lineguard.synth.copy-paste"
        assert r.origin.version == src.version and r.origin.seed == 3
        assert r.image == f"images/00000/{r.id}.png" and r.mask == f"masks/00000/{r.id}.png"
        img, sha = read_image(ds.path(r.image))
        mask, _ = read_image(ds.path(r.mask))
        assert sha == r.sha256 and img.shape == (SIZE, SIZE) == mask.shape and (r.width, r.height) == (SIZE, SIZE)
        assert set(np.unique(mask)) == {0, 255}
    report = json.loads((tmp_path / "cp" / "generate-report.json").read_text())
    assert report["images"] == N and report["near_copy"] is False and report["method"] == "copy-paste"


def test_workers_and_shards_do_not_change_a_byte(base: Path, reference: Path, tmp_path: Path) -> None:
    src = PerlinSource.from_dataset(Dataset.load(base))
    out = tmp_path / "sharded"
    first = generate(src, base, N, out, workers=2, shard=(0, 2), size=SIZE, chunk=CHUNK, progress=False)
    assert not first.merged and not (out / "manifest.jsonl").exists()
    assert [r.id for r in first.dataset.records] == [f"gen-{i:06d}" for i in range(N) if (i // CHUNK) % 2 == 0]
    with pytest.raises(GenerateError, match="5 of 10 chunks are not rendered yet"):
        merge_shards(out)
    second = generate(src, base, N, out, workers=1, shard=(1, 2), size=SIZE, chunk=CHUNK, progress=False)
    assert second.merged and len(second.dataset) == N
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()
    assert _files(out) == _files(reference)
    assert merge_shards(out).records == second.dataset.records  # merging again is a no-op


_KILLED_RUN = """
import sys
import time

from lineguard.data.format import Dataset
from lineguard.synth.baselines import PerlinSource
from lineguard.synth.generate import generate


class SlowPerlin(PerlinSource):
    delay = 0.0

    def sample(self, label, n, rng):
        time.sleep(self.delay)
        return super().sample(label, n, rng)


if __name__ == "__main__":
    base, out = sys.argv[1], sys.argv[2]
    src = SlowPerlin.from_dataset(Dataset.load(base))
    src.delay = 0.1
    generate(src, base, {n}, out, workers=2, size={size}, chunk={chunk}, progress=False)
"""


def test_a_killed_run_resumes_without_duplicates_or_gaps(base: Path, reference: Path, tmp_path: Path) -> None:
    script = tmp_path / "slow_run.py"
    script.write_text(textwrap.dedent(_KILLED_RUN.format(n=N, size=SIZE, chunk=CHUNK)))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(base), str(out)], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "parts").glob("c*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk finished in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run, its fork server and its workers
        proc.wait()
    done = len(list((out / "parts").glob("c*.json")))
    assert 2 <= done < N // CHUNK and not (out / "manifest.jsonl").exists()

    res = generate(PerlinSource.from_dataset(Dataset.load(base)), base, N, out, workers=1, size=SIZE, chunk=CHUNK,
                   progress=False)
    assert res.merged and res.reused >= done * CHUNK and res.rendered + res.reused == N
    ids = [r.id for r in Dataset.load(out).records]
    assert ids == [f"gen-{i:06d}" for i in range(N)]  # each index once, in order
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()
    assert _files(out) == _files(reference)
    assert not _stray(out)


def test_a_damaged_chunk_is_rendered_again(base: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "damaged"
    src = PerlinSource.from_dataset(Dataset.load(base))
    generate(src, base, N, out, workers=1, size=SIZE, chunk=CHUNK, progress=False)
    (out / "images" / "00000" / "gen-000005.png").write_bytes(b"not a png")
    (out / "masks" / "00000" / "gen-000013.png").unlink()
    res = generate(src, base, N, out, workers=1, size=SIZE, chunk=CHUNK, progress=False)
    assert res.rendered == 2 * CHUNK and res.reused == N - 2 * CHUNK
    assert _files(out) == _files(reference)


def test_other_settings_in_the_same_folder_are_an_error(base: Path, reference: Path) -> None:
    src = PerlinSource.from_dataset(Dataset.load(base))
    with pytest.raises(GenerateError, match=r"other settings \(n: 40 -> 41; seed: 0 -> 1\)"):
        generate(src, base, N + 1, reference, seed=1, workers=1, size=SIZE, chunk=CHUNK, progress=False)
    with pytest.raises(GenerateError, match="not made by `generate`"):
        generate(src, base, N, base, workers=1, size=SIZE, chunk=CHUNK, progress=False)


class _HalfCopies(PatchSource):
    """Every other draw is a real crop (a near copy), else a Perlin patch."""

    method = "half-copies"
    version = "test"

    def __init__(self, copies: CopyPasteSource, perlin: PerlinSource) -> None:
        self.copies, self.perlin = copies, perlin

    @property
    def classes(self) -> List[str]:
        return self.copies.classes

    def sample(self, label: str, n: int, rng: np.random.Generator) -> List[Patch]:
        src = self.copies if rng.random() < 0.5 else self.perlin
        return src.sample(label, n, rng)


def test_near_copies_of_real_crops_are_rejected_and_redrawn(base: Path, tmp_path: Path) -> None:
    real = Dataset.load(base)
    copies, perlin = CopyPasteSource.from_dataset(real), PerlinSource.from_dataset(real)
    index = NearCopyIndex.from_dataset(real, copies.classes, NearCopyConfig())
    rng = np.random.default_rng(0)
    for label in copies.classes:
        exact = copies.sample(label, 1, rng)[0]
        assert index.similarity(exact) > 0.999 and index.is_near(exact)
        assert not index.is_near(perlin.sample(label, 1, rng)[0])
    shifted = copies.sample("dent", 1, rng)[0]
    shifted.image = np.roll(shifted.image, 1, axis=1)  # a copy moved by a pixel is still a copy
    assert index.is_near(shifted)

    res = generate(_HalfCopies(copies, perlin), base, 12, tmp_path / "half", workers=1, size=SIZE, chunk=CHUNK,
                   progress=False)
    assert res.near_copy_rejected > 0 and len(res.dataset) == 12
    report = json.loads((tmp_path / "half" / "generate-report.json").read_text())
    assert report["near_copy_rejected"] == res.near_copy_rejected
    with pytest.raises(GenerateError, match="would reject every copy-paste patch"):
        generate(copies, base, 4, tmp_path / "cp", workers=1, size=SIZE, progress=False)


class _Empty(_HalfCopies):
    """A source that never makes a patch (an undertrained GAN whose masks all come out empty)."""

    method = "empty"

    def sample(self, label: str, n: int, rng: np.random.Generator) -> List[Patch]:
        return []


def test_a_source_without_patches_is_a_clear_error(base: Path, tmp_path: Path) -> None:
    real = Dataset.load(base)
    src = _Empty(CopyPasteSource.from_dataset(real), PerlinSource.from_dataset(real))
    with pytest.raises(GenerateError, match=r"the empty source gave no '\w+' patch with a defect in 50 of 50 draws"):
        generate(src, base, 4, tmp_path / "empty", workers=1, size=SIZE, chunk=CHUNK, progress=False)


def test_sources_fail_clearly_and_draw_only_from_the_rng(base: Path) -> None:
    real = Dataset.load(base)
    no_scratch = Dataset(real.root, real.classes, [r for r in real.records if r.label != "scratch"])
    with pytest.raises(SourceError, match="no defect crop of class 'scratch'"):
        CopyPasteSource.from_dataset(no_scratch)
    with pytest.raises(SourceError, match="are not defect classes"):
        PerlinSource.from_dataset(real, classes=["ok"])
    perlin = PerlinSource.from_dataset(real, texture="procedural")
    with pytest.raises(SourceError, match="no class 'crack'"):
        perlin.sample("crack", 1, np.random.default_rng(0))
    for src in (perlin, PerlinSource.from_dataset(real), CopyPasteSource.from_dataset(real)):
        a = src.sample("stain", 3, np.random.default_rng(5))
        b = src.sample("stain", 3, np.random.default_rng(5))
        for p, q in zip(a, b):
            assert np.array_equal(p.image, q.image) and np.array_equal(p.mask, q.mask) and p.mask.any()
    assert perlin.version != PerlinSource.from_dataset(real).version


def test_generate_command(base: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(generate_command)
    out = tmp_path / "cli"
    args = ["--data", str(base), "--n", "8", "--out", str(out), "--method", "perlin", "--size", str(SIZE),
            "--workers", "1", "--json", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.strip().splitlines()[-1])
    assert rep["merged"] and rep["images"] == 8 and rep["rendered"] == 8 and rep["method"] == "perlin"
    again = json.loads(CliRunner().invoke(app, args).output.strip().splitlines()[-1])
    assert again["rendered"] == 0 and again["reused"] == 8
    res = CliRunner().invoke(app, [*args[:-4], "--seed", "1"])
    assert isinstance(res.exception, GenerateError) and "seed: 0 -> 1" in str(res.exception)
    res = CliRunner().invoke(app, ["--data", str(base), "--out", str(tmp_path / "gan"), "--n", "4"])
    assert res.exit_code == 2 and "--gan GAN_DIR is needed" in res.output
    res = CliRunner().invoke(app, [*args[:-2], "--shard", "2/2"])
    assert res.exit_code == 2 and "needs 0 <= i < N" in res.output
