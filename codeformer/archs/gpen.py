"""GPEN-BFR: a StyleGAN2 generator fed by a face encoder, for blind face restoration (inference only).

Yang et al., "GAN Prior Embedded Network for Blind Face Restoration in the Wild", CVPR 2021.
Layer facts follow ``FullGenerator`` in ``face_model/gpen_model.py`` of yangxy/GPEN; parameter and
buffer names match the official files, so GPEN-BFR-256.pth, GPEN-BFR-512.pth, GPEN-BFR-1024.pth and
GPEN-BFR-2048.pth load strictly. The original's custom CUDA ops (fused bias + leaky ReLU, upfirdn2d)
are written here in plain PyTorch.

The forward pass:

1. the encoder (``ecd0`` .. ``ecd<L-2>``, L = log2(size)) turns the face (N, 3, S, S) into feature
   maps at S, S/2, ..., 4, each a leaky-ReLU conv (strided, anti-aliased by a blur, below S);
2. ``final_linear`` maps the 4x4 features to a latent, the StyleGAN2 mapping network
   (``generator.style``: pixel norm and ``n_mlp`` linear layers) to the style ``w`` that every
   generator layer uses;
3. the StyleGAN2 synthesis network starts from a learned 4x4 constant; where StyleGAN2 injects
   random noise, GPEN concatenates the encoder's feature map of the same resolution, scaled by a
   learned scalar. RGB outputs of every resolution are upsampled and summed (skip architecture).

Determinism: the original's ``FullGenerator.forward`` passes an encoder feature map to every one of
the ``2 * L - 3`` noise slots of its generator, so no layer ever draws random noise (the generator's
own ``torch.randn`` fallback is unreachable through it); this network has no random path at all, so
the same input always gives the same output (no flicker between video frames).

Input and output (``GPEN.forward``): (N, 3, S, S) RGB in [-1, 1] -> (N, 3, S, S) RGB, nominally
[-1, 1] but unclamped; S = ``config.size`` (256, 512, 1024 or 2048) and nothing else.

Pre/post-processing of the original inference code (``face_model/face_gan.py``, ``FaceGAN``):

- the aligned BGR uint8 crop is ``cv2.resize``d to (S, S) (bilinear; a no-op on S x S crops), made a
  float32 tensor ``x / 255.``, normalised ``(x - 0.5) / 0.5``, HWC -> CHW, channels flipped BGR -> RGB;
- the output goes ``y * 0.5 + 0.5``, CHW -> HWC, RGB -> BGR, ``np.clip(y, 0, 1) * 255.0`` and
  ``.astype(np.uint8)``: truncation toward zero, NOT rounding.
- ModelScope's pipeline for GPEN-BFR-1024 (``damo/cv_gpen_image-portrait-enhancement-hires``) feeds
  RGB crops without the flip: the network sees RGB in [-1, 1] either way, with the same truncation.

Alignment (``align_faces.py``, ``face_enhancement.py``): a similarity transform (Umeyama, with
scale) from the 5 RetinaFace points onto :func:`codeformer.face.alignment.gpen_template`
(``get_reference_facial_points((S, S), inner_padding_factor=0.25, outer_padding=(0, 0),
default_square=True)``, cast to float32),
applied by ``cv2.warpAffine(..., flags=3)`` (INTER_AREA, which warpAffine treats as bilinear) with a
black constant border. Around the network the
original skips detections scoring under 0.9, blurs the restored crop with a 3x3 Gaussian for faces
whose box is under 100 px, blends ``alpha * restored + (1 - alpha) * crop`` (``--alpha``, default 1)
and pastes back with a face-parsing mask.

Weights (the files, their download addresses and licence are in :data:`codeformer.weights.WEIGHTS`;
no checksums are published):

- GPEN-BFR-256: ``size=256, channel_multiplier=1, narrow=0.5``;
- GPEN-BFR-512, GPEN-BFR-1024 and GPEN-BFR-2048: ``channel_multiplier=2, narrow=1``. 1024 and 2048
  are published on ModelScope as ``damo/cv_gpen_image-portrait-enhancement-hires``
  (``pytorch_model.pt`` is the 1024 model, ``pytorch_model-2048.pt`` the 2048 one).

The files hold 18,879,298 (256), 71,005,559 (512), 71,210,924 (1024) and 71,295,201 (2048) values,
about 75.5 MB and 284-285 MB in float32; exact byte sizes are not published.

Licence: the repository has no licence file; its README said "(c) Alibaba, 2021. For academic and
non-commercial use only." until that section was removed in March 2026, and still calls the released
files "not our best model due to commercial issues". Treat the weights as non-commercial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from codeformer.archs.vqgan import load_checkpoint_strictly, require_tensor
from codeformer.errors import CodeFormerError

IMAGE_CHANNELS = 3  # RGB in and out
# StyleGAN2 constants of the reference.
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)  # separable low-pass filter of every resampling step
LEAKY_SLOPE = 0.2  # negative slope of the (fused) leaky ReLUs
LEAKY_GAIN = math.sqrt(2.0)  # the fused leaky ReLU multiplies by sqrt(2) to keep the variance
PIXEL_NORM_EPS = 1e-8  # added to the mean square in the mapping network's input normalisation
DEMODULATION_EPS = 1e-8  # added to the sum of squared modulated weights before the rsqrt
MAPPING_LR_MUL = 0.01  # learning-rate multiplier of the mapping network (scales weights and biases)
CONV_KERNEL = 3  # synthesis and encoder convolutions
CONST_SIDE = 4  # the generator starts from a learned 4x4 constant; the encoder ends at 4x4
MIN_SIZE = 8  # at least one upsampling level
MAX_SIZE = 2048  # the largest resolution the reference's channel table lists


def channel_width(resolution: int, channel_multiplier: int, narrow: float) -> int:
    """Feature channels at ``resolution`` (the reference's table; ``int`` truncates, as there)."""
    if resolution <= 32:
        return int(512 * narrow)
    # 256 channels at 64 px, halving with every doubling of the resolution
    return int(256 * 64 // resolution * channel_multiplier * narrow)


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The 4x4 low-pass kernel (outer product of BLUR_TAPS), normalised to sum to ``gain``."""
    taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
    kernel = taps[None, :] * taps[:, None]  # (4, 4)
    return kernel / kernel.sum() * gain


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with ``kernel``, downsample (the same on both axes).

    ``pad`` = (before, after) on each axis. Per channel, like the reference's op, but as one depthwise
    conv instead of a CUDA kernel; downsampling is the conv's stride (same samples as slicing).
    """
    # Python ints: the ONNX export traces them as constants (channel counts are fixed; see onnx_export).
    n, c, height, width = (int(side) for side in x.shape)
    if up > 1:
        # each pixel followed by up-1 zeros along both axes
        x = x.reshape(n, c, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))  # (N, C, H, up, W, up)
        x = x.reshape(n, c, height * up, width * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    # conv2d correlates: flip the kernel to convolve, as the reference does
    weight = kernel.flip(0, 1).to(x.dtype).expand(c, 1, *kernel.shape)  # (C, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


class Blur(nn.Module):
    """Low-pass filter with fixed padding; the kernel is a buffer because the official files hold it."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", blur_kernel(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H', W')
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling by zero insertion and low-pass filtering (the kernel's gain 4 restores the mean)."""

    FACTOR = 2

    def __init__(self) -> None:
        super().__init__()
        taps = len(BLUR_TAPS)
        self.pad = ((taps - self.FACTOR + 1) // 2 + self.FACTOR - 1, (taps - self.FACTOR) // 2)
        self.register_buffer("kernel", blur_kernel(self.FACTOR**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, 2H, 2W)
        return upfirdn2d(x, self.kernel, up=self.FACTOR, pad=self.pad)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``sqrt(2) * leaky_relu(x + bias)`` with the bias broadcast over dimension 1 (the CUDA op's semantics)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), LEAKY_SLOPE) * LEAKY_GAIN


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, then the scaled leaky ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights scaled by ``lr_mul / sqrt(in)`` at run time."""

    def __init__(self, in_dim: int, out_dim: int, *, lr_mul: float = 1.0, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_dim)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, out)
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """Bias-free conv with equalized learning rate (weights scaled by ``1 / sqrt(fan_in)`` at run time)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, stride=self.stride, padding=self.padding)


def conv_layer(in_channels: int, out_channels: int, kernel_size: int, *, downsample: bool) -> nn.Sequential:
    """The reference's ``ConvLayer``: [blur,] bias-free conv (stride 2 when downsampling), bias + leaky ReLU.

    An nn.Sequential so that the parameter names are the reference's (``0.weight``, ``1.bias`` or,
    with the blur first, ``0.kernel``, ``1.weight``, ``2.bias``).
    """
    layers: list[nn.Module] = []
    if downsample:
        # pad so that the blurred map gives exactly H/2 outputs at stride 2
        total = (len(BLUR_TAPS) - 2) + (kernel_size - 1)
        layers.append(Blur(((total + 1) // 2, total // 2)))
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=2, padding=0))
    else:
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2))
    layers.append(FusedLeakyReLU(out_channels))
    return nn.Sequential(*layers)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 conv: weights scaled per input channel by the style, optionally demodulated.

    Each sample gets its own weights, applied as one grouped conv over the batch. With ``upsample``
    it is a stride-2 transposed conv followed by a blur (output 2H x 2W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, *,
        demodulate: bool = True, upsample: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            # the transposed conv gives 2H + k - 2 samples; this padding trims the blurred map to 2H
            factor = 2
            total = (len(BLUR_TAPS) - factor) - (kernel_size - 1)
            self.blur = Blur(((total + 1) // 2 + factor - 1, total // 2 + 1), gain=factor**2)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:  # (N, I, H, W), (N, D)
        n, _, height, width = (int(side) for side in x.shape)  # constants in an ONNX trace (one face a run)
        o, i, k = self.out_channels, self.in_channels, self.kernel_size
        styles = self.modulation(style).view(n, 1, i, 1, 1)
        weight = self.weight * self.scale * styles  # (N, O, I, k, k)
        if self.demodulate:
            norm = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + DEMODULATION_EPS)  # (N, O)
            weight = weight * norm.view(n, o, 1, 1, 1)
        x = x.reshape(1, n * i, height, width)  # the batch becomes the conv groups
        if self.upsample:
            # conv_transpose2d wants (in, out/groups, k, k) per group
            weight = weight.transpose(1, 2).reshape(n * i, o, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)  # (1, N*O, 2H+1, 2W+1)
            return self.blur(out.view(n, o, *out.shape[-2:]))  # (N, O, 2H, 2W)
        out = F.conv2d(x, weight.reshape(n * o, i, k, k), padding=k // 2, groups=n)  # (1, N*O, H, W)
        return out.view(n, o, height, width)


class NoiseInjection(nn.Module):
    """GPEN's noise input: the encoder feature map, scaled by a learned scalar, as extra channels."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1))

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) x2 -> (N, 2C, H, W)
        return torch.cat([x, self.weight * feature], dim=1)


class StyledConv(nn.Module):
    """Modulated conv, encoder features concatenated (doubling the channels), bias + leaky ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, style_dim: int, *, upsample: bool = False
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, CONV_KERNEL, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(2 * out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), feature))  # (N, 2*O, H', W')


class ToRGB(nn.Module):
    """1x1 modulated conv (not demodulated) to RGB plus a bias, added to the upsampled previous RGB."""

    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, IMAGE_CHANNELS, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.empty(1, IMAGE_CHANNELS, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias  # (N, 3, H, W)
        if skip is not None:
            out = out + self.upsample(skip)  # previous level's RGB at H/2
        return out


class PixelNorm(nn.Module):
    """Normalise each latent to unit mean square (the mapping network's first step; no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D)
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + PIXEL_NORM_EPS)


class ConstantInput(nn.Module):
    """The learned 4x4 map the synthesis network starts from."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.empty(1, channels, CONST_SIDE, CONST_SIDE))

    def forward(self, batch: int) -> torch.Tensor:  # -> (N, C, 4, 4)
        return self.input.expand(batch, -1, -1, -1)


@dataclass(frozen=True)
class GPENConfig:
    """Hyperparameters of a :class:`GPEN`; the defaults are GPEN-BFR-512's."""

    size: int = 512  # input and output side length, a power of 2 from 8 to 2048
    channel_multiplier: int = 2  # widens the levels from 64 px up (GPEN-BFR-256: 1)
    narrow: float = 1.0  # scales every width (GPEN-BFR-256: 0.5)
    style_dim: int = 512  # latent and style width
    n_mlp: int = 8  # linear layers of the mapping network

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    def channels(self, resolution: int) -> int:
        return channel_width(resolution, self.channel_multiplier, self.narrow)


class StyleGenerator(nn.Module):
    """The StyleGAN2 mapping and synthesis networks (the reference's ``Generator``, concat noise only)."""

    def __init__(self, config: GPENConfig) -> None:
        super().__init__()
        dim = config.style_dim
        mapping: list[nn.Module] = [PixelNorm()]
        mapping += [EqualLinear(dim, dim, lr_mul=MAPPING_LR_MUL, activate=True) for _ in range(config.n_mlp)]
        self.style = nn.Sequential(*mapping)

        width = config.channels(CONST_SIDE)
        self.input = ConstantInput(width)
        self.conv1 = StyledConv(width, width, dim)
        self.to_rgb1 = ToRGB(2 * width, dim, upsample=False)  # 2x: the concatenated encoder features
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for level in range(3, config.log_size + 1):
            out_width = config.channels(2**level)
            self.convs.append(StyledConv(2 * width, out_width, dim, upsample=True))
            self.convs.append(StyledConv(2 * out_width, out_width, dim))
            self.to_rgbs.append(ToRGB(2 * out_width, dim))
            width = out_width

    def forward(self, latent: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """RGB (N, 3, S, S) from the encoder's latent (N, D) and feature maps ordered 4x4 first, S x S last."""
        style = self.style(latent)  # (N, D): one style for every layer
        out = self.conv1(self.input(latent.shape[0]), style, features[0])  # (N, 2*C4, 4, 4)
        skip = self.to_rgb1(out, style)  # (N, 3, 4, 4)
        for level, feature in enumerate(features[1:]):
            out = self.convs[2 * level](out, style, feature)  # upsampled: (N, 2*C, 2H, 2W)
            out = self.convs[2 * level + 1](out, style, feature)
            skip = self.to_rgbs[level](out, style, skip)
        return skip


class GPEN(nn.Module):
    """GPEN-BFR (the reference's ``FullGenerator``): ``forward(x)`` maps (N, 3, S, S) in [-1, 1] to RGB.

    The reference returns ``(image, None)``; this returns the image (N, 3, S, S), unclamped.
    Built from a config; use :func:`build_gpen` for a checkpoint.
    """

    def __init__(self, config: GPENConfig = GPENConfig()) -> None:
        super().__init__()
        if config.size & (config.size - 1) or not MIN_SIZE <= config.size <= MAX_SIZE:
            raise ValueError(f"GPEN size must be a power of 2 from {MIN_SIZE} to {MAX_SIZE}, got {config.size}")
        self.config = config
        self.generator = StyleGenerator(config)
        # Encoder stages ecd0 (1x1 conv at S) .. ecd<L-2> (at 4x4) as attributes, for the reference's names.
        self.encoder_names = [f"ecd{i}" for i in range(config.log_size - 1)]
        width = config.channels(config.size)
        self.ecd0 = nn.Sequential(conv_layer(IMAGE_CHANNELS, width, 1, downsample=False))
        for name, level in zip(self.encoder_names[1:], range(config.log_size - 1, 1, -1)):
            out_width = config.channels(2**level)
            setattr(self, name, nn.Sequential(conv_layer(width, out_width, CONV_KERNEL, downsample=True)))
            width = out_width
        self.final_linear = nn.Sequential(
            EqualLinear(width * CONST_SIDE * CONST_SIDE, config.style_dim, activate=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 3, S, S)
        size = self.config.size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"this GPEN takes {size}x{size} inputs, got {x.shape[-2]}x{x.shape[-1]}")
        features = []
        for name in self.encoder_names:
            x = getattr(self, name)(x)
            features.append(x)  # S x S first, 4x4 last
        latent = self.final_linear(x.flatten(1))  # (N, D)
        return self.generator(latent, features[::-1])


# The published GPEN-BFR files' configurations, by file name (their files are in codeformer.weights).
GPEN_BFR_CONFIGS: Mapping[str, GPENConfig] = {
    "GPEN-BFR-256": GPENConfig(size=256, channel_multiplier=1, narrow=0.5),
    "GPEN-BFR-512": GPENConfig(size=512),
    "GPEN-BFR-1024": GPENConfig(size=1024),
    "GPEN-BFR-2048": GPENConfig(size=2048),
}


_KIND = "GPEN"


def _indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> set[int]:
    """The integers ``i`` of keys ``<prefix><i>.<rest>``."""
    found = {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    return {int(i) for i in found if i.isdigit()}


def gpen_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> GPENConfig:
    """Read a GPEN-BFR checkpoint's hyperparameters from its tensors.

    ``size`` from the number of encoder stages (``ecd<i>``), ``narrow`` from the 4x4 constant's width
    (512 * narrow), ``channel_multiplier`` from the width at 64 px (256 * multiplier * narrow; 1 for
    sizes under 64, where it changes nothing), ``style_dim`` from ``final_linear``, ``n_mlp`` from
    the mapping network's layers. Raises CodeFormerError when the file is not a GPEN-BFR one.
    """
    stages = {int(key[3:].split(".", 1)[0]) for key in state_dict if key.startswith("ecd") and key[3:4].isdigit()}
    if not stages or stages != set(range(len(stages))):
        raise CodeFormerError(f"{source} is not a {_KIND} checkpoint: missing or gapped encoder stages ecd<i>.*")
    size = 2 ** (len(stages) + 1)
    const = require_tensor(state_dict, "generator.input.input", 4, kind=_KIND, source=source)
    linear = require_tensor(state_dict, "final_linear.0.weight", 2, kind=_KIND, source=source)
    layers = _indices(state_dict, "generator.style.")
    if not layers:
        raise CodeFormerError(f"{source} is not a {_KIND} checkpoint: missing generator.style.*")
    narrow = const.shape[1] / 512
    channel_multiplier = 1
    if size >= 64:
        # convs[2 * (log2(64) - 3)] is the upsampling conv into 64 px: weight (1, C64, C32 * 2, 3, 3)
        c64 = require_tensor(state_dict, "generator.convs.6.conv.weight", 5, kind=_KIND, source=source).shape[1]
        channel_multiplier = max(1, round(c64 / (256 * narrow)))
    config = GPENConfig(
        size=size, channel_multiplier=channel_multiplier, narrow=narrow, style_dim=linear.shape[0], n_mlp=max(layers)
    )
    if config.size > MAX_SIZE:
        raise CodeFormerError(f"{source} is not a supported {_KIND} checkpoint: {len(stages)} encoder stages")
    return config


def build_gpen(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> GPEN:
    """A :class:`GPEN` configured from ``state_dict``, loaded strictly, in eval mode.

    The official files are plain state dicts (no wrapper key). Every tensor must match by name and
    shape, including the blur kernels the files carry as buffers. Example::

        net = build_gpen(load_state_dict("weights/GPEN/GPEN-BFR-512.pth"))
        restored = net(crop)  # (1, 3, 512, 512) RGB in [-1, 1] -> same shape
    """
    config = gpen_config_from_state_dict(state_dict, source=source)
    with torch.device("meta"):  # no init: every tensor is replaced by the checkpoint's
        net = GPEN(config)
    load_checkpoint_strictly(net, state_dict, kind=_KIND, source=source)
    return net.eval()
