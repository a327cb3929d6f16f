"""The line daemon end to end: the virtual camera, a real exported model (ONNX Runtime), the real results DB,
archive, metrics, systemd notify and a real Modbus server (pymodbus) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest

from lineguard.inspect.config import LineConfig, example_config, load_line_config
from lineguard.inspect.daemon import Line
from lineguard.inspect.plcsim import PlcSimulator
from lineguard.inspect.store import ResultStore

SIZE = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, split_sim, random_model_dir) -> Dict[str, Path]:
    """Exported models: 'a' and 'b' (same classes and input, other weights), 'wide' (another input size)."""
    from lineguard.edge.torch2onnx import torch2onnx

    data = split_sim(24, SIZE, 0, 0.2, 0.2)
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, size, bn in (("a", SIZE, False), ("b", SIZE, True), ("wide", 96, False)):
        folder = random_model_dir(root / name, data, "cnn_lite0", size, bn_stats=bn)
        torch2onnx(folder)
        out[name] = folder
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(tmp: Path, model_path: Path, watch_s: float = 0, **over: Any) -> LineConfig:
    base: Dict[str, Any] = {"source": {"kind": "sim", "rate": 0, "parts": 40, "pool": 16, "sim": {"size": 96}},
                            "model": {"path": str(model_path), "watch_s": watch_s, "threads": 1},
                            "db": str(tmp / "r.db"), "metrics": {"port": 0}, "outputs": []}
    base.update(over)
    return LineConfig.model_validate(base)


def _rows(db: Path) -> List[Dict[str, Any]]:
    with sqlite3.connect(str(db)) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM parts ORDER BY id")]


def _check_every_part_once(rows: List[Dict[str, Any]]) -> None:
    """Per run: source_seq 0..n-1 each exactly once, every row final."""
    runs: Dict[str, List[int]] = {}
    for r in rows:
        runs.setdefault(r["run_id"], []).append(r["source_seq"])
        assert r["state"] == "final", r
    for run, seqs in runs.items():
        assert sorted(seqs) == list(range(len(seqs))), (run, sorted(seqs)[:5], len(seqs))


def test_example_config_loads_and_a_wrong_key_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "line.yaml"
    f.write_text(example_config())
    cfg = load_line_config(f)
    assert cfg.source.kind == "sim" and cfg.deadline.seconds == 0.2 and cfg.outputs[0].kind == "log"
    from lineguard.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'dedline' \(did you mean 'deadline'\?\)"):
        load_line_config(f, ["dedline.ms=10"])
    with pytest.raises(ConfigError, match="queue"):
        load_line_config(f, ["queue=0"])
    geo = load_line_config(f, ["deadline={distance_mm: 300, belt_speed_mm_s: 1000, actuator_ms: 50, margin_ms: 20}"])
    assert geo.deadline.seconds == pytest.approx(0.23)


def test_every_part_is_decided_and_recorded_with_its_model_and_timings(tmp_path: Path, models) -> None:
    plc = PlcSimulator(_free_port()).start()
    try:
        cfg = _cfg(tmp_path, models["a"], outputs=[{"kind": "modbus", "port": plc.port}],
                   archive={"path": str(tmp_path / "archive"), "ok_sample_rate": 1.0})
        line = Line(cfg)
        counts = line.run(install_signals=False)
    finally:
        plc.close()
    rows = _rows(cfg.db)
    assert counts["handed_over"] == counts["decided"] == len(rows) == 40
    _check_every_part_once(rows)
    from lineguard.files import sha256_file

    weights = sha256_file(models["a"] / "model.safetensors")
    for r in rows:
        assert r["reason"] is None and r["decision"] in ("OK", "NG", "UNCERTAIN") and r["model_version"] == weights
        assert r["t_capture"] <= r["t_queued"] <= r["t_inferred"] <= r["t_decided"] <= r["t_signalled"]
        ack = json.loads(r["ack"])["0-modbus"]
        assert ack == {"ack": r["decision"] != "OK"}  # the coil read back: reject for NG and UNCERTAIN
        assert r["truth"] in ("ok", "scratch", "stain", "dent") and len(json.loads(r["scores"])) == 4
        assert r["archive_path"] and (tmp_path / "archive" / r["archive_path"]).is_file()
    assert plc.writes() == [r["decision"] != "OK" for r in rows]  # one coil write per part, in order
    assert line.tel.frames._value.get() == 40


def test_bad_frames_become_ng_bad_frame(tmp_path: Path, models) -> None:
    import cv2
    import numpy as np

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a-good.png"), np.full((80, 80), 128, np.uint8))
    (src / "b-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (src / "c-empty.png").write_bytes(b"")
    cv2.imwrite(str(src / "d-tiny.png"), np.zeros((1, 1), np.uint8))
    cv2.imwrite(str(src / "e-other-size.png"), np.full((60, 80), 128, np.uint8))
    cfg = _cfg(tmp_path, models["a"], source={"kind": "folder", "path": str(src)}, frame_size=[80, 80])
    Line(cfg).run(install_signals=False)
    rows = sorted(_rows(cfg.db), key=lambda r: r["source_seq"])
    assert len(rows) == 5
    _check_every_part_once(rows)
    assert rows[0]["reason"] is None and rows[0]["model_version"]
    assert [(r["decision"], r["reason"]) for r in rows[1:]] == [("NG", "bad-frame")] * 4


def test_sigterm_drains_the_queue_and_exits_0(tmp_path: Path, models) -> None:
    db = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "lineguard", "inspect", "run", "--model", str(models["a"]), "--set",
           "source={kind: sim, rate: 200, pool: 8, sim: {size: 64}}", "--set", f"db={db}", "--set", "metrics.port=0",
           "--set", "outputs=[]", "--set", "model.threads=1", "--set", "queue=256", "--json", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(db, 50, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rep = json.loads(out.strip().splitlines()[-1])
    rows = _rows(db)
    _check_every_part_once(rows)
    assert rep["handed_over"] == len(rows) == rep["decided"]
    assert all(r["reason"] in (None, "shutdown") for r in rows)


def _wait_rows(db: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if db.exists():
            try:
                with sqlite3.connect(str(db), timeout=1) as c:
                    if c.execute("SELECT COUNT(*) FROM parts").fetchone()[0] >= n:
                        return
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


@pytest.mark.slow
def test_kill_9_five_times_leaves_exactly_one_final_row_per_part(tmp_path: Path, models) -> None:
    db = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "lineguard", "inspect", "run", "--model", str(models["a"]), "--set",
           "source={kind: sim, rate: 0, pool: 8, sim: {size: 64}}", "--set", f"db={db}", "--set", "metrics.port=0",
           "--set", "outputs=[{kind: log}]", "--set", "model.threads=1", "-q"]
    seen = 0
    for _ in range(5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_rows(db, seen + 30, proc)
            time.sleep(0.3)
        finally:
            proc.kill()
            proc.wait(10)
        seen = len(_rows(db))
    assert cmd[8].startswith("source=")
    pending = sum(r["state"] == "pending" for r in _rows(db))  # the fifth kill's parts in flight
    last = subprocess.run([*cmd[:8], "source={kind: sim, rate: 0, parts: 5, pool: 8, sim: {size: 64}}", *cmd[9:],
                           "--json"], capture_output=True, text=True, timeout=120)
    assert last.returncode == 0, last.stderr
    rows = _rows(db)
    _check_every_part_once(rows)
    assert len({r["run_id"] for r in rows}) == 6
    recovered = [r for r in rows if r["reason"] == "crash-recovered"]
    assert all(r["decision"] == "NG" for r in recovered)
    assert json.loads(last.stdout.strip().splitlines()[-1])["recovered"] == pending  # each restart resolves them


def test_hot_swap_under_load_and_refusals(tmp_path: Path, models, caplog) -> None:
    live = tmp_path / "live"
    shutil.copytree(models["a"], live)
    (live / "model.safetensors").unlink()  # the line gets the exported file only
    cfg = _cfg(tmp_path, live, watch_s=0.1, source={"kind": "sim", "rate": 150, "pool": 8, "sim": {"size": 64}})
    line = Line(cfg)
    t = threading.Thread(target=line.run, kwargs={"install_signals": False})
    t.start()
    try:
        def swap_in(src: Path) -> None:
            tmp = live / "incoming.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, live / "model.onnx")

        def swaps(result: str) -> float:
            return line.tel.model_swaps.labels(result=result)._value.get()

        _until(lambda: line.counts["decided"] > 30)
        swap_in(models["b"] / "model.onnx")
        _until(lambda: swaps("swapped") == 1)
        after_b = line.counts["decided"]
        (live / "model.onnx").write_bytes(b"not an onnx file")  # corrupt: refused, b keeps deciding
        _until(lambda: swaps("refused") == 1)
        swap_in(models["wide"] / "model.onnx")  # another input size: refused
        _until(lambda: swaps("refused") == 2)
        _until(lambda: line.counts["decided"] > after_b + 30)
    finally:
        line.stop()
        t.join(30)
    rows = _rows(cfg.db)
    _check_every_part_once(rows)
    assert all(r["reason"] is None for r in rows)
    versions = [r["model_version"] for r in rows]
    va, vb = versions[0], versions[-1]
    assert va != vb and versions.index(vb) > 0
    assert all(v == vb for v in versions[versions.index(vb):])  # after the switch only b, never a again
    assert "refused" in caplog.text and "differs" in caplog.text


def _until(cond, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_metrics_health_and_readiness(tmp_path: Path, models) -> None:
    port = _free_port()
    cfg = _cfg(tmp_path, models["a"], source={"kind": "sim", "rate": 50, "pool": 4, "sim": {"size": 64}},
               metrics={"port": port})
    line = Line(cfg)
    t = threading.Thread(target=line.run, kwargs={"install_signals": False})
    t.start()
    try:
        _until(lambda: line.counts["decided"] >= 10)
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        ready = json.loads(urllib.request.urlopen(base + "/readyz", timeout=5).read())
        assert ready == {"ready": True, "reasons": []}
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    finally:
        line.stop()
        t.join(30)
    for name in ("lineguard_inspect_frames_total", "lineguard_inspect_decisions_total",
                 "lineguard_inspect_capture_to_decision_seconds_bucket", "lineguard_inspect_inference_duration_seconds",
                 "lineguard_inspect_queue_depth_frames", "lineguard_inspect_judged_total", "lineguard_inspect_ng_score",
                 "lineguard_inspect_model_info", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert name in text, name
    assert 'lineguard_inspect_judged_total{outcome="correct"}' in text


def test_alert_rules_pass_promtool_and_name_real_metrics() -> None:
    from lineguard.inspect.telemetry import Telemetry

    rules = Path(__file__).resolve().parents[2] / "inspect" / "deploy" / "alert-rules.yml"
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (.ci/run installs the Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    res = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    import re

    names = {m.name for m in Telemetry("l", "c").registry.collect()}
    used = set(re.findall(r"\b(lineguard_inspect_[a-z_]+?)(?:_total|_bucket)?\b", rules.read_text()))
    assert used and used <= names | {"lineguard_inspect_ready"}, used - names


def test_systemd_notify_ready_watchdog_from_the_frame_loop_and_stopping(tmp_path: Path, models, monkeypatch) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings every 50 ms
    cfg = _cfg(tmp_path, models["a"], source={"kind": "sim", "rate": 40, "pool": 4, "sim": {"size": 64}})
    line = Line(cfg)
    stall = threading.Event()

    def messages(seconds: float) -> List[str]:
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(socket.timeout):
                out.append(sock.recv(256).decode())
        return out

    t = threading.Thread(target=line.run, kwargs={"install_signals": False})
    t.start()
    try:
        first = messages(1.0)
        assert first[0] == "READY=1" and first.count("WATCHDOG=1") >= 5
        real = line.live.runner.predict

        def stuck(frames):
            stall.wait(10)
            return real(frames)

        line.live.runner.predict = stuck  # the frame loop hangs inside the model
        time.sleep(0.3)
        messages(0.05)  # pings sent before the loop got stuck, still in the socket
        assert "WATCHDOG=1" not in messages(0.6)  # a stalled loop stops the pings
        stall.set()
        assert "WATCHDOG=1" in messages(0.6)
    finally:
        stall.set()
        line.stop()
        t.join(30)
        assert "STOPPING=1" in messages(0.3)
        sock.close()


def test_status_verb_counts_by_decision_and_truth(tmp_path: Path, models) -> None:
    cfg = _cfg(tmp_path, models["a"])
    Line(cfg).run(install_signals=False)
    res = subprocess.run([sys.executable, "-m", "lineguard", "inspect", "status", "--db", str(cfg.db), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout.strip().splitlines()[-1])
    assert t["parts"] == 40 and sum(t["by_decision"].values()) == 40 and t["truth_total"] == 40
    with ResultStore(cfg.db) as s:
        assert s.totals().parts == 40


def test_reject_output_down_is_retried_counted_alarmed_and_every_part_still_recorded(tmp_path: Path, models,
                                                                                      caplog) -> None:
    plc = PlcSimulator(_free_port()).start()
    cfg = _cfg(tmp_path, models["a"], source={"kind": "sim", "rate": 40, "pool": 4, "sim": {"size": 64}},
               outputs=[{"kind": "modbus", "port": plc.port, "timeout_s": 0.05}], deadline={"ms": 150})
    line = Line(cfg)
    t = threading.Thread(target=line.run, kwargs={"install_signals": False})
    t.start()
    try:
        _until(lambda: line.counts["decided"] >= 15)
        plc.stop()  # the PLC goes away mid-run
        _until(lambda: line.tel.signal_failures.labels(output="0-modbus")._value.get() >= 5)
        plc.start()  # and comes back: the output reconnects
        ok_before = line.tel.signals.labels(output="0-modbus")._value.get()
        _until(lambda: line.tel.signals.labels(output="0-modbus")._value.get() >= ok_before + 5)
    finally:
        line.stop()
        t.join(30)
        plc.close()
    rows = _rows(cfg.db)
    _check_every_part_once(rows)
    failed = [r for r in rows if "error" in json.loads(r["ack"])["0-modbus"]]
    assert len(failed) >= 5 and all(json.loads(r["ack"])["0-modbus"]["attempts"] > 1 for r in failed)  # retried
    assert rows[-1]["ack"] and json.loads(rows[-1]["ack"])["0-modbus"] == {"ack": rows[-1]["decision"] != "OK"}
    assert "not acknowledged" in caplog.text


def test_a_full_archive_disk_keeps_every_result_and_counts_the_failures(tmp_path: Path, models,
                                                                          small_tmpfs) -> None:
    small = small_tmpfs("256k")
    cfg = _cfg(tmp_path, models["a"], source={"kind": "sim", "rate": 0, "parts": 60, "pool": 8, "sim": {"size": 128}},
               archive={"path": str(small), "ok_sample_rate": 1.0, "keep_free_bytes": 0, "resume_free_bytes": 1})
    line = Line(cfg)
    line.run(install_signals=False)
    rows = _rows(cfg.db)
    assert len(rows) == 60
    _check_every_part_once(rows)
    assert all(r["reason"] is None for r in rows)
    archived = [r for r in rows if r["archive_path"]]
    assert 0 < len(archived) < 60
    failures = line.tel.archive_failures.labels(reason="ENOSPC")._value.get()  # images and their heatmaps
    assert failures >= 60 - len(archived) and failures == line.results.archive.failures_by_reason["ENOSPC"]


def test_sighup_reloads_the_policy_and_the_rows_record_it(tmp_path: Path, models) -> None:
    db, conf = tmp_path / "r.db", tmp_path / "line.yaml"
    text = (f"model: {{path: {models['a']}, threads: 1, watch_s: 0}}\n"
            "source: {kind: sim, rate: 100, pool: 4, sim: {size: 64}}\n"
            f"db: {db}\nmetrics: {{port: 0}}\noutputs: []\n")
    conf.write_text(text + "policy: {threshold: 0.3}\n")
    proc = subprocess.Popen([sys.executable, "-m", "lineguard", "inspect", "run", "--config", str(conf), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(db, 20, proc)
        conf.write_text(text + "policy: {threshold: 0.7, uncertain_band: 0.05}\n")
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 30
        while not any(json.loads(r["policy"] or "{}").get("threshold") == 0.7 for r in _rows(db)):
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    policies = [json.loads(r["policy"]) for r in _rows(db) if r["policy"]]
    first = next(i for i, p in enumerate(policies) if p["threshold"] == 0.7)
    assert policies[0]["threshold"] == 0.3 and first > 0
    assert all(p["threshold"] == 0.7 and p["uncertain_band"] == 0.05 for p in policies[first:])


def test_free_run_inspects_the_latest_frame_and_counts_the_older_ones_dropped(tmp_path: Path, models,
                                                                              monkeypatch) -> None:
    import lineguard.inspect.daemon as daemon

    real_load = daemon.load_live

    def slow_load(*args: Any, **kwargs: Any):
        live = real_load(*args, **kwargs)
        predict = live.runner.predict

        def slow(frames):
            time.sleep(0.03)  # a model slower than the camera (100 frames/s)
            return predict(frames)

        live.runner.predict = slow
        return live

    monkeypatch.setattr(daemon, "load_live", slow_load)
    cfg = _cfg(tmp_path, models["a"], mode="free-run",
               source={"kind": "sim", "rate": 100, "parts": 150, "pool": 4, "sim": {"size": 64}})
    line = Line(cfg)
    counts = line.run(install_signals=False)
    rows = _rows(cfg.db)
    assert counts["handed_over"] == 150 and counts["dropped"] > 50
    assert counts["dropped"] + len(rows) == 150  # every frame inspected or counted as superseded
    assert line.tel.dropped.labels(reason="superseded")._value.get() == counts["dropped"]
    seqs = [r["source_seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and all(r["state"] == "final" for r in rows)
    assert all(r["reason"] is None for r in rows)


def test_auto_takes_the_int8_model_only_where_the_export_kept_it_and_found_it_faster(tmp_path: Path, models) -> None:
    from lineguard.inspect.config import ModelConfig
    from lineguard.inspect.models import _backend

    folder = tmp_path / "m"
    shutil.copytree(models["a"], folder)
    auto = ModelConfig(path=folder)
    assert _backend(auto) == "ort"  # no INT8 export
    shutil.copyfile(folder / "model.onnx", folder / "model-int8.onnx")
    report = folder / "model-int8.onnx.report.json"
    for faster, expected in (("fp32", "ort"), ("int8", "ort-int8")):
        report.write_text(json.dumps({"faster": faster}))
        assert _backend(auto) == expected
    report.write_text("{not json")
    assert _backend(auto) == "ort"
    assert _backend(ModelConfig(path=folder, backend="ort")) == "ort"
    assert _backend(ModelConfig(path=folder / "model-int8.onnx")) == "ort-int8"
