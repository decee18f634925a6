"""RestoreFormer++: a VQGAN whose decoder attends to the degraded face's encoder features (inference only).

Wang et al., "RestoreFormer++: Towards Real-World Blind Face Restoration from Undegraded Key-Value
Pairs", TPAMI 2023 (and RestoreFormer, CVPR 2022). Layer facts follow
``RestoreFormer/modules/vqvae/vqvae_arch.py`` (``VQVAEGANMultiHeadTransformer``) of
wzhouxiff/RestoreFormerPlusPlus; parameter names are the official checkpoint's after its ``vqvae.``
prefix, so the released ``RestoreFormer++.ckpt`` (and ``RestoreFormer.ckpt``) load strictly.

The forward pass:

1. a taming-transformers style encoder (ResNet blocks, stride-2 downsampling, multi-head
   self-attention at the lowest level and in the middle) maps the face (N, 3, H, W) to a latent grid
   at H/32, keeping its features at the levels the decoder attends to;
2. the latents go through ``quant_conv`` and are replaced by their nearest codebook entries (the
   high-quality dictionary, squared L2 distance);
3. the decoder rebuilds the face from the codes; each of its attention blocks is a cross-attention
   whose queries come from the encoder's (degraded) features and whose keys and values come from
   the decoder's own features (in the middle block, and at 16 and 32 px for 512 px faces).

Input and output (``RestoreFormerPP.forward``): (N, 3, H, W) RGB in [-1, 1] with H and W multiples of
32 (the official use is 512 x 512) -> ``(image, codes)``: the restored face (N, 3, H, W), nominally
[-1, 1] but unclamped, and the code indices (N, H/32, W/32) int64. The reference returns
``(dec, emb_loss, (perplexity, one_hot, indices, distances), features)``; only ``dec`` is used.

Pre/post-processing of the original inference code (``RestoreFormer/RestoreFormer.py``, with
basicsr's ``img2tensor`` / ``tensor2img``):

- the aligned BGR uint8 crop is divided by 255. (float64), cast to float32, BGR -> RGB, HWC -> CHW,
  normalised ``(x - 0.5) / 0.5``; with ``--aligned`` the input is first ``cv2.resize``d to 512 x 512
  (bilinear);
- the output is clamped to [-1, 1], mapped ``(y + 1) / 2``, CHW -> HWC, RGB -> BGR, ``* 255.0``,
  ``.round()`` and cast to uint8 (rounding, unlike GPEN's truncation).

Alignment: facexlib's ``FaceRestoreHelper(upscale, face_size=512, crop_ratio=(1, 1),
det_model='retinaface_resnet50', use_parse=True)``, i.e. the GFPGAN/CodeFormer FFHQ template
:data:`RESTOREFORMER_PP_TEMPLATE_5` on a 512 x 512 crop (the same points as
``codeformer.face.alignment.FFHQ_TEMPLATE_5``): ``cv2.estimateAffinePartial2D(..., method=cv2.LMEDS)``,
bilinear ``cv2.warpAffine`` with border value (135, 133, 132); detections with eye distance under 5 px
are skipped (``eye_dist_threshold=5``).

Weights (GitHub release v1.0.0 of wzhouxiff/RestoreFormerPlusPlus, Apache-2.0 like the code; no
checksum is published):

- ``RestoreFormer++.ckpt`` (in :data:`codeformer.weights.WEIGHTS`; 294,028,815 bytes as reported by a
  third-party download script: not verified here), ``head_size=4, ex_multi_scale_num=1``; its
  network has 73,472,579 values (293,890,316 bytes in float32), so the file holds little else;
- ``RestoreFormer.ckpt`` (the same release), ``head_size=8, ex_multi_scale_num=0``
  (72,680,003 values).

Both are PyTorch Lightning checkpoints: ``{"state_dict": {"vqvae.<name>": tensor, ...}, ...}``,
possibly with training-only entries outside ``vqvae.`` (losses, discriminators). The reference
loader strips ``vqvae.`` and loads non-strictly; :func:`restoreformer_state_dict` keeps exactly the
``vqvae.*`` entries, and :func:`build_restoreformer_pp` then requires every one of them to fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from codeformer.archs.vqgan import (
    Downsample,
    Upsample,
    VectorQuantizer,
    group_norm,
    load_checkpoint_strictly,
    require_tensor,
)
from codeformer.errors import CodeFormerError

IMAGE_CHANNELS = 3  # RGB in and out
LIGHTNING_KEY = "state_dict"  # where PyTorch Lightning stores the module's tensors
MODEL_PREFIX = "vqvae."  # the network's attribute name in the reference's LightningModule
# Attention heads (the reference calls them head_size). Not recorded in the files: RestoreFormer++
# uses 4 and attends at two decoder levels, RestoreFormer uses 8 and attends at one.
RESTOREFORMER_PP_HEADS = 4
RESTOREFORMER_HEADS = 8

RESTOREFORMER_PP_FACE_SIZE = 512  # the crops it is trained and used on
# facexlib's 5-point FFHQ template for 512 x 512 crops (FaceRestoreHelper, template_3points=False):
# left eye, right eye, nose tip, left and right mouth corners, as seen in the image.
RESTOREFORMER_PP_TEMPLATE_5 = (
    (192.98138, 239.94708),
    (318.90277, 240.1936),
    (256.63416, 314.01935),
    (201.26117, 371.41043),
    (313.08905, 371.15118),
)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, swish, 3x3 conv) twice, 1x1 ``nin_shortcut`` if widths differ."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class MultiHeadAttnBlock(nn.Module):
    """Multi-head attention over spatial positions with 1x1-conv projections and a residual connection.

    Without ``context`` it is self-attention. With it (the decoder), the queries come from the
    GroupNorm'ed context (``norm2``) and the keys and values from the GroupNorm'ed input (``norm1``):
    the degraded face's features ask, the decoder's high-quality features answer. Heads split the
    channels into consecutive groups; the score scale is 1/sqrt(channels per head).
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.heads = heads
        self.norm1 = group_norm(channels)
        self.norm2 = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # (N, C, H, W)
        n, c, height, width = x.shape
        h = self.norm1(x)
        query_source = h if context is None else self.norm2(context)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, heads, H*W, C/heads)
            return t.reshape(n, self.heads, c // self.heads, height * width).transpose(2, 3)

        out = F.scaled_dot_product_attention(heads(self.q(query_source)), heads(self.k(h)), heads(self.v(h)))
        out = out.transpose(2, 3).reshape(n, c, height, width)  # heads back to consecutive channels
        return x + self.proj_out(out)


class Level(nn.Module):
    """One resolution level: ResNet blocks, each followed by attention where the level has it, and a resampler."""

    def __init__(
        self, in_channels: int, out_channels: int, blocks: int, *, attention_heads: int | None,
        resample: str | None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(blocks)
        )
        self.attn = nn.ModuleList(
            MultiHeadAttnBlock(out_channels, attention_heads) for _ in range(blocks if attention_heads else 0)
        )
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)

    def run_blocks(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x, context)
        return x


class Middle(nn.Module):
    """ResNet block, attention, ResNet block at the lowest resolution."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = MultiHeadAttnBlock(channels, heads)
        self.block_2 = ResnetBlock(channels, channels)


@dataclass(frozen=True)
class RestoreFormerPPConfig:
    """Hyperparameters of a :class:`RestoreFormerPP`; the defaults are ``RestoreFormer++.ckpt``'s.

    Levels count from 0 (full resolution) to ``len(ch_mult) - 1`` (H/32 for six levels); level 5 of a
    512 px face is 16 x 16 and level 4 is 32 x 32 (the reference's ``attn_resolutions`` [16] and, with
    ``ex_multi_scale_num=1``, [16, 32] in the decoder).
    """

    ch: int = 64  # base channel width
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)  # width multiplier per level
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more)
    z_channels: int = 256  # encoder output / decoder input width
    embed_dim: int = 256  # codebook vector width
    n_embed: int = 1024  # codebook entries
    heads: int = RESTOREFORMER_PP_HEADS  # attention heads (not in the file, see module constants)
    encoder_attn_levels: tuple[int, ...] = (5,)  # encoder levels with self-attention after each block
    decoder_attn_levels: tuple[int, ...] = (4, 5)  # decoder levels with cross-attention after each block


class Encoder(nn.Module):
    """Image -> latents; ``forward`` also returns the features the decoder's attention blocks query with."""

    def __init__(self, config: RestoreFormerPPConfig) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(IMAGE_CHANNELS, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        last = len(mult) - 1
        for level, m in enumerate(mult):
            in_channels = ch * (mult[level - 1] if level else 1)
            heads = config.heads if level in config.encoder_attn_levels else None
            resample = "down" if level != last else None
            self.down.append(
                Level(in_channels, ch * m, config.num_res_blocks, attention_heads=heads, resample=resample)
            )
        self.mid = Middle(ch * mult[-1], config.heads)
        self.norm_out = group_norm(ch * mult[-1])
        self.conv_out = nn.Conv2d(ch * mult[-1], config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents (N, z, H/32, W/32) and features by name: ``"<level>"`` for each level but the last
        (its blocks' output, before downsampling), ``"<last>"`` (the first middle block's output),
        ``"mid"`` (the middle's output)."""
        features: dict[str, torch.Tensor] = {}
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                features[str(level)] = h
                h = stage.downsample(h)
        h = self.mid.block_1(h)
        features[str(len(self.down) - 1)] = h
        h = self.mid.block_2(self.mid.attn_1(h))
        features["mid"] = h
        return self.conv_out(F.silu(self.norm_out(h))), features


class Decoder(nn.Module):
    """Latents -> image, with cross-attention to the encoder's features (``up[level]``, level 0 = full size)."""

    def __init__(self, config: RestoreFormerPPConfig) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        width = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, kernel_size=3, padding=1)
        self.mid = Middle(width, config.heads)
        levels: list[Level] = []
        for level in reversed(range(len(mult))):
            heads = config.heads if level in config.decoder_attn_levels else None
            resample = "up" if level != 0 else None
            levels.append(
                Level(width, ch * mult[level], config.num_res_blocks + 1, attention_heads=heads, resample=resample)
            )
            width = ch * mult[level]
        self.up = nn.ModuleList(reversed(levels))  # indexed by level, as in the reference
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, IMAGE_CHANNELS, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, features: Mapping[str, torch.Tensor]) -> torch.Tensor:  # (N, z, h, w)
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h), features["mid"]))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            h = stage.run_blocks(h, features.get(str(level)))
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 3, H, W)


class RestoreFormerPP(nn.Module):
    """RestoreFormer++ (the reference's ``VQVAEGANMultiHeadTransformer``); ``forward(x)`` -> ``(image, codes)``.

    See the module docstring for shapes and value ranges. Built from a config; use
    :func:`build_restoreformer_pp` for a checkpoint.
    """

    def __init__(self, config: RestoreFormerPPConfig = RestoreFormerPPConfig()) -> None:
        super().__init__()
        last = len(config.ch_mult) - 1
        if any(not 0 <= level <= last for level in config.encoder_attn_levels + config.decoder_attn_levels):
            raise ValueError(f"attention levels must lie in 0..{last}: {config}")
        # A decoder level below the last attends to the encoder's output of that level; the last
        # level attends to the middle. The reference has no other features to offer.
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, 3, H, W)
        factor = self.downsample_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"RestoreFormer++ takes sides that are multiples of {factor}, got {tuple(x.shape[-2:])}")
        latents, features = self.encoder(x)
        codes = self.quantize.nearest_indices(self.quant_conv(latents))  # (N, H/32, W/32)
        out = self.decoder(self.post_quant_conv(self.quantize.lookup(codes)), features)
        return out, codes


_KIND = "RestoreFormer++"


def restoreformer_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The network's tensors from a RestoreFormer(++) checkpoint, names without the ``vqvae.`` prefix.

    Accepts the whole Lightning checkpoint (``{"state_dict": {...}, ...}``), its ``state_dict``, or an
    already stripped state dict. Keys outside ``vqvae.`` (training-only losses) are dropped.
    """
    inner = checkpoint.get(LIGHTNING_KEY)
    state: Mapping[str, object] = inner if isinstance(inner, Mapping) else checkpoint
    if any(key.startswith(MODEL_PREFIX) for key in state):
        state = {key[len(MODEL_PREFIX) :]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)}
    return dict(state)  # type: ignore[arg-type]


def _level_indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    found = {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    return sorted(int(i) for i in found if i.isdigit())


def _attention_levels(state_dict: Mapping[str, torch.Tensor], part: str, levels: Sequence[int]) -> tuple[int, ...]:
    return tuple(level for level in levels if f"{part}.{level}.attn.0.q.weight" in state_dict)


def restoreformer_pp_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> RestoreFormerPPConfig:
    """Read a RestoreFormer(++) network's hyperparameters from its (stripped) tensors.

    ``ch`` from ``encoder.conv_in``, ``ch_mult`` from each level's first block, ``num_res_blocks`` from
    level 0's blocks, ``z_channels`` from ``encoder.conv_out``, ``embed_dim`` / ``n_embed`` from the
    codebook, attention levels from which ``attn.0`` keys exist. The head count is not stored: 4
    when the decoder attends at several levels (RestoreFormer++), 8 otherwise (RestoreFormer).
    """
    conv_in = require_tensor(state_dict, "encoder.conv_in.weight", 4, kind=_KIND, source=source)
    conv_out = require_tensor(state_dict, "encoder.conv_out.weight", 4, kind=_KIND, source=source)
    codebook = require_tensor(state_dict, "quantize.embedding.weight", 2, kind=_KIND, source=source)
    levels = _level_indices(state_dict, "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise CodeFormerError(f"{source} is not a {_KIND} checkpoint: missing or gapped encoder.down.<level>.*")
    ch = conv_in.shape[0]
    mult = []
    for level in levels:
        first = require_tensor(state_dict, f"encoder.down.{level}.block.0.conv1.weight", 4, kind=_KIND, source=source)
        if first.shape[0] % ch:
            raise CodeFormerError(f"{source} is not a {_KIND} checkpoint: level {level} width {first.shape[0]}")
        mult.append(first.shape[0] // ch)
    decoder_levels = _attention_levels(state_dict, "decoder.up", levels)
    return RestoreFormerPPConfig(
        ch=ch,
        ch_mult=tuple(mult),
        num_res_blocks=len(_level_indices(state_dict, "encoder.down.0.block.")),
        z_channels=conv_out.shape[0],
        embed_dim=codebook.shape[1],
        n_embed=codebook.shape[0],
        heads=RESTOREFORMER_PP_HEADS if len(decoder_levels) > 1 else RESTOREFORMER_HEADS,
        encoder_attn_levels=_attention_levels(state_dict, "encoder.down", levels),
        decoder_attn_levels=decoder_levels,
    )


def build_restoreformer_pp(checkpoint: Mapping[str, object], *, source: str = "state dict") -> RestoreFormerPP:
    """A :class:`RestoreFormerPP` configured from a checkpoint, loaded strictly, in eval mode.

    ``checkpoint`` may be the official Lightning checkpoint as loaded, its ``state_dict``, or the
    stripped network state (see :func:`restoreformer_state_dict`). Every ``vqvae.*`` tensor must
    match the network by name and shape, and every network tensor must be there. Example::

        net = build_restoreformer_pp(torch.load("RestoreFormer++.ckpt", map_location="cpu", weights_only=True))
        restored, codes = net(crop)  # (1, 3, 512, 512) RGB in [-1, 1]
    """
    state_dict = restoreformer_state_dict(checkpoint)
    config = restoreformer_pp_config_from_state_dict(state_dict, source=source)
    try:
        with torch.device("meta"):  # no init: every tensor is replaced by the checkpoint's
            net = RestoreFormerPP(config)
    except ValueError as error:  # widths that do not split into the heads, attention out of range
        raise CodeFormerError(f"{source} is not a supported {_KIND} checkpoint: {error}") from None
    load_checkpoint_strictly(net, state_dict, kind=_KIND, source=source)
    return net.eval()
