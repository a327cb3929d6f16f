"""Image and mask files: strict decoding (truncated files are errors), bit-depth scaling, hashing, writing.

Every stage reads pixels through :func:`read_image` / :func:`decode_image` (and a camera's arrays through
:func:`to_uint8`), so one rule holds everywhere (data/README.md, "Pixels"):

* 8-bit gray stays ``HxW`` uint8, colour becomes ``HxWx3`` RGB (alpha dropped; CMYK, palette, YCbCr to RGB).
* More than 8 bits per sample (Mono10/12/16 cameras, 16-bit PNG or TIFF) is *scaled* by the file's bit
  depth ``b``: ``v8 = round(v * 255 / (2**b - 1))``; ``b`` is the significant bits the file declares (PNG
  ``sBIT``, TIFF ``BitsPerSample``), else the container's 16. A value above ``2**b - 1`` is an error.
* Float images must hold finite values in 0..1 (scaled by 255); 32-bit integer images are refused.
* Images over ``max_pixels`` (default :data:`MAX_PIXELS`, 50 MP) are refused before they are decoded.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import LineguardError
from ..files import FileError, atomic_write, read_regular

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_THRESHOLD",
    "MAX_PIXELS",
    "MIN_SIDE",
    "ImageFileError",
    "binarize_mask",
    "decode_image",
    "read_image",
    "read_mask",
    "resize",
    "resize_mask",
    "sha256_bytes",
    "to_uint8",
    "write_png",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_THRESHOLD = 128  # mask pixels >= this are defect
MAX_PIXELS = 50_000_000  # generous for line cameras (a 45 MP sensor fits); larger is refused, not decoded
MAX_FILE_BYTES = 512 << 20  # an image file larger than this is refused unread
MIN_SIDE = 16  # images smaller than this on a side are kept with a warning (the models' minimum input)
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageFileError(LineguardError):
    """An image or mask file that cannot be used; ``str()`` gives the reason without the path."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png_significant_bits(data: bytes) -> Optional[int]:
    """The PNG ``sBIT`` chunk's bits for a gray image (None when absent); chunks before IDAT only."""
    if not data.startswith(_PNG_MAGIC):
        return None
    pos = len(_PNG_MAGIC)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"sBIT" and length >= 1:
            return data[pos + 8]
        if kind == b"IDAT":
            return None
        pos += 12 + length
    return None


def _declared_bits(im: Image.Image, data: bytes) -> Optional[int]:
    if im.format == "PNG":
        return _png_significant_bits(data)
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        return int(bits) if isinstance(bits, int) else None
    return None


def to_uint8(pixels: np.ndarray, bits: Optional[int] = None) -> np.ndarray:
    """8-bit pixels from a camera or file array by the module's rule: uint8 as is; unsigned integers of
    ``bits`` significant bits (default: the dtype's) scaled by ``255 / (2**bits - 1)``; floats in 0..1
    scaled by 255. Anything else (values above the bit depth, floats outside 0..1, NaN) is an error."""
    a = np.asarray(pixels)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageFileError("float image with NaN or infinite values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise ImageFileError(f"float image with values {lo:.4g}..{hi:.4g}; lineguard reads floats in 0..1")
        return np.rint(a * 255.0).astype(np.uint8)
    if a.dtype.kind == "i" and a.size and int(a.min()) < 0:
        raise ImageFileError("integer image with negative values")
    if a.dtype.kind not in "ui":
        raise ImageFileError(f"pixels of type {a.dtype} are not an image")
    depth = bits or (16 if a.dtype.itemsize <= 2 else 8 * a.dtype.itemsize)
    if not 1 <= depth <= 16:
        raise ImageFileError(f"{depth}-bit integer pixels; lineguard reads up to 16 bits per sample")
    top = (1 << depth) - 1
    if a.size and int(a.max()) > top:
        raise ImageFileError(f"pixel value {int(a.max())} is above the {depth}-bit range the file declares")
    wide = a.astype(np.uint32)
    return ((wide * 255 + top // 2) // top).astype(np.uint8)


def _pixels(im: Image.Image, data: bytes) -> np.ndarray:
    if im.mode in ("L", "RGB"):
        return np.asarray(im)
    if im.mode in _HIGH_DEPTH:
        arr = np.asarray(im)
        if im.mode == "I":  # 32-bit signed: only a 16-bit file opened that way can be read
            bits = _declared_bits(im, data)
            if bits is None or bits > 16:
                raise ImageFileError("32-bit integer image; convert it to 8 or 16 bits per sample")
            return to_uint8(arr.astype(np.int64), bits)
        return to_uint8(arr.astype(np.uint16), _declared_bits(im, data))
    if im.mode == "F":
        return to_uint8(np.asarray(im, dtype=np.float32))
    if im.mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"))
    if im.mode in ("P", "PA"):
        rgb = np.asarray(im.convert("RGB"))
        gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return np.ascontiguousarray(rgb[..., 0]) if gray else rgb
    return np.asarray(im.convert("RGB"))


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode fully (a truncated file raises) by the module's rule: HxW or HxWx3 uint8."""
    if not data:
        raise ImageFileError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap applies
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageFileError(f"{w}x{h} pixels, more than the {max_pixels / 1e6:g} MP allowed "
                                         f"(--max-pixels)")
                if w < 1 or h < 1:
                    raise ImageFileError("image has no pixels")
                im.load()
                arr = _pixels(im, data)
    except UnidentifiedImageError:
        raise ImageFileError("not an image file (cannot identify the format)") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit (179 MP) holds whatever max_pixels says
        raise ImageFileError(f"decompression bomb, more than the {max_pixels / 1e6:g} MP allowed ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as e:  # truncated/corrupt data
        if isinstance(e, ImageFileError):
            raise
        raise ImageFileError(f"corrupt or truncated image ({e})") from None
    if arr.size == 0:
        raise ImageFileError("image has no pixels")
    return arr


def read_image(path: Union[str, Path], max_pixels: int = MAX_PIXELS) -> Tuple[np.ndarray, str]:
    """Read the regular file ``path`` strictly; returns the pixels and the file's sha256."""
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except FileError as e:
        raise ImageFileError(e.reason) from None
    return decode_image(data, max_pixels=max_pixels), sha256_bytes(data)


def resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (H, W): area interpolation where both sides shrink, linear otherwise (the one
    resampling rule of every stage; masks are resized with it too, then binarised by the caller)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] >= h and image.shape[1] >= w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A binary mask (bool, 0/1 or 0/255; H x W) at ``size`` (H, W), following its image pixel for pixel: the
    image's resize rule (:func:`resize`) on 0/255, then >= 128. Returns bool."""
    m = np.where(mask > 0, np.uint8(255), np.uint8(0)) if mask.dtype != np.uint8 or mask.max() <= 1 else mask
    return resize(m, size) >= 128


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A boolean defect map from a mask array (gray or colour)."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask >= MASK_THRESHOLD


def read_mask(path: Union[str, Path]) -> np.ndarray:
    """A mask file as a boolean HxW array."""
    arr, _ = read_image(path)
    return binarize_mask(arr)


def write_png(path: Union[str, Path], array: np.ndarray, durable: bool = True) -> bytes:
    """Write a gray or RGB uint8 array as PNG atomically (``durable``: see ``files.atomic_path``); returns
    the bytes."""
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", bgr)  # OpenCV's default (fast) mode: 2x faster than level 1 here
    if not ok:
        raise ImageFileError(f"cannot encode {path} as PNG")
    data = buf.tobytes()
    atomic_write(path, data, durable)
    return data
