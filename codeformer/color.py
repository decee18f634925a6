"""Grayscale pictures: detecting them, and keeping their restored faces gray.

The reference (sczhou/CodeFormer ``facelib/utils/misc.py`` and ``FaceRestoreHelper``) checks every
input with ``is_gray(img, threshold=10)``; for a gray picture each restored face is converted with
``bgr2gray`` and then given the input crop's per-channel mean and standard deviation with
``adain_npy``, so the pasted faces stay gray and keep the picture's tone. Example::

    if is_gray(picture):
        restored = [to_gray(face, reference=crop) for face, crop in zip(restored, crops)]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["GRAY_MODES", "GRAY_THRESHOLD", "GrayMode", "is_gray", "to_gray", "transfer_color"]

# Whether restored faces are kept gray: detected per picture (auto), or forced on / off.
GrayMode = Literal["auto", "on", "off"]
GRAY_MODES: tuple[str, ...] = ("auto", "on", "off")

# Mean variance (in 8-bit grey levels squared) of the pairwise channel differences at or below which a
# picture counts as gray: the threshold the reference's newest face helper passes to is_gray.
GRAY_THRESHOLD = 10.0
# ITU-R BT.601 luma weights as the reference writes them (note they sum to 0.9999).
LUMA_RED, LUMA_GREEN, LUMA_BLUE = 0.2989, 0.5870, 0.1140
# Added to each channel's variance before the square root in the colour transfer (the reference's eps).
ADAIN_EPS = 1e-5
# The reference clamps the transferred colours to the source's bit depth: [0, 256) for 8-bit content,
# [0, 65536) for 16-bit (it compares against 256 / 65536 and keeps a 1e-12 safety gap).
_BIT_RANGE_8 = 256.0
_BIT_RANGE_16 = 65536.0
_RANGE_GAP = 1e-12
_MAX_8BIT = 255.0
_COLOR_CHANNELS = 3


def _eight_bit_scale(dtype: np.dtype) -> float:
    """Factor that brings values of ``dtype`` to the 8-bit scale (floats are taken to be in [0, 1])."""
    if np.issubdtype(dtype, np.integer):
        return _MAX_8BIT / float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return _MAX_8BIT
    raise ValueError(f"unsupported image dtype {dtype}")


def is_gray(image: np.ndarray, threshold: float = GRAY_THRESHOLD) -> bool:
    """Whether a picture is gray by the reference's statistic.

    The statistic is the mean, over the three channel pairs (B-G, G-R, R-B), of the variance of the
    pixel-wise difference, in 8-bit grey levels squared (uint16 values are divided by 257, floats are
    taken to be in [0, 1]); the picture is gray when it is <= ``threshold``. One-channel pictures are
    gray; a fourth (alpha) channel is ignored. A constant colour cast (every pixel's B a bit higher)
    has zero variance, so a uniformly tinted black-and-white photo counts as gray, as in the reference.
    """
    array = np.asarray(image)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        return True
    if array.ndim != 3 or array.shape[2] < _COLOR_CHANNELS:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {array.shape}")
    scale = _eight_bit_scale(array.dtype)
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize <= 2:
        variances = _integer_difference_variances(array)
    else:
        channels = [array[:, :, index].astype(np.float64) for index in range(_COLOR_CHANNELS)]  # 3 x (H, W)
        variances = [float(np.var(channels[first] - channels[(first + 1) % _COLOR_CHANNELS]))
                     for first in range(_COLOR_CHANNELS)]
    statistic = sum(variances) / len(variances) * scale**2
    return statistic <= threshold


# Pixels of a picture whose channel differences are summed at a time (int64 temporaries: about 50 MB).
_GRAY_BAND_PIXELS = 1 << 20


def _integer_difference_variances(array: np.ndarray) -> list[float]:
    """The variance of each channel pair's difference (B-G, G-R, R-B) of an 8- or 16-bit picture.

    Sums of the differences and of their squares are exact integers, gathered a band of rows at a
    time, so a big picture takes no full-size temporaries; the variance ``(n * S2 - S1**2) / n**2``
    is then rounded once (``np.var`` would round along the way: the two agree to about 1e-15).
    """
    height, width = array.shape[:2]
    count = height * width
    firsts, seconds = [0] * _COLOR_CHANNELS, [0] * _COLOR_CHANNELS  # per pair: sum of d, sum of d**2
    rows = max(1, _GRAY_BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        band = array[top:top + rows, :, :_COLOR_CHANNELS].astype(np.int64)  # (rows, W, 3)
        for first in range(_COLOR_CHANNELS):
            difference = band[:, :, first] - band[:, :, (first + 1) % _COLOR_CHANNELS]  # (rows, W)
            firsts[first] += int(difference.sum())
            seconds[first] += int(np.dot(difference.ravel(), difference.ravel()))
    return [(count * second - first * first) / count**2 for first, second in zip(firsts, seconds)]


def _luma(image: np.ndarray) -> np.ndarray:
    """The reference's ``bgr2gray``, unrounded: (H, W, 3) float64 with three equal channels."""
    blue, green, red = (image[:, :, index].astype(np.float64) for index in range(_COLOR_CHANNELS))
    gray = LUMA_RED * red + LUMA_GREEN * green + LUMA_BLUE * blue  # (H, W)
    return np.repeat(gray[:, :, None], _COLOR_CHANNELS, axis=2)


def transfer_color(content: np.ndarray, style: np.ndarray, *, bit_range: float = _BIT_RANGE_8) -> np.ndarray:
    """The reference's ``adain_npy``: ``content`` with ``style``'s per-channel mean and std, float64.

    ``content`` and ``style`` are (H, W, C) (sizes may differ). Each channel is normalised by its own
    mean and std (``sqrt(var + 1e-5)``) and rescaled to the style's. When that leaves
    ``[0, bit_range)`` (256 for 8-bit pictures, 65536 for 16-bit), the style stds are all reduced by
    the one factor that brings the extreme value back to the range's edge, keeping the means, as the
    reference does. The result is not rounded.
    """
    source = np.asarray(content, dtype=np.float64)
    target = np.asarray(style, dtype=np.float64)
    if source.ndim != 3 or target.ndim != 3 or source.shape[2] != target.shape[2]:
        raise ValueError(f"expected two (H, W, C) images with the same C, got {source.shape} and {target.shape}")
    channels = source.shape[2]
    source_mean = source.reshape(-1, channels).mean(axis=0)  # (C,)
    source_std = np.sqrt(source.reshape(-1, channels).var(axis=0) + ADAIN_EPS)
    style_mean = target.reshape(-1, channels).mean(axis=0)
    style_std = np.sqrt(target.reshape(-1, channels).var(axis=0) + ADAIN_EPS)
    normalized = (source - source_mean) / source_std  # (H, W, C)
    result = normalized * style_std + style_mean
    lowest, highest = result.min(axis=(0, 1)), result.max(axis=(0, 1))  # (C,)
    low_channel, high_channel = int(np.argmin(lowest)), int(np.argmax(highest))
    low, high = lowest[low_channel], highest[high_channel]
    if high > bit_range or low < 0:
        low_mean, high_mean = style_mean[low_channel], style_mean[high_channel]
        with np.errstate(divide="ignore", invalid="ignore"):
            # Factor that puts the lowest value on 0 and the one that puts the highest on the top.
            ratios = (low_mean / (low_mean - low), (bit_range - _RANGE_GAP - high_mean) / (high - high_mean))
        ratio = min(value for value in ratios if np.isfinite(value)) if any(np.isfinite(ratios)) else 1.0
        result = normalized * (style_std * ratio) + style_mean
    return result


def to_gray(image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """A gray (three equal channels) version of a BGR image, in its dtype (uint8 or uint16).

    Gray is the reference's ``bgr2gray`` (0.2989 R + 0.5870 G + 0.1140 B). With ``reference`` (the
    input crop of a restored face, same dtype), the reference's colour transfer
    (:func:`transfer_color`) then gives the result the reference's per-channel mean and std, so a
    restored face matches the tone of the gray picture it goes back into (a slightly tinted
    reference keeps its tint). Values are rounded to the nearest integer and clipped to the dtype's
    range (the reference keeps floats, truncated at paste-back; rounding keeps white at 255 although
    the weights sum to 0.9999).
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != _COLOR_CHANNELS or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected an (H, W, 3) integer BGR image, got {array.dtype} {array.shape}")
    gray = _luma(array)  # (H, W, 3) float64
    if reference is not None:
        style = np.asarray(reference)[:, :, :_COLOR_CHANNELS]
        bit_range = _BIT_RANGE_8 if array.dtype.itemsize == 1 else _BIT_RANGE_16
        gray = transfer_color(gray, style, bit_range=bit_range)
    return np.clip(np.rint(gray), 0, np.iinfo(array.dtype).max).astype(array.dtype)
