"""The `lineguard data` verbs end to end on a small simulated data set, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from lineguard.cli import main


def run(args: List[str], capsys: pytest.CaptureFixture) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_simulate_split_stats_validate_preview(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "sim"
    code, out, _ = run(["data", "simulate", "--n", "60", "--out", str(ds), "--size", "96", "--seed", "1",
                        "--workers", "1", "--json", "-q"], capsys)
    assert code == 0
    sim = last_json(out)
    assert sim["images"] == 60 and sum(sim["classes"].values()) == 60 and sim["size"] == 96

    code, out, _ = run(["data", "split", str(ds), "--val", "0.2", "--test", "0.2", "--json"], capsys)
    split = last_json(out)
    assert code == 0 and sum(sum(c.values()) for c in split["counts"].values()) == 60
    assert all(split["counts"][s]["ok"] > 0 for s in ("train", "val", "test"))

    code, out, _ = run(["data", "stats", str(ds), "--json"], capsys)
    stats = last_json(out)
    assert code == 0 and stats["sources"] == {"simulated": 60} and set(stats["splits"]) == {"train", "val", "test"}

    code, out, _ = run(["data", "validate", str(ds), "--json", "-q"], capsys)
    assert code == 0 and last_json(out)["valid"] is True

    code, out, _ = run(["data", "preview", str(ds), "--out", str(tmp_path / "p.png")], capsys)
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 1000
    assert (tmp_path / "p-scratch.png").exists()

    (ds / "images" / "sim-000003.png").write_bytes(b"garbage")
    code, out, _ = run(["data", "validate", str(ds), "--json", "-q"], capsys)
    rep = last_json(out)
    assert code == 1 and rep["valid"] is False and "sim-000003.png" in rep["errors"][0]["path"]


def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["data", "stats", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not a lineguard data set" in err and "Traceback" not in err
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("sise: 64\n")
    with pytest.raises(SystemExit) as e:
        main(["data", "simulate", "--n", "2", "--out", str(tmp_path / "x"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "did you mean 'size'" in err
