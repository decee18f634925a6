"""Face restoration with GFPGAN, RestoreFormer and the other face models spandrel identifies from their file.

spandrel reads a checkpoint and builds its network; :class:`SpandrelRestorer` runs it as a
:class:`~codeformer.restorer.Restorer`: aligned BGR uint8 crops in, restored crops out, in batches.

Supported (spandrel 0.4.2's face-restoration architectures):

- GFPGAN v1.2, v1.3 and v1.4 (``GFPGANv1Clean``; TencentARC/GFPGAN, Apache-2.0), 512x512 crops;
- RestoreFormer as released with GFPGAN (``RestoreFormer.pth``), 512x512 crops;
- CodeFormer, when the optional ``spandrel-extra-arches`` package is installed; the network then
  takes the fidelity weight ``w``. Without that package, CodeFormer files are for
  :class:`codeformer.restorer.FaceRestorer`.

RestoreFormer++ is not among spandrel 0.4.2's architectures: its files are refused, with a hint.

Pre- and post-processing are those of GFPGAN's own inference (``GFPGANer.enhance``, which
RestoreFormer's and CodeFormer's scripts share): BGR uint8 -> RGB float32 ``(x / 255 - 0.5) / 0.5``;
the output is clamped to [-1, 1], mapped to [0, 255], rounded half-to-even and converted to BGR
uint8 -- exactly :func:`~codeformer.restorer.crops_to_batch` / :func:`~codeformer.restorer.batch_to_crops`.
The network is therefore called directly, not through spandrel's ``descriptor(image)``, whose
GFPGAN and CodeFormer calls feed [0, 1] pixels to networks trained on [-1, 1].

Determinism: GFPGAN's StyleGAN2 decoder adds fresh Gaussian noise to every style convolution by
default (``randomize_noise=True``, also in ``GFPGANer``), so the same face came out slightly
different on every call and every video frame. Here it adds the fixed noise maps stored in the
checkpoint instead (``randomize_noise=False``; the buffers ``stylegan_decoder.noises.noise0..14``,
which spandrel loads strictly from the file): the same crop always gives the same bytes.
RestoreFormer and CodeFormer draw no random numbers at inference.

Example::

    restorer = SpandrelRestorer.from_file("weights/gfpgan/GFPGANv1.4.pth", device="auto")
    logger.info("face restorer: %s", restorer.describe())
    restored = restorer.restore_crops(crops)        # crops: (512, 512, 3) BGR uint8, FFHQ-aligned
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import spandrel
import torch
from torch import nn

from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError, OptionError
from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT, fidelity_weight_for
from codeformer.precision import cpu_has_native_bf16, resolve_precision, torch_dtype
from codeformer.restorer import (
    batch_to_crops,
    crops_to_batch,
    ffhq_template,
)
from codeformer.weights import load_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "FACE_ARCHITECTURES",
    "FaceArchitecture",
    "SpandrelRestorer",
    "check_face_descriptor",
    "load_face_descriptor",
]

# spandrel's purpose for networks that restore aligned face crops (the others: "SR", "Restoration", ...).
FACE_PURPOSE = "FaceSR"
# Words for spandrel's purposes in messages.
_PURPOSE_WORDS: Mapping[str, str] = {
    "SR": "super-resolution",
    "Restoration": "image restoration",
    "FaceSR": "face restoration",
    "Inpainting": "inpainting",
}
# Channels the crops have, in and out: RGB.
_RGB_CHANNELS = 3
# CodeFormer (spandrel-extra-arches) fixes its latent grid at 16x16 tokens, 32 pixels each.
_CODEFORMER_SIZE = 512
# What the refusals say is expected.
_EXPECTED = (
    "use a face restoration model: GFPGAN v1.2-v1.4 (GFPGANv1.4.pth), RestoreFormer (RestoreFormer.pth from "
    "the GFPGAN releases) or, with spandrel-extra-arches installed, CodeFormer"
)
# Characters of a loader error kept in the one-line message.
_ERROR_CHARS = 200

def _gfpgan_forward(net: nn.Module, images: torch.Tensor, weight: float | None) -> torch.Tensor:
    # randomize_noise=False: the checkpoint's stored noise maps (1, 1, r, r), broadcast over the
    # batch, instead of torch.randn per call; return_rgb=False skips the intermediate RGB outputs
    # that only training losses use (GFPGANer passes it too).
    image, _ = net(images, return_rgb=False, randomize_noise=False)
    return image


def _restoreformer_forward(net: nn.Module, images: torch.Tensor, weight: float | None) -> torch.Tensor:
    return net(images)[0]


def _codeformer_forward(net: nn.Module, images: torch.Tensor, weight: float | None) -> torch.Tensor:
    return net(images, weight=weight)[0]  # AdaIN is always on in spandrel's CodeFormer, as in the reference


@dataclass(frozen=True)
class FaceArchitecture:
    """How to run one spandrel face architecture on normalised crops."""

    # (network, (N, 3, S, S) RGB in [-1, 1], fidelity weight or None) -> (N, 3, S, S) RGB, about [-1, 1]
    forward: Callable[[nn.Module, torch.Tensor, float | None], torch.Tensor]
    input_size: Callable[[nn.Module], int]  # side of the square crops, read from the built network
    # The fidelity weight used when none is given; None: the network has no fidelity control.
    default_fidelity: float | None
    # Whether the network picks codebook entries: bfloat16 rounding can change those picks (see
    # codeformer.precision), so "auto" keeps such networks in fp32.
    codebook: bool
    note: str = ""  # for describe()


# spandrel architecture id -> how to run it.
FACE_ARCHITECTURES: Mapping[str, FaceArchitecture] = {
    "GFPGAN": FaceArchitecture(
        _gfpgan_forward, lambda net: 2**net.log_size, None, codebook=False, note="fixed noise"
    ),
    "RestoreFormer": FaceArchitecture(
        _restoreformer_forward, lambda net: net.encoder.resolution, None, codebook=True
    ),
    "CodeFormer": FaceArchitecture(
        _codeformer_forward, lambda net: _CODEFORMER_SIZE, DEFAULT_FIDELITY_WEIGHT, codebook=True
    ),
}


@functools.cache
def _extended_registry() -> spandrel.ArchRegistry | None:
    """spandrel's registry plus spandrel-extra-arches' (CodeFormer among them), or None without that package.

    A copy: the library leaves spandrel's global registry as it found it.
    """
    try:
        with warnings.catch_warnings():
            # spandrel-extra-arches 0.2.0 calls torch.jit.script at import, which new torch deprecates:
            # nothing a user of this library can act on.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            import spandrel_extra_arches

        registry = spandrel.MAIN_REGISTRY.copy()
        registry.add(*spandrel_extra_arches.EXTRA_REGISTRY, ignore_duplicates=True)
    except ImportError:
        return None
    except Exception as error:  # noqa: BLE001 - a broken optional plugin must not stop GFPGAN from loading
        logger.warning("spandrel-extra-arches is installed but unusable (%s): CodeFormer files are not "
                       "identified through spandrel", _first_line(error))
        return None
    return registry


def _registry() -> spandrel.ArchRegistry:
    extended = _extended_registry()
    return spandrel.MAIN_REGISTRY if extended is None else extended


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:_ERROR_CHARS]


def _unidentified_hint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What an unidentified file probably is, when its tensor names say so; else a sample of them."""
    if "position_emb" in state_dict and "idx_pred_layer.1.weight" in state_dict:
        return (
            "it is a CodeFormer checkpoint, which spandrel identifies only with spandrel-extra-arches "
            "installed: load it as a CodeFormer model instead"
        )
    if any(key.startswith("vqvae.") for key in state_dict):
        # RestoreFormer's and RestoreFormer++'s own training checkpoints keep the network under "vqvae.".
        return (
            "it looks like a RestoreFormer/RestoreFormer++ training checkpoint, which spandrel 0.4.2 cannot "
            "load"
        )
    return f"tensors {', '.join(list(state_dict)[:3])}, ..."


def load_face_descriptor(path: str | os.PathLike[str]) -> spandrel.ImageModelDescriptor:
    """Read ``path`` safely (weights only) and let spandrel build its face restoration network, on the CPU.

    Refuses, with a one-line :class:`CodeFormerError`, a file that is not a checkpoint, one spandrel
    cannot identify, and one that is not a face restoration model of :data:`FACE_ARCHITECTURES`.
    """
    path = Path(path)
    state_dict = load_state_dict(path, map_location="cpu")
    try:
        descriptor = spandrel.ModelLoader(device="cpu", registry=_registry()).load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise CodeFormerError(
            f"spandrel could not identify the architecture of {path} ({_unidentified_hint(state_dict)}): {_EXPECTED}"
        ) from None
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AssertionError) as error:
        # Tensor names that pass detection but shapes or counts that do not fit the architecture.
        raise CodeFormerError(
            f"spandrel identified an architecture in {path} but could not load it ({_first_line(error)}): the "
            "file is incomplete or modified; use the original model file"
        ) from None
    check_face_descriptor(descriptor, str(path))
    return descriptor


def check_face_descriptor(descriptor: object, source: str) -> FaceArchitecture:
    """How to run ``descriptor`` if it is a supported RGB face restorer, else a one-line CodeFormerError."""
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        kind = getattr(getattr(descriptor, "architecture", None), "name", type(descriptor).__name__)
        raise CodeFormerError(f"{source} is a {kind} model that does not map one picture to another: {_EXPECTED}")
    arch = descriptor.architecture
    if descriptor.purpose != FACE_PURPOSE:
        purpose = _PURPOSE_WORDS.get(descriptor.purpose, descriptor.purpose)
        scale = f" x{descriptor.scale}" if descriptor.scale != 1 else ""
        raise CodeFormerError(f"{source} is {arch.name}{scale}, a {purpose} model, not a face restorer: {_EXPECTED}")
    face_arch = FACE_ARCHITECTURES.get(str(arch.id))
    if face_arch is None:
        raise CodeFormerError(f"{source} is a {arch.name} face model, which this restorer cannot run: {_EXPECTED}")
    channels = (descriptor.input_channels, descriptor.output_channels)
    if channels != (_RGB_CHANNELS, _RGB_CHANNELS):
        raise CodeFormerError(
            f"{source} is a {arch.name} model with {channels[0]} input and {channels[1]} output channels, "
            f"not RGB: {_EXPECTED}"
        )
    return face_arch


def _model_precision(
    requested: str, device: torch.device, descriptor: spandrel.ImageModelDescriptor, face_arch: FaceArchitecture
) -> str:
    """The precision mode ``requested`` means for this network on ``device``; refuses what the network cannot run."""
    precision = resolve_precision(requested, device)
    arch = descriptor.architecture.name
    if requested.strip().lower() == "auto":
        # auto is the fastest mode that is safe: never one spandrel marks unsupported, never bf16 for
        # a network that picks codebook entries.
        unsafe_bf16 = precision == "bf16" and (face_arch.codebook or not descriptor.supports_bfloat16)
        unsafe_fp16 = precision == "fp16" and not descriptor.supports_half
        return "fp32" if unsafe_bf16 or unsafe_fp16 else precision
    if precision == "fp16" and not descriptor.supports_half:
        raise OptionError(
            "precision", requested, f"{arch} does not run in float16 (spandrel marks it unsafe); use bf16 or fp32"
        )
    if precision == "bf16" and not descriptor.supports_bfloat16:
        raise OptionError(
            "precision", requested, f"{arch} does not run in bfloat16 (spandrel marks it unsafe); use fp32"
        )
    if precision == "bf16" and face_arch.codebook:
        logger.warning("%s picks codebook entries in bfloat16: some may differ from fp32 and change the face", arch)
    return precision


def _check_crops(crops: Sequence[np.ndarray], size: int) -> None:
    expected = (size, size, _RGB_CHANNELS)
    for i, crop in enumerate(crops):
        if not isinstance(crop, np.ndarray) or crop.shape != expected or crop.dtype != np.uint8:
            got = f"{crop.shape} {crop.dtype}" if isinstance(crop, np.ndarray) else type(crop).__name__
            raise ValueError(
                f"face crop {i} must be a {expected} uint8 BGR array, got {got}; resize and convert crops first"
            )


class SpandrelRestorer:
    """A spandrel face restoration network (GFPGAN, RestoreFormer, ...) on a device, as a :class:`Restorer`.

    ``precision``: ``fp32`` (default, the reference's arithmetic), ``bf16`` or ``fp16`` where spandrel
    marks the network safe for them (GFPGAN, RestoreFormer and CodeFormer: bf16, not fp16), or
    ``auto`` (see :func:`codeformer.precision.resolve_precision`; fp32 for codebook networks). The
    whole network runs in that dtype, in NCHW. The restorer moves and converts ``descriptor`` in place.

    Batches give the same faces as single crops up to float rounding: batched and single
    convolutions sum in different orders (GFPGAN's modulated convolutions are grouped per face), which
    moves a few output pixels by one level of 255.

    Example::

        restorer = SpandrelRestorer.from_file("weights/gfpgan/GFPGANv1.4.pth", precision="auto")
        restored = restorer.restore_crops(crops, batch_size=8)
    """

    def __init__(
        self,
        descriptor: spandrel.ImageModelDescriptor,
        device: torch.device | str = "auto",
        *,
        precision: str = "fp32",
        name: str | None = None,
    ) -> None:
        self.name = name or descriptor.architecture.name
        self._arch = check_face_descriptor(descriptor, self.name)
        self.device = resolve_device(device)
        self.precision = _model_precision(precision, self.device, descriptor, self._arch)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning("this CPU has no native bfloat16 instructions: bf16 will be slower than fp32")
        self._dtype = torch_dtype(self.precision)
        self._descriptor = descriptor.to(self.device, self._dtype).eval()
        self.input_size: int = self._arch.input_size(descriptor.model)
        self.template: np.ndarray = ffhq_template(self.input_size)  # (5, 2) float64
        self.supports_fidelity: bool = self._arch.default_fidelity is not None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "auto",
        *,
        precision: str = "fp32",
        name: str | None = None,
    ) -> SpandrelRestorer:
        """Load a face restoration checkpoint spandrel identifies; ``name`` defaults to the file's name."""
        # Device and precision first: a wrong device or precision fails before a 350 MB file is read.
        target = resolve_device(device)
        resolve_precision(precision, target)
        descriptor = load_face_descriptor(path)
        restorer = cls(descriptor, target, precision=precision, name=name or Path(path).name)
        logger.debug("loaded %s from %s: %s", descriptor.architecture.name, path, restorer.describe())
        return restorer

    @property
    def descriptor(self) -> spandrel.ImageModelDescriptor:
        """The spandrel model descriptor (on :attr:`device`, in :attr:`precision`)."""
        return self._descriptor

    @property
    def architecture(self) -> str:
        """spandrel's name for the network's architecture, e.g. ``GFPGAN``."""
        return self._descriptor.architecture.name

    def describe(self) -> str:
        """One line for the log, e.g. ``GFPGAN, 512x512 crops, cpu, fp32, fixed noise``."""
        note = f", {self._arch.note}" if self._arch.note else ""
        return f"{self.architecture}, {self.input_size}x{self.input_size} crops, {self.device}, {self.precision}{note}"

    def restore_crops(
        self, crops: Sequence[np.ndarray], *, fidelity_weight: float | None = None, batch_size: int = 4
    ) -> list[np.ndarray]:
        """Restore ``crops`` ((S, S, 3) BGR uint8, S = :attr:`input_size`); as many restored crops, in order.

        ``fidelity_weight`` in [0, 1] (CodeFormer's ``w``) only for networks that have one
        (:attr:`supports_fidelity`); ``None``: the network's default. ``batch_size`` crops go through
        the network in one forward pass.
        """
        weight = self._weight(fidelity_weight)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionError("batch_size", batch_size, "must be a whole number >= 1")
        _check_crops(crops, self.input_size)
        net = self._descriptor.model
        restored: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                batch = crops_to_batch(crops[start : start + batch_size], self.device)  # (n, 3, S, S) float32
                try:
                    images = self._arch.forward(net, batch.to(self._dtype), weight)  # (n, 3, S, S)
                except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from torch 2.5 on
                    raise CodeFormerError(
                        f"out of {self.device.type.upper()} memory restoring {len(batch)} faces at once with "
                        f"{self.architecture}: use a smaller batch size (now {batch_size})"
                    ) from None
                restored += batch_to_crops(images)
        return restored

    def _weight(self, fidelity_weight: float | None) -> float | None:
        """The weight to pass to the network, checked."""
        return fidelity_weight_for(self.name, fidelity_weight, default=self._arch.default_fidelity)
