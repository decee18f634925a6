"""VQGAN face autoencoder: encoder, nearest-neighbour codebook, generator (inference only).

CodeFormer (Zhou et al., "Towards Robust Blind Face Restoration with Codebook Lookup Transformer",
NeurIPS 2022) is built on a VQGAN (Esser et al., CVPR 2021) in the variant of the Unleashing
Transformers code base. Layer facts follow ``basicsr/archs/vqgan_arch.py`` in sczhou/CodeFormer;
parameter names match the official checkpoints (``encoder.blocks.4.conv_out.weight``,
``quantize.embedding.weight``, ...) so that ``vqgan_code1024.pth`` loads strictly.

Only what inference needs is here: no losses, no Gumbel quantizer, no discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from codeformer.errors import CodeFormerError

# GroupNorm everywhere in the VQGAN: 32 groups, and an epsilon smaller than PyTorch's default.
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6
IMAGE_CHANNELS = 3  # RGB in and out


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, swish, 3x3 conv) twice, 1x1 projection if widths differ."""

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_out = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, C_out, H, W)
        # In place on tensors this block just made (bit-identical results): at 512x512 a fresh
        # activation costs more in page faults than the activation function itself. `x` is never
        # modified: the encoder's fusion features are block outputs kept for later.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        skip = x if self.conv_out is None else self.conv_out(x)
        return h.add_(skip)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections and a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        n, c, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, 1, H*W, C)
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        # Default scale 1/sqrt(C), as in the reference.
        out = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        # Back to plain NCHW: a channels-last view here would send the following convs down CPU
        # kernels measurably less accurate than the NCHW ones the reference uses.
        out = out.squeeze(1).transpose(1, 2).contiguous().view(n, c, height, width)  # (N, C, H, W)
        return self.proj_out(out).add_(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with the reference's asymmetric zero padding (right and bottom only)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# From this many input pixels on, Upsample computes its conv at the input resolution (sub-pixel
# form, 4 instead of 9 taps per output); below it, deriving the 2x2 kernels costs more than it saves.
SUBPIXEL_MIN_PIXELS = 32 * 32


def _tap_pairs(kernel: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 2-tap kernels a 3-tap kernel (along ``dim``) becomes on a nearest-2x-upsampled input.

    Output pixel 2i sees source pixels i-1, i, i and output pixel 2i+1 sees i, i, i+1: the taps that
    land on the same source pixel add up.
    """
    first, middle, last = kernel.unbind(dim)
    return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)


def subpixel_kernels(weight: torch.Tensor) -> torch.Tensor:
    """3x3 conv weights (O, C, 3, 3) -> the four 2x2 phase kernels (4*O, C, 2, 2), phases (0,0), (0,1), (1,0), (1,1).

    Summed in float32 (float64 stays float64), returned in ``weight``'s dtype.
    """
    work = weight if weight.dtype == torch.float64 else weight.float()
    kernels = [both for row in _tap_pairs(work, 2) for both in _tap_pairs(row, 3)]
    return torch.cat(kernels).to(weight.dtype)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv.

    Computed without materialising the upsampled picture: each of the four output phases (even/odd
    row and column) is a 2x2 conv of the input whose taps are sums of the 3x3 taps, so one conv with
    4x the output channels at the input resolution replaces a 3x3 conv at twice the resolution
    (4/9 of the multiply-adds). Equal to the reference up to float rounding (summed taps).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, 2H, 2W)
        n, _, height, width = x.shape
        if height * width < SUBPIXEL_MIN_PIXELS:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        kernels = subpixel_kernels(self.conv.weight).contiguous(memory_format=layout)  # (4*O, C, 2, 2)
        bias = None if self.conv.bias is None else self.conv.bias.repeat(4)
        # Padding 1 on each side: output (i + a, j + b) of phase (a, b) is output pixel (2i + a, 2j + b).
        phases = F.conv2d(x, kernels, bias, padding=1)  # (N, 4*O, H+1, W+1)
        out_channels = self.conv.out_channels
        out = torch.empty(
            (n, out_channels, 2 * height, 2 * width), dtype=phases.dtype, device=phases.device, memory_format=layout
        )
        for phase, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            channels = slice(phase * out_channels, (phase + 1) * out_channels)
            out[:, :, a::2, b::2] = phases[:, channels, a : a + height, b : b + width]
        return out  # (N, O, 2H, 2W)


def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


class Encoder(nn.Module):
    """Image -> latent grid, downsampling by 2 between resolution levels.

    ``blocks`` is one flat list (the checkpoints index it: ``encoder.blocks.<i>``): a 3x3 conv, then
    per level ``res_blocks`` ResBlocks (each followed by attention at ``attn_resolutions``) and a
    Downsample (not after the last level), then ResBlock, attention, ResBlock, GroupNorm and a 3x3
    conv to ``emb_dim`` channels (no activation between the last two, as in the reference).
    """

    def __init__(
        self, in_channels: int, nf: int, emb_dim: int, ch_mult: Sequence[int], res_blocks: int,
        resolution: int, attn_resolutions: Sequence[int],
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, nf, kernel_size=3, padding=1)]
        channels, size = nf, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(res_blocks):
                blocks.append(ResBlock(channels, nf * mult))
                channels = nf * mult
                if size in attn_resolutions:
                    blocks.append(AttnBlock(channels))
            if level != len(ch_mult) - 1:
                blocks.append(Downsample(channels))
                size //= 2
        blocks += [ResBlock(channels), AttnBlock(channels), ResBlock(channels)]
        blocks += [group_norm(channels), nn.Conv2d(channels, emb_dim, kernel_size=3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, emb_dim, H/2^L, W/2^L)
        return _run(self.blocks, x)


class Generator(nn.Module):
    """Latent grid -> image: the mirror of :class:`Encoder` (upsampling; one flat ``blocks`` list)."""

    def __init__(
        self, nf: int, emb_dim: int, ch_mult: Sequence[int], res_blocks: int, img_size: int,
        attn_resolutions: Sequence[int],
    ) -> None:
        super().__init__()
        channels = nf * ch_mult[-1]
        size = img_size // 2 ** (len(ch_mult) - 1)
        blocks: list[nn.Module] = [nn.Conv2d(emb_dim, channels, kernel_size=3, padding=1)]
        blocks += [ResBlock(channels), AttnBlock(channels), ResBlock(channels)]
        for level in reversed(range(len(ch_mult))):
            for _ in range(res_blocks):
                blocks.append(ResBlock(channels, nf * ch_mult[level]))
                channels = nf * ch_mult[level]
                if size in attn_resolutions:
                    blocks.append(AttnBlock(channels))
            if level != 0:
                blocks.append(Upsample(channels))
                size *= 2
        blocks += [group_norm(channels), nn.Conv2d(channels, IMAGE_CHANNELS, kernel_size=3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, emb_dim, h, w) -> (N, 3, h*2^L, w*2^L)
        return _run(self.blocks, x)


class VectorQuantizer(nn.Module):
    """A codebook of ``codebook_size`` vectors; each latent position maps to its nearest entry (L2)."""

    def __init__(self, codebook_size: int, emb_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, emb_dim)

    def nearest_indices(self, z: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N, h, w) int64
        n, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (N*h*w, C)
        codes = self.embedding.weight  # (K, C)
        # Squared distances expanded as |z|^2 + |e|^2 - 2 z.e, term for term as the reference
        # computes them, so that near-ties resolve to the same code.
        distances = (flat**2).sum(dim=1, keepdim=True) + (codes**2).sum(dim=1) - 2 * flat @ codes.t()
        return distances.argmin(dim=1).view(n, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:  # (N, h, w) int64 -> (N, C, h, w)
        # (N, h, w, C) -> plain NCHW (see AttnBlock.forward for why not a channels-last view)
        return F.embedding(indices, self.embedding.weight).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized latents (N, C, h, w) and their code indices (N, h, w)."""
        indices = self.nearest_indices(z)
        return self.lookup(indices), indices


@dataclass(frozen=True)
class VQGANConfig:
    """Hyperparameters of a :class:`VQAutoEncoder`; the defaults are ``vqgan_code1024.pth``'s."""

    img_size: int = 512  # training resolution; with attn_resolutions it places the attention blocks
    nf: int = 64  # base channel width
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)  # width multiplier per level; 6 levels: 512 -> 16
    res_blocks: int = 2  # ResBlocks per level
    attn_resolutions: tuple[int, ...] = (16,)  # levels (by side length) that get attention blocks
    codebook_size: int = 1024
    emb_dim: int = 256  # codebook vector width = latent channels


class VQAutoEncoder(nn.Module):
    """Encoder -> nearest codebook entry -> generator.

    ``forward(x)`` returns ``(reconstruction, codes)``: the image rebuilt from the nearest codebook
    entries (N, 3, H, W), RGB in about [-1, 1], and those entries' indices (N, H/32, W/32) int64
    for the default 6 levels. ``encode``, ``quantize.nearest_indices`` and ``decode_codes`` expose the
    steps. Arguments are the reference's; ``beta`` and the ``gumbel_*`` ones only matter for
    training and are ignored.
    """

    def __init__(
        self,
        img_size: int = 512,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
        quantizer: str = "nearest",
        res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        codebook_size: int = 1024,
        emb_dim: int = 256,
        beta: float = 0.25,
        gumbel_straight_through: bool = False,
        gumbel_kl_weight: float = 1e-8,
    ) -> None:
        super().__init__()
        del beta, gumbel_straight_through, gumbel_kl_weight  # training-only
        if quantizer != "nearest":
            raise ValueError(f"quantizer {quantizer!r} is not supported: only 'nearest' (inference) is")
        self.config = VQGANConfig(
            img_size, nf, tuple(ch_mult), res_blocks, tuple(attn_resolutions), codebook_size, emb_dim
        )
        self.encoder = Encoder(IMAGE_CHANNELS, nf, emb_dim, ch_mult, res_blocks, img_size, attn_resolutions)
        self.quantize = VectorQuantizer(codebook_size, emb_dim)
        self.generator = Generator(nf, emb_dim, ch_mult, res_blocks, img_size, attn_resolutions)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, emb_dim, h, w)
        return self.encoder(x)

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:  # (N, h, w) int64 -> (N, 3, H, W)
        return self.generator(self.quantize.lookup(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, indices = self.quantize(self.encoder(x))
        return self.generator(quantized), indices


def vqgan_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> VQGANConfig:
    """The config of a VQGAN checkpoint: codebook size and width from the codebook, ``nf`` from the first conv.

    The level layout (``ch_mult``, ``res_blocks``, attention) is the official one; a file with another
    layout fails the strict load in :func:`build_vqgan` with the keys that differ.
    """
    if "position_emb" in state_dict:
        raise CodeFormerError(
            f"{source} is a CodeFormer checkpoint, not a VQGAN one: load it with build_codeformer"
        )
    codebook = require_tensor(state_dict, "quantize.embedding.weight", 2, kind="VQGAN", source=source)
    first_conv = require_tensor(state_dict, "encoder.blocks.0.weight", 4, kind="VQGAN", source=source)
    return VQGANConfig(nf=first_conv.shape[0], codebook_size=codebook.shape[0], emb_dim=codebook.shape[1])


def build_vqgan(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> VQAutoEncoder:
    """A :class:`VQAutoEncoder` configured from ``state_dict``, loaded strictly, in eval mode.

    ``source`` names the file in error messages. Example::

        net = build_vqgan(load_state_dict("weights/CodeFormer/vqgan_code1024.pth"))
    """
    config = vqgan_config_from_state_dict(state_dict, source=source)
    with torch.device("meta"):  # no random init: every parameter is replaced by the checkpoint's
        net = VQAutoEncoder(
            config.img_size, config.nf, config.ch_mult, "nearest", config.res_blocks,
            config.attn_resolutions, config.codebook_size, config.emb_dim,
        )
    load_checkpoint_strictly(net, state_dict, kind="VQGAN", source=source)
    return net.eval()


# How many offending keys an error message names before it summarises the rest as a count.
_KEYS_NAMED_IN_ERRORS = 3


def require_tensor(
    state_dict: Mapping[str, torch.Tensor], key: str, ndim: int, *, kind: str, source: str
) -> torch.Tensor:
    """``state_dict[key]`` if present with ``ndim`` dimensions, else a CodeFormerError naming the problem."""
    tensor = state_dict.get(key)
    if tensor is None:
        raise CodeFormerError(f"{source} is not a {kind} checkpoint: missing {key}")
    if tensor.ndim != ndim:
        raise CodeFormerError(
            f"{source} is not a {kind} checkpoint: {key} has shape {list(tensor.shape)}, "
            f"expected {ndim} dimensions"
        )
    return tensor


def _named(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_KEYS_NAMED_IN_ERRORS])
    rest = len(keys) - _KEYS_NAMED_IN_ERRORS
    return f"{shown} and {rest} more" if rest > 0 else shown


def load_checkpoint_strictly(
    net: nn.Module, state_dict: Mapping[str, torch.Tensor], *, kind: str, source: str
) -> None:
    """Load every tensor of ``state_dict`` into ``net`` (same names, same shapes, nothing left over).

    Works for a network built on the meta device: its parameters become the checkpoint's tensors
    (cast to float32 if stored in another floating type). A mismatch raises one CodeFormerError line
    that lists the missing, unexpected and wrongly shaped keys instead of PyTorch's traceback.
    """
    expected = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [
        f"{k} (file {list(state_dict[k].shape)}, expected {list(shape)})"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    problems = [
        f"{label} {_named(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape for", reshaped))
        if keys
    ]
    if problems:
        raise CodeFormerError(f"{source} is not a {kind} checkpoint: {'; '.join(problems)}")
    not_float = [k for k, t in state_dict.items() if not t.is_floating_point()]
    if not_float:
        raise CodeFormerError(f"{source} is not a {kind} checkpoint: non-float tensors {_named(not_float)}")
    # `.float()` returns the tensor itself when it already is float32: no copy of official files.
    net.load_state_dict({k: t.float() for k, t in state_dict.items()}, strict=True, assign=True)
