"""Aligned-face tasks: restoration (``has_aligned``), colorization, inpainting and VQGAN reconstruction.

All four take faces already cropped and aligned like FFHQ (512x512 for the official networks) and
differ only in how they are prepared and finished; the network itself is any
:class:`codeformer.restorer.Restorer`, which owns its fidelity weight and AdaIN.
"""

from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from codeformer.color import GrayMode, is_gray, to_gray
from codeformer.face.alignment import FACE_SIZE
from codeformer.imageio import Picture
from codeformer.restorer import Restorer

logger = logging.getLogger(__name__)

# Inpainting regions are painted pure white, as with a white brush in an image editor.
PAINT_VALUE = 255


def prepare_aligned_face(picture: Picture, *, name: str, warn_on_resize: bool, size: int = FACE_SIZE) -> np.ndarray:
    """The picture as a (size, size, 3) BGR uint8 crop, resized bilinearly (as the reference) if needed."""
    crop = picture.bgr8()
    if crop.shape[:2] != (size, size):
        if warn_on_resize:
            logger.warning(
                "%s: %dx%d resized to %dx%d (aligned faces are expected at this size; see "
                "scripts/crop_align_face.py)", name, picture.width, picture.height, size, size,
            )
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return crop


def paint_mask_of(picture: Picture, size: int = FACE_SIZE) -> np.ndarray:
    """(size, size) bool mask of the pure-white painted pixels, at the network's resolution.

    Computed at the input's own resolution, then mapped to the crop size so that a pixel touched by
    paint at all counts as painted (a resize blends white strokes into their neighbours).
    """
    painted = np.all(picture.bgr8() == PAINT_VALUE, axis=2)
    if painted.shape != (size, size):
        coverage = cv2.resize(painted.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        painted = coverage > 0
    return painted


def use_gray(crop: np.ndarray, mode: GrayMode) -> bool:
    """Whether a face is treated as grayscale: detected (``auto``) or forced on/off."""
    return mode == "on" or (mode == "auto" and is_gray(crop))


def restore_aligned_crops(
    restorer: Restorer,
    crops: Sequence[np.ndarray],
    *,
    fidelity_weight: float | None = None,
    gray: GrayMode = "auto",
    batch_size: int = 4,
) -> list[np.ndarray]:
    """Restore aligned crops; gray inputs give gray results toned like the input (the reference's transfer)."""
    restored = restorer.restore_crops(crops, fidelity_weight=fidelity_weight, batch_size=batch_size)
    return [to_gray(out, crop) if use_gray(crop, gray) else out for crop, out in zip(crops, restored)]


def inpaint_aligned(
    restorer: Restorer, crops: Sequence[np.ndarray], masks: Sequence[np.ndarray], *, batch_size: int = 4
) -> list[np.ndarray]:
    """Fill the painted pixels (the inpainting checkpoint runs as trained: w=1, no AdaIN).

    Every pixel outside a crop's mask is returned exactly as it came in.
    """
    # The network was trained on pure-white holes: make resized stroke edges fully white too.
    network_inputs = [np.where(mask[:, :, None], np.uint8(PAINT_VALUE), crop) for crop, mask in zip(crops, masks)]
    filled = restorer.restore_crops(network_inputs, batch_size=batch_size)
    return [np.where(mask[:, :, None], out, crop) for crop, mask, out in zip(crops, masks, filled)]
