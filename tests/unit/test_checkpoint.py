"""The checkpoint plumbing both trainers share: written atomically with config and format, and every way a file
cannot resume (missing, truncated, foreign, another format, other settings, misfitting tensors) is one line
naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pydantic import AliasChoices, Field

from lineguard.checkpoint import CheckpointError, check_settings, load_checkpoint, restoring, save_checkpoint
from lineguard.config import StrictModel

FMT, VERSION = "lineguard-test", 3


class Settings(StrictModel):
    arch: str = Field("a", validation_alias=AliasChoices("arch", "model"))
    size: int = Field(32, ge=16)
    epochs: int = 1


def _saved(path: Path, cfg: Settings = Settings()) -> Path:
    save_checkpoint(path, {"weights": torch.nn.Linear(2, 3).state_dict(), "step": 7}, cfg, FMT, VERSION)
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, FMT, VERSION, **kwargs)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    return text


def test_round_trip_holds_format_version_config_and_state(tmp_path: Path) -> None:
    path = _saved(tmp_path / "ck.pt", Settings(arch="b", size=64))
    ck = load_checkpoint(path, FMT, VERSION, keys=("weights", "step"))
    assert (ck["format"], ck["version"], ck["config"]) == (FMT, VERSION, {"arch": "b", "size": 64, "epochs": 1})
    assert ck["step"] == 7 and ck["weights"]["weight"].shape == (3, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_file_is_unreadable(tmp_path: Path, damage: str) -> None:
    path = _saved(tmp_path / "ck.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    assert f"unreadable checkpoint (truncated or not a {FMT} checkpoint); delete it to start over" in _error(path)


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save([1, 2, 3], path)
    assert f"unreadable checkpoint (not a {FMT} checkpoint)" in _error(path)
    torch.save({"config": {}, "weights": {}}, path)  # no format: only where unversioned files are accepted
    assert "no format" in _error(path)
    assert load_checkpoint(path, FMT, VERSION, keys=("weights",), unversioned=True)["config"] == {}
    save_checkpoint(path, {}, Settings(), "lineguard-gan", 1)
    assert f"a lineguard-gan checkpoint of version 1, this lineguard resumes {FMT} version {VERSION}" in _error(path)
    save_checkpoint(path, {}, Settings(), FMT, VERSION + 1)
    assert f"of version {VERSION + 1}" in _error(path)
    _saved(path)
    assert "keys ['optimizer', 'ema'] missing" in _error(path, keys=("weights", "optimizer", "ema"))
    assert "no checkpoint to resume from" in _error(tmp_path / "none.pt")


def test_other_settings_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    saved = {"arch": "a", "size": 32, "epochs": 1}
    check_settings(path, saved, Settings(epochs=5), ["arch", "size"])  # epochs may change
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: the run was started with other settings "
                                                        "(arch, size); resume with the same values")):
        check_settings(path, saved, Settings(arch="b", size=64, epochs=5), ["arch", "size"])
    with pytest.raises(CheckpointError, match=r"other architecture settings \(size\)"):
        check_settings(path, saved, Settings(size=64), ["size"], what="architecture settings")
    check_settings(path, {"model": "a"}, Settings(), ["arch", "size"])  # an old key name, a default added since
    with pytest.raises(CheckpointError, match=r"ck.pt: the run's settings do not load in this lineguard \("
                                              r"'size': .*; unknown key 'colour'\)"):
        check_settings(path, {"size": 8, "colour": 1}, Settings(), ["size"])


def test_state_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    path = _saved(tmp_path / "ck.pt")
    ck = load_checkpoint(path, FMT, VERSION)
    with restoring(path):
        torch.nn.Linear(2, 3).load_state_dict(ck["weights"])
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: unreadable checkpoint (does not fit this model: ")
                       ) as e, restoring(path):
        torch.nn.Linear(4, 3).load_state_dict(ck["weights"])
    assert "\n" not in str(e.value) and "size mismatch" in str(e.value)
