"""Face restoration with the networks written here besides CodeFormer: GPEN-BFR and RestoreFormer++.

Both map aligned crops to restored crops, (N, 3, S, S) RGB in [-1, 1] in and out, with no fidelity
weight; :class:`NetworkRestorer` runs either as a :class:`~codeformer.restorer.Restorer` with the
original's own pre- and post-processing, crop size and alignment template:

- GPEN-BFR (256, 512, 1024, 2048; :mod:`codeformer.archs.gpen`): its own template per size; the
  output truncated to uint8 as ``face_gan.py`` does (``astype(np.uint8)`` after clipping), not
  rounded; a 1024 or 2048 model gives a 1024 or 2048 face, pasted back at that resolution;
- RestoreFormer++ (:mod:`codeformer.archs.restoreformer_pp`): FFHQ-aligned 512 crops, the output
  clamped and rounded as its inference script does.

Neither draws random numbers at inference, so a video's faces do not change from frame to frame by
noise. Example::

    restorer = NetworkRestorer.gpen_from_file("weights/gpen/GPEN-BFR-512.pth", device="auto")
    restored = restorer.restore_crops(crops)   # crops: (512, 512, 3) BGR uint8 on GPEN's template
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError, OptionError
from codeformer.face.alignment import gpen_template
from codeformer.fidelity import fidelity_weight_for
from codeformer.precision import cpu_has_native_bf16, resolve_precision, torch_dtype
from codeformer.restorer import BGR_TO_RGB, PIXEL_MAX, batch_to_crops, crops_to_batch, ffhq_template
from codeformer.weights import load_state_dict

__all__ = ["NetworkRestorer", "truncated_crops"]

logger = logging.getLogger(__name__)

# (network, (N, 3, S, S) RGB in [-1, 1]) -> (N, 3, S, S) RGB, about [-1, 1]
Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# (N, 3, S, S) RGB output -> BGR uint8 crops, as the original turns its output into pixels
ToCrops = Callable[[torch.Tensor], list[np.ndarray]]


def truncated_crops(images: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, S, S) RGB in [-1, 1] -> BGR uint8 crops, truncated as GPEN's ``tensor2img`` does (not rounded)."""
    unit = images.float().mul(0.5).add_(0.5).clamp_(0.0, 1.0)  # (N, 3, S, S) in [0, 1]
    pixels = unit.mul_(PIXEL_MAX).to(torch.uint8)  # the float -> uint8 cast truncates toward zero
    bgr = pixels.permute(0, 2, 3, 1)[..., BGR_TO_RGB].contiguous()  # (N, S, S, 3)
    return list(bgr.cpu().numpy())


def _first(outputs: object) -> torch.Tensor:
    """The image of a network that returns (image, extra) tuples."""
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs  # type: ignore[return-value]


class NetworkRestorer:
    """A crops-to-crops face network on a device, in a precision mode (a :class:`~codeformer.restorer.Restorer`).

    ``codebook``: the network picks codebook entries (RestoreFormer++), so ``auto`` precision keeps
    it in fp32, as bfloat16 rounding can change those picks.
    """

    supports_fidelity = False

    def __init__(self, net: nn.Module, *, name: str, input_size: int, template: np.ndarray, forward: Forward,
                 to_crops: ToCrops = batch_to_crops, codebook: bool = False, device: torch.device | str = "auto",
                 precision: str = "fp32", note: str = "") -> None:
        self.name = name
        self.input_size = input_size
        self.template = np.asarray(template, dtype=np.float64)  # (5, 2): FFHQ-order landmarks in its crops
        self.device = resolve_device(device)
        resolved = resolve_precision(precision, self.device)
        if precision.strip().lower() == "auto" and codebook and resolved != "fp32":
            resolved = "fp32"
        self.precision = resolved
        if resolved == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning("this CPU has no native bfloat16 instructions: bf16 will be slower than fp32")
        self._dtype = torch_dtype(resolved)
        self.net = net.eval().to(self.device, self._dtype)
        self._forward = forward
        self._to_crops = to_crops
        self._note = note

    @classmethod
    def gpen_from_file(cls, path: str | os.PathLike[str], device: torch.device | str = "auto", *,
                       precision: str = "fp32", name: str = "gpen") -> NetworkRestorer:
        """A GPEN-BFR file (any size, read from the file) with GPEN's template and truncating output."""
        from codeformer.archs.gpen import build_gpen

        target = resolve_device(device)
        resolve_precision(precision, target)  # before the file is read
        net = build_gpen(load_state_dict(path, map_location=target), source=str(path))
        size = net.config.size
        return cls(net, name=name, input_size=size, template=np.array(gpen_template(size)),
                   forward=lambda module, x: _first(module(x)), to_crops=truncated_crops, device=target,
                   precision=precision, note="GPEN template, truncated output")

    @classmethod
    def restoreformer_pp_from_file(cls, path: str | os.PathLike[str], device: torch.device | str = "auto", *,
                                   precision: str = "fp32", name: str = "restoreformer_plus_plus") -> NetworkRestorer:
        """A RestoreFormer++ checkpoint (the official Lightning file, or its bare state dict) on FFHQ 512 crops."""
        from codeformer.archs.restoreformer_pp import build_restoreformer_pp

        target = resolve_device(device)
        resolve_precision(precision, target)
        # load_state_dict unwraps Lightning's "state_dict"; the builder drops the "vqvae." prefix.
        net = build_restoreformer_pp(load_state_dict(path, map_location=target), source=str(path))
        size = 512
        return cls(net, name=name, input_size=size, template=ffhq_template(size),
                   forward=lambda module, x: _first(module(x)), codebook=True, device=target, precision=precision)

    def describe(self) -> str:
        note = f", {self._note}" if self._note else ""
        return f"{self.input_size}x{self.input_size} crops, {self.device}, {self.precision}{note}"

    def restore_crops(self, crops: Sequence[np.ndarray], *, fidelity_weight: float | None = None,
                      batch_size: int = 4) -> list[np.ndarray]:
        """Restore (S, S, 3) BGR uint8 crops; as many restored crops, in order. No fidelity weight."""
        fidelity_weight_for(self.name, fidelity_weight, default=None)  # refuses a weight
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionError("batch_size", batch_size, "must be a whole number >= 1")
        expected = (self.input_size, self.input_size, 3)
        for index, crop in enumerate(crops):
            if not isinstance(crop, np.ndarray) or crop.shape != expected or crop.dtype != np.uint8:
                got = f"{crop.shape} {crop.dtype}" if isinstance(crop, np.ndarray) else type(crop).__name__
                raise ValueError(f"face crop {index} must be a {expected} uint8 BGR array, got {got}")
        restored: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                batch = crops_to_batch(crops[start:start + batch_size], self.device)  # (n, 3, S, S) float32
                try:
                    images = self._forward(self.net, batch.to(self._dtype))  # (n, 3, S, S)
                except torch.cuda.OutOfMemoryError:
                    raise CodeFormerError(
                        f"out of {self.device.type.upper()} memory restoring {len(batch)} faces at once with "
                        f"{self.name}: use a smaller batch size (now {batch_size})") from None
                restored += self._to_crops(images)
        return restored
