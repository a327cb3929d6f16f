"""Worker-pool plumbing: workers, the fork server and the resource tracker die with a SIGKILLed parent, and
its ``pymp-*`` temporary folder goes with them; the chunked pool (``run_chunks``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.util import get_temp_dir
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from lineguard import workers


def _session(sid: int) -> Dict[int, str]:
    """Live (not zombie) processes of session ``sid``: pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] not in "ZX":
            found[int(entry)] = cmd.strip()[:160]
    return found


def _pymp(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("pymp-"))


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _kill_and_check(proc: subprocess.Popen, tmp: Path) -> None:
    """SIGKILL ``proc`` alone (a session leader), then: within 10 s no process of its session is left, and no
    ``pymp-*`` folder in ``tmp`` (its TMPDIR). Kills what is left either way."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        gone = _wait(lambda: not _session(proc.pid) and not _pymp(tmp), 10)
        assert gone, f"left after a SIGKILL of the parent: {_session(proc.pid)}, {_pymp(tmp)}"
    finally:
        for pid in _session(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _python(code: str, tmp: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp))
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], start_new_session=True, env=env,
                                stdout=subprocess.PIPE, stderr=err, cwd=str(tmp))


def _ready(proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait for the line "ready" from ``proc``; kills its process group and fails if it does not come."""
    assert proc.stdout is not None
    if select.select([proc.stdout], [], [], timeout)[0] and proc.stdout.readline() == b"ready\n":
        return
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"not ready: {log.read_text()[-2000:]}")


@pytest.fixture()
def tmp(tmp_path: Path) -> Path:
    out = tmp_path / "tmp"
    out.mkdir()
    return out


def test_mp_context_preloads_this_module_first() -> None:
    ctx = workers.mp_context("lineguard.files")
    assert ctx.get_start_method() == "forkserver"
    import multiprocessing.forkserver as fs

    assert fs._forkserver._preload_modules == ["lineguard.workers", "lineguard.files"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_die_with_parent_kills_the_child_with_its_parent(tmp: Path, tmp_path: Path) -> None:
    proc = _python("""
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            from lineguard.workers import die_with_parent
            assert die_with_parent()
            print("ready", flush=True)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
        """, tmp, tmp_path / "err.log")
    _ready(proc, tmp_path / "err.log")
    assert len(_session(proc.pid)) == 2
    _kill_and_check(proc, tmp)


def test_a_killed_pool_owner_leaves_nothing(tmp: Path, tmp_path: Path) -> None:
    """A ProcessPoolExecutor on :func:`workers.mp_context` with :func:`workers.init_worker`."""
    proc = _python("""
        import os, time
        from concurrent.futures import ProcessPoolExecutor
        from lineguard import workers
        ex = ProcessPoolExecutor(2, mp_context=workers.mp_context("lineguard.files"),
                                 initializer=workers.init_worker)
        futs = [ex.submit(time.sleep, 0.3) for _ in range(2)]
        [f.result() for f in futs]
        print("ready", flush=True)
        time.sleep(60)
        """, tmp, tmp_path / "err.log")
    _ready(proc, tmp_path / "err.log")
    assert len(_session(proc.pid)) == 5, _session(proc.pid)  # itself, tracker, fork server, 2 workers
    assert _pymp(tmp)
    _kill_and_check(proc, tmp)


def test_a_clean_exit_still_cleans_up(tmp: Path, tmp_path: Path) -> None:
    proc = _python("""
        import os
        from concurrent.futures import ProcessPoolExecutor
        from lineguard import workers
        with ProcessPoolExecutor(2, mp_context=workers.mp_context("lineguard.files"),
                                 initializer=workers.init_worker) as ex:
            assert len(set(ex.map(abs, range(-20, 0)))) == 20
        """, tmp, tmp_path / "err.log")
    assert proc.wait(30) == 0, (tmp_path / "err.log").read_text()
    assert _wait(lambda: not _session(proc.pid), 10), _session(proc.pid)
    assert not _pymp(tmp)
    assert not (tmp_path / "err.log").read_text()  # no leaked-semaphore warning, no traceback


_NESTED = """
from concurrent.futures import ProcessPoolExecutor

from lineguard import workers


def inner() -> int:
    with ProcessPoolExecutor(1, mp_context=workers.mp_context("lineguard.files"),
                             initializer=workers.init_worker) as ex:
        return ex.submit(abs, -2).result()
"""


def test_a_nested_pool_leaves_its_owners_temp_folder(tmp: Path, tmp_path: Path) -> None:
    """A worker that starts its own pool has a fork server in its owner's pymp folder (shared): when that
    worker exits, its fork server must not remove the folder, which holds the owner's fork server socket."""
    (tmp / "nested.py").write_text(_NESTED)
    proc = _python("""
        import time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing.util import get_temp_dir
        from pathlib import Path
        from lineguard import workers
        import nested
        ctx = workers.mp_context("nested")
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=workers.init_worker) as ex:
            assert ex.submit(nested.inner).result() == 2
        time.sleep(1)  # the worker is gone, and so is its fork server
        assert Path(get_temp_dir()).is_dir()
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=workers.init_worker) as ex:  # same fork server
            assert ex.submit(abs, -3).result() == 3
        """, tmp, tmp_path / "err.log")
    assert proc.wait(60) == 0, (tmp_path / "err.log").read_text()
    assert _wait(lambda: not _session(proc.pid) and not _pymp(tmp), 10), (_session(proc.pid), _pymp(tmp))


def test_init_worker_in_the_main_process_changes_nothing() -> None:
    """Outside a fork-server child (here: pytest itself) there is no alive pipe to hand back."""
    import multiprocessing.forkserver as fs

    before = fs._forkserver._forkserver_alive_fd
    workers.release_fork_server()
    assert fs._forkserver._forkserver_alive_fd == before
    with ProcessPoolExecutor(1, mp_context=workers.mp_context("lineguard.files"),
                             initializer=workers.init_worker) as ex:
        assert ex.submit(abs, -3).result() == 3
        assert ex.submit(get_temp_dir).result() == get_temp_dir()  # the first worker too uses this one's folder
    assert fs._forkserver._forkserver_alive_fd is not None  # this process still owns its fork server


def test_run_chunks_in_this_process_runs_in_order() -> None:
    calls = []

    def fn(job: str, k: int) -> str:
        calls.append(k)
        return f"{job}{k}"

    assert list(workers.run_chunks(fn, "c", [3, 1, 2], workers=1)) == ["c3", "c1", "c2"]
    assert list(workers.run_chunks(fn, "c", [5], workers=4)) == ["c5"]  # one chunk: no pool
    assert calls == [3, 1, 2, 5]


_CHUNKS = """
import os

import cv2


def square(job, k):
    if k == job["fail"]:
        raise ValueError(f"chunk {k} failed")
    return k, k * k + job["offset"], os.getpid(), os.environ.get("OMP_NUM_THREADS"), cv2.getNumThreads()
"""


def test_run_chunks_over_a_pool(tmp: Path, tmp_path: Path) -> None:
    """Every chunk once, whichever process did it; workers get the job once and one thread per library; an error
    in a chunk reaches the caller; closing the iterator early leaves no process behind."""
    (tmp / "chunky.py").write_text(_CHUNKS)
    proc = _python("""
        import os
        from lineguard.workers import run_chunks
        import chunky
        job = {"offset": 7, "fail": -1}
        rows = list(run_chunks(chunky.square, job, range(40), workers=2))
        assert sorted(r[:2] for r in rows) == [(k, k * k + 7) for k in range(40)], rows
        in_workers = [r for r in rows if r[2] != os.getpid()]
        assert in_workers and all(r[3:] == ("1", 1) for r in in_workers), rows
        try:
            list(run_chunks(chunky.square, {"offset": 0, "fail": 13}, range(40), workers=2))
            raise AssertionError("no error")
        except ValueError as e:
            assert str(e) == "chunk 13 failed"
        it = run_chunks(chunky.square, job, range(400), workers=2)
        next(it)
        it.close()
        print("done", flush=True)
        """, tmp, tmp_path / "err.log")
    assert proc.wait(60) == 0, (tmp_path / "err.log").read_text()
    assert proc.stdout is not None and proc.stdout.read() == b"done\n"
    assert _wait(lambda: not _session(proc.pid), 10), _session(proc.pid)


@pytest.mark.slow
def test_a_killed_data_simulate_leaves_no_process_and_no_temp_folder(tmp: Path, tmp_path: Path) -> None:
    """Case 17: `data simulate` SIGKILLed while its workers render."""
    out = tmp_path / "ds"
    env = dict(os.environ, TMPDIR=str(tmp))
    cmd = [sys.executable, "-m", "lineguard", "data", "simulate", "--n", "400", "--workers", "2", "--out", str(out),
           "--quiet"]
    with (tmp_path / "err.log").open("wb") as err:
        proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                cwd=str(tmp_path))
    try:
        # The workers render from the front (the main process from the back while they start): image 0 is a
        # worker's, so a worker ran its initializer; 5 processes: the run, tracker, fork server, 2 workers.
        first = out / "images" / "sim-000000.png"
        assert _wait(lambda: proc.poll() is not None or (first.exists() and len(_session(proc.pid)) >= 5), 60)
        assert proc.poll() is None, "the run ended before it could be killed"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    _kill_and_check(proc, tmp)
    assert len(list((out / "images").iterdir())) < 400


@pytest.mark.slow
def test_a_killed_training_process_leaves_no_data_loader_worker(tmp: Path, tmp_path: Path) -> None:
    """DataLoader workers from a fork server: torch's own watchdog watches their parent, the fork server."""
    proc = _python("""
        import time, torch
        from torch.utils.data import TensorDataset
        from lineguard.training.dataset import data_loader
        batches = iter(data_loader(TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=2))
        next(batches), next(batches)
        print("ready", flush=True)
        time.sleep(60)
        """, tmp, tmp_path / "err.log")
    _ready(proc, tmp_path / "err.log")
    assert len(_session(proc.pid)) == 5, _session(proc.pid)
    _kill_and_check(proc, tmp)
