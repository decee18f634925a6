"""GPEN-BFR and RestoreFormer++: official layouts, config inference, strict loading, equality with the originals.

The layouts (``tests/data/gpen_layouts.json``, ``tests/data/restoreformer_pp_layouts.json``) list
every tensor name and shape of the official files; they were produced by building the ORIGINAL
networks (yangxy/GPEN ``FullGenerator``, wzhouxiff/RestoreFormerPlusPlus
``VQVAEGANMultiHeadTransformer``) with the official hyperparameters.

The reference outputs (``tests/data/gpen_bfr256_reference.npz``,
``tests/data/restoreformer_pp_reference.npz``) were produced by running those original networks,
on CPU, with the random weights of :func:`random_gpen_state` / :func:`random_restoreformer_state`
(seeded, drawn over the SORTED tensor names, so these tests regenerate exactly the same tensors) on
the inputs of :func:`reference_input`. Outputs are stored as float16: the comparisons allow 1e-3
plus the float16 storage rounding (relative 2^-11).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from codeformer.archs import (
    GPEN,
    GPENConfig,
    RestoreFormerPP,
    RestoreFormerPPConfig,
    build_gpen,
    build_restoreformer_pp,
    gpen_config_from_state_dict,
    restoreformer_state_dict,
)
from codeformer.archs.gpen import GPEN_BFR_CONFIGS, MAPPING_LR_MUL, blur_kernel
from codeformer.archs.restoreformer_pp import MODEL_PREFIX, RESTOREFORMER_PP_TEMPLATE_5
from codeformer.errors import CodeFormerError
from codeformer.face.alignment import CROP_TEMPLATES, FFHQ_TEMPLATE_5, gpen_template

DATA = Path(__file__).resolve().parent / "data"
GPEN_LAYOUTS = DATA / "gpen_layouts.json"
RESTOREFORMER_LAYOUTS = DATA / "restoreformer_pp_layouts.json"
GPEN_REFERENCE = DATA / "gpen_bfr256_reference.npz"
RESTOREFORMER_REFERENCE = DATA / "restoreformer_pp_reference.npz"

# Equality with the originals: 1e-3 on [-1, 1] images, plus the rounding of the float16 fixtures.
ATOL = 1e-3
FLOAT16_RTOL = 2.0**-11
# Batch vs single, run vs run of our own network: float rounding only.
BATCH_TOLERANCE = 1e-5

# ---------------------------------------------------------------------------------------------
# Random weights in the official layouts (also imported by the throwaway script that ran the
# originals to make the reference outputs: change nothing here without regenerating those).
# ---------------------------------------------------------------------------------------------

GPEN_SEED = 0
RESTOREFORMER_SEED = 0
GPEN_INPUT_SEED = 1
RESTOREFORMER_INPUT_SEED = 1
GPEN_TEST_CONFIG = GPEN_BFR_CONFIGS["GPEN-BFR-256"]
RESTOREFORMER_INPUT_SIDE = 128  # the official 512 px network on 128 px inputs: all weights, 16x cheaper
RESTOREFORMER_BATCH = 2

# Spreads (std, mean) of the stored GPEN values. Its layers scale their weights at run time
# (equalized learning rate), so stored weights are N(0, 1), divided by the mapping network's
# learning-rate multiplier there; biases keep activations near zero, styles start near 1.
GPEN_WEIGHT_STD = 1.0
GPEN_TO_RGB_STD = 0.4  # keeps the sum of the RGB outputs of all levels around [-1, 1]
GPEN_BIAS_STD = 0.1
GPEN_NOISE_WEIGHT_STD = 1.0  # how strongly the encoder features enter the generator
GPEN_MODULATION_MEAN = 1.0


def _gpen_spread(name: str) -> tuple[float, float]:
    if name.startswith("generator.style."):  # mapping network: run-time multiplier 0.01
        std = GPEN_WEIGHT_STD if name.endswith("weight") else GPEN_BIAS_STD
        return std / MAPPING_LR_MUL, 0.0
    if name.endswith("modulation.bias"):
        return GPEN_BIAS_STD, GPEN_MODULATION_MEAN
    if name.endswith("noise.weight"):
        return GPEN_NOISE_WEIGHT_STD, 0.0
    if name.endswith("bias"):
        return GPEN_BIAS_STD, 0.0
    if "to_rgb" in name and name.endswith("conv.weight"):
        return GPEN_TO_RGB_STD, 0.0
    return GPEN_WEIGHT_STD, 0.0


def random_gpen_state(config: GPENConfig, seed: int = GPEN_SEED) -> dict[str, torch.Tensor]:
    """Random GPEN tensors over the sorted names; the blur-kernel buffers keep their fixed values."""
    net = GPEN(config)  # parameters uninitialised (cheap), buffers = the blur kernels
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(net.state_dict().items()):
        if name.endswith(".kernel"):
            state[name] = tensor.clone()
            continue
        std, mean = _gpen_spread(name)
        state[name] = mean + std * torch.randn(tuple(tensor.shape), generator=generator)
    return state


# RestoreFormer++ spreads, as tests/checkpoint_factory.py does for the VQGAN, except the codebook:
# its entries get the spread of the encoder's latents (about 0.5), so that the nearest code depends
# on the input rather than on which entries happen to be shortest.
RESTOREFORMER_CODEBOOK_STD = 0.5
NORM_SCALE_STD = 0.1
BIAS_STD = 0.02


def random_restoreformer_state(
    config: RestoreFormerPPConfig, seed: int = RESTOREFORMER_SEED
) -> dict[str, torch.Tensor]:
    """Random RestoreFormer(++) tensors (names without ``vqvae.``) over the sorted names."""
    with torch.device("meta"):
        net = RestoreFormerPP(config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(net.state_dict().items()):
        shape = tuple(tensor.shape)
        values = torch.randn(shape, generator=generator)
        if name == "quantize.embedding.weight":
            values *= RESTOREFORMER_CODEBOOK_STD
        elif len(shape) == 1 and name.endswith("weight"):  # GroupNorm scales
            values = 1 + NORM_SCALE_STD * values
        elif len(shape) == 1:  # biases
            values *= BIAS_STD
        else:  # conv weights: activations stay O(1)
            values /= math.sqrt(math.prod(shape[1:]))
        state[name] = values
    return state


def reference_input(side: int, batch: int, seed: int) -> torch.Tensor:
    """Uniform random RGB in [-1, 1], (batch, 3, side, side)."""
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fingerprint(state: dict[str, torch.Tensor]) -> float:
    """Sum of all values in float64 over the sorted names: tells a changed weight generator from a changed network."""
    return float(sum(state[name].double().sum() for name in sorted(state)))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _layouts(path: Path) -> dict[str, dict[str, list[int]]]:
    return {name: layout for name, layout in json.loads(path.read_text()).items() if not name.startswith("_")}


def _shapes(net: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in net.state_dict().items()}


def _meta_state(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {name: torch.empty(shape, device="meta") for name, shape in layout.items()}


def _assert_matches_reference(actual: torch.Tensor, expected: np.ndarray) -> None:
    reference = torch.from_numpy(expected.astype(np.float32))
    torch.testing.assert_close(actual, reference, atol=ATOL, rtol=FLOAT16_RTOL)


def _assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=BATCH_TOLERANCE * scale)


# ---------------------------------------------------------------------------------------------
# GPEN-BFR
# ---------------------------------------------------------------------------------------------

GPEN_VARIANTS = {f"{name}.pth": config for name, config in GPEN_BFR_CONFIGS.items()}


def test_gpen_layout_file_lists_the_four_official_files():
    assert sorted(_layouts(GPEN_LAYOUTS)) == sorted(GPEN_VARIANTS)


@pytest.mark.parametrize("filename", sorted(GPEN_VARIANTS))
def test_gpen_produces_the_official_layout(filename):
    with torch.device("meta"):
        net = GPEN(GPEN_VARIANTS[filename])
    assert _shapes(net) == _layouts(GPEN_LAYOUTS)[filename]


@pytest.mark.parametrize("filename", sorted(GPEN_VARIANTS))
def test_gpen_official_layout_loads_strictly_with_inferred_config(filename):
    state = _meta_state(_layouts(GPEN_LAYOUTS)[filename])
    net = build_gpen(state, source=filename)  # meta tensors: checks names and shapes, allocates nothing
    assert net.config == GPEN_VARIANTS[filename]
    assert not net.training


def test_gpen_blur_kernels_are_the_reference_values():
    # make_kernel([1, 3, 3, 1]): outer product normalised to sum 1, times 4 where it upsamples
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    expected = torch.outer(taps, taps) / 64
    state = GPEN(GPENConfig(size=16)).state_dict()
    assert torch.equal(state["ecd1.0.0.kernel"], expected)
    assert torch.equal(state["generator.convs.0.conv.blur.kernel"], expected * 4)
    assert torch.equal(state["generator.to_rgbs.0.upsample.kernel"], expected * 4)
    assert torch.equal(blur_kernel(), expected)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("generator.convs.0.noise.weight"), "missing generator.convs.0.noise.weight"),
        (lambda s: s.update({"generator.extra": torch.empty(1, device="meta")}), "unexpected generator.extra"),
        (
            lambda s: s.update({"final_linear.0.bias": torch.empty(7, device="meta")}),
            "wrong shape for final_linear.0.bias",
        ),
    ],
)
def test_gpen_rejects_a_mismatched_file(mutate, message):
    state = _meta_state(_layouts(GPEN_LAYOUTS)["GPEN-BFR-512.pth"])
    mutate(state)
    with pytest.raises(CodeFormerError, match=message):
        build_gpen(state, source="x.pth")


def test_gpen_rejects_other_checkpoints():
    with pytest.raises(CodeFormerError, match="not a GPEN checkpoint"):
        gpen_config_from_state_dict({"position_emb": torch.empty(256, 512, device="meta")}, source="codeformer.pth")


@pytest.fixture(scope="module")
def gpen_256() -> tuple[GPEN, dict[str, torch.Tensor]]:
    state = random_gpen_state(GPEN_TEST_CONFIG)
    return build_gpen(state), state


def test_gpen_equals_the_original(gpen_256):
    net, state = gpen_256
    reference = np.load(GPEN_REFERENCE)
    assert fingerprint(state) == pytest.approx(float(reference["fingerprint"]), rel=1e-9), (
        "the random weights differ from the ones the fixture was made with (torch's generator changed?)"
    )
    x = reference_input(GPEN_TEST_CONFIG.size, 1, GPEN_INPUT_SEED)
    with torch.no_grad():
        out = net(x)
    _assert_matches_reference(out, reference["output"])


def test_gpen_encoder_features_reach_the_output(gpen_256):
    # The equality test above would not notice a broken feature path if its effect were tiny.
    net, state = gpen_256
    muted = {k: torch.zeros_like(v) if k.endswith("noise.weight") else v for k, v in state.items()}
    x = reference_input(GPEN_TEST_CONFIG.size, 1, GPEN_INPUT_SEED)
    with torch.no_grad():
        assert (net(x) - build_gpen(muted)(x)).abs().max() > 100 * ATOL


def test_gpen_is_deterministic_and_batch_independent(gpen_256):
    net, _ = gpen_256
    x = reference_input(GPEN_TEST_CONFIG.size, 2, GPEN_INPUT_SEED + 1)
    with torch.no_grad():
        first, second = net(x), net(x)
        single = net(x[1:])  # the second sample: a mix-up of samples would show here
    assert torch.equal(first, second)
    _assert_close_to_rounding(first[1:], single)


def test_gpen_rejects_the_wrong_input_size(gpen_256):
    net, _ = gpen_256
    with pytest.raises(ValueError, match="256x256"):
        net(torch.zeros(1, 3, 128, 128))


# get_reference_facial_points((S, S), 0.25, (0, 0), True) of yangxy/GPEN align_faces.py, as it printed them.
ORIGINAL_GPEN_TEMPLATES = {
    256: [
        [101.02034214095238, 121.4419817295238], [154.71512277333332, 121.14499046095239],
        [128.03839983238097, 151.9795851885714], [105.97988746666665, 183.41409737142857],
        [150.44556245333334, 183.16815475809523],
    ],
    512: [
        [202.04068428190476, 242.8839634590476], [309.43024554666664, 242.28998092190477],
        [256.07679966476195, 303.9591703771428], [211.9597749333333, 366.82819474285714],
        [300.8911249066667, 366.33630951619045],
    ],
    1024: [
        [404.0813685638095, 485.7679269180952], [618.8604910933333, 484.57996184380954],
        [512.1535993295239, 607.9183407542856], [423.9195498666666, 733.6563894857143],
        [601.7822498133334, 732.6726190323809],
    ],
    2048: [
        [808.162737127619, 971.5358538361904], [1237.7209821866666, 969.1599236876191],
        [1024.3071986590478, 1215.8366815085712], [847.8390997333332, 1467.3127789714285],
        [1203.5644996266667, 1465.3452380647618],
    ],
}


@pytest.mark.parametrize("size", sorted(ORIGINAL_GPEN_TEMPLATES))
def test_gpen_templates_are_the_original_points(size):
    assert [list(p) for p in gpen_template(size)] == ORIGINAL_GPEN_TEMPLATES[size]  # bit-identical
    # The crop template the registry gives GPEN models: the same points as fractions of the side.
    assert np.array_equal(CROP_TEMPLATES["gpen"] * size, np.array(gpen_template(size)))


# ---------------------------------------------------------------------------------------------
# RestoreFormer++
# ---------------------------------------------------------------------------------------------

RESTOREFORMER_VARIANTS = {
    "RestoreFormer++.ckpt": RestoreFormerPPConfig(),
    "RestoreFormer.ckpt": RestoreFormerPPConfig(heads=8, decoder_attn_levels=(5,)),
}


def _stripped(layout: dict[str, list[int]]) -> dict[str, list[int]]:
    assert all(name.startswith(MODEL_PREFIX) for name in layout)
    return {name[len(MODEL_PREFIX) :]: shape for name, shape in layout.items()}


def test_restoreformer_layout_file_lists_the_official_files():
    assert sorted(_layouts(RESTOREFORMER_LAYOUTS)) == sorted(RESTOREFORMER_VARIANTS)


@pytest.mark.parametrize("filename", sorted(RESTOREFORMER_VARIANTS))
def test_restoreformer_produces_the_official_layout(filename):
    with torch.device("meta"):
        net = RestoreFormerPP(RESTOREFORMER_VARIANTS[filename])
    assert _shapes(net) == _stripped(_layouts(RESTOREFORMER_LAYOUTS)[filename])


@pytest.mark.parametrize("filename", sorted(RESTOREFORMER_VARIANTS))
def test_restoreformer_lightning_checkpoint_loads_strictly_with_inferred_config(filename):
    # As torch.load gives the official file: Lightning's wrapper, `vqvae.` names, training-only extras.
    state = _meta_state(_layouts(RESTOREFORMER_LAYOUTS)[filename])
    state["loss.discriminator.main.0.weight"] = torch.empty(64, 3, 4, 4, device="meta")
    checkpoint = {"state_dict": state, "epoch": 1, "global_step": 2}
    net = build_restoreformer_pp(checkpoint, source=filename)
    assert net.config == RESTOREFORMER_VARIANTS[filename]
    assert not net.training


def test_restoreformer_state_dict_accepts_each_wrapping():
    layout = _layouts(RESTOREFORMER_LAYOUTS)["RestoreFormer++.ckpt"]
    prefixed = _meta_state(layout)
    stripped = restoreformer_state_dict({"state_dict": prefixed})
    assert sorted(stripped) == sorted(_stripped(layout))
    assert sorted(restoreformer_state_dict(prefixed)) == sorted(stripped)
    assert sorted(restoreformer_state_dict(stripped)) == sorted(stripped)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda s: s.pop("vqvae.decoder.up.4.attn.2.proj_out.bias"),
            "missing decoder.up.4.attn.2.proj_out.bias",
        ),
        (lambda s: s.update({"vqvae.decoder.extra": torch.empty(1, device="meta")}), "unexpected decoder.extra"),
        (
            lambda s: s.update({"vqvae.quant_conv.bias": torch.empty(3, device="meta")}),
            "wrong shape for quant_conv.bias",
        ),
    ],
)
def test_restoreformer_rejects_a_mismatched_file(mutate, message):
    state = _meta_state(_layouts(RESTOREFORMER_LAYOUTS)["RestoreFormer++.ckpt"])
    mutate(state)
    with pytest.raises(CodeFormerError, match=message):
        build_restoreformer_pp({"state_dict": state}, source="x.ckpt")


def test_restoreformer_template_is_the_ffhq_one():
    assert np.array_equal(np.array(RESTOREFORMER_PP_TEMPLATE_5), FFHQ_TEMPLATE_5)


@pytest.fixture(scope="module")
def restoreformer_pp() -> tuple[RestoreFormerPP, dict[str, torch.Tensor]]:
    state = random_restoreformer_state(RestoreFormerPPConfig())
    checkpoint = {"state_dict": {MODEL_PREFIX + name: t for name, t in state.items()}}
    return build_restoreformer_pp(checkpoint), state


def test_restoreformer_equals_the_original(restoreformer_pp):
    net, state = restoreformer_pp
    reference = np.load(RESTOREFORMER_REFERENCE)
    assert fingerprint(state) == pytest.approx(float(reference["fingerprint"]), rel=1e-9), (
        "the random weights differ from the ones the fixture was made with (torch's generator changed?)"
    )
    x = reference_input(RESTOREFORMER_INPUT_SIDE, RESTOREFORMER_BATCH, RESTOREFORMER_INPUT_SEED)
    with torch.no_grad():
        out, codes = net(x)
    assert torch.equal(codes, torch.from_numpy(reference["codes"]).long())
    assert len(torch.unique(codes)) > codes.numel() // 2  # the codes depend on the input
    _assert_matches_reference(out, reference["output"])


def test_restoreformer_is_deterministic_and_batch_independent(restoreformer_pp):
    net, _ = restoreformer_pp
    x = reference_input(RESTOREFORMER_INPUT_SIDE, RESTOREFORMER_BATCH, RESTOREFORMER_INPUT_SEED)
    with torch.no_grad():
        (first, codes), (second, _) = net(x), net(x)
        single, single_codes = net(x[1:])
    assert torch.equal(first, second)
    assert torch.equal(codes[1:], single_codes)
    _assert_close_to_rounding(first[1:], single)


def test_restoreformer_rejects_sides_that_are_not_multiples_of_32(restoreformer_pp):
    net, _ = restoreformer_pp
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 100, 128))
