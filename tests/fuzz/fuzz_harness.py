"""The fuzz suite's machinery: case table types, the in-process / isolated runner, the per-case checks, and
generators for bad files (images, masks, PNG/TIFF/BMP headers, bombs) and small source layouts.

A case is ``Case(id, category, build)``; ``build(ctx)`` writes its input under ``ctx.root`` (a fresh
folder) and returns a :class:`Setup`: the argv of ``lineguard``, the exit codes it may end with and
what each must show (``expect``), and the strings that name the offending file (``names``).

Every case is checked for: no exception escaping ``lineguard.cli.main`` (that is a traceback), no
"Traceback" in the output, an exit code of ``expect``, and for that code

* ``error``:   exactly one stderr line, starting with ``error:``, naming the file (one of ``names``);
* ``reject``:  (``data import``, exit 0) the file is named in ``rejects.jsonl`` or the report's warnings;
* ``import``:  (``data import``, exit 0) the file is in the manifest;
* ``account``: either of the two (never silently dropped);
* ``invalid``: (``data validate``, exit 1) the file is named among the reported errors;
* ``ok``:      nothing more.

and, whatever the code, that nothing under ``ctx.root`` changed except the output folder (``out``, when
it is new or the command succeeded; an output folder that existed must be unchanged after a failure),
that no ``*.tmp`` / ``*.partial`` file was left, and that nothing named in ``forbid`` got into a manifest.
Cases run in-process (``main(argv)`` under capsys, in ``ctx.root`` as the working folder, with an alarm);
``isolate=True`` ones (FIFOs, ``/dev/zero``, memory bombs) run ``python -m lineguard`` in a subprocess with
an address-space limit and a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import resource
import signal
import stat
import struct
import subprocess
import sys
import traceback
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

import lineguard

PKG_DIR = Path(lineguard.__file__).resolve().parent
INPROCESS_TIMEOUT = 90.0
ISOLATED_TIMEOUT = 8.0  # python -m lineguard data ...: under a second when nothing hangs
ISOLATED_TORCH_TIMEOUT = 40.0
ISOLATED_MEMORY = 3 << 30
ISOLATED_TORCH_MEMORY = 6 << 30
LEFTOVER_SUFFIXES = (".tmp", ".partial")
IMG = 48  # side of the small images every layout uses


# --------------------------------------------------------------------------- case table types

@dataclass
class Setup:
    argv: List[str]
    expect: Dict[int, str]  # exit code -> error | reject | import | account | invalid | ok
    names: Sequence[str]  # any one of these names the offending file (or the folder holding it)
    out: Optional[Path] = None  # the command's output folder (data set, model folder)
    forbid: Sequence[str] = ()  # must not appear in the written manifest (files outside the source)
    isolate: bool = False
    torch: bool = False  # isolated with the larger memory limit and timeout
    timeout: float = INPROCESS_TIMEOUT  # in-process alarm (short where a FIFO could block)
    memory: Optional[int] = None  # in-process address-space headroom (bytes) for memory bombs
    allow: Sequence[str] = ()  # files in ``out`` a failing command may write (documented reports)


@dataclass
class Ctx:
    root: Path
    rng: np.random.Generator
    assets_factory: Callable[[], Any]

    @property
    def assets(self) -> Any:
        return self.assets_factory()


@dataclass
class Case:
    id: str
    category: str
    build: Callable[[Ctx], Setup]
    needs_assets: bool = False


@dataclass
class Outcome:
    code: Optional[int]
    stdout: str
    stderr: str
    exc: Optional[str] = None  # "Type: message" of an exception that escaped main()
    where: Optional[str] = None  # deepest lineguard frame of that exception: "data/imaging.py:decode_image"
    hang: bool = False
    signal: Optional[int] = None


@dataclass
class Verdict:
    failures: List[Tuple[str, str]] = field(default_factory=list)  # (kind, detail)

    def fail(self, kind: str, detail: str) -> None:
        self.failures.append((kind, detail))


# --------------------------------------------------------------------------- running

class CaseTimeout(BaseException):
    """Raised by the alarm in an in-process case that does not finish."""


def _lineguard_frame(tb: Sequence[traceback.FrameSummary]) -> Optional[str]:
    """``file:function`` of the deepest lineguard frame, and where the exception was raised if elsewhere."""
    where = None
    for fr in tb:
        try:
            rel = Path(fr.filename).resolve().relative_to(PKG_DIR)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in ("tests", ".venv"):
            continue
        where = f"{rel.as_posix()}:{fr.name}"
    if tb and where is not None:
        last = tb[-1]
        mod = Path(last.filename)
        raised = f"{mod.parent.name}/{mod.name}:{last.name}"
        if not where.endswith(f"{mod.name}:{last.name}"):
            where += f" (raised in {raised})"
    return where


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run_inprocess(argv: List[str], capsys: Any, timeout: float = INPROCESS_TIMEOUT, memory: Optional[int] = None
                  ) -> Outcome:
    """``main(argv)`` in this process; ``memory``: allocations past that much more address space fail
    (a bomb becomes a MemoryError instead of taking the machine)."""
    from lineguard.cli import main

    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    limits = resource.getrlimit(resource.RLIMIT_AS)
    if memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + memory, limits[1]))
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    code: Optional[int] = None
    exc = where = None
    hang = False
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except CaseTimeout:
        hang = True
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # anything else escaping main() is a traceback for the user
        exc = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        where = _lineguard_frame(traceback.extract_tb(e.__traceback__))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, limits)
    cap = capsys.readouterr()
    return Outcome(code, cap.out, cap.err, exc, where, hang)


_NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # glog lines torch prints at import


def run_isolated(argv: List[str], cwd: Path, torch: bool = False) -> Outcome:
    limit = ISOLATED_TORCH_MEMORY if torch else ISOLATED_MEMORY
    timeout = ISOLATED_TORCH_TIMEOUT if torch else ISOLATED_TIMEOUT

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}
    try:
        res = subprocess.run([sys.executable, "-m", "lineguard", *argv], cwd=str(cwd), capture_output=True,
                             timeout=timeout, preexec_fn=limits, env=env)
    except subprocess.TimeoutExpired as e:
        return Outcome(None, _text(e.stdout), _text(e.stderr), hang=True)
    out, err = _text(res.stdout), _text(res.stderr)
    err = "\n".join(line for line in err.splitlines() if not _NOISE.match(line))
    exc = where = None
    if "Traceback (most recent call last)" in err:
        tail = [line for line in err.splitlines() if line.strip()]
        exc = tail[-1][:300] if tail else "?"
        frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', err)
        tb = [traceback.FrameSummary(f, 0, n) for f, n in frames]
        where = _lineguard_frame(tb)
    if res.returncode < 0:
        return Outcome(None, out, err, exc, where, signal=-res.returncode)
    return Outcome(res.returncode, out, err, exc, where)


def _text(data: Optional[bytes]) -> str:
    return data.decode("utf-8", "replace") if data else ""


# --------------------------------------------------------------------------- tree snapshots

def snapshot(root: Path) -> Dict[str, tuple]:
    """Every entry under ``root`` (symlinks not followed): kind, mode, and sha256 or link target."""
    sig: Dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            rel = os.path.relpath(p, root)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                sig[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                sig[rel] = ("dir", mode)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                sig[rel] = ("file", mode, st.st_size, h.hexdigest())
            else:
                sig[rel] = ("special", stat.S_IFMT(st.st_mode), mode)
    return sig


def _under(rel: str, prefix: Optional[str]) -> bool:
    return prefix is not None and (prefix == "." or rel == prefix or rel.startswith(prefix + os.sep))


# --------------------------------------------------------------------------- checks

def _read_jsonl(path: Path) -> List[dict]:
    rows = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def spellings(name: str) -> List[str]:
    """``name`` as is and escaped (a message that stays one line writes a newline as ``\\n``)."""
    out = [name, name.encode("unicode_escape", "backslashreplace").decode("ascii"), repr(name)[1:-1],
           json.dumps(name)[1:-1], name.encode("utf-8", "backslashreplace").decode("utf-8")]
    with contextlib.suppress(UnicodeError):
        out.append(repr(os.fsencode(name))[2:-1])
    return list(dict.fromkeys(out))


def _named(text: str, names: Sequence[str]) -> bool:
    return any(s and s in text for n in names for s in spellings(n))


def _last_json(stdout: str) -> Optional[dict]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def check(setup: Setup, outcome: Outcome, before: Dict[str, tuple], after: Dict[str, tuple], root: Path,
          out_existed: bool) -> Verdict:
    v = Verdict()
    if outcome.hang:
        v.fail("hang", "did not finish in time (blocked on a FIFO / device, or a bomb)")
        return v
    if outcome.signal is not None:
        v.fail("crash", f"killed by signal {outcome.signal}")
    if outcome.exc is not None:
        v.fail("traceback", f"{outcome.exc} (at {outcome.where or 'outside lineguard'})")
    elif "Traceback (most recent call last)" in outcome.stdout + outcome.stderr:
        v.fail("traceback", "'Traceback' printed")
    code = outcome.code
    if outcome.exc is None and code is not None:
        if code not in setup.expect:
            v.fail("exit-code", f"exit {code}, expected {sorted(setup.expect)}")
        else:
            _check_code(setup, outcome, v)
    _check_tree(setup, code, before, after, root, out_existed, v)
    return v


def _check_code(setup: Setup, outcome: Outcome, v: Verdict) -> None:
    want = setup.expect[outcome.code]  # type: ignore[index]
    names = setup.names
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if want == "error":
        errors = [line for line in lines if line.startswith("error:")]
        if len(errors) != 1:
            v.fail("error-line", f"{len(errors)} lines start with 'error:' in stderr {outcome.stderr[-400:]!r}")
        elif len(lines) != 1:
            v.fail("error-line", f"the error is not one line: stderr has {len(lines)} lines: {outcome.stderr[-400:]!r}")
        if errors and not _named(errors[0], names):
            v.fail("not-named", f"error line {errors[0][:300]!r} names none of {list(names)}")
        return
    verb = setup.argv[:2]
    if want in ("reject", "import", "account") and verb == ["data", "import"]:
        out = setup.out
        assert out is not None
        try:
            rejects = _read_jsonl(out / "rejects.jsonl")
            manifest = _read_jsonl(out / "manifest.jsonl")
            report = json.loads((out / "import-report.json").read_text("utf-8", "replace"))
        except (OSError, ValueError) as e:
            v.fail("bad-output", f"exit 0 but the data set cannot be read back: {e}")
            return
        in_rejects = any(_named(f"{r.get('path')} {r.get('reason')}", names)
                         for r in [*rejects, *report.get("warnings", [])])
        in_manifest = any(_named(f"{r.get('id')} {r.get('image')} {r.get('mask')}", names) for r in manifest)
        ok = {"reject": in_rejects, "import": in_manifest, "account": in_rejects or in_manifest}[want]
        if not ok:
            where = {"reject": "rejects.jsonl / warnings", "import": "the manifest",
                     "account": "the manifest or rejects.jsonl"}[want]
            said = [f"{r.get('path')}: {r.get('reason')}" for r in [*rejects, *report.get("warnings", [])]
                    if _named(f"{r.get('path')} {r.get('reason')}", names)]
            v.fail("not-accounted", f"none of {list(names)} in {where} (manifest ids "
                   f"{[r.get('id') for r in manifest][:6]}; rejects/warnings naming it: {said[:2]}; "
                   f"{len(rejects)} rejects)")
        bad = [f for f in setup.forbid if any(f in json.dumps(r) for r in manifest)]
        if bad:
            v.fail("forbidden-import", f"{bad} imported from outside the source")
    elif want == "invalid":
        rep = _last_json(outcome.stdout) if "--json" in setup.argv else None
        if rep is not None:
            text = " ".join(f"{e.get('path')} {e.get('reason')}" for e in rep.get("errors", []))
        else:  # the human report: rich may wrap a long path
            text = outcome.stdout + " " + outcome.stdout.replace("\n", "")
        if not _named(text, names):
            v.fail("not-named", f"validate exit 1 but none of {list(names)} among the errors: {text[:300]!r}")


def _check_tree(setup: Setup, code: Optional[int], before: Dict[str, tuple], after: Dict[str, tuple], root: Path,
                out_existed: bool, v: Verdict) -> None:
    out_rel = os.path.relpath(setup.out, root) if setup.out is not None else None
    may_change = out_rel if (out_rel is not None and (not out_existed or code == 0)) else None
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    outside = [k for k in changed if not _under(k, may_change) and not _under(k, out_rel)]
    inside = [k for k in changed if _under(k, out_rel) and not _under(k, may_change)
              and os.path.basename(k) not in setup.allow]
    if outside:
        v.fail("tree-changed", f"changed outside the output folder: {outside[:5]}")
    if inside:
        v.fail("output-changed", f"the existing output {out_rel} changed though the command failed: {inside[:5]}")
    left = [k for k in after if k.endswith(LEFTOVER_SUFFIXES) and k not in before]
    if left:
        v.fail("tmp-left", f"temporary files left: {left[:5]}")


# --------------------------------------------------------------------------- file generators

def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(rng: np.random.Generator, h: int = IMG, w: int = IMG, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def good_png(rng: np.random.Generator, h: int = IMG, w: int = IMG, gray: bool = False) -> bytes:
    arr = noise(rng, h, w, 1 if gray else 3)
    return encode(Image.fromarray(arr), "PNG")


def good_jpeg(rng: np.random.Generator, h: int = IMG, w: int = IMG) -> bytes:
    return encode(Image.fromarray(noise(rng, h, w, 3)), "JPEG", quality=90)


def mask_array(h: int = IMG, w: int = IMG, value: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 2:] = value
    return m


def mask_png(h: int = IMG, w: int = IMG, empty: bool = False) -> bytes:
    return encode(Image.fromarray(mask_array(h, w, 0 if empty else 255)), "PNG")


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_raw(w: int, h: int, idat: bytes, depth: int = 8, color: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@lru_cache(maxsize=None)
def png_bomb(n: int) -> bytes:
    """An n x n all-zero gray PNG: a few hundred KB that decode to n*n bytes."""
    co = zlib.compressobj(9)
    rows = bytes(n + 1) * 64
    parts = [co.compress(rows) for _ in range(n // 64)]
    parts.append(co.compress(bytes(n + 1) * (n % 64)))
    parts.append(co.flush())
    return png_raw(n, n, b"".join(parts))


def tiff_header(w: int, h: int) -> bytes:
    """A little-endian uncompressed 8-bit gray TIFF claiming w x h, with 64 bytes of pixel data."""
    n_entries = 9
    data_off = 8 + 2 + 12 * n_entries + 4
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, data_off), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, 64)]
    ifd = struct.pack("<H", n_entries) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)


def bmp_header(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + bytes(64)


def _base(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gray content: noise for an image, a bright rectangle on black for a mask."""
    return noise(rng, h, w, 1) if kind == "image" else mask_array(h, w)


def _mode_image(mode: str, kind: str, rng: np.random.Generator, h: int = IMG, w: int = IMG) -> Image.Image:
    g = _base(kind, rng, h, w)
    if mode == "I;16":
        return Image.frombytes("I;16", (w, h), (g.astype("<u2") * 257).tobytes())
    if mode == "I":
        return Image.frombytes("I", (w, h), (g.astype("<i4") * 65793).tobytes())
    if mode == "F":
        return Image.frombytes("F", (w, h), g.astype("<f4").tobytes())
    if mode == "CMYK":  # ink: a mask's bright region is no ink (white after conversion)
        ink = 255 - g if kind == "mask" else g
        return Image.frombytes("CMYK", (w, h), np.repeat(ink[..., None], 4, axis=2).tobytes())
    if mode == "RGBA":
        rgb = np.repeat(g[..., None], 3, axis=2) if kind == "mask" else noise(rng, h, w, 3)
        alpha = np.full((h, w, 1), 200, np.uint8)
        return Image.frombytes("RGBA", (w, h), np.concatenate([rgb, alpha], axis=2).tobytes())
    if mode == "LA":
        return Image.frombytes("LA", (w, h), np.stack([g, np.full_like(g, 255)], axis=2).tobytes())
    if mode == "P":
        rgb = np.repeat(g[..., None], 3, axis=2) if kind == "mask" else noise(rng, h, w, 3)
        return Image.frombytes("RGB", (w, h), rgb.tobytes()).convert("P")
    if mode == "1":
        return Image.fromarray(np.where(g >= 128, 255, 0).astype(np.uint8)).convert("1")
    raise ValueError(mode)


def noisy_mask(rng: np.random.Generator) -> np.ndarray:
    """A mask that does not compress to a few bytes (so a cut at 90% loses pixels): speckle in the rectangle."""
    return mask_array() * (rng.random((IMG, IMG)) < 0.7)


def _png_of(kind: str, rng: np.random.Generator) -> bytes:
    return good_png(rng) if kind == "image" else encode(Image.fromarray(noisy_mask(rng).astype(np.uint8)), "PNG")


def _jpeg_of(kind: str, rng: np.random.Generator) -> bytes:
    arr = noise(rng, IMG, IMG, 3) if kind == "image" else np.repeat(noisy_mask(rng).astype(np.uint8)[..., None], 3,
                                                                    axis=2)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


def _float_nan(kind: str, rng: np.random.Generator) -> bytes:
    g = _base(kind, rng, IMG, IMG).astype("<f4")
    g[0, :8] = np.nan
    g[1, :8] = np.inf
    g[2, :8] = -np.inf
    return encode(Image.frombytes("F", (IMG, IMG), g.tobytes()), "TIFF")


def _ihdr_crc(kind: str, rng: np.random.Generator) -> bytes:
    data = bytearray(_png_of(kind, rng))
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


@dataclass(frozen=True)
class Mutation:
    """Bytes for an image or mask position. validity: bad (must be rejected), ok (must be imported),
    either (kept or rejected, both fine); ``mask`` overrides it for mask positions."""

    name: str
    make: Callable[[str, np.random.Generator], bytes]
    suffix: str
    validity: str
    mask: Optional[str] = None
    heavy: bool = False  # decodes to a big image: only a few positions

    def valid_for(self, kind: str) -> str:
        return self.mask if (kind == "mask" and self.mask is not None) else self.validity


def _cut(fn: Callable[[str, np.random.Generator], bytes], at: Callable[[int], int]
         ) -> Callable[[str, np.random.Generator], bytes]:
    def make(kind: str, rng: np.random.Generator) -> bytes:
        data = fn(kind, rng)
        return data[: at(len(data))]

    return make


def _const(data: bytes) -> Callable[[str, np.random.Generator], bytes]:
    return lambda kind, rng: data


def _mode(mode: str, fmt: str, **kw: Any) -> Callable[[str, np.random.Generator], bytes]:
    return lambda kind, rng: encode(_mode_image(mode, kind, rng), fmt, **kw)


MUTATIONS: Tuple[Mutation, ...] = (
    Mutation("zero_byte", _const(b""), ".png", "bad"),
    Mutation("trunc8_png", _cut(_png_of, lambda n: 8), ".png", "bad"),
    Mutation("trunc33_png", _cut(_png_of, lambda n: 33), ".png", "bad"),
    Mutation("trunc_half_png", _cut(_png_of, lambda n: n // 2), ".png", "bad"),
    Mutation("trunc90_png", _cut(_png_of, lambda n: n * 9 // 10), ".png", "bad"),
    Mutation("trunc_half_jpg", _cut(_jpeg_of, lambda n: n // 2), ".jpg", "bad"),
    Mutation("trunc90_jpg", _cut(_jpeg_of, lambda n: n * 9 // 10), ".jpg", "bad"),
    Mutation("random_bytes", lambda kind, rng: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), ".png", "bad"),
    Mutation("text", _const(b"this is not an image\n"), ".jpg", "bad"),
    Mutation("png_magic_garbage", lambda kind, rng: b"\x89PNG\r\n\x1a\n" + rng.bytes(2000), ".png", "bad"),
    Mutation("jpeg_magic_garbage", lambda kind, rng: b"\xff\xd8\xff\xe0" + rng.bytes(2000), ".jpg", "bad"),
    Mutation("ihdr_crc", _ihdr_crc, ".png", "bad"),
    Mutation("png_zero_width", _const(png_raw(0, IMG, zlib.compress(b""))), ".png", "bad"),
    Mutation("png_header_60000", _const(png_raw(60000, 60000, zlib.compress(bytes(64)))), ".png", "bad"),
    Mutation("tiff_header_100000", _const(tiff_header(100000, 100000)), ".tif", "bad"),
    Mutation("bmp_header_100000", _const(bmp_header(100000, 100000)), ".bmp", "bad"),
    Mutation("png_bomb_20000", lambda kind, rng: png_bomb(20000), ".png", "bad", heavy=True),
    Mutation("png_bomb_13000", lambda kind, rng: png_bomb(13000), ".png", "either", mask="bad", heavy=True),
    Mutation("png16", _mode("I;16", "PNG"), ".png", "ok"),
    Mutation("tiff_int32", _mode("I", "TIFF"), ".tif", "either"),  # 32-bit: imported or refused, both documented
    Mutation("tiff_float32", _mode("F", "TIFF"), ".tif", "either"),
    Mutation("tiff_float32_nan_inf", _float_nan, ".tif", "either"),
    Mutation("cmyk_jpg", _mode("CMYK", "JPEG", quality=95), ".jpg", "ok"),
    Mutation("rgba_png", _mode("RGBA", "PNG"), ".png", "ok"),
    Mutation("palette_png", _mode("P", "PNG"), ".png", "ok"),
    Mutation("la_png", _mode("LA", "PNG"), ".png", "ok"),
    Mutation("onebit_png", _mode("1", "PNG"), ".png", "ok"),
    Mutation("png_named_jpg", _png_of, ".jpg", "ok"),
    Mutation("bmp", lambda kind, rng: encode(Image.fromarray(_base(kind, rng, IMG, IMG)), "BMP"), ".bmp", "ok"),
    Mutation("webp_lossless", lambda kind, rng: encode(Image.fromarray(_base(kind, rng, IMG, IMG)), "WEBP",
                                                       lossless=True), ".webp", "ok"),
    Mutation("one_pixel", lambda kind, rng: encode(Image.fromarray(noise(rng, 1, 1, 3)), "PNG"), ".png", "ok",
             mask="bad"),
)


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) Pillow reads from ``data``'s header, None when it cannot."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:
        return None


def make_fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def symlink(path: Path, target: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(str(target), path)
    return path


# --------------------------------------------------------------------------- small source layouts

def voc_xml(filename: Optional[str], objects: Sequence[Tuple[str, Any, Any, Any, Any]]) -> str:
    from xml.sax.saxutils import escape

    objs = "".join(f"<object><name>{escape(n)}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    fn = f"<filename>{escape(filename)}</filename>" if filename is not None else ""
    return f"<annotation><folder>JPEGImages</folder>{fn}<size><width>{IMG}</width><height>{IMG}</height>" \
           f"<depth>3</depth></size>{objs}</annotation>"


def imagefolder_src(ctx: Ctx, others: bool = True) -> Path:
    src = ctx.root / "src"
    (src / "good").mkdir(parents=True, exist_ok=True)
    if others:
        for i in range(2):
            write(src / "good" / f"ok{i}.png", good_png(ctx.rng))
            write(src / "scratch" / f"s{i}.png", good_png(ctx.rng))
    return src


def magnetic_tile_src(ctx: Ctx, others: bool = True) -> Path:
    src = ctx.root / "src"
    (src / "MT_Free" / "Imgs").mkdir(parents=True, exist_ok=True)
    if others:
        for i in range(2):
            write(src / "MT_Free" / "Imgs" / f"f{i}.jpg", good_jpeg(ctx.rng))
            write(src / "MT_Free" / "Imgs" / f"f{i}.png", mask_png(empty=True))
            write(src / "MT_Crack" / "Imgs" / f"c{i}.jpg", good_jpeg(ctx.rng))
            write(src / "MT_Crack" / "Imgs" / f"c{i}.png", mask_png())
    return src


def mvtec_src(ctx: Ctx, others: bool = True) -> Path:
    src = ctx.root / "src"
    (src / "train" / "good").mkdir(parents=True, exist_ok=True)
    (src / "test").mkdir(parents=True, exist_ok=True)
    if others:
        for i in range(2):
            write(src / "train" / "good" / f"00{i}.png", good_png(ctx.rng))
        write(src / "test" / "good" / "000.png", good_png(ctx.rng))
        write(src / "test" / "crack" / "000.png", good_png(ctx.rng))
        write(src / "ground_truth" / "crack" / "000_mask.png", mask_png())
    return src


def voc_src(ctx: Ctx, others: bool = True) -> Path:
    src = ctx.root / "src"
    (src / "Annotations").mkdir(parents=True, exist_ok=True)
    (src / "JPEGImages").mkdir(parents=True, exist_ok=True)
    if others:
        write(src / "JPEGImages" / "a.jpg", good_jpeg(ctx.rng))
        write(src / "Annotations" / "a.xml", voc_xml("a.jpg", [("dent", 5, 5, 20, 20)]))
        write(src / "JPEGImages" / "ok.jpg", good_jpeg(ctx.rng))
        write(src / "Annotations" / "ok.xml", voc_xml("ok.jpg", []))
    return src


def yolo_src(ctx: Ctx, others: bool = True, yaml_text: str = "train: images/train\nnames: [scratch]\n") -> Path:
    src = ctx.root / "src"
    write(src / "data.yaml", yaml_text)
    (src / "images" / "train").mkdir(parents=True, exist_ok=True)
    (src / "labels" / "train").mkdir(parents=True, exist_ok=True)
    if others:
        write(src / "images" / "train" / "a.png", good_png(ctx.rng))
        write(src / "labels" / "train" / "a.txt", "0 0.5 0.5 0.25 0.25\n")
        write(src / "images" / "train" / "b.png", good_png(ctx.rng))
        write(src / "labels" / "train" / "b.txt", "")
    return src


LAYOUTS: Dict[str, Callable[..., Path]] = {
    "imagefolder": imagefolder_src, "magnetic-tile": magnetic_tile_src, "mvtec": mvtec_src, "voc": voc_src,
    "yolo": yolo_src,
}


def place_target(layout: str, ctx: Ctx, position: str, data: bytes, suffix: str, stem: str = "target"
                 ) -> Tuple[Path, Path]:
    """Put ``data`` at ``position`` (image | mask | alone) of a small ``layout`` source; (src, target file)."""
    src = LAYOUTS[layout](ctx, others=position != "alone")
    if layout == "imagefolder":
        target = write(src / ("good" if position == "alone" else "scratch") / f"{stem}{suffix}", data)
    elif layout == "magnetic-tile":
        if position == "mask":
            write(src / "MT_Crack" / "Imgs" / f"{stem}.jpg", good_jpeg(ctx.rng))
            target = write(src / "MT_Crack" / "Imgs" / f"{stem}.png", data)
        else:  # magnetic-tile reads Imgs/*.jpg only: the content decides the format
            target = write(src / "MT_Free" / "Imgs" / f"{stem}.jpg", data)
    elif layout == "mvtec":
        if position == "mask":
            write(src / "test" / "crack" / f"{stem}.png", good_png(ctx.rng))
            target = write(src / "ground_truth" / "crack" / f"{stem}_mask.png", data)
        elif position == "alone":
            target = write(src / "train" / "good" / f"{stem}{suffix}", data)
        else:
            target = write(src / "test" / "crack" / f"{stem}{suffix}", data)
    elif layout == "voc":
        target = write(src / "JPEGImages" / f"{stem}{suffix}", data)
        write(src / "Annotations" / f"{stem}.xml", voc_xml(f"{stem}{suffix}", [("scratch", 2, 2, 12, 12)]))
    elif layout == "yolo":
        target = write(src / "images" / "train" / f"{stem}{suffix}", data)
        write(src / "labels" / "train" / f"{stem}.txt", "0 0.5 0.5 0.5 0.5\n")
    else:
        raise ValueError(layout)
    return src, target


def import_argv(src: Path, out: Path, *extra: str, as_json: bool = True) -> List[str]:
    return ["data", "import", str(src), "--out", str(out), *extra, *(["--json"] if as_json else []), "-q"]


# --------------------------------------------------------------------------- a data set written by hand

CLASSES = ["dent", "scratch", "ok"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_dataset(root: Path, rng: np.random.Generator, n: int = 3, splits: Optional[Sequence[str]] = None,
                  gray: bool = True) -> List[dict]:
    """A valid lineguard data set at ``root`` (images/ and masks/ inside): records i0..i{n-1}, labels
    cycling dent, scratch, ok; the dent ones with a mask. Returns the records (write them with
    :func:`write_manifest` after changing them)."""
    write(root / "classes.yaml", f"format: lineguard-dataset\nversion: 1\nclasses: [{', '.join(CLASSES)}]\n"
                                 "ok_class: ok\n")
    records = []
    for i in range(n):
        data = good_png(rng, gray=gray)
        write(root / "images" / f"i{i}.png", data)
        label = CLASSES[i % 3]
        rec: Dict[str, Any] = {"id": f"i{i}", "image": f"images/i{i}.png", "label": label}
        if label == "dent":
            write(root / "masks" / f"m{i}.png", mask_png())
            rec["mask"] = f"masks/m{i}.png"
        if splits is not None:  # i0-i2 in the first split, i3-i5 in the next, ...: every split has every class
            rec["split"] = splits[(i // 3) % len(splits)]
        rec.update(source="real", origin={"kind": "importer", "name": "imagefolder", "version": "1"},
                   sha256=sha(data), width=IMG, height=IMG)
        records.append(rec)
    write_manifest(root, records)
    write(root / "rejects.jsonl", "")
    return records


def write_manifest(root: Path, records: Sequence[Any]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    write(root / "manifest.jsonl", "".join(line + "\n" for line in lines))


# --------------------------------------------------------------------------- one case, end to end

def execute(case: Case, root: Path, capsys: Any, monkeypatch: Any, log: List[Dict[str, Any]],
            assets_factory: Callable[[], Any]) -> None:
    """Build the case in ``root``, run it, check it, log it; ``pytest.fail`` with every problem found."""
    import pytest

    ctx = Ctx(root, np.random.default_rng(zlib.crc32(case.id.encode("utf-8", "surrogateescape"))), assets_factory)
    setup = case.build(ctx)
    out_existed = setup.out is not None and os.path.lexists(setup.out)
    before = snapshot(root)
    monkeypatch.chdir(root)  # a stray write to the working folder shows in the tree check
    capsys.readouterr()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        outcome = (run_isolated(setup.argv, root, torch=setup.torch) if setup.isolate
                   else run_inprocess(setup.argv, capsys, setup.timeout, setup.memory))
    finally:  # `bench --threads 1` sets torch's global thread count: later tests keep theirs
        torch = sys.modules.get("torch")
        if torch is not None and threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    after = snapshot(root)
    verdict = check(setup, outcome, before, after, root, out_existed)
    kinds = [k for k, _ in verdict.failures]
    cause = None
    if verdict.failures:
        verb = " ".join(a for a in setup.argv[:2] if not a.startswith("-") and "/" not in a)
        if "traceback" in kinds and outcome.exc:
            where = (outcome.where or "outside lineguard").split(" (raised")[0]
            cause = f"traceback in `{verb}`: {outcome.exc.split(':')[0]} at {where}"
        else:
            first = verdict.failures[0]
            detail = first[1].split(":")[0] if first[0] == "exit-code" else ""
            cause = f"{first[0]} in `{verb}`" + (f" ({detail})" if detail else "")
    log.append({"id": case.id, "category": case.category, "argv": setup.argv, "code": outcome.code,
                "failures": kinds, "details": [d for _, d in verdict.failures], "cause": cause,
                "exc": outcome.exc, "where": outcome.where})
    if verdict.failures:
        lines = [f"{k}: {d}" for k, d in verdict.failures]
        pytest.fail(f"lineguard {' '.join(map(repr, setup.argv))}\n  exit {outcome.code}, expected "
                    f"{setup.expect}\n  " + "\n  ".join(lines) + f"\n  stderr: {outcome.stderr[-600:]!r}",
                    pytrace=False)


# --------------------------------------------------------------------------- model assets (torch)

MODEL_ARCH = "cnn_lite0"  # the smallest registered network
MODEL_SIZE = 32


class Assets:
    """One tiny model folder (random weights), its model.onnx and a matching split data set, made once."""

    def __init__(self, root: Path) -> None:
        import torch
        import yaml

        from lineguard.data.format import ClassFile
        from lineguard.data.modelspec import ModelSpec
        from lineguard.data.preprocess import Preprocess
        from lineguard.edge.export import export
        from lineguard.training.model_dir import save_model_files
        from lineguard.training.models import create_model, model_config

        self.root = root
        self.model = root / "model"
        self.data = root / "data"
        torch.manual_seed(0)
        net = create_model(MODEL_ARCH, num_classes=len(CLASSES), in_chans=1, img_size=MODEL_SIZE).eval()
        spec = ModelSpec(arch=model_config(net), classes=CLASSES, ok_class="ok",
                         preprocess=Preprocess(size=(MODEL_SIZE, MODEL_SIZE), channels=1, mean=[0.5], std=[0.25]))
        save_model_files(self.model, net, spec, ClassFile(classes=CLASSES, ok_class="ok"))
        write_dataset(self.data, np.random.default_rng(1), n=9, splits=["train", "val", "test"])
        export(self.model, "onnx")
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.spec: Dict[str, Any] = yaml.safe_load((self.model / "model.yaml").read_text())
        self.weights = (self.model / "model.safetensors").read_bytes()
        self.onnx_bytes = (self.model / "model.onnx").read_bytes()
        self._onnx: Any = None

    # model folders copied into a case
    def model_dir(self, root: Path, onnx: bool = False, name: str = "model") -> Path:
        import shutil

        dst = root / name
        dst.mkdir(parents=True)
        for f in ("model.yaml", "model.safetensors", "classes.yaml"):
            shutil.copyfile(self.model / f, dst / f)
        if onnx:
            shutil.copyfile(self.model / "model.onnx", dst / "model.onnx")
        return dst

    def dataset(self, root: Path, name: str = "data") -> Path:
        import shutil

        shutil.copytree(self.data, root / name)
        return root / name

    # bad weights
    def weights_with(self, change: Callable[[Dict[str, Any]], Dict[str, Any]]) -> bytes:
        from safetensors.torch import save

        state = change({k: v.clone() for k, v in self.state.items()})
        return save(state, metadata={"format": "pt"})

    # bad ONNX files
    def onnx_model(self) -> Any:
        import onnx

        if self._onnx is None:
            self._onnx = onnx.load_from_string(self.onnx_bytes)
        return self._onnx

    def onnx_with(self, change: Callable[[Any], None]) -> bytes:
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(self.onnx_model())
        change(m)
        return m.SerializeToString()

    def spec_json(self) -> Dict[str, Any]:
        from lineguard.edge.runners.base import SPEC_KEY

        meta = {p.key: p.value for p in self.onnx_model().metadata_props}
        return json.loads(meta[SPEC_KEY])


def tiny_onnx(meta: Optional[Dict[str, str]] = None, input_name: str = "frames", uint8: bool = True,
              outputs: Sequence[str] = ("probs", "ng_score", "heatmap"), external: Optional[str] = None) -> bytes:
    """A valid ONNX file that lineguard did not export: Identity/Cast nodes over a (1, 32, 32, 1) input."""
    from onnx import TensorProto, helper

    elem = TensorProto.UINT8 if uint8 else TensorProto.FLOAT
    x = helper.make_tensor_value_info(input_name, elem, [1, MODEL_SIZE, MODEL_SIZE, 1])
    nodes, outs, inits = [], [], []
    for o in outputs:
        nodes.append(helper.make_node("Cast", [input_name], [o], to=TensorProto.FLOAT))
        outs.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, MODEL_SIZE, MODEL_SIZE, 1]))
    if external is not None:  # an initializer whose bytes live in an "external" file at that path
        t = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", external), ("offset", "0"), ("length", "16")):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        nodes.append(helper.make_node("Identity", ["w"], ["w_out"]))
        outs.append(helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [4]))
    graph = helper.make_graph(nodes, "foreign", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()
