"""CodeFormer: a Transformer that predicts VQGAN codes for a degraded face, plus CFT fusion.

Zhou et al., "Towards Robust Blind Face Restoration with Codebook Lookup Transformer", NeurIPS 2022.
Layer facts follow ``basicsr/archs/codeformer_arch.py`` in sczhou/CodeFormer; parameter names match
the official checkpoints (``codeformer.pth``, ``codeformer_colorization.pth``,
``codeformer_inpainting.pth``), which therefore load strictly.

The forward pass:

1. the VQGAN encoder turns the face (N, 3, 512, 512) into a 16x16 latent grid ``lq_feat`` and keeps
   the features at the resolutions in ``connect_list`` for the fusion blocks;
2. a pre-norm Transformer over the 256 latent positions (learned position embedding added to queries
   and keys) predicts logits over the codebook for every position;
3. the most likely codes are looked up in the codebook (optionally AdaIN'ed to ``lq_feat``'s
   per-channel statistics) and decoded by the VQGAN generator, where the controllable feature
   transformation (CFT) blocks add ``w`` times an encoder-conditioned affine correction: ``w = 0``
   trusts the codebook alone (best quality), ``w = 1`` stays closest to the input (best fidelity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from codeformer.archs.vqgan import (
    GROUP_NORM_GROUPS,
    Encoder,
    IMAGE_CHANNELS,
    Generator,
    ResBlock,
    VectorQuantizer,
    VQGANConfig,
    load_checkpoint_strictly,
    require_tensor,
)
from codeformer.errors import CodeFormerError

# The VQGAN inside every official CodeFormer (the reference hard-codes it): 512x512 faces, six levels
# from 512 down to a 16x16 grid of 256-wide latents.
CODEFORMER_VQGAN = VQGANConfig()
# Each resolution level halves the side: 2^(levels - 1) pixels per latent position.
DOWNSAMPLE_FACTOR = 2 ** (len(CODEFORMER_VQGAN.ch_mult) - 1)

# Where the CFT fusion happens, keyed by the side length of the feature map (connect_list entries),
# as indices into the flat `encoder.blocks` / `generator.blocks` lists of CODEFORMER_VQGAN. Encoder:
# after a level's last ResBlock. Generator: after a level's first ResBlock (the second at 16, where
# the reference fuses before the attention block).
ENCODER_FEATURE_BLOCK = {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
GENERATOR_FUSE_BLOCK = {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}
# Channel multiplier of those feature maps (their width is nf * this: 512 ... 64 for the official nf 64).
FUSE_CHANNEL_MULTIPLIER = {"16": 8, "32": 4, "64": 4, "128": 2, "256": 2, "512": 1}

# Transformer constants of the reference.
MLP_RATIO = 2  # MLP width = MLP_RATIO * dim_embd
ADAIN_EPS = 1e-5  # added to the variance before the square root
CFT_LEAKY_SLOPE = 0.2  # negative slope of the LeakyReLU inside the CFT scale/shift branches


@dataclass(frozen=True)
class CodeFormerConfig:
    """Hyperparameters of a :class:`CodeFormer`; the defaults are ``codeformer.pth``'s."""

    dim_embd: int = 512  # Transformer width
    n_head: int = 8  # attention heads (not recorded in checkpoints: all official ones use 8)
    n_layers: int = 9  # Transformer layers
    codebook_size: int = 1024  # 512 for the inpainting model
    latent_size: int = 256  # latent positions: 16x16 for 512x512 faces
    # CFT fusion resolutions (the colorization and inpainting models stop at 128)
    connect_list: tuple[str, ...] = ("32", "64", "128", "256")
    # The VQGAN's base width (its first conv's channels). Every official file has 64; a narrower network
    # (a multiple of 32, for the GroupNorms) runs the same faces with a fraction of the arithmetic.
    base_channels: int = CODEFORMER_VQGAN.nf


def calc_mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std (unbiased variance + ADAIN_EPS) of (N, C, H, W), as (N, C, 1, 1)."""
    var, mean = torch.var_mean(feat.flatten(2), dim=2, keepdim=True)  # (N, C, 1) each
    std = (var + ADAIN_EPS).sqrt()
    return mean.unsqueeze(-1), std.unsqueeze(-1)


def adaptive_instance_normalization(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``content`` (N, C, H, W) re-normalised to ``style``'s per-channel mean and std (colour, lighting)."""
    style_mean, style_std = calc_mean_std(style)
    content_mean, content_std = calc_mean_std(content)
    return (content - content_mean) / content_std * style_std + style_mean


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names and packed projections.

    Queries and keys are projected from ``x + pos``, values from ``x`` (DETR-style positions).
    """

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim_embd {dim} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # q, k, v stacked
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # (N, L, C), (L, C) -> (N, L, C)
        n, length, dim = x.shape
        # q and k share one input, so they share one matmul; the slices are views of the parameters.
        qk = F.linear(x + pos, self.in_proj_weight[: 2 * dim], self.in_proj_bias[: 2 * dim])  # (N, L, 2C)
        v = F.linear(x, self.in_proj_weight[2 * dim :], self.in_proj_bias[2 * dim :])  # (N, L, C)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, heads, L, C/heads)
            return t.unflatten(-1, (self.n_head, -1)).transpose(1, 2)

        q, k = qk.chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (N, heads, L, C/heads)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class TransformerSALayer(nn.Module):
    """Pre-norm Transformer layer: self-attention and a GELU MLP, each on a residual branch."""

    def __init__(self, embed_dim: int, nhead: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(embed_dim, nhead)
        self.linear1 = nn.Linear(embed_dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # (N, L, C), (L, C)
        x = x + self.self_attn(self.norm1(x), pos)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FuseSFTBlock(nn.Module):
    """Controllable feature transformation (the reference's ``Fuse_sft_block``).

    Predicts a spatial scale and shift from the encoder and generator features and adds
    ``w * (dec * scale + shift)`` to the generator features.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * in_ch, out_ch)
        self.scale = self._branch(in_ch, out_ch)
        self.shift = self._branch(in_ch, out_ch)

    @staticmethod
    def _branch(in_ch: int, out_ch: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
            nn.LeakyReLU(CFT_LEAKY_SLOPE, inplace=True),  # in place on the conv's own output
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1),
        )

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float) -> torch.Tensor:  # (N, C, H, W)
        cond = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))  # (N, C, H, W)
        scale = self.scale(cond)
        # dec + w * (dec * scale + shift), in place on the fresh `shift` (no new full-size tensors)
        residual = self.shift(cond).addcmul_(dec_feat, scale)
        return residual.mul_(w).add_(dec_feat)


class CodeFormer(nn.Module):
    """The CodeFormer network; ``forward(x, w, adain)`` returns ``(out, logits, lq_feat)``.

    ``x`` and ``out``: (N, 3, S, S) RGB in [-1, 1], S = 512 for ``latent_size`` 256 (see
    :attr:`image_size`); ``logits``: (N, latent_size, codebook_size); ``lq_feat``: the encoder's
    latents (N, 256, S/32, S/32). Arguments are the reference's; ``fix_modules`` (which modules to
    freeze in training) is accepted and ignored. ``base_channels`` (not the reference's, which fixes 64)
    sets the VQGAN's width, for narrower networks.
    """

    def __init__(
        self,
        dim_embd: int = 512,
        n_head: int = 8,
        n_layers: int = 9,
        codebook_size: int = 1024,
        latent_size: int = 256,
        connect_list: Sequence[str] = ("32", "64", "128", "256"),
        fix_modules: Sequence[str] | None = None,
        *,
        base_channels: int = CODEFORMER_VQGAN.nf,
    ) -> None:
        super().__init__()
        del fix_modules  # freezing modules only matters for training
        connect_list = tuple(str(size) for size in connect_list)
        unknown = [size for size in connect_list if size not in FUSE_CHANNEL_MULTIPLIER]
        if unknown:
            raise ValueError(f"connect_list entries {unknown} are not among {list(FUSE_CHANNEL_MULTIPLIER)}")
        if base_channels <= 0 or base_channels % GROUP_NORM_GROUPS:
            raise ValueError(f"base_channels {base_channels} is not a positive multiple of {GROUP_NORM_GROUPS} "
                             "(the GroupNorms' groups)")
        side = math.isqrt(latent_size)
        if side * side != latent_size:
            raise ValueError(f"latent_size {latent_size} is not a square number of positions")
        self.config = CodeFormerConfig(
            dim_embd, n_head, n_layers, codebook_size, latent_size, connect_list, base_channels
        )
        self.image_size = side * DOWNSAMPLE_FACTOR  # the input side length the position embedding fits

        vq = replace(CODEFORMER_VQGAN, nf=base_channels)
        self.encoder = Encoder(
            IMAGE_CHANNELS, vq.nf, vq.emb_dim, vq.ch_mult, vq.res_blocks, vq.img_size, vq.attn_resolutions
        )
        self.quantize = VectorQuantizer(codebook_size, vq.emb_dim)
        self.generator = Generator(vq.nf, vq.emb_dim, vq.ch_mult, vq.res_blocks, vq.img_size, vq.attn_resolutions)

        self.position_emb = nn.Parameter(torch.zeros(latent_size, dim_embd))  # (L, C)
        self.feat_emb = nn.Linear(vq.emb_dim, dim_embd)
        self.ft_layers = nn.Sequential(
            *(TransformerSALayer(dim_embd, n_head, MLP_RATIO * dim_embd) for _ in range(n_layers))
        )
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))
        fuse_widths = {size: base_channels * FUSE_CHANNEL_MULTIPLIER[size] for size in connect_list}
        self.fuse_convs_dict = nn.ModuleDict({size: FuseSFTBlock(width, width) for size, width in fuse_widths.items()})
        # block index -> connect_list entry, for the encoder taps and the generator fusions
        self._encoder_taps = {ENCODER_FEATURE_BLOCK[size]: size for size in connect_list}
        self._generator_fusions = {GENERATOR_FUSE_BLOCK[size]: size for size in connect_list}
        self._decoder_layout = torch.contiguous_format  # see set_decoder_precision

    @property
    def decoder_dtype(self) -> torch.dtype:
        """The dtype the generator and the fusion blocks compute in (float32 unless set otherwise)."""
        return self.generator.blocks[0].weight.dtype

    def set_decoder_precision(self, dtype: torch.dtype = torch.float32, *, channels_last: bool = False) -> CodeFormer:
        """Run what comes after the code prediction (generator, fusion blocks) in ``dtype``, NHWC if ``channels_last``.

        The encoder, the Transformer, the codebook and AdaIN always stay float32 in plain NCHW: they
        decide the code tokens, and the tokens are the fragile part. A random-weight network picks
        its tokens by margins so thin that bfloat16 anywhere in the encoder changes a few percent of
        them, and even the channels-last float32 conv kernels (a few times the rounding error of the
        NCHW ones) change about one in 3000. A changed token swaps a 32x32 patch of the output; after
        the prediction, rounding only moves pixel values. ``net(x)`` still returns float32 NCHW.
        Call after moving the network to its device. Returns the network.
        """
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.generator.to(dtype=dtype, memory_format=layout)
        self.fuse_convs_dict.to(dtype=dtype, memory_format=layout)
        self._decoder_layout = layout
        return self

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lq_feat`` (N, 256, h, w) and the encoder features the fusion blocks use, by connect_list entry."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"this CodeFormer takes {self.image_size}x{self.image_size} inputs (latent_size "
                f"{self.config.latent_size}), got {x.shape[-2]}x{x.shape[-1]}"
            )
        features: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in self._encoder_taps:
                features[self._encoder_taps[i]] = x  # no block works in place: no copy needed
        return x, features

    def predict_logits(self, lq_feat: torch.Tensor) -> torch.Tensor:  # (N, 256, h, w) -> (N, h*w, K)
        tokens = self.feat_emb(lq_feat.flatten(2).transpose(1, 2))  # (N, L, C)
        for layer in self.ft_layers:
            tokens = layer(tokens, self.position_emb)
        return self.idx_pred_layer(tokens)  # (N, L, K)

    def decode(self, quant_feat: torch.Tensor, features: Mapping[str, torch.Tensor], w: float) -> torch.Tensor:
        """Generator pass over the codebook latents (N, 256, h, w), CFT-fused with ``features`` when w > 0.

        Runs in :attr:`decoder_dtype` and layout (see :meth:`set_decoder_precision`); returns float32
        (float64 for a float64 network) NCHW.
        """
        dtype, layout = self.decoder_dtype, self._decoder_layout
        x = quant_feat.to(dtype=dtype, memory_format=layout)
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if w > 0 and i in self._generator_fusions:
                size = self._generator_fusions[i]
                enc_feat = features[size].to(dtype=dtype, memory_format=layout)
                x = self.fuse_convs_dict[size](enc_feat, x, w)
        # float32 out of half-precision generators (float64 ones stay float64)
        out_dtype = torch.promote_types(dtype, torch.float32)
        return x.to(dtype=out_dtype, memory_format=torch.contiguous_format)  # (N, 3, H, W)

    def code_features(self, logits: torch.Tensor, lq_feat: torch.Tensor, *, adain: bool) -> torch.Tensor:
        """The codebook entries of the predicted tokens (N, 256, h, w), AdaIN'ed to ``lq_feat`` if ``adain``."""
        n, _, height, width = lq_feat.shape
        quant_feat = self.quantize.lookup(logits.argmax(dim=2).view(n, height, width))  # (N, 256, h, w)
        return adaptive_instance_normalization(quant_feat, lq_feat) if adain else quant_feat

    def forward(
        self, x: torch.Tensor, w: float = 0.0, adain: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lq_feat, features = self.encode(x)  # (N, 256, h, w)
        logits = self.predict_logits(lq_feat)  # (N, L, K)
        quant_feat = self.code_features(logits, lq_feat, adain=adain)  # (N, 256, h, w)
        return self.decode(quant_feat, features, w), logits, lq_feat


_CODEFORMER_FILES = "codeformer.pth, codeformer_colorization.pth or codeformer_inpainting.pth"


def _second_fields(state_dict: Mapping[str, torch.Tensor], prefix: str) -> set[str]:
    """The distinct ``<x>`` of keys ``<prefix><x>.<rest>`` (layer indices, fusion resolutions)."""
    return {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}


def codeformer_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> CodeFormerConfig:
    """Read a CodeFormer checkpoint's hyperparameters from its tensors (``n_head`` is not stored: 8).

    ``dim_embd`` and ``latent_size`` come from ``position_emb``, ``codebook_size`` from
    ``idx_pred_layer.1.weight``, ``n_layers`` from the ``ft_layers.<i>.*`` keys, ``connect_list``
    from the ``fuse_convs_dict.<size>.*`` keys, ``base_channels`` from the first conv. Raises
    CodeFormerError for anything else.
    """
    if "position_emb" not in state_dict and "quantize.embedding.weight" in state_dict:
        raise CodeFormerError(
            f"{source} is not a CodeFormer checkpoint: missing position_emb (it looks like a VQGAN "
            f"checkpoint); use {_CODEFORMER_FILES}"
        )
    position_emb = require_tensor(state_dict, "position_emb", 2, kind="CodeFormer", source=source)
    predictor = require_tensor(state_dict, "idx_pred_layer.1.weight", 2, kind="CodeFormer", source=source)
    layers = {int(index) for index in _second_fields(state_dict, "ft_layers.") if index.isdigit()}
    if not layers:
        raise CodeFormerError(f"{source} is not a CodeFormer checkpoint: missing ft_layers.*")
    sizes = _second_fields(state_dict, "fuse_convs_dict.")
    unknown = sorted(sizes - FUSE_CHANNEL_MULTIPLIER.keys())
    if unknown:
        raise CodeFormerError(
            f"{source} is not a CodeFormer checkpoint: fuse_convs_dict has unknown resolutions {unknown}"
        )
    first_conv = require_tensor(state_dict, "encoder.blocks.0.weight", 4, kind="CodeFormer", source=source)
    latent_size, dim_embd = position_emb.shape
    return CodeFormerConfig(
        dim_embd=dim_embd,
        n_layers=max(layers) + 1,
        codebook_size=predictor.shape[0],
        latent_size=latent_size,
        connect_list=tuple(sorted(sizes, key=int)),
        base_channels=first_conv.shape[0],
    )


def is_codeformer_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a (canonicalised) state dict is a CodeFormer's: its Transformer and code prediction head."""
    return "position_emb" in state_dict and "idx_pred_layer.1.weight" in state_dict


def build_codeformer(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> CodeFormer:
    """A :class:`CodeFormer` configured from ``state_dict``, loaded strictly, in eval mode.

    The network takes the state dict's tensors (no copy when they are float32) on their device.
    ``source`` names the file in error messages. Example::

        net = build_codeformer(load_state_dict("weights/CodeFormer/codeformer.pth"))
    """
    config = codeformer_config_from_state_dict(state_dict, source=source)
    if config.dim_embd % config.n_head:
        raise CodeFormerError(
            f"{source} is not a supported CodeFormer checkpoint: width {config.dim_embd} does not split "
            f"into {config.n_head} attention heads"
        )
    if config.base_channels <= 0 or config.base_channels % GROUP_NORM_GROUPS:
        raise CodeFormerError(
            f"{source} is not a supported CodeFormer checkpoint: base width {config.base_channels} is not a "
            f"positive multiple of {GROUP_NORM_GROUPS}"
        )
    with torch.device("meta"):  # no random init: every parameter is replaced by the checkpoint's
        net = CodeFormer(
            config.dim_embd, config.n_head, config.n_layers, config.codebook_size, config.latent_size,
            config.connect_list, base_channels=config.base_channels,
        )
    load_checkpoint_strictly(net, state_dict, kind="CodeFormer", source=source)
    return net.eval()
