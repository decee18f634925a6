"""Face restoration with a loaded CodeFormer: aligned 512x512 crops in, restored crops out, in batches.

Pre- and post-processing match the reference inference scripts exactly: BGR uint8 -> RGB float32
``(x / 255 - 0.5) / 0.5``; the output is clamped to [-1, 1], mapped back to [0, 255], rounded
half-to-even (like ``numpy.round``) and converted to BGR uint8.

The network runs in a precision mode (:mod:`codeformer.precision`: ``fp32``, ``bf16``, ``fp16`` or
``auto``) and, on request, with its generator compiled by ``torch.compile``.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from codeformer.archs import CodeFormer, VQAutoEncoder, build_codeformer, build_vqgan
from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError
from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT, NoFidelityControlError, fidelity_weight_for
from codeformer.face.alignment import FACE_SIZE, FFHQ_TEMPLATE_5
from codeformer.precision import apply_precision, cpu_has_native_bf16, describe_precision, resolve_precision
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


@runtime_checkable
class Restorer(Protocol):
    """What the pipeline needs from a face restoration network (CodeFormer, GFPGAN, ...).

    A restorer takes aligned square BGR uint8 crops of side :attr:`input_size`, aligned so that the
    5 FFHQ landmarks (eye centres, nose tip, mouth corners) land on :attr:`template`, and returns
    restored crops of the same size, in the same order.
    """

    name: str  # the registry name, or the checkpoint's file name
    input_size: int  # side of the square crops it takes and returns
    template: np.ndarray  # (5, 2) float64: where the FFHQ-order landmarks sit in its crops
    supports_fidelity: bool  # whether restore() takes a fidelity weight (CodeFormer's w)
    precision: str  # the resolved precision mode: fp32, bf16 or fp16

    def restore_crops(
        self, crops: Sequence[np.ndarray], *, fidelity_weight: float | None = None, batch_size: int = 4
    ) -> list[np.ndarray]:
        """Restore (S, S, 3) BGR uint8 crops. ``fidelity_weight=None``: the model's own default.

        A restorer without fidelity control raises :class:`CodeFormerError` for a weight that is not None.
        """
        ...

    def describe(self) -> str:
        """One line for the log: device, precision and anything else worth knowing."""
        ...


def ffhq_template(size: int) -> np.ndarray:
    """The FFHQ 5-point template for crops of side ``size`` (the 512 template, scaled)."""
    return FFHQ_TEMPLATE_5 * (size / FACE_SIZE)


# The generator pass: (code features, encoder features by resolution, w) -> images.
Decoder = Callable[[torch.Tensor, Mapping[str, torch.Tensor], float], torch.Tensor]
# Characters of a compile error kept in the one-line warning.
_ERROR_CHARS = 200


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text[:_ERROR_CHARS]}"


class _CompiledOrEager:
    """``torch.compile(function)``, falling back to ``function`` itself (with one warning) if compiling fails.

    Compilation happens on the first call (and again for each new fidelity weight, which dynamo
    specialises on); an error there, or a torch build without a working compiler, switches to the
    eager function for good.
    """

    def __init__(self, function: Decoder) -> None:
        self._eager = function
        self._compiled: Decoder | None
        try:
            self._compiled = torch.compile(function)
        except Exception as error:  # noqa: BLE001 - any failure means: run eagerly
            self._fall_back(error)

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self._compiled is not None

    def _fall_back(self, error: BaseException) -> None:
        logger.warning("torch.compile failed (%s); running the network uncompiled", _one_line(error))
        self._compiled = None

    def __call__(self, *args: object) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as error:  # noqa: BLE001
                self._fall_back(error)
        return self._eager(*args)


class FaceRestorer:
    """CodeFormer on a device, in a precision mode, restoring lists of aligned face crops (a :class:`Restorer`).

    It owns what is particular to CodeFormer: the fidelity weight ``w``, AdaIN and the precision
    modes. ``precision`` is one of ``auto``, ``fp32`` (default: the reference's arithmetic), ``bf16``
    or ``fp16`` (see :mod:`codeformer.precision`); :attr:`precision` holds the resolved mode.
    ``compile=True`` compiles the generator with ``torch.compile`` (falling back to eager with a
    warning); it pays off on GPUs, not on CPUs. The restorer converts ``net`` in place.

    ``fixed_weight`` pins ``w`` for checkpoints trained for one value (colorization: 0, inpainting: 1):
    they have no fidelity control. ``adain`` matches the codebook features' colour statistics to the
    input's, as the reference scripts do for restoration and colorization.

    Example::

        restorer = FaceRestorer.from_file("weights/CodeFormer/codeformer.pth", device="auto", precision="auto")
        restored = restorer.restore_crops(crops, fidelity_weight=0.5)
    """

    def __init__(
        self,
        net: CodeFormer,
        device: torch.device | str = "auto",
        *,
        precision: str = "fp32",
        compile: bool = False,
        name: str = "codeformer",
        fixed_weight: float | None = None,
        adain: bool = True,
    ) -> None:
        self.name = name
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning("this CPU has no native bfloat16 instructions: bf16 will be slower than fp32")
        self.net = net.eval().to(self.device)
        apply_precision(self.net, self.precision, self.device)
        self._decode: Decoder | _CompiledOrEager = _CompiledOrEager(self.net.decode) if compile else self.net.decode
        self.fixed_weight = fixed_weight
        self.adain = adain
        self.input_size = self.net.image_size
        self.template = ffhq_template(self.input_size)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "auto",
        *,
        precision: str = "fp32",
        compile: bool = False,
        name: str = "codeformer",
        fixed_weight: float | None = None,
        adain: bool = True,
    ) -> FaceRestorer:
        """Load a CodeFormer checkpoint (any official variant; hyperparameters read from the file)."""
        # Device and precision first: a wrong device or precision fails before a 370 MB file is read.
        target = resolve_device(device)
        resolve_precision(precision, target)
        net = build_codeformer(load_state_dict(path, map_location=target), source=str(path))
        logger.debug("loaded CodeFormer %s from %s on %s", net.config, path, target)
        return cls(net, target, precision=precision, compile=compile, name=name, fixed_weight=fixed_weight,
                   adain=adain)

    @property
    def supports_fidelity(self) -> bool:
        return self.fixed_weight is None

    @property
    def compiled(self) -> bool:
        """Whether the generator runs through ``torch.compile`` (False after a fallback to eager)."""
        return isinstance(self._decode, _CompiledOrEager) and self._decode.active

    def describe(self) -> str:
        """One line for the log, e.g. ``cpu, bf16 (code prediction in fp32, generator in bf16)``."""
        return f"{self.device}, {describe_precision(self.precision)}{', compiled' if self.compiled else ''}"

    @property
    def image_size(self) -> int:
        """Side length of the crops the network takes (512 for the official files)."""
        return self.input_size

    def restore_crops(
        self,
        crops: Sequence[np.ndarray],
        *,
        fidelity_weight: float | None = None,
        batch_size: int = 4,
        adain: bool | None = None,
    ) -> list[np.ndarray]:
        """Restore ``crops`` ((S, S, 3) BGR uint8); returns as many BGR uint8 crops, in the same order.

        ``fidelity_weight`` (CodeFormer's ``w``) in [0, 1] trades quality (0) for fidelity to the input
        (1); ``None`` means :data:`DEFAULT_FIDELITY_WEIGHT`, or the pinned weight of a checkpoint
        trained for one. ``adain`` overrides the restorer's AdaIN setting. ``batch_size`` crops go
        through the network in one forward pass.
        """
        w = self._weight(fidelity_weight)
        use_adain = self.adain if adain is None else adain
        self._check_batch_size(batch_size)
        self._check_crops(crops)
        restored: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                batch = crops_to_batch(crops[start : start + batch_size], self.device)  # (n, 3, S, S)
                restored += batch_to_crops(self._forward(batch, w, use_adain))
        return restored

    def _weight(self, fidelity_weight: float | None) -> float:
        weight = fidelity_weight_for(self.name, fidelity_weight, default=DEFAULT_FIDELITY_WEIGHT, fixed=self.fixed_weight)
        assert weight is not None  # CodeFormer always has a weight
        return weight

    def _forward(self, batch: torch.Tensor, w: float, adain: bool) -> torch.Tensor:
        """``self.net(batch, w, adain)[0]`` with the generator pass through :attr:`_decode` (maybe compiled)."""
        lq_feat, features = self.net.encode(batch)  # (n, 256, h, w), float32
        quant_feat = self.net.code_features(self.net.predict_logits(lq_feat), lq_feat, adain=adain)
        return self._decode(quant_feat, features, w)  # (n, 3, S, S) float32

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


class VQGANReconstructor:
    """CodeFormer's VQGAN alone, as a :class:`Restorer`: encoder, nearest codebook entries, generator.

    It shows what the codebook can represent of a face; it has no fidelity control and runs in fp32.
    """

    supports_fidelity = False
    precision = "fp32"

    def __init__(self, net: VQAutoEncoder, device: torch.device | str = "auto", *, name: str = "vqgan") -> None:
        self.name = name
        self.device = resolve_device(device)
        self.net = net.eval().to(self.device)
        self.input_size = FACE_SIZE
        self.template = ffhq_template(self.input_size)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], device: torch.device | str = "auto", *,
                  name: str = "vqgan") -> VQGANReconstructor:
        target = resolve_device(device)
        return cls(build_vqgan(load_state_dict(path, map_location=target), source=str(path)), target, name=name)

    def describe(self) -> str:
        return f"{self.device}, fp32"

    def restore_crops(
        self, crops: Sequence[np.ndarray], *, fidelity_weight: float | None = None, batch_size: int = 4
    ) -> list[np.ndarray]:
        if fidelity_weight is not None:
            raise NoFidelityControlError(self.name, fidelity_weight)
        if batch_size < 1:
            raise CodeFormerError(f"batch size {batch_size} must be at least 1")
        reconstructed: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                images, _codes = self.net(crops_to_batch(crops[start:start + batch_size], self.device))  # (n, 3, S, S)
                reconstructed += batch_to_crops(images)
        return reconstructed
