"""Aligned-face tasks: restoration (``--has_aligned``), colorization and inpainting.

All three take faces already cropped and aligned like FFHQ at 512x512 and differ only in how the
network is driven (the ``w`` / ``adain`` each checkpoint was trained with) and how its output is
finished. They share :func:`prepare_aligned_face` and :meth:`FaceRestorer.restore`.
"""

from __future__ import annotations

import logging
from typing import Literal, Sequence

import cv2
import numpy as np
import torch

from codeformer.archs import VQAutoEncoder
from codeformer.color import is_gray, to_gray
from codeformer.imageio import Picture
from codeformer.restorer import FaceRestorer, batch_to_crops, crops_to_batch

logger = logging.getLogger(__name__)

FACE_SIZE = 512  # the networks' input and output resolution
# Inpainting regions are painted pure white, as with a white brush in an image editor.
PAINT_VALUE = 255

GrayMode = Literal["auto", "on", "off"]


def prepare_aligned_face(picture: Picture, *, name: str, warn_on_resize: bool) -> np.ndarray:
    """The picture as a (512, 512, 3) BGR uint8 crop, resized bilinearly (as the reference) if needed."""
    crop = picture.bgr8()
    if crop.shape[:2] != (FACE_SIZE, FACE_SIZE):
        if warn_on_resize:
            logger.warning(
                "%s: %dx%d resized to 512x512 (this command expects aligned 512x512 faces; see "
                "scripts/crop_align_face.py)", name, picture.width, picture.height,
            )
        crop = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
    return crop


def paint_mask_of(picture: Picture) -> np.ndarray:
    """(512, 512) bool mask of the pure-white painted pixels, at the network's resolution.

    Computed at the input's own resolution, then mapped to 512x512 so that a pixel touched by paint at
    all counts as painted (a resize blends white strokes into their neighbours).
    """
    painted = np.all(picture.bgr8() == PAINT_VALUE, axis=2)
    if painted.shape != (FACE_SIZE, FACE_SIZE):
        coverage = cv2.resize(painted.astype(np.float32), (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
        painted = coverage > 0
    return painted


def use_gray(crop: np.ndarray, mode: GrayMode) -> bool:
    """Whether a face is treated as grayscale: detected (``auto``) or forced on/off."""
    return mode == "on" or (mode == "auto" and is_gray(crop))


def restore_aligned(
    restorer: FaceRestorer, crops: Sequence[np.ndarray], *, w: float, gray: GrayMode = "auto", batch_size: int = 4
) -> list[np.ndarray]:
    """Restore aligned crops; gray inputs give gray results toned like the input (the reference's transfer)."""
    restored = restorer.restore(crops, w=w, adain=True, batch_size=batch_size)
    return [to_gray(out, crop) if use_gray(crop, gray) else out for crop, out in zip(crops, restored)]


def colorize_aligned(restorer: FaceRestorer, crops: Sequence[np.ndarray], *, batch_size: int = 4) -> list[np.ndarray]:
    """Colorize aligned crops with the colorization checkpoint, driven as it was trained (w=0, AdaIN)."""
    return restorer.restore(crops, w=0.0, adain=True, batch_size=batch_size)


def inpaint_aligned(
    restorer: FaceRestorer, crops: Sequence[np.ndarray], masks: Sequence[np.ndarray], *, batch_size: int = 4
) -> list[np.ndarray]:
    """Fill the painted pixels with the inpainting checkpoint (w=1, no AdaIN, as trained).

    Every pixel outside a crop's mask is returned exactly as it came in.
    """
    # The network was trained on pure-white holes: make resized stroke edges fully white too.
    network_inputs = [np.where(mask[:, :, None], np.uint8(PAINT_VALUE), crop) for crop, mask in zip(crops, masks)]
    filled = restorer.restore(network_inputs, w=1.0, adain=False, batch_size=batch_size)
    return [np.where(mask[:, :, None], out, crop) for crop, mask, out in zip(crops, masks, filled)]


def reconstruct_aligned(
    vqgan: VQAutoEncoder, crops: Sequence[np.ndarray], *, batch_size: int = 4
) -> list[np.ndarray]:
    """Pass aligned crops through the VQGAN alone: encoder, nearest codebook entries, generator."""
    device = next(vqgan.parameters()).device
    reconstructed: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            images, _codes = vqgan(crops_to_batch(crops[start:start + batch_size], device))  # (n, 3, 512, 512)
            reconstructed += batch_to_crops(images)
    return reconstructed
