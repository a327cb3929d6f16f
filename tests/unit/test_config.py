"""Typed configs: YAML, command-line overrides, unknown keys rejected with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard.config import ConfigError, StrictModel, dump_config, load_config


class Cfg(StrictModel):
    size: int = 256
    ok_fraction: float = 0.5


def test_yaml_then_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("size: 128\nok_fraction: 0.3\n")
    cfg = load_config(Cfg, p, {"size": 64, "ok_fraction": None})
    assert (cfg.size, cfg.ok_fraction) == (64, 0.3)
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg


def test_unknown_key_suggests(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("sise: 128\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'sise' \(did you mean 'size'\?\)"):
        load_config(Cfg, p)


def test_bad_values_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'size'"):
        load_config(Cfg, None, {"size": "big"})
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Cfg, tmp_path / "missing.yaml")
