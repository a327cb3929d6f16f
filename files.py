"""Safe file plumbing every layer uses (torch-free, Python 3.8): atomic writes, hashing, bounded reads.

    atomic_write("out/metrics.json", json.dumps(m))          # text or bytes
    with atomic_path("out/model.onnx") as tmp:               # for writers that take a path
        onnx.save(graph, str(tmp))
    data = read_regular("manifest image", path, max_bytes=MAX_FILE_BYTES)

An atomic write puts a temporary file in the target's folder, fsyncs it, renames it over the target and
fsyncs the folder: a kill or a full disk leaves the old file or the new one, never half of either, and
no temporary file behind (it is removed on every error path). New files get the ordinary permissions
(``0o666`` less the umask), like every other file of the folder.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from . import LineguardError

__all__ = ["MAX_FILE_BYTES", "FileError", "atomic_path", "atomic_write", "fsync_dir", "inside", "printable",
           "read_regular", "replace_folder", "resolved", "sha256_file", "sync_all", "utf8_text"]

PathLike = Union[str, "os.PathLike[str]"]
MAX_FILE_BYTES = 1 << 30  # no single image, mask or label file a lineguard stage reads is larger (1 GiB)
TMP_SUFFIX = ".tmp"


class FileError(LineguardError):
    """A file that cannot be read or written safely; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(folder: PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` atomically, on an error
    it is removed and ``path`` is unchanged. ``durable``: fsync the file before and the folder after the
    rename (2-3 ms a file here); bulk writers of many images pass False and call :func:`sync_all` once
    before they write the record that commits them (a manifest, a part file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    tmp = Path(name)
    try:
        os.fchmod(fd, _FILE_MODE)
        os.close(fd)
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # writers that replace the file (safetensors: 0o600) get the folder's mode too
        if durable:
            with open(tmp, "rb+") as f:  # the writer may have closed (or replaced) the file: sync what is there
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: PathLike, data: Union[str, bytes], durable: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_path`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, durable) as tmp, open(tmp, "wb") as f:
        f.write(payload)


def sync_all(folder: PathLike) -> None:
    """Flush every file written on ``folder``'s file system to disk in one call (Linux ``syncfs``; ``sync``
    elsewhere): the commit point of a bulk writer (see ``durable``)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        fd = -1
    try:
        if fd >= 0 and sys.platform.startswith("linux") and ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    finally:
        if fd >= 0:
            os.close(fd)
    if hasattr(os, "sync"):
        os.sync()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_regular(path: PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; a device, FIFO, folder or larger file is a
    :class:`FileError` (opened non-blocking, so a FIFO never hangs the reader)."""
    path = Path(path)
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise FileError(path, f"cannot read file ({e.strerror or e})") from None
    except ValueError:  # a NUL byte in the name
        raise FileError(printable(str(path)), "the file name holds a NUL byte") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(path, "not a regular file (a device, FIFO or folder)")
        if st.st_size > max_bytes:
            raise FileError(path, f"{st.st_size} bytes, more than the {max_bytes} a file may have here")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(max_bytes + 1)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise FileError(path, "is a folder, not a file") from None
        raise FileError(path, f"cannot read file ({e.strerror or e})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise FileError(path, f"grew past {max_bytes} bytes while being read")
    return data


def utf8_text(text: str) -> str:
    """``text`` storable as UTF-8: bytes of a file name that are not UTF-8 (surrogate escapes) become ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """``text`` as one printable line: :func:`utf8_text`, and control characters (new lines, tabs, ...) as
    escapes, so a file name in an error line can be found exactly as shown."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in utf8_text(text))


_UNRESOLVABLE = (ValueError, OSError, RuntimeError)  # a NUL byte, a name too long, a symlink loop


def resolved(path: PathLike) -> Path:
    """``path`` with symlinks resolved, or as written where its name cannot be resolved (the reader of the
    file rejects it then)."""
    try:
        return Path(path).resolve()
    except _UNRESOLVABLE:
        return Path(path)


def inside(path: PathLike, root: PathLike) -> bool:
    """Whether ``path`` (symlinks resolved) lies in the folder ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except _UNRESOLVABLE:  # outside (ValueError), or a name that cannot be resolved
        return False
    return True


def replace_folder(new: PathLike, target: PathLike) -> None:
    """Put the finished folder ``new`` at ``target`` (which may hold an older version) and remove the old one.

    Linux swaps the two in one step (``renameat2(RENAME_EXCHANGE)``), so ``target`` always holds a whole
    version; elsewhere the old folder is renamed aside first (a kill between the two renames leaves it
    there, next to ``target``, under a ``.old-`` name)."""
    new, target = Path(new), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(new, target)
    elif not _exchange(new, target):
        aside = Path(tempfile.mkdtemp(dir=str(target.parent), prefix=f".{target.name}.old-"))
        os.replace(target, aside / target.name)
        os.replace(new, target)
        new = aside
    fsync_dir(target.parent)
    shutil.rmtree(new, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2; False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or file system without exchange
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True
