"""Background and face upsampling with any single-image model spandrel can load, tiled.

The reference (``inference_codeformer.py --bg_upsampler realesrgan``) builds Real-ESRGAN x2plus by
hand and runs it through BasicSR's ``RealESRGANer``. Here the network comes from spandrel, which
detects the architecture and its hyperparameters from the checkpoint, so the official
``RealESRGAN_x2plus.pth`` and a user's own upscaler (any scale, any architecture spandrel knows)
go through the same code.

Large pictures are processed in tiles, as ``RealESRGANer.tile_process`` does: each ``tile`` x
``tile`` block is run with ``tile_pad`` pixels of surrounding context (clipped at the picture's
border) and only its centre is kept. The picture stays on the CPU in its own dtype; one tile at a
time is moved to the device, and each output tile is converted back to the picture's dtype and
written into a preallocated CPU array at once. Memory is therefore bounded by one tile on the
device and the uint8/uint16 output on the CPU, with no full-size float copy anywhere.

Differences from ``RealESRGANer``, on purpose:

- 16-bit is decided by the dtype (``uint16``), not by ``max(img) > 256``.
- The output is exactly ``round(H * outscale) x round(W * outscale)`` (the reference truncates).
- Alpha is resized with ``cv2.INTER_LINEAR`` straight to the final size (one interpolation)
  instead of running through the network (the reference's default) or being resized twice.
- Size requirements (x2plus's pixel-unshuffle wants even sizes) are met per tile by spandrel's
  padding (reflect, then crop); no ``pre_pad`` is added, as the reference's CodeFormer call uses 0.

Example::

    upsampler = load_upsampler("weights/realesrgan/RealESRGAN_x2plus.pth", device="cuda", tile=400)
    logger.info("background upsampler: %s", upsampler.describe())
    big = upsampler.upscale(picture, outscale=2)   # (round(2H), round(2W), 3) uint8
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import spandrel
import torch

from codeformer.errors import CodeFormerError, OptionError
from codeformer.progress import Progress
from codeformer.weights import load_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_TILE_PAD",
    "Tile",
    "Upsampler",
    "load_upsampler",
    "tile_grid",
]

# Input pixels per tile side: the reference's --bg_tile default.
DEFAULT_TILE = 400
# Context pixels on each side of a tile, cropped off after the network: the reference's tile_pad.
DEFAULT_TILE_PAD = 40
# spandrel purposes that map an RGB picture to an RGB picture of the whole scene: super-resolution
# and 1x restoration (denoise, JPEG). "FaceSR" models expect aligned face crops and are refused.
ACCEPTED_PURPOSES = ("SR", "Restoration")
# Channels the network must take and give: RGB.
_RGB_CHANNELS = 3
# Full-scale value per accepted picture dtype; pixels are divided by it to reach [0, 1].
_MAX_VALUE: dict[np.dtype, int] = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
# ITU-R BT.601 luma weights for (R, G, B): what cv2.COLOR_BGR2GRAY uses, as the reference does
# when it turns the network's RGB output back into a gray picture.
_LUMA_RGB = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Tile:
    """One tile: the block it writes (``y0:y1, x0:x1``) and the padded block it reads, in input pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    pad_y0: int
    pad_y1: int
    pad_x0: int
    pad_x1: int


def tile_grid(height: int, width: int, tile: int, tile_pad: int) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` picture, row by row, as ``RealESRGANer.tile_process``.

    ``tile == 0`` means one tile holding the whole picture. Context is clipped at the border
    (no padding is invented there), so edge tiles are smaller.
    """
    if tile <= 0:
        return [Tile(0, height, 0, width, 0, height, 0, width)]
    tiles = []
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            tiles.append(Tile(
                y0, y1, x0, x1,
                max(y0 - tile_pad, 0), min(y1 + tile_pad, height),
                max(x0 - tile_pad, 0), min(x1 + tile_pad, width),
            ))
    return tiles


def _target_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """The output (height, width) for ``outscale``, validated."""
    if isinstance(outscale, bool) or not isinstance(outscale, numbers.Real) or not (
        math.isfinite(outscale) and outscale > 0
    ):
        raise CodeFormerError(f"upscale factor must be a positive number, got {outscale!r}")
    target = (round(height * outscale), round(width * outscale))
    if min(target) < 1:
        raise CodeFormerError(
            f"upscaling a {width}x{height} picture by {outscale} gives an empty picture: use a larger factor"
        )
    return target


def _round_up(value: int, step: int) -> int:
    """``value`` rounded up to a multiple of ``step``."""
    return -(-value // step) * step


def _check_image(image: np.ndarray) -> None:
    """Refuse what :meth:`Upsampler.upscale` cannot take, with a message that says what it takes."""
    accepted = "a BGR uint8 or uint16 picture shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
    if not isinstance(image, np.ndarray):
        raise CodeFormerError(f"the upsampler needs {accepted}, got {type(image).__name__}")
    channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    if not channels_ok or image.dtype not in _MAX_VALUE:
        raise CodeFormerError(f"the upsampler needs {accepted}, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise CodeFormerError(f"the upsampler got an empty picture (shape {image.shape}); check the input file")


def _check_descriptor(descriptor: object, source: str) -> spandrel.ImageModelDescriptor:
    """The descriptor if it is an RGB -> RGB whole-picture model, else a CodeFormerError naming ``source``."""
    accepted = (
        "use 'realesrgan' or a single-image super-resolution/restoration model with 3 input and 3 output "
        "channels (e.g. ESRGAN, Real-ESRGAN, SwinIR, HAT, SPAN, Compact)"
    )
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        name = getattr(getattr(descriptor, "architecture", None), "name", type(descriptor).__name__)
        raise CodeFormerError(f"{source} is a {name} model that does not map one picture to another: {accepted}")
    arch = descriptor.architecture.name
    if descriptor.purpose not in ACCEPTED_PURPOSES:
        raise CodeFormerError(
            f"{source} is a {arch} {descriptor.purpose} model, not a whole-picture upscaler: {accepted}"
        )
    if (descriptor.input_channels, descriptor.output_channels) != (_RGB_CHANNELS, _RGB_CHANNELS):
        raise CodeFormerError(
            f"{source} is a {arch} model with {descriptor.input_channels} input and "
            f"{descriptor.output_channels} output channels: {accepted}"
        )
    return descriptor


def _load_descriptor(path: Path) -> spandrel.ImageModelDescriptor:
    """Read ``path`` safely (weights only) and let spandrel detect and build its architecture."""
    state_dict = load_state_dict(path, map_location="cpu")
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        sample = ", ".join(list(state_dict)[:3])
        raise CodeFormerError(
            f"spandrel could not detect the architecture of {path} (tensors {sample}, ...): use "
            "'realesrgan' or a model file of an architecture spandrel supports (ESRGAN, Real-ESRGAN, "
            "SwinIR, HAT, SPAN, Compact, ...)"
        ) from None
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AssertionError) as error:
        # A state dict that passes detection but whose tensors do not fit the architecture.
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CodeFormerError(
            f"spandrel detected an architecture in {path} but could not load it ({first_line}): the file "
            "is incomplete or modified; use the original model file"
        ) from None
    return _check_descriptor(descriptor, str(path))


def _choose_half(half: bool | None, device: torch.device, descriptor: spandrel.ImageModelDescriptor) -> bool:
    """fp16 on CUDA unless told otherwise; fp32 on the CPU and for models that cannot run in fp16."""
    wanted = device.type == "cuda" if half is None else half
    if wanted and device.type == "cpu":
        logger.warning("fp16 is not used on the CPU: the upsampler runs in fp32")
        return False
    if wanted and not descriptor.supports_half:
        logger.warning("%s does not support fp16: the upsampler runs in fp32", descriptor.architecture.name)
        return False
    return wanted


class Upsampler:
    """A loaded spandrel image model, its device and precision, and how to tile pictures through it."""

    def __init__(
        self,
        descriptor: spandrel.ImageModelDescriptor,
        *,
        device: torch.device | str,
        tile: int = DEFAULT_TILE,
        tile_pad: int = DEFAULT_TILE_PAD,
        half: bool | None = None,
        source: str = "model",
    ) -> None:
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
            raise CodeFormerError(f"tile size must be a whole number >= 0 (0 = no tiling), got {tile!r}")
        if isinstance(tile_pad, bool) or not isinstance(tile_pad, int) or tile_pad < 0:
            raise CodeFormerError(f"tile padding must be a whole number >= 0, got {tile_pad!r}")
        descriptor = _check_descriptor(descriptor, source)
        self.device = torch.device(device)
        self.half = _choose_half(half, self.device, descriptor)
        if tile and descriptor.tiling == spandrel.ModelTiling.INTERNAL:
            logger.info("%s tiles internally: external tiling is switched off", descriptor.architecture.name)
            tile = 0
        elif tile and descriptor.tiling == spandrel.ModelTiling.DISCOURAGED:
            logger.warning(
                "%s may show seams when tiled: use tile 0 (no tiling) if memory allows", descriptor.architecture.name
            )
        # Tiles start at multiples of the model's size step, so a pixel-unshuffle model (x2plus) groups
        # pixels in every tile exactly as it would in the whole picture.
        step = descriptor.size_requirements.multiple_of
        self.tile = _round_up(tile, step)
        self.tile_pad = _round_up(tile_pad, step)
        descriptor.to(self.device, torch.float16 if self.half else torch.float32).eval()
        self._descriptor = descriptor
        if self.device.type == "cpu":
            logger.warning("the upsampler runs on the CPU: this is slow (minutes for a large picture)")

    @property
    def scale(self) -> int:
        """The network's own scale factor (2 for RealESRGAN_x2plus)."""
        return self._descriptor.scale

    @property
    def descriptor(self) -> spandrel.ImageModelDescriptor:
        """The spandrel model descriptor (already on :attr:`device`, in the chosen precision)."""
        return self._descriptor

    def describe(self) -> str:
        """One line for the log: architecture, scale, precision, tiling."""
        tags = f" ({', '.join(self._descriptor.tags)})" if self._descriptor.tags else ""
        tiling = f"tile {self.tile} (pad {self.tile_pad})" if self.tile else "untiled"
        precision = "fp16" if self.half else "fp32"
        return f"{self._descriptor.architecture.name} x{self.scale}{tags}, {precision}, {tiling}, {self.device}"

    @torch.inference_mode()
    def upscale(self, image: np.ndarray, outscale: float, *, progress: bool = False) -> np.ndarray:
        """Upscale a BGR picture to exactly ``(round(H * outscale), round(W * outscale))``.

        ``image``: ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, or gray ``(H, W)`` / ``(H, W, 1)``,
        ``uint8`` or ``uint16``. The result has the same layout and dtype. Gray is run as three
        equal channels and turned back into gray (BT.601 luma). Alpha is resized bilinearly. When
        ``outscale`` differs from :attr:`scale`, the network's output is resized with Lanczos.
        """
        _check_image(image)
        height, width = image.shape[:2]
        target_h, target_w = _target_size(height, width, outscale)
        single_channel = image.ndim == 2 or image.shape[2] == 1
        color = image.reshape(height, width) if single_channel else image[:, :, :_RGB_CHANNELS]
        has_alpha = image.ndim == 3 and image.shape[2] == 4

        model_size = (height * self.scale, width * self.scale)
        color_channels = () if single_channel else (_RGB_CHANNELS,)
        if model_size == (target_h, target_w):
            # Tiles are written straight into the result (its colour channels when there is alpha).
            result_channels = () if single_channel else (image.shape[2],)
            result = np.empty((target_h, target_w, *result_channels), dtype=image.dtype)
            self._upscale_into(color, result if single_channel else result[:, :, :_RGB_CHANNELS], progress=progress)
        else:
            # Network scale != requested scale: resize once afterwards, with Lanczos as the reference.
            network_out = np.empty((*model_size, *color_channels), dtype=image.dtype)
            self._upscale_into(color, network_out, progress=progress)
            resized = _resize(network_out, (target_h, target_w), cv2.INTER_LANCZOS4)
            del network_out
            if has_alpha:
                result = np.empty((target_h, target_w, image.shape[2]), dtype=image.dtype)
                result[:, :, :_RGB_CHANNELS] = resized
            else:
                result = resized
        if has_alpha:
            alpha = np.ascontiguousarray(image[:, :, 3])
            result[:, :, 3] = _resize(alpha, (target_h, target_w), cv2.INTER_LINEAR)
        return _restore_layout(result, image)

    def _upscale_into(self, color: np.ndarray, out: np.ndarray, *, progress: bool) -> None:
        """Run ``color`` (H, W, 3) BGR or (H, W) gray through the network, tile by tile, into ``out``."""
        height, width = color.shape[:2]
        tiles = tile_grid(height, width, self.tile, self.tile_pad)
        max_value = _MAX_VALUE[color.dtype]
        with Progress(total=len(tiles), desc="upsampling", unit="tile", enabled=progress and len(tiles) > 1,
                      per_item=False, leave=False) as bar:
            for tile in tiles:
                self._upscale_tile(color, out, tile, max_value)
                bar.update(1)

    def _upscale_tile(self, color: np.ndarray, out: np.ndarray, tile: Tile, max_value: int) -> None:
        """One tile of ``color`` through the network into its place in ``out`` (its padding cut away)."""
        scale = self.scale
        patch = color[tile.pad_y0:tile.pad_y1, tile.pad_x0:tile.pad_x1]
        output = self._run_patch(patch, max_value)  # (h*s, w*s, 3) or (h*s, w*s), out.dtype values
        top, left = (tile.y0 - tile.pad_y0) * scale, (tile.x0 - tile.pad_x0) * scale
        rows, cols = (tile.y1 - tile.y0) * scale, (tile.x1 - tile.x0) * scale
        out[tile.y0 * scale:tile.y1 * scale, tile.x0 * scale:tile.x1 * scale] = output[top:top + rows, left:left + cols]

    def _run_patch(self, patch: np.ndarray, max_value: int) -> np.ndarray:
        """One padded tile through the network; returns integer pixel values on the CPU, same layout."""
        x = _patch_to_tensor(patch, self.device, max_value)  # (1, 3, h, w) RGB in [0, 1], fp32
        x = x.to(torch.float16 if self.half else torch.float32)
        try:
            y = self._descriptor(x)  # (1, 3, h*s, w*s) RGB in [0, 1]; spandrel pads and crops
        except torch.OutOfMemoryError:
            raise OptionError(
                "tile", self.tile or "off",
                f"out of {self.device.type.upper()} memory upsampling a {patch.shape[1]}x{patch.shape[0]} tile; "
                "use a smaller tile",
            ) from None
        return _tensor_to_pixels(y, gray=patch.ndim == 2, max_value=max_value)


def _patch_to_tensor(patch: np.ndarray, device: torch.device, max_value: int) -> torch.Tensor:
    """A BGR (h, w, 3) or gray (h, w) integer tile -> (1, 3, h, w) RGB float32 in [0, 1] on ``device``."""
    # uint16 is widened on the CPU (tile-sized) because device kernels for uint16 are sparse.
    raw = patch.astype(np.int32) if patch.dtype == np.uint16 else np.ascontiguousarray(patch)
    t = torch.from_numpy(raw).to(device)  # (h, w[, 3]); uint8 moves at a quarter of float32's bytes
    if t.ndim == 2:
        t = t.unsqueeze(0).expand(_RGB_CHANNELS, -1, -1)  # (3, h, w): gray as three equal channels
    else:
        t = t.permute(2, 0, 1).flip(0)  # (3, h, w), BGR -> RGB
    # Divide in fp32: 65535 overflows fp16 (max 65504), so any fp16 cast comes after.
    return t.unsqueeze(0).to(torch.float32).div_(max_value)  # (1, 3, h, w)


def _tensor_to_pixels(y: torch.Tensor, *, gray: bool, max_value: int) -> np.ndarray:
    """(1, 3, H, W) RGB in [0, 1] -> (H, W, 3) BGR or (H, W) gray integer pixels on the CPU."""
    y = y[0].float().clamp_(0, 1)  # (3, H, W)
    if gray:
        luma = torch.tensor(_LUMA_RGB, dtype=y.dtype, device=y.device)
        y = torch.einsum("c,chw->hw", luma, y)  # (H, W)
    else:
        y = y.flip(0).permute(1, 2, 0)  # (H, W, 3), RGB -> BGR
    # Rounded on the device and moved as integers: uint8 directly, uint16 through int32.
    integer_type = torch.uint8 if max_value == _MAX_VALUE[np.dtype(np.uint8)] else torch.int32
    return y.mul(max_value).round_().to(integer_type).cpu().numpy()


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """cv2.resize to (height, width)."""
    height, width = size
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _restore_layout(result: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Give a (H, W, 1) input its trailing channel axis back; other layouts are already right."""
    if image.ndim == 3 and image.shape[2] == 1:
        return result[:, :, np.newaxis]
    return result


def load_upsampler(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str,
    tile: int = DEFAULT_TILE,
    tile_pad: int = DEFAULT_TILE_PAD,
    half: bool | None = None,
) -> Upsampler:
    """Load a background/face upsampler from any model file spandrel can load (``.pth``, ``.safetensors``, ...).

    2x, 4x or 1x models; :mod:`codeformer.registry` resolves names such as ``"realesrgan"`` to their
    file. ``half=None`` means fp16 on CUDA and fp32 elsewhere; ``half=False`` forces fp32 (some GPUs
    give black pictures in fp16). ``tile=0`` runs whole pictures at once.

    >>> upsampler = load_upsampler("weights/realesrgan/RealESRGAN_x2plus.pth", device="cuda")  # doctest: +SKIP
    >>> upsampler.describe()  # doctest: +SKIP
    'ESRGAN x2 (64nf, 23nb, unshuffle), fp16, tile 400 (pad 40), cuda'
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CodeFormerError(f"upsampler model {str(path)!r} does not exist: check the path")
    descriptor = _load_descriptor(path)
    upsampler = Upsampler(descriptor, device=device, tile=tile, tile_pad=tile_pad, half=half, source=str(path))
    logger.info("upsampler %s: %s", path.name, upsampler.describe())
    return upsampler
