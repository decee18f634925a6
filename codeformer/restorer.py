"""Face restoration with a loaded CodeFormer: aligned 512x512 crops in, restored crops out, in batches.

Pre- and post-processing match the reference inference scripts exactly: BGR uint8 -> RGB float32
``(x / 255 - 0.5) / 0.5``; the output is clamped to [-1, 1], mapped back to [0, 255], rounded
half-to-even (like ``numpy.round``) and converted to BGR uint8.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from codeformer.archs import CodeFormer, build_codeformer
from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError
from codeformer.weights import load_state_dict

logger = logging.getLogger(__name__)

PIXEL_MAX = 255.0  # uint8 full scale
BGR_TO_RGB = [2, 1, 0]  # channel order swap (its own inverse)


def crops_to_batch(crops: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """(S, S, 3) BGR uint8 crops -> (N, 3, S, S) RGB float32 in [-1, 1] on ``device``, plain NCHW."""
    # The uint8 pixels travel to the device (4x less than float32) and are converted there.
    pixels = torch.from_numpy(np.stack(crops)).to(device)  # (N, S, S, 3) uint8, BGR
    rgb = pixels.permute(0, 3, 1, 2)[:, BGR_TO_RGB].contiguous()  # (N, 3, S, S); the gather already copies
    # float32 k / 255 equals the reference's float64 division rounded to float32 for every k.
    return rgb.to(torch.float32).div_(PIXEL_MAX).sub_(0.5).div_(0.5)


def batch_to_crops(images: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, S, S) RGB float in [-1, 1] -> list of C-contiguous (S, S, 3) BGR uint8, values clamped first."""
    unit = images.float().clamp(-1.0, 1.0).add_(1.0).div_(2.0)  # (N, 3, S, S) in [0, 1]
    pixels = unit.mul_(PIXEL_MAX).round_().to(torch.uint8)  # round is half-to-even, like numpy's
    bgr = pixels.permute(0, 2, 3, 1)[..., BGR_TO_RGB].contiguous()  # (N, S, S, 3); OpenCV wants contiguous
    return list(bgr.cpu().numpy())


class FaceRestorer:
    """A CodeFormer network on a device, restoring lists of aligned face crops.

    Example::

        restorer = FaceRestorer.from_file("weights/CodeFormer/codeformer.pth", device="auto")
        restored = restorer.restore(crops, w=0.5)
    """

    def __init__(self, net: CodeFormer, device: torch.device | str = "auto") -> None:
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.net = net.eval().to(self.device)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], device: torch.device | str = "auto") -> FaceRestorer:
        """Load a CodeFormer checkpoint (any official variant; hyperparameters read from the file)."""
        # The device first: a wrong --device fails before a 370 MB file is read.
        target = resolve_device(device) if isinstance(device, str) else torch.device(device)
        net = build_codeformer(load_state_dict(path, map_location=target), source=str(path))
        logger.debug("loaded CodeFormer %s from %s on %s", net.config, path, target)
        return cls(net, target)

    @property
    def image_size(self) -> int:
        """Side length of the crops the network takes (512 for the official files)."""
        return self.net.image_size

    def restore(
        self, crops: Sequence[np.ndarray], *, w: float, adain: bool = True, batch_size: int = 4
    ) -> list[np.ndarray]:
        """Restore ``crops`` ((S, S, 3) BGR uint8); returns as many BGR uint8 crops, in the same order.

        ``w`` in [0, 1] trades quality (0) for fidelity to the input (1). ``adain`` matches the
        codebook features' colour statistics to the input's (what the reference scripts do).
        ``batch_size`` crops go through the network in one forward pass.
        """
        if not 0.0 <= w <= 1.0:
            raise CodeFormerError(
                f"fidelity weight w={w} is outside [0, 1]; pick a value from 0 (quality) to 1 (fidelity)"
            )
        self._check_batch_size(batch_size)
        self._check_crops(crops)
        restored: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                batch = crops_to_batch(crops[start : start + batch_size], self.device)  # (n, 3, S, S)
                images, _, _ = self.net(batch, w=w, adain=adain)
                restored += batch_to_crops(images)
        return restored

    def predict_codes(self, crops: Sequence[np.ndarray], *, batch_size: int = 4) -> np.ndarray:
        """The codebook indices the Transformer predicts for each crop: (N, latent_size) int64.

        Independent of ``w`` and ``adain`` (they act after the prediction).
        """
        self._check_batch_size(batch_size)
        self._check_crops(crops)
        codes = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                lq_feat, _ = self.net.encode(crops_to_batch(crops[start : start + batch_size], self.device))
                codes.append(self.net.predict_logits(lq_feat).argmax(dim=2).cpu())  # (n, L)
        latent_size = self.net.config.latent_size
        return torch.cat(codes).numpy() if codes else np.empty((0, latent_size), dtype=np.int64)

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        if batch_size < 1:
            raise CodeFormerError(f"batch size {batch_size} must be at least 1")

    def _check_crops(self, crops: Sequence[np.ndarray]) -> None:
        expected = (self.image_size, self.image_size, 3)
        for i, crop in enumerate(crops):
            if not isinstance(crop, np.ndarray) or crop.shape != expected or crop.dtype != np.uint8:
                got = f"{crop.shape} {crop.dtype}" if isinstance(crop, np.ndarray) else type(crop).__name__
                raise ValueError(
                    f"face crop {i} must be a {expected} uint8 BGR array, got {got}; "
                    "resize and convert crops first"
                )
