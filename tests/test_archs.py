"""The VQGAN and CodeFormer networks: official layouts, config inference, strict loading, forward semantics."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, replace

import pytest
import torch
from checkpoint_factory import (
    VARIANTS,
    cached_codeformer_checkpoint,
    cached_vqgan_checkpoint,
    random_codeformer,
    random_state_dict,
)
from torch import nn

from codeformer.archs import (
    CodeFormer,
    CodeFormerConfig,
    VQAutoEncoder,
    VQGANConfig,
    build_codeformer,
    build_vqgan,
    codeformer_config_from_state_dict,
)
from codeformer.archs.codeformer import adaptive_instance_normalization
from codeformer.errors import CodeFormerError
from codeformer.weights import load_state_dict

# The official files' layouts: tensor count, parameter count, and the sha256 of their sorted
# "name AxBxC" lines (one per tensor, newline-terminated), from the project's checkpoint layout spec.
OFFICIAL_LAYOUTS = {
    "codeformer": (515, 94112707, "dc1e9f725df6b5d466eadf1a5a177597bea86ded3ae94d71d1f24c073d3a5e33"),
    "colorization": (497, 93046083, "3c07792beb6fb3df912b779b041a26253febad267ce5538136a19efcca752bac"),
    "inpainting": (497, 92652867, "8d7681343ec0a7c0f8434f0186b814fcdaa3bba2b0a7840369a60441ecd74835"),
    "vqgan": (329, 63740099, "1337fd955363391a695b1461fc707479fbf4848f12a0b3f1db5e155d746c8af2"),
}
# A few entries of the spec, named so that a layout mismatch is easy to read.
OFFICIAL_SHAPES = {
    "ft_layers.0.self_attn.in_proj_weight": (1536, 512),
    "fuse_convs_dict.32.scale.0.weight": (256, 256, 3, 3),
    "encoder.blocks.4.conv_out.weight": (128, 64, 1, 1),
    "quantize.embedding.weight": (1024, 256),
    "idx_pred_layer.1.weight": (1024, 512),
    "position_emb": (256, 512),
}
# Constructor arguments of the official files, as the spec lists them (latent_size: the default 256).
OFFICIAL_CONFIGS = {
    "codeformer": CodeFormerConfig(512, 8, 9, 1024, 256, ("32", "64", "128", "256")),
    "colorization": CodeFormerConfig(512, 8, 9, 1024, 256, ("32", "64", "128")),
    "inpainting": CodeFormerConfig(512, 8, 9, 512, 256, ("32", "64", "128")),
}

SMALL_SIDE = 128  # input side of the small test network: 4x4 latent grid
# Small CodeFormer for the forward semantics: the full VQGAN and all four fusion blocks, a 4x4
# latent grid and a narrow 2-layer Transformer, so that a forward pass is cheap.
SMALL_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=(SMALL_SIDE // 32) ** 2,
                                base_channels=32)
# Batch vs single forward: only float rounding may differ, 1e-5 of the tensor's largest magnitude
# (random weights drive features and outputs to about +-10, real faces stay near [-1, 1]).
BATCH_TOLERANCE = 1e-5


def assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=BATCH_TOLERANCE * scale)


def layout_of(net: nn.Module) -> tuple[int, int, str]:
    shapes = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    text = "".join(f"{name} {'x'.join(map(str, shape))}\n" for name, shape in sorted(shapes.items()))
    params = sum(t.numel() for t in net.state_dict().values())
    return len(shapes), params, hashlib.sha256(text.encode()).hexdigest()


def meta_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    return dict(net.state_dict())


@pytest.fixture(scope="module")
def official_meta_nets() -> dict[str, nn.Module]:
    """The official architectures on the meta device (names and shapes only, no memory)."""
    with torch.device("meta"):
        nets: dict[str, nn.Module] = {v: CodeFormer(**asdict(OFFICIAL_CONFIGS[v])) for v in OFFICIAL_CONFIGS}
        nets["vqgan"] = VQAutoEncoder()
    return nets


@pytest.mark.parametrize("variant", list(OFFICIAL_LAYOUTS))
def test_network_produces_the_official_layout(official_meta_nets, variant):
    assert layout_of(official_meta_nets[variant]) == OFFICIAL_LAYOUTS[variant]


def test_codeformer_parameter_names_and_shapes(official_meta_nets):
    shapes = {name: tuple(t.shape) for name, t in official_meta_nets["codeformer"].state_dict().items()}
    assert {name: shapes.get(name) for name in OFFICIAL_SHAPES} == OFFICIAL_SHAPES


def test_factory_variants_are_the_official_configs():
    assert dict(VARIANTS) == OFFICIAL_CONFIGS


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, tuple[dict[str, torch.Tensor], nn.Module]]:
    """Each random official-layout file, loaded from disk and built from its state dict alone."""
    result = {}
    for variant in OFFICIAL_CONFIGS:
        path = cached_codeformer_checkpoint(tmp_path_factory, variant)
        state = load_state_dict(path)
        result[variant] = (state, build_codeformer(state, source=str(path)))
    path = cached_vqgan_checkpoint(tmp_path_factory)
    state = load_state_dict(path)
    result["vqgan"] = (state, build_vqgan(state, source=str(path)))
    return result


@pytest.mark.parametrize("variant", list(OFFICIAL_CONFIGS))
def test_codeformer_file_loads_strictly_with_inferred_config(loaded, variant):
    state, net = loaded[variant]
    assert codeformer_config_from_state_dict(state) == OFFICIAL_CONFIGS[variant]
    assert net.config == OFFICIAL_CONFIGS[variant]
    assert not net.training
    assert layout_of(net) == OFFICIAL_LAYOUTS[variant]
    for name, tensor in net.state_dict().items():
        assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, name
        assert torch.equal(tensor, state[name]), name


def test_vqgan_file_loads_strictly_with_inferred_config(loaded):
    state, net = loaded["vqgan"]
    assert net.config == VQGANConfig()
    assert not net.training
    assert all(torch.equal(t, state[name]) for name, t in net.state_dict().items())


# The official size's forward (shapes, finite output, tokens spread over the codebook) runs once in the suite:
# test_independent_codeformer.py, against an independent implementation.


def test_wrong_input_size_is_refused(loaded):
    net = loaded["codeformer"][1]
    with torch.inference_mode(), pytest.raises(ValueError, match="512x512"):
        net(torch.zeros(1, 3, 256, 256))


# ---------------------------------------------------------------- wrong files


@pytest.fixture(scope="module")
def meta_codeformer_state(official_meta_nets) -> dict[str, torch.Tensor]:
    return meta_state_dict(official_meta_nets["codeformer"])


def test_vqgan_file_is_not_a_codeformer(official_meta_nets):
    with pytest.raises(CodeFormerError, match=r"^vq\.pth is not a CodeFormer checkpoint: missing position_emb"):
        build_codeformer(meta_state_dict(official_meta_nets["vqgan"]), source="vq.pth")


def test_codeformer_file_is_not_a_vqgan(meta_codeformer_state):
    with pytest.raises(CodeFormerError, match="cf.pth is a CodeFormer checkpoint, not a VQGAN one"):
        build_vqgan(meta_codeformer_state, source="cf.pth")


@pytest.mark.parametrize("state", [{}, {"conv_first.weight": torch.zeros(64, 12, 3, 3)}], ids=["empty", "esrgan"])
def test_foreign_state_dict_is_not_a_codeformer(state):
    with pytest.raises(CodeFormerError, match="is not a CodeFormer checkpoint: missing position_emb"):
        build_codeformer(state)
    with pytest.raises(CodeFormerError, match="is not a VQGAN checkpoint: missing quantize.embedding.weight"):
        build_vqgan(state)


def test_missing_key_is_named(meta_codeformer_state):
    state = {k: v for k, v in meta_codeformer_state.items() if k != "generator.blocks.24.weight"}
    with pytest.raises(CodeFormerError, match="not a CodeFormer checkpoint: missing generator.blocks.24.weight$"):
        build_codeformer(state)


def test_wrong_shape_and_unexpected_keys_are_named(meta_codeformer_state):
    state = dict(meta_codeformer_state)
    state["quantize.embedding.weight"] = torch.empty(512, 256, device="meta")
    state["extra.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CodeFormerError) as info:
        build_codeformer(state)
    message = str(info.value)
    assert "\n" not in message
    assert "unexpected extra.weight" in message
    assert "wrong shape for quantize.embedding.weight (file [512, 256], expected [1024, 256])" in message


@pytest.mark.parametrize("width", [48, 0])
def test_a_base_width_the_groupnorms_cannot_split_is_refused(meta_codeformer_state, width):
    state = dict(meta_codeformer_state, **{"encoder.blocks.0.weight": torch.empty(width, 3, 3, 3, device="meta")})
    with pytest.raises(CodeFormerError, match=f"^cf.pth is not a supported CodeFormer checkpoint: base width {width} "
                                              "is not a positive multiple of 32$"):
        build_codeformer(state, source="cf.pth")


def test_unknown_fusion_resolution_is_refused(meta_codeformer_state):
    state = dict(meta_codeformer_state, **{"fuse_convs_dict.99.scale.0.weight": torch.empty(1, device="meta")})
    with pytest.raises(CodeFormerError, match=r"unknown resolutions \['99'\]"):
        codeformer_config_from_state_dict(state)


def test_constructor_validates_arguments():
    with torch.device("meta"):
        with pytest.raises(ValueError, match="connect_list"):
            CodeFormer(connect_list=("48",))
        with pytest.raises(ValueError, match="square"):
            CodeFormer(latent_size=200)
        with pytest.raises(ValueError, match="base_channels 48 is not a positive multiple of 32"):
            CodeFormer(base_channels=48)
        with pytest.raises(ValueError, match="quantizer"):
            VQAutoEncoder(quantizer="gumbel")
        # reference-only training arguments are accepted
        CodeFormer(fix_modules=["quantize", "generator"])


# ------------------------------------------------------- forward semantics (small network)


@pytest.fixture(scope="module")
def small_net() -> CodeFormer:
    return random_codeformer(SMALL_CONFIG, seed=1)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Two different smooth 'faces' (N=2, RGB in [-1, 1])."""
    coarse = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return nn.functional.interpolate(coarse, size=SMALL_SIDE, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def batch_run(small_net, faces):
    with torch.inference_mode():
        return small_net(faces, w=0.5, adain=True)


def test_forward_shapes(small_net, batch_run):
    out, logits, lq_feat = batch_run
    assert small_net.image_size == SMALL_SIDE
    assert out.shape == (2, 3, SMALL_SIDE, SMALL_SIDE)
    assert logits.shape == (2, SMALL_CONFIG.latent_size, SMALL_CONFIG.codebook_size)
    assert lq_feat.shape == (2, 256, SMALL_SIDE // 32, SMALL_SIDE // 32)


def test_batch_equals_single_forwards(small_net, faces, batch_run):
    with torch.inference_mode():
        singles = [small_net(faces[i : i + 1], w=0.5, adain=True) for i in range(2)]
    for batched, single in zip(batch_run, zip(*singles)):
        assert_close_to_rounding(batched, torch.cat(single))
    tokens = torch.cat([s[1] for s in singles]).argmax(dim=2)
    assert torch.equal(batch_run[1].argmax(dim=2), tokens)


def test_forward_is_deterministic(small_net, faces, batch_run):
    with torch.inference_mode():
        again = small_net(faces, w=0.5, adain=True)
    for first, second in zip(batch_run, again):
        assert torch.equal(first, second)


def test_different_faces_get_different_codes(batch_run):
    tokens = batch_run[1].argmax(dim=2)  # (2, L)
    assert not torch.equal(tokens[0], tokens[1])
    assert tokens[0].unique().numel() > 1


def test_w_zero_ignores_the_fusion_blocks(small_net, faces):
    face = faces[:1]
    fuse_params = list(small_net.fuse_convs_dict.parameters())
    saved = [p.detach().clone() for p in fuse_params]
    try:
        with torch.inference_mode():
            before = {w: small_net(face, w=w, adain=True) for w in (0.0, 1.0)}
            for p in fuse_params:
                p.mul_(0.8)  # mild: the fusion multiplies features, large changes overflow
            after = {w: small_net(face, w=w, adain=True) for w in (0.0, 1.0)}
    finally:
        with torch.no_grad():
            for p, value in zip(fuse_params, saved):
                p.copy_(value)
    assert torch.equal(before[0.0][0], after[0.0][0])
    assert (before[1.0][0] - after[1.0][0]).abs().max() > 1e-2
    assert (before[0.0][0] - before[1.0][0]).abs().max() > 1e-2
    # the prediction happens before the fusion: logits and latents do not depend on w
    assert torch.equal(before[0.0][1], before[1.0][1]) and torch.equal(before[0.0][2], before[1.0][2])


def test_adain_changes_the_output_not_the_codes(small_net, faces):
    with torch.inference_mode():
        plain = small_net(faces[:1], w=0.0, adain=False)
        adain = small_net(faces[:1], w=0.0, adain=True)
    assert (plain[0] - adain[0]).abs().max() > 1e-2
    assert torch.equal(plain[1], adain[1])


def test_adaptive_instance_normalization_takes_the_style_statistics():
    generator = torch.Generator().manual_seed(3)
    content = torch.randn(2, 4, 5, 5, generator=generator)
    style = torch.randn(2, 4, 5, 5, generator=generator) * 3 + 1
    mixed = adaptive_instance_normalization(content, style)
    torch.testing.assert_close(mixed.mean(dim=(2, 3)), style.mean(dim=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed.std(dim=(2, 3)), style.std(dim=(2, 3)), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ VQGAN (small network)


@pytest.fixture(scope="module")
def small_vqgan() -> VQAutoEncoder:
    # 2 levels of 32 and 64 channels (GroupNorm needs multiples of 32), attention at 32x32
    with torch.device("meta"):
        net = VQAutoEncoder(
            img_size=64, nf=32, ch_mult=(1, 2), attn_resolutions=(32,), codebook_size=64, emb_dim=32
        )
    net.load_state_dict(random_state_dict(net, seed=4), assign=True)
    return net.eval()


def test_vqgan_reconstructs_through_the_nearest_codes(small_vqgan):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        image, codes = small_vqgan(x)
        latents = small_vqgan.encode(x)  # (2, 32, 32, 32)
        decoded = small_vqgan.decode_codes(codes)
        single_image, single_codes = small_vqgan(x[:1])
    assert image.shape == (2, 3, 64, 64) and codes.shape == (2, 32, 32) and codes.dtype == torch.int64
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 32)
    nearest = torch.cdist(flat, small_vqgan.quantize.embedding.weight).argmin(dim=1)
    assert torch.equal(codes.flatten(), nearest)
    assert codes.unique().numel() > 1
    assert torch.equal(decoded, image)
    assert torch.equal(single_codes, codes[:1])
    assert_close_to_rounding(single_image, image[:1])


def test_small_configs_round_trip_through_a_state_dict():
    config = replace(SMALL_CONFIG, codebook_size=512, connect_list=("64", "256"))
    with torch.device("meta"):
        net = CodeFormer(**asdict(config))
    assert codeformer_config_from_state_dict(net.state_dict()) == config
