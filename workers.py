"""Worker-pool plumbing (torch-free, Python 3.8): worker processes that die with the process that owns them,
and the one chunked pool of every writer whose item ``i`` is a function of (seed, i) (:func:`run_chunks`).

    for rows in run_chunks(render_chunk, job, range(n_chunks), workers=2): ...   # render_chunk(job, k)
    ex = ProcessPoolExecutor(2, mp_context=mp_context(__name__), initializer=init_worker)
    DataLoader(..., multiprocessing_context=mp_context(__name__), worker_init_fn=lambda _: init_worker())

Workers come from a fork server (fresh processes that have imported ``preload_module`` once, without the
parent's threads), else from spawn. A SIGKILLed owner runs no clean-up, so on Linux the kernel does it:

* the fork server exits when the read end of its "alive" pipe sees EOF, i.e. when every holder of the write
  end is gone. Its children (the workers) inherit a copy: :func:`init_worker` closes it
  (:func:`release_fork_server`), so the fork server exits as soon as the owner dies;
* each worker asks for a SIGKILL when its parent, the fork server, exits (:func:`die_with_parent`);
* the resource tracker exits when the last holder of its pipe (the owner, the workers) is gone;
* the owner's ``pymp-*`` temporary folder (the fork server's socket is in it), which it removes only at a
  clean exit, is removed by the fork server when it exits after its parent (this module is the first of
  its preload modules: imported there, it registers that clean-up), if that parent owns the folder (a
  child process may share its parent's: see :data:`TEMP_OWNER_ENV`). Workers use it as theirs
  (:func:`share_temp_dir`).

Where prctl is missing (not Linux), each worker watches its owner's sentinel in a thread instead.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

__all__ = ["die_with_parent", "init_chunk_worker", "init_worker", "keep_freed_memory", "mp_context", "one_thread",
           "release_fork_server", "run_chunks", "share_temp_dir", "watch_parent"]

J = TypeVar("J")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_EXIT_WAIT_S = 2.0  # how long the fork server waits, at its exit, to see its parent gone
TEMP_OWNER_ENV = "LINEGUARD_MP_TEMP_OWNER"  # pid of a process whose fork server removes its pymp-* folder


def mp_context(preload_module: str) -> multiprocessing.context.BaseContext:
    """The start method for worker processes: a fork server that has imported this module (for the clean-up
    above) and ``preload_module`` (its forks start at once, without the parent's threads: a fork of a process
    whose OpenCV threads ran can deadlock), else spawn. The first pool of a process fixes the preload list."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, preload_module])
        # A child process can share its parent's folder (multiprocessing passes it on): then its fork server
        # must leave it. A fork server that this process starts sees this variable (its environment).
        if multiprocessing.parent_process() is None or multiprocessing.current_process()._config.get("tempdir") is None:
            os.environ[TEMP_OWNER_ENV] = str(os.getpid())
        return ctx
    return multiprocessing.get_context("spawn")


def init_worker() -> None:
    """Call first in every worker (a pool's ``initializer``, a DataLoader's ``worker_init_fn``): the worker,
    and the fork server that started it, then die with the pool's owner, even when it is SIGKILLed."""
    if not die_with_parent():
        watch_parent()
    share_temp_dir()
    release_fork_server()  # after die_with_parent: the fork server can exit from now on


def die_with_parent() -> bool:
    """Have the kernel SIGKILL this process when its parent exits (Linux ``PR_SET_PDEATHSIG``); False where
    that is not available. The "parent" is the thread that forked this process: a fork server (single
    threaded) is the right one; a process spawned by a thread that ends before it would be killed then."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the call: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def _fork_server() -> Optional[Any]:
    """The fork server handle of this process if it is a child of a fork server, else None (no fork server,
    or this process started it: it then owns the alive pipe)."""
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    if getattr(server, "_forkserver_alive_fd", None) is None or getattr(server, "_forkserver_pid", None) is not None:
        return None
    return server


def _owner_temp_dir(server: Any) -> Optional[str]:
    """The ``pymp-*`` folder of the process that started fork server ``server``: its socket is in it."""
    address = getattr(server, "_forkserver_address", None)
    if not isinstance(address, str) or not os.path.isabs(address):
        return None  # not started, or an abstract socket: no folder
    folder = os.path.dirname(address)
    return folder if os.path.basename(folder).startswith("pymp-") else None


def release_fork_server() -> bool:
    """In a child of a fork server: close this process's copy of the server's "alive" pipe (children only
    inherit it), so that the server exits when the process that started it dies. True if one was closed."""
    server = _fork_server()
    if server is None:
        return False
    fd = server._forkserver_alive_fd
    server._forkserver_alive_fd = None
    with contextlib.suppress(OSError):
        os.close(fd)
    return True


def share_temp_dir() -> bool:
    """In a child of a fork server: use the ``pymp-*`` folder of the process that started the server as this
    process's multiprocessing temporary folder, as every child but the first already does (its copy of the
    parent's settings names it). A worker needs one only for sockets (to pass file descriptors on, as
    DataLoader workers do); one of its own would outlive a SIGKILL, the shared one the server removes. The
    socket paths stay as short as the server's own (a nested folder could pass the 107-byte limit). True if
    set."""
    server = _fork_server()
    folder = _owner_temp_dir(server) if server is not None else None
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    if folder is None or config.get("tempdir") is not None or not os.path.isdir(folder):
        return False
    config["tempdir"] = folder
    return True


def watch_parent() -> bool:
    """Exit this process (a multiprocessing child) when its multiprocessing parent dies: a daemon thread
    waits on the parent's sentinel. The fallback of :func:`die_with_parent`; False outside such a child."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="lineguard-watch-parent", daemon=True).start()
    return True


def keep_freed_memory() -> None:
    """Keep freed memory in the heap (glibc only; a no-op elsewhere). Code that makes many short-lived arrays
    of a few 100 kB (rendering) otherwise gets fresh mmaps for them (or heap trims after them), each costing
    page faults. Only for worker processes: the heap stays at its peak."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def one_thread() -> None:
    """One process per core: OpenMP (for libraries imported from now on), and OpenCV and torch where already
    imported, use one thread each; their own pools would only compete with the other workers."""
    os.environ["OMP_NUM_THREADS"] = "1"
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# chunked work


_JOB: Any = None  # in a worker of run_chunks: the job it was started with


def init_chunk_worker(job: Any) -> None:
    """The initializer of :func:`run_chunks`' workers: :func:`init_worker`, :func:`one_thread`,
    :func:`keep_freed_memory` (a writer makes many short-lived arrays), and keep ``job`` for the chunks."""
    global _JOB
    init_worker()  # the workers (and their fork server) die with this process, even SIGKILLed
    one_thread()
    keep_freed_memory()
    _JOB = job


def _run_chunk(fn: Callable[[Any, int], R], k: int) -> R:
    return fn(_JOB, k)


def run_chunks(fn: Callable[[J, int], R], job: J, chunks: Sequence[int], workers: int) -> Iterator[R]:
    """``fn(job, k)`` for every chunk index ``k`` of ``chunks``, yielded in the order they finish.

    For writers whose item ``i`` depends only on (seed, i): which process renders a chunk, and when, changes
    nothing. ``fn`` writes its chunk's files (and, for a resumable writer, the record that commits them) and
    returns what the caller collects. One worker or one chunk: in this process, in order. Else a pool of
    ``workers`` processes (:func:`mp_context` preloading ``fn``'s module, :func:`init_chunk_worker`), each sent
    ``job`` once; ``fn`` must be a module-level function and ``job`` picklable. Starting a worker costs ~0.5 s
    (imports): meanwhile this process takes chunks from the back of the queue itself, until a worker's first
    result is in. An error in a chunk is raised here; closing the iterator cancels the chunks not started."""
    if workers <= 1 or len(chunks) <= 1:
        for k in chunks:
            yield fn(job, k)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp_context(fn.__module__),
                             initializer=init_chunk_worker, initargs=(job,)) as ex:
        futs = [ex.submit(_run_chunk, fn, k) for k in chunks]
        try:
            for f, k in zip(reversed(futs), reversed(chunks)):
                if any(x.done() and not x.cancelled() for x in futs) or not f.cancel():
                    break
                yield fn(job, k)
            for f in as_completed(futs):
                if not f.cancelled():
                    yield f.result()
        finally:
            for f in futs:
                f.cancel()


# --------------------------------------------------------------------------------------------------
# in the fork server


def _imported_by_fork_server() -> bool:
    """True while ``multiprocessing.forkserver.main`` imports this module (a preload module)."""
    code = getattr(getattr(sys.modules.get("multiprocessing.forkserver"), "main", None), "__code__", None)
    frame = sys._getframe() if code is not None else None
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _remove_parent_temp_dir(server_pid: int, parent: int) -> None:
    """At the fork server's exit: once its parent is gone (killed, or exiting), remove the parent's
    multiprocessing temporary folder, the one that holds the server's socket. A parent still alive after
    :data:`PARENT_EXIT_WAIT_S` (the server failed) keeps it: it may start a new server there."""
    if os.getpid() != server_pid:
        return  # a child of the server (they leave with os._exit, so this is only a safeguard)
    folder = _owner_temp_dir(getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None))
    if folder is None:
        return
    end = time.monotonic() + PARENT_EXIT_WAIT_S
    while os.getppid() == parent:  # the alive pipe closes a little before the parent is gone
        if time.monotonic() > end:
            return
        time.sleep(0.01)
    shutil.rmtree(folder, ignore_errors=True)


if _imported_by_fork_server() and os.environ.get(TEMP_OWNER_ENV) == str(os.getppid()):
    atexit.register(_remove_parent_temp_dir, os.getpid(), os.getppid())
