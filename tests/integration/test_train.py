"""`lineguard train` / `eval` end to end on a small simulated data set: model directory, resume
after a kill, 2-process torchrun, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lineguard.config import ConfigError, load_config
from lineguard.data.format import Dataset, DatasetError
from lineguard.data.split import split_dataset
from lineguard.synth.simulator import SimulatorConfig, simulate_dataset
from lineguard.training.config import TrainConfig
from lineguard.training.engine import CHECKPOINT, train
from lineguard.training.evaluate import evaluate_model_dir

pytestmark = pytest.mark.slow

SMALL = {"model": "two_stream_lite0", "weights": "none", "img_size": 64, "epochs": 3, "batch_size": 8,
         "threads": 1, "patience": 10, "ema_decay": 0.9}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim") / "ds"
    ds = simulate_dataset(root, n=72, seed=0, cfg=SimulatorConfig(size=96), workers=1, progress=False)
    split_dataset(ds, val=0.2, test=0.2, seed=0)
    return root


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lineguard", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_train_writes_model_dir_and_eval_reads_it(sim: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    summary = train(TrainConfig(**SMALL), sim, out, progress=False)
    for name in ("model.safetensors", "model.yaml", "train.yaml", "classes.yaml", "metrics.json", "curves.png",
                 "confusion.png", "pr.png", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and metrics["test"]["images"] == summary["test"]["images"]
    assert 0 <= metrics["test"]["accuracy"] <= 1 and metrics["gmacs"] > 0
    ev = evaluate_model_dir(out, sim, split="test", progress=False)
    assert ev["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert ev["latency"]["p50_ms"] > 0
    ev2 = evaluate_model_dir(out, sim, split="test", target_escape=0.01, progress=False)
    assert ev2["threshold"] <= 1.0 and ev2["target_escape"] == 0.01


def test_train_with_synthetic_set(sim: Path, tmp_path: Path) -> None:
    syn = simulate_dataset(tmp_path / "syn", n=24, seed=5, cfg=SimulatorConfig(size=96), workers=1, progress=False)
    summary = train(TrainConfig(**{**SMALL, "epochs": 1}, synthetic=str(syn.root), synthetic_ratio=0.5), sim,
                    tmp_path / "model", progress=False)
    got = summary["data"]["synthetic"]
    assert got["ratio"] == 0.5 and sum(got["classes"].values()) == 24 and got["sources"] == {"simulated": 24}
    assert summary["data"]["splits"]["test"]["sources"] == {"simulated": len(Dataset.load(sim).split("test"))}
    assert "Synthetic training images" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    other = tmp_path / "other"
    shutil.copytree(syn.root, other)
    classes = (other / "classes.yaml").read_text()
    (other / "classes.yaml").write_text(classes.replace("scratch", "crack"))
    (other / "manifest.jsonl").write_text((other / "manifest.jsonl").read_text().replace('"scratch"', '"crack"'))
    with pytest.raises(DatasetError, match=r"labels \['crack'\] are not classes"):
        train(TrainConfig(**SMALL, synthetic=str(other)), sim, tmp_path / "bad", progress=False)


def test_resume_after_kill_matches_unkilled_run(sim: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in SMALL.items()) + "\nepochs: 4\n")
    ref = train(load_config(TrainConfig, cfg), sim, tmp_path / "ref", progress=False)

    out = tmp_path / "killed"
    p = _cli("train", "--data", str(sim), "--out", str(out), "--config", str(cfg), "-q")
    deadline = time.time() + 300
    while not (out / CHECKPOINT).exists():  # first epoch done: kill in the middle of the second
        assert p.poll() is None, p.stderr.read()
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = torch.load(out / CHECKPOINT, weights_only=True)["state"]["epoch"]
    assert first < 4, "the run finished before it could be killed"
    resumed = train(load_config(TrainConfig, cfg), sim, out, resume=True, progress=False)
    assert resumed["test"]["accuracy"] == pytest.approx(ref["test"]["accuracy"], abs=1e-6)
    assert resumed["val"]["loss"] == pytest.approx(ref["val"]["loss"], rel=1e-4)


def test_torchrun_two_processes(sim: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    cmd = [torchrun, "--nproc-per-node", "2", "--standalone", "-m", "lineguard", "train", "--data", str(sim),
           "--out", str(out), "--model", "cnn_lite0", "--weights", "none", "--img-size", "64", "--epochs", "1",
           "--batch-size", "8", "-q", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    assert set(ck) == {"model", "ema", "optimizer", "scheduler", "state", "config"}
    assert not any(k.startswith("module.") for k in ck["model"])  # DDP wrapper not saved
    assert (out / "model.safetensors").is_file()


def test_bad_input(sim: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epocs: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(TrainConfig, bad)

    copy = tmp_path / "copy"
    shutil.copytree(sim, copy)
    ds = Dataset.load(copy)
    for r in ds.records:  # an empty val split
        if r.split == "val":
            r.split = "train"
    ds.save()
    with pytest.raises(DatasetError, match="'val' is empty"):
        train(TrainConfig(**SMALL), copy, tmp_path / "m1", progress=False)

    split_dataset(ds, val=0.2, test=0.2, seed=0)
    for r in ds.records:  # a class missing from train
        if r.label == "dent" and r.split == "train":
            r.split = "test"
    ds.save()
    with pytest.raises(DatasetError, match="'dent' has no training images"):
        train(TrainConfig(**SMALL), copy, tmp_path / "m2", progress=False)

    split_dataset(ds, val=0.2, test=0.2, seed=0)
    victim = next(r for r in ds.records if r.split == "train")
    ds.path(victim.image).write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=victim.id):
        train(TrainConfig(**SMALL), copy, tmp_path / "m3", progress=False)
