"""Reading and writing pictures without losing anything.

- Paths are read and written as bytes (``np.fromfile``-style + ``cv2.imdecode`` / ``cv2.imencode``),
  never through ``cv2.imread`` on a path, so file names in any script work on every OS.
- JPEG EXIF orientation is applied, so sideways phone photos come out upright.
- 16-bit pictures stay 16-bit, alpha is kept apart, gray pictures are remembered as gray.
- Truncated or corrupt files raise :class:`CodeFormerError` instead of decoding to a half-gray image.
- Writes go to a temporary file in the destination folder, then ``os.replace``: a crash never leaves a
  half-written file under the final name, and an existing output is only ever replaced whole.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from codeformer._atomic import atomic_path
from codeformer.errors import CodeFormerError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_JPEG_MAGIC = b"\xff\xd8\xff"
# EXIF tag 0x0112: how the stored pixels must be turned to display upright.
_EXIF_ORIENTATION_TAG = 0x0112


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
        # 65535 / 255 = 257 exactly, so this maps 16-bit white to 8-bit white.
        return ((image.astype(np.float32) / 257.0) + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def _convert_depth(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint16 and image.dtype == np.uint8:
        return image.astype(np.uint16) * 257
    if dtype == np.uint8:
        return to_uint8(image)
    raise ValueError(f"cannot convert {image.dtype} to {dtype}")


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Picture files directly in ``folder`` (extensions in any case), sorted by name; hidden files skipped."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def read_image(path: str | os.PathLike[str]) -> Picture:
    """Decode a picture file into a :class:`Picture` (upright, BGR, alpha apart)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CodeFormerError(f"{path}: cannot read file ({error.strerror or error})") from None
    return decode_image(data, name=str(path))


def decode_image(data: bytes, *, name: str = "<bytes>") -> Picture:
    """Decode picture bytes; see :func:`read_image`."""
    if not data:
        raise CodeFormerError(f"{name}: file is empty")
    if data.startswith(_JPEG_MAGIC):
        # Pillow raises on truncated JPEGs where OpenCV silently fills the missing part with gray.
        array = _decode_with_pillow(data, name)
    else:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            # Formats or variants OpenCV was built without (e.g. some TIFF compressions) may still open.
            array = _decode_with_pillow(data, name)
        else:
            array = _apply_orientation(array, _exif_orientation(data))
    return _to_picture(array, name)


def _decode_with_pillow(data: bytes, name: str) -> np.ndarray:
    unreadable = f"{name}: not a readable picture (corrupt, truncated or unsupported format)"
    try:
        with warnings.catch_warnings():
            # Large scans and panoramas are legitimate input here, not decompression bombs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    return np.asarray(image).astype(np.uint16)
                if image.mode not in ("L", "LA", "RGB", "RGBA"):
                    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
                array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise CodeFormerError(unreadable) from None
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    return np.ascontiguousarray(array)


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8) of a non-JPEG picture, 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - metadata is optional; any failure means "no rotation"
        return 1


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
    if orientation == 7:
        return np.ascontiguousarray(np.rot90(image, 1)[::-1])
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


def write_image(path: str | os.PathLike[str], image: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Encode ``image`` by the path's extension and write it atomically (temp file + ``os.replace``)."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image, list(params))
    if not ok:
        raise CodeFormerError(f"{path}: cannot encode a {image.dtype} picture of shape {image.shape}")
    write_bytes_atomic(path, encoded.tobytes())
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    try:
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
    except OSError as error:
        raise CodeFormerError(f"{path}: cannot write ({error.strerror or error})") from None
