"""The model directory as eval/bench/export read it: bad model.yaml, corrupt or misfitting weights, changed
images; every one is one clear line naming the file (and exit 2 from the command line)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import yaml

from lineguard import weights as weights_module
from lineguard.cli import main
from lineguard.config import ConfigError, load_config
from lineguard.data.format import Dataset, DatasetError
from lineguard.data.imaging import read_image, write_png
from lineguard.data.modelspec import MAX_SIDE, MODEL_FILE, SPEC_FILE, ModelSpec
from lineguard.data.preprocess import Preprocess
from lineguard.edge.evaluate import evaluate
from lineguard.training.config import TrainConfig
from lineguard.training.dataset import DefectDataset
from lineguard.training.model_dir import load_model_dir
from lineguard.training.models import ModelError
from lineguard.weights import WeightsError, load_weights, save_weights

INPUT = 32


@pytest.fixture(scope="module")
def sim(split_sim) -> Path:
    return split_sim(n=24, size=64, seed=3, val=0.25, test=0.25)


@pytest.fixture(scope="module")
def good(sim: Path, tmp_path_factory: pytest.TempPathFactory, random_model_dir) -> Path:
    return random_model_dir(tmp_path_factory.mktemp("m") / "model", sim, "cnn_lite0", INPUT)


def _copy_model(good: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in good.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_spec(folder: Path, **changes) -> None:
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            if value is None:
                spec[section].pop(sub)
            else:
                spec[section][sub] = value
        else:
            spec[section] = value
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def _eval_cli(model: Path, data: Path, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(model), "--data", str(data), "-q"])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ model.yaml


@pytest.mark.parametrize("changes, error, match", [
    ({"arch__dropout": 0.3}, ModelError, r"model\.yaml: .*unknown key 'arch\.dropout'"),
    ({"arch__name": "cnn_lite9"}, ModelError, r"model\.yaml: arch\.name 'cnn_lite9' is not a model"),
    ({"arch__name": None}, DatasetError, r"model\.yaml: arch needs a model 'name'"),
    ({"arch__weights": "/etc/passwd"}, ModelError, r"model\.yaml: unknown key 'arch\.weights'"),
    ({"arch__img_size": 60000}, DatasetError, rf"model\.yaml: arch\.img_size 60000 is outside 1\.\.{MAX_SIDE}"),
    ({"arch__img_size": "big"}, DatasetError, r"model\.yaml: arch\.img_size must be an int or \[height, width\]"),
    ({"arch__img_size": 64}, ModelError, r"model\.yaml: arch takes 64x64 px, 1 channel\(s\) but preprocess gives 32"),
    ({"arch__num_classes": 7}, DatasetError, r"model\.yaml: arch\.num_classes is 7 but there are 4 classes"),
    ({"arch__in_chans": "one"}, DatasetError, r"model\.yaml: arch\.in_chans is 'one' but preprocess\.channels is 1"),
    ({"arch__drop_rate": "high"}, ModelError, r"model\.yaml: arch of 'cnn_lite0' cannot be built: "),
    ({"preprocess__size": [60000, 60000]}, DatasetError, rf"model\.yaml: preprocess\.size .* outside 1\.\.{MAX_SIDE}"),
    ({"classes": 5}, DatasetError, r"model\.yaml: 'classes': Input should be a valid list"),
    ({"threshold": "high"}, DatasetError, r"model\.yaml: 'threshold': Input should be a valid number"),
    ({"colour": "red"}, DatasetError, r"model\.yaml: unknown key 'colour'"),
])
def test_bad_model_yaml_is_one_line_naming_the_file_and_key(good: Path, tmp_path: Path, changes: dict, error,
                                                           match: str) -> None:
    folder = _copy_model(good, tmp_path / "m")
    _edit_spec(folder, **changes)
    with pytest.raises(error, match=match) as e:
        load_model_dir(folder)
    assert str(folder / SPEC_FILE) in _one_line(e.value)


@pytest.mark.parametrize("content, match", [
    (b"- just\n- a list\n", "must be a mapping"),
    (b"arch: {name: cnn_lite0\n", r"not valid YAML \(.* at line \d+, column \d+\)"),
    (b"classes: [\xff\xfe]\n", r"not UTF-8 text \(byte 10\)"),
    (b"", "must be a mapping"),
])
def test_unreadable_model_yaml_is_one_line(good: Path, tmp_path: Path, content: bytes, match: str) -> None:
    folder = _copy_model(good, tmp_path / "m")
    (folder / SPEC_FILE).write_bytes(content)
    with pytest.raises(DatasetError, match=match) as e:
        ModelSpec.load(folder)
    assert _one_line(e.value).startswith(str(folder / SPEC_FILE))


def test_model_yaml_that_is_a_folder(good: Path, tmp_path: Path) -> None:
    folder = _copy_model(good, tmp_path / "m")
    (folder / SPEC_FILE).unlink()
    (folder / SPEC_FILE).mkdir()
    with pytest.raises(DatasetError, match="not a lineguard model directory"):
        ModelSpec.load(folder)


def test_eval_cli_on_bad_model_yaml_exits_2(good: Path, sim: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    folder = _copy_model(good, tmp_path / "m")
    _edit_spec(folder, arch__depthh=3)
    err = _eval_cli(folder, sim, capsys)
    assert SPEC_FILE in err and "arch.depthh" in err


def test_train_config_rejects_huge_img_size(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("img_size: 60000\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: 'img_size': .*sides must be 32\.\.1024 px, got 60000x60000"):
        load_config(TrainConfig, cfg)
    with pytest.raises(ConfigError, match="'img_size'"):
        load_config(TrainConfig, None, {"img_size": 60000})
    with pytest.raises(ConfigError, match="got 96x2048"):
        load_config(TrainConfig, None, {"img_size": "96x2048"})
    with pytest.raises(ConfigError, match="a number or HxW"):
        load_config(TrainConfig, None, {"img_size": "wide"})
    assert load_config(TrainConfig, None, {"img_size": "96x224"}).size == (96, 224)
    assert load_config(TrainConfig, None, {"img_size": "224x224"}).img_size == 224  # square: one number


def test_spec_rejects_huge_sizes_when_built_in_code() -> None:
    kw = {"classes": ["ok", "ng"], "ok_class": "ok"}
    ModelSpec(arch={"name": "x", "img_size": [MAX_SIDE, 32]}, preprocess=Preprocess(size=(MAX_SIDE, 32)), **kw)
    with pytest.raises(ValueError, match="outside"):
        ModelSpec(arch={"name": "x"}, preprocess=Preprocess(size=(MAX_SIDE + 1, 32)), **kw)
    with pytest.raises(ValueError, match="outside"):
        ModelSpec(arch={"name": "x", "img_size": 0}, preprocess=Preprocess(), **kw)


# ------------------------------------------------------------------ weights


def _names(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("make", [lambda d: os.urandom(4096), lambda d: b"", _truncated, lambda d: d[:12]],
                         ids=["random", "empty", "truncated", "header-cut"])
def test_corrupt_weights_file_is_weights_error(good: Path, tmp_path: Path, make) -> None:
    folder = _copy_model(good, tmp_path / "m")
    weights = folder / MODEL_FILE
    weights.write_bytes(make(weights.read_bytes()))
    with pytest.raises(WeightsError, match="not a readable safetensors file") as e:
        load_model_dir(folder)
    assert _one_line(e.value).startswith(str(weights))


def test_eval_cli_on_corrupt_weights_exits_2(good: Path, sim: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    folder = _copy_model(good, tmp_path / "m")
    (folder / MODEL_FILE).write_bytes(_truncated((folder / MODEL_FILE).read_bytes()))
    err = _eval_cli(folder, sim, capsys)
    assert MODEL_FILE in err and "not a readable safetensors file" in err


def test_weights_that_do_not_fit_the_arch(good: Path, tmp_path: Path) -> None:
    folder = _copy_model(good, tmp_path / "m")
    state = load_weights(folder / MODEL_FILE)
    key = "head.weight"
    save_weights({**state, key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])}, folder / MODEL_FILE)
    with pytest.raises(WeightsError, match=rf"does not fit the architecture in model\.yaml .*'{key}' \(5, ") as e:
        load_model_dir(folder)
    assert _one_line(e.value).startswith(str(folder / MODEL_FILE))

    save_weights({k: v for k, v in state.items() if k != key}, folder / MODEL_FILE)
    with pytest.raises(WeightsError, match=rf"1 tensor\(s\) of the model missing, e\.g\. '{key}'"):
        load_model_dir(folder)
    save_weights({**state, "extra.weight": torch.zeros(2)}, folder / MODEL_FILE)
    with pytest.raises(WeightsError, match=r"1 tensor\(s\) the model lacks, e\.g\. 'extra\.weight'"):
        load_model_dir(folder)


def test_weights_file_gets_the_folder_permissions(good: Path, tmp_path: Path) -> None:
    mode = stat.S_IMODE((good / SPEC_FILE).stat().st_mode)
    assert stat.S_IMODE((good / MODEL_FILE).stat().st_mode) == mode
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    save_weights({"a": torch.zeros(3)}, tmp_path / "w.safetensors")
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == mode
    assert _names(tmp_path) == ["w.safetensors"]  # no temporary left


def test_failed_weights_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    save_weights({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights_module, "save_file", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_weights({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before and _names(tmp_path) == ["w.safetensors"]


# ------------------------------------------------------------------ changed images


def _change_image(ds: Dataset, split: str) -> str:
    """Rewrite one image of ``split`` with other (valid) pixels; the manifest's sha256 no longer matches."""
    victim = next(r for r in ds.records if r.split == split)
    path = ds.path(victim.image)
    img, _ = read_image(path)
    write_png(path, np.ascontiguousarray(255 - img))
    return victim.image


def test_changed_image_fails_eval_with_the_file_named(good: Path, sim: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "ds"
    shutil.copytree(sim, data)
    ds = Dataset.load(data)
    assert evaluate(good, data, progress=False).images > 0
    rel = _change_image(ds, "test")
    with pytest.raises(DatasetError, match=r"changed since the manifest") as e:
        evaluate(good, data, progress=False)
    assert Path(rel).name in _one_line(e.value)
    err = _eval_cli(good, data, capsys)
    assert Path(rel).name in err and "changed since the manifest" in err


def test_changed_image_without_cache_fails_on_first_read(sim: Path, tmp_path: Path) -> None:
    shutil.copytree(sim, tmp_path / "ds")
    ds = Dataset.load(tmp_path / "ds")
    rel = _change_image(ds, "train")
    recs = [r for r in ds.records if r.image == rel]
    pre = Preprocess(size=(INPUT, INPUT))
    items = DefectDataset(ds, recs, pre, None, cache=False)  # nothing read yet
    with pytest.raises(DatasetError, match=rf"{Path(rel).name} \(record {recs[0].id}\): file changed"):
        items[0]
    DefectDataset(ds, recs, pre, None, cache=False, check_sha256=False)[0]


def _names(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


def test_changed_mask_fails_where_the_manifest_has_its_sha256(sim: Path) -> None:
    ds = Dataset.load(sim)
    rec = next(r for r in ds.records if r.mask is not None)
    _, sha = read_image(ds.path(rec.mask))
    pre = Preprocess(size=(INPUT, INPUT))
    DefectDataset(ds, [rec.model_copy(update={"mask_sha256": sha})], pre, None)
    DefectDataset(ds, [rec.model_copy(update={"mask_sha256": None})], pre, None)  # older manifests: not checked
    with pytest.raises(DatasetError, match=rf"{rec.mask} \(record {rec.id}\): file changed since the manifest"):
        DefectDataset(ds, [rec.model_copy(update={"mask_sha256": "0" * 64})], pre, None)
