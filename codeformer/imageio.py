"""Reading and writing pictures without losing anything.

- Paths are read and written as bytes (``np.fromfile``-style + ``cv2.imdecode`` / ``cv2.imencode``),
  never through ``cv2.imread`` on a path, so file names in any script work on every OS.
- JPEG EXIF orientation is applied, so sideways phone photos come out upright.
- 16-bit pictures stay 16-bit, alpha is kept apart, gray pictures are remembered as gray.
- Truncated or corrupt files raise :class:`CodeFormerError` instead of decoding to a half-gray image.
- Writes go to a temporary file in the destination folder, then ``os.replace``: a crash never leaves a
  half-written file under the final name, and an existing output is only ever replaced whole.

Hostile input (a picture file is untrusted data):

- Decompression bombs: the size is read from the file header (:func:`image_size`, no decoding) and
  checked against ``max_pixels`` before anything is decoded; Pillow's own header reading is checked
  again before Pillow decodes. For a file whose header only OpenCV understands (PNM, EXR, ...), the
  size is known only after decoding, which OpenCV bounds by its own limit of 2**30 pixels
  (``OPENCV_IO_MAX_IMAGE_PIXELS``); the decoded picture is then checked against ``max_pixels`` too.
- Pillow's process-wide limit (``Image.MAX_IMAGE_PIXELS``) does not decide, warn or stay changed:
  see :func:`_pillow_allows`.
- Any path problem (symlink loop, broken link, folder, named pipe, device, permission) is a one-line
  :class:`CodeFormerError`; only regular files are read, so ``/dev/zero`` or a FIFO never hangs a run.
- :func:`scan_folder` accounts for every entry of a folder: pictures, hidden entries, and the rest
  with the reason each is skipped. It never descends into sub-folders, so a looping link cannot
  make it run forever.

Big pictures: decoding takes the picture plus one copy (Pillow's), converted a band at a time; a
picture that would not fit in :func:`available_memory` (the system's, or its container's) is
refused with a :class:`MemoryLimitError` before it is decoded, and
:func:`codeformer.restoration.check_picture_memory` does the same for the whole restoration.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import logging
import os
import platform
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from codeformer._atomic import atomic_path
from codeformer.errors import CodeFormerError, OptionError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_JPEG_MAGIC = b"\xff\xd8\xff"
# EXIF tag 0x0112: how the stored pixels must be turned to display upright.
_EXIF_ORIENTATION_TAG = 0x0112
# The most pixels a picture may have unless the caller says otherwise. Above a 100-megapixel camera
# frame (11648x8736), so real photos and scans pass; a 16-bit colour picture this size is 900 MB
# decoded. A decompression bomb (a 30000x30000 PNG of 1 MB) is 900 megapixels.
DEFAULT_MAX_PIXELS = 150_000_000
# Bytes of a picture converted at a time (Pillow to BGR, 16 to 8 bits): converted whole, a big picture
# would take full-size temporaries (Pillow's byte chunks and their join; float32 samples).
_CONVERT_BAND_BYTES = 8 << 20


@dataclass(frozen=True)
class Picture:
    """A decoded picture, split into what the pipeline processes and what it must carry along."""

    bgr: np.ndarray  # (H, W, 3) uint8 or uint16, BGR, upright
    alpha: np.ndarray | None  # (H, W) same dtype as bgr, or None
    source_channels: int  # 1 (gray), 2 (gray + alpha), 3 (colour) or 4 (colour + alpha)

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def is_16bit(self) -> bool:
        return self.bgr.dtype == np.uint16

    def bgr8(self) -> np.ndarray:
        """The colour channels as uint8 (16-bit pictures rounded down to 8 bits for the networks)."""
        return to_uint8(self.bgr)

    def with_alpha(self, bgr: np.ndarray) -> np.ndarray:
        """``bgr`` (any size) with this picture's alpha resized onto it, as BGRA, or ``bgr`` if no alpha."""
        if self.alpha is None:
            return bgr
        alpha = self.alpha
        if alpha.shape[:2] != bgr.shape[:2]:
            alpha = cv2.resize(alpha, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
        alpha = alpha.astype(bgr.dtype) if bgr.dtype == alpha.dtype else _convert_depth(alpha, bgr.dtype)
        return np.dstack([bgr, alpha])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 copy (or the array itself) of a uint8/uint16 image; 16-bit values are rounded to 8 bits."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # 65535 / 255 = 257 exactly, so this maps 16-bit white to 8-bit white. A band of rows at a
        # time: float32 temporaries of the whole picture would take 8 bytes a sample.
        result = np.empty(image.shape, np.uint8)
        rows = max(1, _CONVERT_BAND_BYTES // max(1, image[:1].nbytes))
        for top in range(0, len(image), rows):
            result[top:top + rows] = ((image[top:top + rows].astype(np.float32) / 257.0) + 0.5).astype(np.uint8)
        return result
    raise ValueError(f"unsupported image dtype {image.dtype}")


def _convert_depth(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint16 and image.dtype == np.uint8:
        return image.astype(np.uint16) * 257
    if dtype == np.uint8:
        return to_uint8(image)
    raise ValueError(f"cannot convert {image.dtype} to {dtype}")


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------------------------
# Folders


# Why an entry of a folder is not read; the same words for every entry of a kind, so a summary can
# group them ("3 skipped: 2 broken link, 1 symlink loop").
SKIP_FOLDER = "a folder (not searched)"
SKIP_LOOP = "symlink loop"
SKIP_BROKEN_LINK = "broken link"


@dataclass(frozen=True)
class FolderScan:
    """Every entry directly in a folder, each in exactly one list (all sorted by name).

    ``len(images) + len(skipped) + len(hidden)`` is the folder's entry count.
    """

    images: list[Path]  # picture files this module reads
    skipped: list[tuple[Path, str]]  # (entry, why it is not read)
    hidden: list[Path]  # names starting with "." (not pictures, not worth a report)


def scan_folder(folder: str | os.PathLike[str]) -> FolderScan:
    """Sort the entries directly in ``folder`` into pictures, skipped entries (with why) and hidden ones.

    Links are followed to see what they point at; nothing is searched: sub-folders, and links to
    folders (a looping one included), are skipped as ``"a folder (not searched)"``.
    """
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except NotADirectoryError:
        raise CodeFormerError(f"{folder}: cannot list folder (not a folder)") from None
    except OSError as error:
        raise CodeFormerError(f"{folder}: cannot list folder ({path_problem(folder, error)})") from None
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    hidden: list[Path] = []
    for name in names:
        path = folder / name
        if name.startswith("."):
            hidden.append(path)
            continue
        try:
            mode = os.stat(path).st_mode  # follows links: a link to a picture is a picture
        except OSError as error:
            skipped.append((path, path_problem(path, error)))
            continue
        if stat.S_ISDIR(mode):
            skipped.append((path, SKIP_FOLDER))
        elif not stat.S_ISREG(mode):
            skipped.append((path, f"{_kind_of(mode)}, not a file"))
        elif not is_image_path(path):
            skipped.append((path, f"not a picture this command reads ({path.suffix or 'no extension'})"))
        else:
            images.append(path)
    return FolderScan(images, skipped, hidden)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Picture files directly in ``folder`` (extensions in any case), sorted by name; hidden files skipped."""
    return scan_folder(folder).images


# Windows' ERROR_CANT_RESOLVE_FILENAME: what a symlink loop raises there instead of ELOOP.
_WINDOWS_CANNOT_RESOLVE = 1921


def path_problem(path: Path, error: OSError) -> str:
    """A short, fixed phrase for why ``path`` cannot be opened or listed."""
    if error.errno == errno.ELOOP or getattr(error, "winerror", None) == _WINDOWS_CANNOT_RESOLVE:
        return SKIP_LOOP
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return SKIP_BROKEN_LINK if os.path.islink(path) else "no such file"
    if error.errno in (errno.EACCES, errno.EPERM):
        # Windows refuses to open a folder as a file with "permission denied".
        return "a folder, not a picture file" if os.path.isdir(path) else "permission denied"
    if error.errno == errno.EISDIR:
        return "a folder, not a picture file"
    return error.strerror or str(error)


def _kind_of(mode: int) -> str:
    """What a file system entry that is not a regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


# ----------------------------------------------------------------------------------------------------
# Reading


# O_NONBLOCK: opening a named pipe must not wait for a writer (it is refused right after, by fstat).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode a picture file into a :class:`Picture` (upright, BGR, alpha apart).

    ``max_pixels``: refuse pictures with more pixels than this (checked from the header, before
    decoding) with a :class:`PixelLimitError`; ``None`` for no limit. Any other problem with the
    path or the file is a :class:`CodeFormerError` with a one-line message.
    """
    path = Path(path)
    return decode_image(read_file_bytes(path), name=str(path), max_pixels=max_pixels)


def read_file_bytes(path: Path) -> bytes:
    """The bytes of ``path``, which must be (a link to) a regular file."""
    try:
        descriptor = os.open(path, _READ_FLAGS)
    except OSError as error:
        raise CodeFormerError(f"{path}: cannot read ({path_problem(path, error)})") from None
    except ValueError:  # a NUL character in the name
        raise CodeFormerError(f"{str(path)!r}: not a valid file name") from None
    try:
        # fstat of the open file, not stat of the name: the file checked is the file read.
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            # A device (/dev/zero) would be read forever; a folder or socket has no picture in it.
            raise CodeFormerError(f"{path}: {_kind_of(mode)}, not a picture file")
        with open(descriptor, "rb", closefd=False) as file:
            return file.read()
    except OSError as error:
        raise CodeFormerError(f"{path}: cannot read ({path_problem(path, error)})") from None
    finally:
        os.close(descriptor)


def decode_image(data: bytes, *, name: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode picture bytes; see :func:`read_image`."""
    _check_max_pixels(max_pixels)
    if not data:
        raise CodeFormerError(f"{name}: file is empty")
    size = image_size(data)
    if size is not None:
        _check_picture_pixels(size, max_pixels, name)
        available = short_of_memory(size[0] * size[1] * DECODE_BYTES_PER_PIXEL)
        if available is not None:
            raise MemoryLimitError("decoding", *size, size[0] * size[1] * DECODE_BYTES_PER_PIXEL, available,
                                   "free memory, or save the picture smaller", name=name)
    pixels = None if size is None else size[0] * size[1]
    if data.startswith(_JPEG_MAGIC):
        # Pillow raises on truncated JPEGs where OpenCV silently fills the missing part with gray.
        array = _decode_with_pillow(data, name, max_pixels, pixels)
        if array.shape[0] * array.shape[1] * _PILLOW_BYTES_PER_PIXEL >= RELEASE_AFTER_BYTES:
            release_free_memory()  # Pillow's own copy of a big picture, freed
    else:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            # Formats or variants OpenCV was built without (e.g. some TIFF compressions) may still open.
            array = _decode_with_pillow(data, name, max_pixels, pixels)
        else:
            # Checked again on the decoded size: for a header image_size cannot read (a format only
            # OpenCV knows, such as PNM) this is the only check, after OpenCV's own 2**30-pixel bound.
            height, width = array.shape[:2]
            _check_picture_pixels((width, height), max_pixels, name)
            array = _apply_orientation(array, _exif_orientation(data, width * height))
    return _to_picture(array, name)


def _decode_with_pillow(data: bytes, name: str, max_pixels: int | None, pixels: int | None) -> np.ndarray:
    """Decode with Pillow; ``pixels`` is the size :func:`image_size` read, None when it could not."""
    unreadable = f"{name}: not a readable picture (corrupt, truncated or unsupported format)"
    try:
        with _pillow_allows(pixels), Image.open(io.BytesIO(data)) as image:
            # Pillow's own reading of the header decides what it allocates, so check that too.
            _check_picture_pixels(image.size, max_pixels, name)
            image.load()
            # Turned upright on the array (the same transpositions as ImageOps.exif_transpose, which
            # would copy the whole picture even when it is upright).
            orientation = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return _apply_orientation(np.asarray(image).astype(np.uint16), orientation)
            if image.mode not in ("L", "LA", "RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            if image.mode in ("RGB", "RGBA"):
                return _apply_orientation(_pillow_to_bgr(image), orientation)
            array = _apply_orientation(np.asarray(image), orientation)
    except Image.DecompressionBombError:
        # Only a header image_size cannot read gets here (its size was not known in time to lift
        # Pillow's limit), when Pillow's own header reading finds it over twice that limit.
        raise CodeFormerError(
            f"{name}: over Pillow's limit of {_megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))} megapixels for a "
            "kind of file whose size cannot be checked first; save it as PNG, TIFF or JPEG"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise CodeFormerError(unreadable) from None
    return np.ascontiguousarray(array)


def _pillow_to_bgr(image: Image.Image) -> np.ndarray:
    """An RGB / RGBA Pillow picture as a (H, W, 3) BGR / (H, W, 4) BGRA uint8 array, a band of rows at a time."""
    width, height = image.size
    channels = len(image.mode)
    array = np.empty((height, width, channels), np.uint8)
    rows = max(1, _CONVERT_BAND_BYTES // (width * _PILLOW_BYTES_PER_PIXEL))
    rawmode = "BGR" if channels == 3 else "BGRA"  # Pillow's packer reorders the channels: exact
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = image.crop((0, top, width, bottom)).tobytes("raw", rawmode)
        array[top:bottom] = np.frombuffer(band, np.uint8).reshape(bottom - top, width, channels)
    return array


def _exif_orientation(data: bytes, pixels: int) -> int:
    """The EXIF orientation (1..8) of a non-JPEG picture of ``pixels`` pixels, 1 when absent or unreadable."""
    try:
        with _pillow_allows(pixels), Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - metadata is optional; any failure means "no rotation"
        return 1


# ----------------------------------------------------------------------------------------------------
# Sizes and limits


class PixelLimitError(CodeFormerError):
    """A picture, or an output, with more pixels than ``max_pixels`` allows.

    ``width`` and ``height`` are the refused size; :meth:`phrased` words the message for a caller
    whose option has another name (the command line's ``--max_pixels``).
    """

    def __init__(self, subject: str, width: int, height: int, max_pixels: int, remedy: str) -> None:
        self.subject, self.width, self.height, self.max_pixels, self.remedy = subject, width, height, max_pixels, remedy
        super().__init__(self.phrased("max_pixels"))

    def phrased(self, option_name: str) -> str:
        """The message with the limit's option called ``option_name``."""
        return (
            f"{self.subject}{self.width}x{self.height} pixels ({self.width * self.height / 1e6:.1f} megapixels) "
            f"is over the limit of {_megapixels(self.max_pixels)} megapixels; {self.remedy.format(option=option_name)}"
        )


def check_output_pixels(
    width: int, height: int, scale: float, max_pixels: int | None, *, name: str | None = None
) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` picture scaled by ``scale``; refused when over ``max_pixels``.

    Sizes are rounded as the upsampler rounds them. Call it before any work, so that a large scale
    on a small picture fails at once instead of after the networks ran (or after memory ran out).
    """
    _check_max_pixels(max_pixels)
    out_width, out_height = int(round(width * scale)), int(round(height * scale))
    if max_pixels is not None and out_width * out_height > max_pixels:
        prefix = f"{name}: " if name else ""
        raise PixelLimitError(f"{prefix}an output of ", out_width, out_height, max_pixels,
                              "use a smaller scale, or raise the limit with {option}")
    return out_width, out_height


def _check_picture_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise PixelLimitError(f"{name}: ", width, height, max_pixels, "raise it with {option} if you trust this file")


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise OptionError("max_pixels", max_pixels, "must be a whole number of pixels >= 1, or None for no limit")


def _megapixels(pixels: int) -> str:
    """A limit in megapixels, as short as it is exact: 150, 1.5, 0.003."""
    return f"{pixels / 1e6:g}"


# ----------------------------------------------------------------------------------------------------
# Memory


# Freed memory worth handing back at once (see release_free_memory): a picture's decoding copies, a
# detector's work on a big picture.
RELEASE_AFTER_BYTES = 256 << 20
_PILLOW_BYTES_PER_PIXEL = 4  # Pillow keeps RGB pictures as 32-bit pixels
# Bytes a picture takes while it is decoded, per pixel: Pillow's own copy of a colour picture (4 bytes
# a pixel) and the BGR array made from it (3), or OpenCV's array and a gray picture's BGR copy.
DECODE_BYTES_PER_PIXEL = 8
_GIB = float(1 << 30)
_KIB = 1024
_MEMINFO = Path("/proc/meminfo")
_OWN_CGROUPS = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with a number near 2**63
# (limit, usage, reclaimable file cache in memory.stat) of cgroup v2 and v1.
_CGROUP_V2_FILES = ("memory.max", "memory.current", "inactive_file")
_CGROUP_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


class MemoryLimitError(CodeFormerError):
    """A picture refused before the work because it would not fit in the memory available.

    ``needed`` and ``available`` are bytes: the estimated peak of the work beyond what the process
    holds already, and what the system (or the process's container) has left.
    """

    def __init__(self, action: str, width: int, height: int, needed: int, available: int, remedy: str, *,
                 detail: str = "", name: str | None = None) -> None:
        self.width, self.height, self.needed, self.available = width, height, needed, available
        prefix = f"{name}: " if name else ""
        super().__init__(
            f"{prefix}{action} a {width}x{height} picture ({width * height / 1e6:.1f} megapixels){detail} takes about "
            f"{needed / _GIB:.1f} GiB of memory and {available / _GIB:.1f} GiB is available; {remedy}"
        )


def short_of_memory(needed: int) -> int | None:
    """The bytes available when ``needed`` bytes do not fit in them, else ``None`` (also where unknown).

    Memory this process freed but its allocator kept is handed back first (it counts as used).
    """
    available = available_memory()
    if available is None or needed <= available:
        return None
    release_free_memory()
    available = available_memory()
    return None if available is None or needed <= available else available


def available_memory() -> int | None:
    """Bytes this process can still take before the system or its container runs out; ``None`` where unknown.

    The smaller of the system's (``MemAvailable`` plus free swap, Linux) and, for the process's
    cgroup and each one above it with a memory limit, that limit minus the cgroup's use
    (reclaimable file cache counted as free).
    """
    found = [value for value in (_system_available(), _cgroup_available()) if value is not None]
    return min(found) if found else None


def _system_available() -> int | None:
    try:
        fields = dict(line.split(":", 1) for line in _MEMINFO.read_text().splitlines() if ":" in line)
        return (int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])) * _KIB
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _cgroup_available() -> int | None:
    try:
        lines = _OWN_CGROUPS.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, files = _CGROUP_ROOT, _CGROUP_V2_FILES
        elif "memory" in controllers.split(","):
            base, files = _CGROUP_ROOT / "memory", _CGROUP_V1_FILES
        else:
            continue
        folder = base / path.strip("/")
        if not folder.is_dir():  # a path from outside this mount namespace: the root is ours
            folder = base
        while True:
            value = _cgroup_room(folder, *files)
            if value is not None:
                found.append(value)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(found) if found else None


def _cgroup_room(folder: Path, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    """A cgroup's limit minus its use, reclaimable file cache counted as free; ``None`` without a limit."""
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= _CGROUP_UNLIMITED:
            return None
        usage = int((folder / usage_file).read_text())
        cache = 0
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == cache_key:
                cache = int(value)
                break
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - usage + cache)


def release_free_memory() -> None:
    """Hand memory the C heap keeps after frees back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    :func:`codeformer.precision.configure_cpu_runtime` makes glibc keep up to 2 GiB of freed memory
    for reuse (fewer page faults between layers and faces). After a big, short-lived step on a big
    picture (decoding it, a detector's pyramid) that memory would stay resident, on top of what the
    next steps allocate where it does not fit: calling this then keeps the peak at what is in use.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BMP_MAGIC = b"BM"
_TIFF_ORDERS = {b"II": "<", b"MM": ">"}
_TIFF_CLASSIC, _TIFF_BIG = 42, 43  # the magic number after the byte order: classic TIFF, BigTIFF
_TIFF_WIDTH_TAG, _TIFF_HEIGHT_TAG = 256, 257  # ImageWidth, ImageLength
# JPEG start-of-frame markers (SOF0..SOF15 without DHT 0xC4, JPG 0xC8 and DAC 0xCC): they carry the size.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0..RST7, SOI.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG, PNG, WebP, BMP or TIFF picture from its header, without decoding.

    The size as stored (before any EXIF rotation). ``None`` for other formats and for headers that
    cannot be read. It reads a few bytes at fixed places (a JPEG's markers up to the scan, a TIFF's
    first directory), so it is safe and fast on any input.
    """
    try:
        if data.startswith(_JPEG_MAGIC):
            return _jpeg_size(data)
        if data.startswith(_PNG_MAGIC):
            return _png_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(_BMP_MAGIC):
            return _bmp_size(data)
        if data[:2] in _TIFF_ORDERS:
            return _tiff_size(data)
    except (struct.error, IndexError):  # a header cut short
        return None
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk must come first: length (4), type (4), then width and height.
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments up to the scan. All frame headers count, the largest wins: decoders
    # differ on which one they use (Pillow keeps the last), and a small first one must not hide a big one.
    best: tuple[int, int] | None = None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            break
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        offset += 2
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI):
            break
        (length,) = struct.unpack(">H", data[offset:offset + 2])
        if marker in _JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[offset + 3:offset + 7])
            if best is None or width * height > best[0] * best[1]:
                best = (width, height)
        offset += length
    return best


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk, payload = data[12:16], 20
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height
        if data[payload + 3:payload + 6] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[payload + 6:payload + 10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then (width - 1) and (height - 1) in 14 bits each
        if data[payload] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[payload + 1:payload + 5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags (4), then canvas (width - 1) and (height - 1) in 24 bits each
        if len(data) < payload + 10:
            return None
        width = int.from_bytes(data[payload + 4:payload + 7], "little") + 1
        height = int.from_bytes(data[payload + 7:payload + 10], "little") + 1
        return width, height
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    # After the 14-byte file header: the info header's own size, then width and height.
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    # The first image file directory (the picture decoders read); a tag found twice counts at its largest.
    order = _TIFF_ORDERS[data[:2]]
    (magic,) = struct.unpack(order + "H", data[2:4])
    if magic == _TIFF_CLASSIC:
        (directory,) = struct.unpack(order + "I", data[4:8])
        count_format, entry_size, count_size, value_offset = "H", 12, 2, 8
    elif magic == _TIFF_BIG:
        (directory,) = struct.unpack(order + "Q", data[8:16])
        count_format, entry_size, count_size, value_offset = "Q", 20, 8, 12
    else:
        return None
    (entries,) = struct.unpack(order + count_format, data[directory:directory + count_size])
    sizes = {_TIFF_WIDTH_TAG: 0, _TIFF_HEIGHT_TAG: 0}
    for index in range(entries):
        entry = directory + count_size + index * entry_size
        if entry + entry_size > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag not in sizes:
            continue
        value = data[entry + value_offset:entry + entry_size]
        # SHORT, LONG or (BigTIFF) LONG8, stored in the entry itself.
        value_format = {3: "H", 4: "I", 16: "Q"}.get(kind)
        if value_format is None:
            return None
        (number,) = struct.unpack_from(order + value_format, value)
        sizes[tag] = max(sizes[tag], number)
    if not sizes[_TIFF_WIDTH_TAG] or not sizes[_TIFF_HEIGHT_TAG]:
        return None
    return sizes[_TIFF_WIDTH_TAG], sizes[_TIFF_HEIGHT_TAG]


# Lifts of Pillow's process-wide limit in progress, and the value to put back when the last one
# ends. Counted, so that overlapping decodes (threads) neither serialise nor restore each other's lift.
_PILLOW_LIFT_LOCK = threading.Lock()
_pillow_lifts = 0
_pillow_saved_limit: int | None = None


@contextlib.contextmanager
def _pillow_allows(pixels: int | None) -> Iterator[None]:
    """Let Pillow open and decode a picture of ``pixels`` pixels, already checked against ``max_pixels``.

    Pillow has its own limit, process-wide (``Image.MAX_IMAGE_PIXELS``, 89 MP by default: it warns
    above it and refuses above twice it). It is left alone unless this picture is over it; then it
    is raised to this picture's size while this decode runs, and put back when the last such decode
    ends, so Pillow neither warns nor refuses first. With ``pixels`` None (a header
    :func:`image_size` cannot read) Pillow's limit stays and may refuse; only its warning is
    silenced then (``warnings.catch_warnings`` is process-wide too, hence only in that rare case).
    """
    global _pillow_lifts, _pillow_saved_limit
    if pixels is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
        return
    lift = False
    with _PILLOW_LIFT_LOCK:
        # Compare with the limit as the user set it, not as another decode lifted it for now.
        limit = _pillow_saved_limit if _pillow_lifts else Image.MAX_IMAGE_PIXELS
        if limit is not None and pixels > limit:
            lift = True
            if not _pillow_lifts:
                _pillow_saved_limit = Image.MAX_IMAGE_PIXELS
            current = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None if current is None else max(current, pixels)
            _pillow_lifts += 1
    try:
        yield
    finally:
        if lift:
            with _PILLOW_LIFT_LOCK:
                _pillow_lifts -= 1
                if not _pillow_lifts:
                    Image.MAX_IMAGE_PIXELS = _pillow_saved_limit


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright according to an EXIF orientation value."""
    if orientation == 2:
        return image[:, ::-1].copy()
    if orientation == 3:
        return image[::-1, ::-1].copy()
    if orientation == 4:
        return image[::-1].copy()
    if orientation == 5:
        return np.ascontiguousarray(np.swapaxes(image, 0, 1))
    if orientation == 6:
        return np.ascontiguousarray(np.rot90(image, -1))
    if orientation == 7:  # the transverse (Pillow's TRANSVERSE): turned clockwise, then flipped upside down
        return np.ascontiguousarray(np.rot90(image, -1)[::-1])
    if orientation == 8:
        return np.ascontiguousarray(np.rot90(image, 1))
    return image


def _to_picture(array: np.ndarray, name: str) -> Picture:
    if array.dtype not in (np.uint8, np.uint16):
        raise CodeFormerError(
            f"{name}: {array.dtype} samples are not supported; save the picture with 8 or 16 bits per channel"
        )
    if array.ndim == 2:
        return Picture(cv2.cvtColor(array, cv2.COLOR_GRAY2BGR), None, 1)
    channels = array.shape[2]
    if channels == 1:
        return Picture(cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2BGR), None, 1)
    if channels == 2:
        return Picture(cv2.cvtColor(np.ascontiguousarray(array[:, :, 0]), cv2.COLOR_GRAY2BGR),
                       np.ascontiguousarray(array[:, :, 1]), 2)
    if channels == 3:
        return Picture(array, None, 3)
    if channels == 4:
        return Picture(np.ascontiguousarray(array[:, :, :3]), np.ascontiguousarray(array[:, :, 3]), 4)
    raise CodeFormerError(f"{name}: pictures with {channels} channels are not supported")


def picture_from_array(array: np.ndarray, *, name: str = "picture",
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """A :class:`Picture` from an array in OpenCV's layout: (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA.

    uint8 or uint16. The array is not copied and is never modified.
    """
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise CodeFormerError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image array, got {got}")
    _check_picture_pixels((array.shape[1], array.shape[0]), max_pixels, name)
    return _to_picture(array, name)


def write_image(path: str | os.PathLike[str], image: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Encode ``image`` by the path's extension and write it atomically (temp file + ``os.replace``)."""
    path = Path(path)
    write_bytes_atomic(path, memoryview(_encode(str(path), image, params)))  # no bytes copy of a big file
    return path


def encode_image(name: str, image: np.ndarray, params: Sequence[int] = ()) -> bytes:
    """The bytes :func:`write_image` writes to a file called ``name`` (format by its extension; png without one)."""
    return _encode(name, image, params).tobytes()


def _encode(name: str, image: np.ndarray, params: Sequence[int]) -> np.ndarray:
    ok, encoded = cv2.imencode(Path(name).suffix or ".png", image, list(params))
    if not ok:
        raise CodeFormerError(f"{name}: cannot encode a {image.dtype} picture of shape {image.shape}")
    return encoded  # (N,) uint8


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    try:
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
    except OSError as error:
        raise CodeFormerError(f"{path}: cannot write ({error.strerror or error})") from None
