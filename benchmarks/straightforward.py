"""The straightforward CodeFormer forward, as the reference computes it: the speed (and accuracy) baseline.

Plain float32 NCHW PyTorch with the reference's formulation: GroupNorm, swish and residual sums
as new tensors, nearest upsampling materialised before its conv, spatial attention through
``bmm`` + softmax, the Transformer through ``F.multi_head_attention_forward`` (what the reference's
``nn.MultiheadAttention`` runs). It reads the weights of a :class:`codeformer.archs.CodeFormer`
(whose decoder must be float32 NCHW) and is only meant for benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codeformer.archs import CodeFormer
from codeformer.archs.codeformer import (
    ENCODER_FEATURE_BLOCK,
    GENERATOR_FUSE_BLOCK,
    FuseSFTBlock,
    TransformerSALayer,
    adaptive_instance_normalization,
)
from codeformer.archs.vqgan import AttnBlock, Downsample, ResBlock, Upsample


def _res_block(block: ResBlock, x: torch.Tensor) -> torch.Tensor:
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(F.silu(block.norm2(h)))
    return (x if block.conv_out is None else block.conv_out(x)) + h


def _attn_block(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    n, c, height, width = x.shape
    h = block.norm(x)
    q = block.q(h).reshape(n, c, height * width).permute(0, 2, 1)  # (N, HW, C)
    k = block.k(h).reshape(n, c, height * width)  # (N, C, HW)
    weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # (N, HW, HW)
    v = block.v(h).reshape(n, c, height * width)  # (N, C, HW)
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(n, c, height, width)
    return x + block.proj_out(out)


def _block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(block, ResBlock):
        return _res_block(block, x)
    if isinstance(block, AttnBlock):
        return _attn_block(block, x)
    if isinstance(block, Upsample):
        return block.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    if isinstance(block, Downsample):
        return block.conv(F.pad(x, (0, 1, 0, 1)))
    return block(x)  # a conv or a GroupNorm


def _transformer_layer(layer: TransformerSALayer, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The reference's layer on (L, N, C) tokens: pre-norm self-attention and a GELU MLP."""
    attn = layer.self_attn
    h = layer.norm1(x)
    q = k = h + pos
    dim = x.shape[-1]
    out, _ = F.multi_head_attention_forward(
        q, k, h, dim, attn.n_head, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
    )
    x = x + out
    return x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))


def _fuse(block: FuseSFTBlock, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float) -> torch.Tensor:
    cond = _res_block(block.encode_enc, torch.cat([enc_feat, dec_feat], dim=1))
    return dec_feat + w * (dec_feat * block.scale(cond) + block.shift(cond))


def straightforward_forward(net: CodeFormer, x: torch.Tensor, w: float, adain: bool = True) -> torch.Tensor:
    """``net(x, w, adain)[0]`` computed the straightforward way: (N, 3, 512, 512) in, images out."""
    features = {}
    taps = {ENCODER_FEATURE_BLOCK[size]: size for size in net.config.connect_list}
    for index, block in enumerate(net.encoder.blocks):
        x = _block(block, x)
        if index in taps:
            features[taps[index]] = x.clone()  # the reference keeps a copy
    lq_feat = x  # (N, 256, h, w)
    n, _, height, width = lq_feat.shape
    tokens = net.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))  # (L, N, C)
    pos = net.position_emb.unsqueeze(1)  # (L, 1, C)
    for layer in net.ft_layers:
        tokens = _transformer_layer(layer, tokens, pos)
    logits = net.idx_pred_layer(tokens).permute(1, 0, 2)  # (N, L, K)
    quant_feat = net.quantize.lookup(logits.argmax(dim=2).view(n, height, width))
    if adain:
        quant_feat = adaptive_instance_normalization(quant_feat, lq_feat)
    x = quant_feat
    fusions = {GENERATOR_FUSE_BLOCK[size]: size for size in net.config.connect_list}
    for index, block in enumerate(net.generator.blocks):
        x = _block(block, x)
        if w > 0 and index in fusions:
            x = _fuse(net.fuse_convs_dict[fusions[index]], features[fusions[index]], x, w)
    return x

