"""`lineguard train` / `eval` end to end on a small simulated data set: model directory, resume
after a kill, 2-process torchrun, bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
import yaml

from lineguard.checkpoint import CheckpointError
from lineguard.cli import main
from lineguard.config import ConfigError, load_config
from lineguard.data.format import Dataset, DatasetError
from lineguard.data.imaging import read_image, write_png
from lineguard.data.split import split_dataset
from lineguard.edge.evaluate import evaluate
from lineguard.sim import SimulatorConfig, simulate_dataset
from lineguard.training.config import TrainConfig
from lineguard.training.engine import CHECKPOINT, Trainer, train
from lineguard.training.model_dir import load_model_dir
from lineguard.training.models import ModelError, count_gmacs, create_model

pytestmark = pytest.mark.slow

SMALL = {"arch": "two_stream_lite0", "weights": "none", "img_size": 64, "epochs": 3, "batch_size": 8,
         "threads": 1, "patience": 10, "ema_decay": 0.9}


@pytest.fixture(scope="module")
def sim(split_sim) -> Path:
    return split_sim(n=72, size=96, seed=0, val=0.2, test=0.2)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lineguard", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_train_writes_model_dir_and_eval_reads_it(sim: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    caplog.set_level(logging.INFO, "lineguard.train")
    summary = train(TrainConfig(**SMALL), sim, out, progress=False)
    for name in ("model.safetensors", "model.yaml", "train.yaml", "classes.yaml", "metrics.json", "curves.png",
                 "confusion.png", "pr.png", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and metrics["test"]["images"] == summary["test"]["images"]
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "lineguard.train"] == [
        "epoch 1", "epoch 2", "epoch 3"]  # one line per epoch through the logger, nothing printed
    assert "epoch 1" not in capsys.readouterr().out
    # the model directory holds the best epoch's weights: its val figures are that epoch's
    best = max(history, key=lambda h: (h["val_macro_f1"], -h["val_loss"]))
    assert metrics["best_epoch"] == best["epoch"] and metrics["stop_reason"] == "all 3 planned epochs run"
    assert "all 3 planned epochs run" in (out / "MODEL_CARD.md").read_text()
    assert metrics["val"]["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert metrics["val"]["macro_f1"] == pytest.approx(best["val_macro_f1"])
    test = metrics["test"]
    assert test["images"] == len(Dataset.load(sim).split("test")) == sum(map(sum, test["confusion"]))
    assert test["accuracy"] == pytest.approx(np.trace(test["confusion"]) / test["images"])
    assert metrics["gmacs"] == pytest.approx(count_gmacs(load_model_dir(out).model, 64))
    ev = evaluate(out, sim, split="test", progress=False)
    assert ev.accuracy == pytest.approx(test["accuracy"]) and ev.latency.p50_ms > 0
    # a threshold picked on val for a target escape rate meets it on val, whatever split is shown
    ev2 = evaluate(out, sim, split="test", target_escape=0.01, progress=False)
    on_val = evaluate(out, sim, split="val", target_escape=0.01, progress=False)
    assert on_val.threshold == ev2.threshold and on_val.escape_rate <= 0.01


def test_train_with_synthetic_set(sim: Path, tmp_path: Path) -> None:
    syn = simulate_dataset(tmp_path / "syn", n=24, seed=5, cfg=SimulatorConfig(size=96), workers=1, progress=False)
    cfg = TrainConfig(**{**SMALL, "epochs": 2}, synthetic=str(syn.root), synthetic_extra=1.0, synthetic_real_epochs=1,
                      synthetic_weight=0.5)
    trainer = Trainer(cfg, sim, tmp_path / "setup", progress=False)
    trainer.setup()
    real_steps = len(train_loader_of(sim, tmp_path / "plain"))
    assert len(trainer.loader) > real_steps  # the synthetic draws come on top of the real epoch
    trainer.sampler.set_epoch(0)
    assert (trainer.sampler.global_indices() >= len(trainer.train_set.real)).any()
    batch = next(iter(trainer.loader))
    assert set(batch["weight"].tolist()) <= {1.0, 0.5}
    trainer.run_epoch()
    assert not trainer.sampler.real_only
    trainer.run_epoch()
    assert trainer.sampler.real_only  # the last synthetic_real_epochs draw real images only
    summary = train(cfg, sim, tmp_path / "model", progress=False)
    got = summary["data"]["synthetic"]
    assert (got["extra"], got["real_epochs"], got["weight"]) == (1.0, 1, 0.5)
    assert sum(got["classes"].values()) == 24 and got["sources"] == {"simulated": 24}
    assert summary["data"]["splits"]["test"]["sources"] == {"simulated": len(Dataset.load(sim).split("test"))}
    assert "Synthetic training images" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    other = tmp_path / "other"
    shutil.copytree(syn.root, other)
    classes = (other / "classes.yaml").read_text()
    (other / "classes.yaml").write_text(classes.replace("scratch", "crack"))
    (other / "manifest.jsonl").write_text((other / "manifest.jsonl").read_text().replace('"scratch"', '"crack"'))
    with pytest.raises(DatasetError, match=r"labels \['crack'\] are not classes"):
        train(TrainConfig(**SMALL, synthetic=str(other)), sim, tmp_path / "bad", progress=False)


def train_loader_of(sim: Path, out: Path) -> torch.utils.data.DataLoader:
    """The training loader of a run on ``sim`` without synthetic images."""
    trainer = Trainer(TrainConfig(**{**SMALL, "epochs": 2}), sim, out, progress=False)
    trainer.setup()
    return trainer.loader


def test_an_older_train_yaml_with_synthetic_ratio(tmp_path: Path) -> None:
    """synthetic_ratio (synthetic draws in place of real ones) is gone: dropped where no synthetic set was used
    (every older train.yaml carries it), refused with the reason where one was."""
    assert TrainConfig(synthetic_ratio=0.3).synthetic is None
    with pytest.raises(ValueError, match="in place of real ones; that protocol is gone"):
        TrainConfig(synthetic="syn", synthetic_ratio=0.3)


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
           "--out", str(out), "--arch", "cnn_lite0", "--weights", "none", "--img-size", "64", "--epochs", "1",
           "--batch", "8", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1
    assert res.stdout.count("epoch 1: train loss") == 1, res.stdout  # rank 0 logs, rank 1 does not
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    assert set(ck) == {"format", "version", "config", "model", "ema", "optimizer", "scheduler", "state"}
    assert (ck["format"], ck["version"], ck["config"]["arch"]) == ("lineguard-train", 1, "cnn_lite0")
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


# ------------------------------------------------------------------ damaged inputs: one line, nothing changed

QUICK = {**SMALL, "epochs": 1}


def _snapshot(folder: Path) -> Dict[str, Tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.iterdir())}


def _main_exit(args: List[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def quick_run(sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "model"
    train(TrainConfig(**QUICK), sim, out, progress=False, max_steps=2)
    return out


def test_frozen_stages_keep_their_initial_weights(sim: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**QUICK, "frozen_stages": 2, "ema_decay": 0.0})
    train(cfg, sim, tmp_path / "m", progress=False, max_steps=2)
    trained = load_model_dir(tmp_path / "m").model.state_dict()
    torch.manual_seed(cfg.seed)  # the trainer's initialisation
    initial = create_model(cfg.arch, num_classes=len(trained["head.weight"]), in_chans=1, img_size=cfg.img_size,
                           weights=None).state_dict()
    stem = [k for k in trained if k.startswith("backbone.conv_stem.")]
    later = [k for k in trained if k.startswith("backbone.blocks.3.") and k.endswith("weight")]
    assert stem and later
    assert all(torch.equal(trained[k], initial[k]) for k in stem)
    assert not all(torch.equal(trained[k], initial[k]) for k in later)


def test_arch_options_reach_the_model_and_its_folder(sim: Path, tmp_path: Path) -> None:
    """config arch_options build the network (the model folder rebuilds it with them); one it does not take
    stops the run before any work with the model's name and the option."""
    train(TrainConfig(**QUICK, arch_options={"depth": 1, "start_as_cnn": True}), sim, tmp_path / "m",
          progress=False, max_steps=1)
    loaded = load_model_dir(tmp_path / "m")
    assert len(loaded.model.fusion.blocks) == 1 and loaded.spec.arch["start_as_cnn"] is True
    with pytest.raises(ModelError, match=r"arch_options \{'bogus': 1\}: model 'two_stream_lite0' does not.*'bogus'"):
        train(TrainConfig(**QUICK, arch_options={"bogus": 1}), sim, tmp_path / "bad", progress=False, max_steps=1)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_model_dir_files_are_whole_and_share_one_mode(quick_run: Path) -> None:
    names = {p.name for p in quick_run.iterdir()}
    assert not [n for n in names if n.startswith(".") or n.endswith((".tmp", ".partial"))], names
    umask = os.umask(0)
    os.umask(umask)
    modes = {n: stat.S_IMODE((quick_run / n).stat().st_mode) for n in names}
    assert modes["model.safetensors"] == modes["model.yaml"] == 0o666 & ~umask, modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing-keys", "foreign-tensors"])
def test_resume_from_damaged_checkpoint_is_one_line_and_changes_nothing(
        quick_run: Path, sim: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    shutil.copytree(quick_run, out)
    ck = out / CHECKPOINT
    data = ck.read_bytes()
    if damage == "truncated":
        ck.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        ck.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        ck.write_bytes(b"")
    elif damage == "missing-keys":
        full = torch.load(ck, weights_only=True)
        torch.save({k: v for k, v in full.items() if k not in ("optimizer", "scheduler")}, ck)
    else:
        full = torch.load(ck, weights_only=True)
        torch.save({**full, "model": {"conv.weight": torch.zeros(3)}}, ck)
    before = _snapshot(out)
    with pytest.raises(CheckpointError, match=rf"{CHECKPOINT}: unreadable checkpoint \(.*\); delete it to start "
                                              "over or restore it") as e:
        train(TrainConfig(**QUICK), sim, out, resume=True, progress=False, max_steps=2)
    assert "\n" not in str(e.value) and str(ck) in str(e.value)
    if damage == "missing-keys":
        assert "'optimizer'" in str(e.value)
    assert _snapshot(out) == before
    cfg = tmp_path / "quick.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in QUICK.items()) + "\n")
    err = _main_exit(["train", "--data", str(sim), "--out", str(out), "--config", str(cfg), "--resume", "-q"], capsys)
    assert CHECKPOINT in err and "unreadable checkpoint" in err
    assert _snapshot(out) == before


def test_an_older_run_resumes_and_other_settings_are_refused(quick_run: Path, sim: Path, tmp_path: Path) -> None:
    """A run of an older lineguard: a checkpoint without format and version, the architecture under the key
    `model` in its config and train.yaml."""
    out = tmp_path / "model"
    shutil.copytree(quick_run, out)
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    config = {("model" if k == "arch" else k): v for k, v in ck.pop("config").items()}
    torch.save({**{k: v for k, v in ck.items() if k not in ("format", "version")}, "config": config}, out / CHECKPOINT)
    (out / "train.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"started with other settings \(arch\)"):
        train(TrainConfig(**{**QUICK, "arch": "cnn_lite0"}), sim, out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"started with other settings \(img_size, seed\)"):
        train(TrainConfig(**{**QUICK, "img_size": 96, "seed": 1}), sim, out, resume=True, progress=False)
    cfg = load_config(TrainConfig, out / "train.yaml", {"epochs": 2})  # the epochs may change on a resume
    assert cfg.arch == QUICK["arch"]
    summary = train(cfg, sim, out, resume=True, progress=False, max_steps=3)
    assert summary["epochs_run"] == 2 and len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    again = torch.load(out / CHECKPOINT, weights_only=True)
    assert (again["format"], again["config"]["arch"], again["state"]["step"]) == ("lineguard-train", QUICK["arch"], 3)


def _changed_copy(src: Path, dst: Path, split: Optional[str]) -> str:
    """A copy of the data set ``src`` with one image of ``split`` (any when None) rewritten after import."""
    shutil.copytree(src, dst)
    ds = Dataset.load(dst)
    victim = next(r for r in ds.records if split is None or r.split == split)
    img, _ = read_image(ds.path(victim.image))
    write_png(ds.path(victim.image), np.ascontiguousarray(255 - img))  # still a valid PNG, other bytes
    return str(ds.path(victim.image))


@pytest.mark.parametrize("split", ["train", "val"])
def test_train_fails_on_an_image_changed_after_import(sim: Path, tmp_path: Path, split: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "ds"
    changed = _changed_copy(sim, data, split)
    with pytest.raises(DatasetError, match="changed since the manifest was written") as e:
        train(TrainConfig(**QUICK), data, tmp_path / "m", progress=False, max_steps=1)
    assert changed in str(e.value)
    err = _main_exit(["train", "--data", str(data), "--out", str(tmp_path / "m2"), "--weights", "none",
                      "--img-size", "64", "--epochs", "1", "--batch", "8", "-q"], capsys)
    assert Path(changed).name in err and "changed since the manifest" in err


def test_train_fails_on_a_changed_synthetic_image(sim: Path, tmp_path: Path) -> None:
    syn = simulate_dataset(tmp_path / "syn", n=8, seed=5, cfg=SimulatorConfig(size=96), workers=1, progress=False)
    changed = _changed_copy(syn.root, tmp_path / "syn2", None)
    with pytest.raises(DatasetError, match="changed since the manifest was written") as e:
        train(TrainConfig(**QUICK, synthetic=str(tmp_path / "syn2")), sim, tmp_path / "m", progress=False,
              max_steps=1)
    assert changed in str(e.value)


def test_eval_fails_on_an_image_changed_after_import(quick_run: Path, sim: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "ds"
    changed = _changed_copy(sim, data, "test")
    with pytest.raises(DatasetError, match="changed since the manifest was written") as e:
        evaluate(quick_run, data, progress=False)
    assert changed in str(e.value)
    err = _main_exit(["eval", "--model", str(quick_run), "--data", str(data), "-q"], capsys)
    assert Path(changed).name in err and "changed since the manifest" in err


def test_device_is_checked_before_work_and_a_gpu_run_matches_the_schema(sim: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """``--device`` is one of cpu / cuda[:N]; one torch cannot use is one line before anything is written; where
    a GPU exists a short run there writes the same model folder a CPU run does."""
    with pytest.raises(ValueError, match="device"):
        TrainConfig(**QUICK, device="dla:0")
    if not torch.cuda.is_available():
        err = _main_exit(["train", "--data", str(sim), "--out", str(tmp_path / "m"), "--weights", "none",
                          "--img-size", "64", "--epochs", "1", "--batch", "8", "--device", "cuda", "-q"], capsys)
        assert "torch sees no CUDA device here" in err and not (tmp_path / "m").exists()
        return
    summary = train(TrainConfig(**QUICK, device="cuda"), sim, tmp_path / "gpu", progress=False, max_steps=2)
    assert summary["epochs_run"] == 1 and (tmp_path / "gpu" / "model.safetensors").is_file()
    assert load_model_dir(tmp_path / "gpu").spec.classes == Dataset.load(sim).classes.classes
