"""ONNX export: CodeFormer with the fidelity weight as a live input, GFPGAN, and the ONNX Runtime restorer.

The small test CodeFormer (the full VQGAN, a narrow 2-layer Transformer, 64x64 crops) still holds
the VQGAN's 290 MB of weights: an export takes seconds and writes about 300 MB, so the graph most
tests use is the one ``codeformer export onnx`` writes for a checkpoint of it, exported once per test
session (tests/test_onnx_models.py uses it too). ONNX Runtime's outputs are compared with the
library's (the FaceRestorer the command exported, loaded from the same checkpoint) at w = 0, 0.5 and 1.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_factory import TINY_CONFIG, cached_small_codeformer_checkpoint, cached_small_codeformer_onnx
from spandrel.architectures.GFPGAN import GFPGAN

from codeformer.archs import CodeFormer
from codeformer.errors import CodeFormerError, OptionError
from codeformer.restorer import (
    FaceRestorer,
    NoFidelityControlError,
    Restorer,
    batch_to_crops,
    crops_to_batch,
    ffhq_template,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from codeformer.onnx_export import (  # noqa: E402 - only importable checks above decide whether to run
    META_ADAIN,
    META_ARCHITECTURE,
    META_FIXED_WEIGHT,
    CodeFormerExport,
    OnnxRestorer,
    batch_independent_modulated_convs,
    export_onnx,
    onnx_session,
    run_onnx,
)

SMALL_SIDE = 64  # crops of the small test network (checkpoint_factory.TINY_CONFIG: 2x2 latent grid)
WEIGHTS = (0.0, 0.5, 1.0)
CPU = torch.device("cpu")

# ONNX Runtime against the library, float rounding only (measured on this network: raw outputs differ
# by at most 1e-5 of their largest magnitude, which random weights drive to about 9; the outputs
# clamped to [-1, 1] by at most 9e-5; restored crops by one level on 0.09% of the pixels).
RAW_TOLERANCE = 5e-5  # of max(1, largest |output|)
UNIT_TOLERANCE = 5e-4  # absolute, on outputs clamped to [-1, 1]; one uint8 level is 2/255 = 7.8e-3
MAX_LEVELS = 1  # uint8 crops
MAX_DIFFERENT_SHARE = 5e-3  # share of uint8 values that may differ (by one level)
# The comparisons only mean something if every code token is decided by a margin far above float
# rounding (a flipped token swaps a 32x32 patch): the smallest gap between the two best logits.
MIN_LOGIT_GAP = 5e-4
# A small GFPGAN (64x64 crops, narrow channels) and how much noise its style convolutions inject
# (random init leaves it at 0, which would hide the stored noise maps).
SMALL_GFPGAN = {"out_size": 64, "num_style_feat": 64, "channel_multiplier": 1, "narrow": 0.25, "num_mlp": 2,
                "input_is_latent": True, "different_w": True, "sft_half": True}
NOISE_STRENGTH = 0.5


def ort_threads() -> int:
    """ONNX Runtime's threads: as many as torch's, which the suite shares out between its worker processes
    (tests/conftest.py); by default each session would spin a thread per core."""
    return torch.get_num_threads()


def smooth_crop(seed: int, side: int) -> np.ndarray:
    """A smooth random (side, side, 3) BGR uint8 picture, like a blurry face crop."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(2, 0, 1)[None], size=side, mode="bilinear", align_corners=False
    )  # (1, 3, side, side)
    return image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def assert_close_to_rounding(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RAW_TOLERANCE * scale)
    np.testing.assert_allclose(np.clip(actual, -1, 1), np.clip(expected, -1, 1), rtol=0, atol=UNIT_TOLERANCE)


def assert_same_crops(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype == np.uint8
        difference = np.abs(a.astype(int) - e.astype(int))
        assert difference.max() <= MAX_LEVELS
        assert np.mean(difference > 0) <= MAX_DIFFERENT_SHARE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small CodeFormer (TINY_CONFIG, seed 0) in the official files' layout."""
    return cached_small_codeformer_checkpoint(tmp_path_factory, TINY_CONFIG)


@pytest.fixture(scope="module")
def restorer(checkpoint: Path) -> FaceRestorer:
    """The library side, loaded as ``codeformer export onnx`` loads it (fp32 on the CPU, which makes the
    generator channels-last) and exports it (export_restorer_onnx)."""
    from codeformer.pipeline import load_pipeline

    loaded = load_pipeline(checkpoint, detector=None, device="cpu", precision="fp32").restorer
    assert isinstance(loaded, FaceRestorer) and loaded.net.config == TINY_CONFIG
    return loaded


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``codeformer export onnx -o codeformer_small.onnx --model <checkpoint>``'s graph (it must exit 0)."""
    return cached_small_codeformer_onnx(tmp_path_factory, TINY_CONFIG)


@pytest.fixture(scope="module")
def onnx_restorer(onnx_path: Path) -> OnnxRestorer:
    return OnnxRestorer(onnx_path, threads=ort_threads())


@pytest.fixture(scope="module")
def session(onnx_restorer: OnnxRestorer) -> ort.InferenceSession:
    """The restorer's session, which it makes with onnx_session (optimising a 300 MB graph takes a while)."""
    return onnx_restorer.session


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [smooth_crop(seed, SMALL_SIDE) for seed in (10, 11, 12)]


@pytest.fixture(scope="module")
def batch(crops: list[np.ndarray]) -> torch.Tensor:
    return crops_to_batch(crops, CPU)  # (3, 3, 64, 64)


@pytest.fixture(scope="module")
def library_outputs(restorer: FaceRestorer, batch: torch.Tensor) -> dict[float, np.ndarray]:
    """``net(batch, w, adain=True)[0]`` by weight: what FaceRestorer.restore turns into crops."""
    with torch.inference_mode():
        return {w: restorer.net(batch, w=w, adain=True)[0].numpy() for w in WEIGHTS}


@pytest.fixture(scope="module")
def first_crop_at_half(session: ort.InferenceSession, batch: torch.Tensor) -> np.ndarray:
    """ONNX Runtime's output for the first crop alone (N = 1) at w = 0.5, fed exactly as the graph declares."""
    return session.run(None, {"input": batch[:1].numpy(), "weight": np.array([0.5]).astype(np.double)})[0]


@pytest.fixture(scope="module")
def onnx_outputs(session: ort.InferenceSession, batch: torch.Tensor) -> dict[float, np.ndarray]:
    """ONNX Runtime's ``output`` for the whole batch (N = 3), by weight."""
    return {w: run_onnx(session, batch.numpy(), w) for w in WEIGHTS}


# ------------------------------------------------------------------ the graph


def test_graph_has_the_interface_other_tools_use(session: ort.InferenceSession):
    inputs = [(spec.name, spec.type, spec.shape) for spec in session.get_inputs()]
    assert inputs == [
        ("input", "tensor(float)", ["batch", 3, SMALL_SIDE, SMALL_SIDE]),
        ("weight", "tensor(double)", [1]),  # what facefusion feeds: numpy.array([w]).astype(numpy.double)
    ]
    outputs = [(spec.name, spec.type, spec.shape) for spec in session.get_outputs()]
    assert outputs == [("output", "tensor(float)", ["batch", 3, SMALL_SIDE, SMALL_SIDE])]
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata[META_ARCHITECTURE] == "CodeFormer" and metadata[META_ADAIN] == "1"
    assert META_FIXED_WEIGHT not in metadata


def test_crops_decide_their_tokens_by_a_clear_margin(restorer: FaceRestorer, batch: torch.Tensor):
    with torch.inference_mode():
        logits = restorer.net.predict_logits(restorer.net.encode(batch)[0])  # (N, L, K)
    best_two = logits.topk(2, dim=2).values
    assert (best_two[..., 0] - best_two[..., 1]).min().item() > MIN_LOGIT_GAP


def test_batch_axis_is_dynamic(first_crop_at_half: np.ndarray, onnx_outputs: dict[float, np.ndarray]):
    single = first_crop_at_half
    three = onnx_outputs[0.5]
    assert single.shape == (1, 3, SMALL_SIDE, SMALL_SIDE) and three.shape == (3, 3, SMALL_SIDE, SMALL_SIDE)
    assert single.dtype == three.dtype == np.float32
    assert_close_to_rounding(three[:1], single)


@pytest.mark.parametrize("w", WEIGHTS)
def test_onnx_runtime_matches_the_library(
    library_outputs: dict[float, np.ndarray], onnx_outputs: dict[float, np.ndarray], w: float
):
    assert_close_to_rounding(onnx_outputs[w], library_outputs[w])
    # and as crops, after FaceRestorer's post-processing
    assert_same_crops(
        batch_to_crops(torch.from_numpy(onnx_outputs[w])), batch_to_crops(torch.from_numpy(library_outputs[w]))
    )


def test_onnx_restorer_restores_like_the_face_restorer(
    restorer: FaceRestorer, onnx_restorer: OnnxRestorer, crops: list[np.ndarray]
):
    # the default weight (0.5) on both sides, in batches of 2 and 1
    assert_same_crops(onnx_restorer.restore_crops(crops, batch_size=2), restorer.restore_crops(crops, batch_size=2))


def test_the_weight_is_live(onnx_outputs: dict[float, np.ndarray]):
    """One file, different faces: the fusion is switched by the input, not fixed at export."""
    low, high = onnx_outputs[0.0], onnx_outputs[1.0]
    assert np.abs(np.clip(low, -1, 1) - np.clip(high, -1, 1)).max() > 0.1


@pytest.fixture(scope="module")
def unfused(restorer: FaceRestorer) -> CodeFormer:
    """The same network without fusion blocks: what w = 0 must give."""
    net = restorer.net
    with torch.device("meta"):
        bare = CodeFormer(**asdict(replace(net.config, connect_list=())))
    state = {name: t for name, t in net.state_dict().items() if not name.startswith("fuse_convs_dict.")}
    bare.load_state_dict(state, strict=True, assign=True)
    return bare.eval()


def test_weight_zero_is_exactly_no_fusion_in_the_exported_arithmetic(
    restorer: FaceRestorer, unfused: CodeFormer, batch: torch.Tensor
):
    zero = torch.tensor([0.0], dtype=torch.float64)
    one = batch[:1]
    with torch.inference_mode():
        fused = CodeFormerExport(restorer.net)(one, zero)
        plain = CodeFormerExport(unfused)(one, zero)
        negative = CodeFormerExport(restorer.net)(one, torch.tensor([-0.5], dtype=torch.float64))
    assert torch.equal(fused, plain)  # dec + 0 * correction == dec, bit for bit
    assert torch.equal(negative, plain)  # the reference fuses only for w > 0


def test_weight_zero_is_exactly_no_fusion_in_onnx_runtime(
    session: ort.InferenceSession, unfused: CodeFormer, batch: torch.Tensor, tmp_path: Path
):
    # A network without fusion blocks never reads the weight: the exporter drops the input.
    plain_path = export_onnx(unfused, tmp_path / "unfused.onnx", fixed_weight=0.0)
    plain = onnx_session(plain_path, threads=ort_threads())
    assert [spec.name for spec in plain.get_inputs()] == ["input"]
    assert plain.get_modelmeta().custom_metadata_map[META_FIXED_WEIGHT] == "0.0"
    one = batch[:1].numpy()
    np.testing.assert_array_equal(run_onnx(session, one, 0.0), run_onnx(plain, one))


@pytest.mark.parametrize(
    "weight",
    [0.5, np.float32(0.5), np.float64(0.5), np.array([0.5], dtype=np.float32), np.array(0.5, dtype=np.float64)],
    ids=["python", "float32", "float64", "float32-array", "float64-0d"],
)
def test_any_float_weight_is_fed_as_the_graph_declares(
    session: ort.InferenceSession, batch: torch.Tensor, first_crop_at_half: np.ndarray, weight
):
    np.testing.assert_array_equal(run_onnx(session, batch[:1].numpy(), weight), first_crop_at_half)


def test_run_onnx_takes_crops_like_the_restorer(
    session: ort.InferenceSession, onnx_restorer: OnnxRestorer, crops: list[np.ndarray]
):
    restored = run_onnx(session, crops[:2], 0.7)
    assert all(crop.shape == (SMALL_SIDE, SMALL_SIDE, 3) and crop.dtype == np.uint8 for crop in restored)
    for a, b in zip(restored, onnx_restorer.restore_crops(crops[:2], fidelity_weight=0.7)):
        np.testing.assert_array_equal(a, b)


def test_run_onnx_wants_a_weight_for_codeformer(session: ort.InferenceSession, batch: torch.Tensor):
    with pytest.raises(OptionError, match="fidelity weight"):
        run_onnx(session, batch[:1].numpy())


# ------------------------------------------------------------------ the restorer


def test_onnx_restorer_is_a_restorer(onnx_restorer: OnnxRestorer):
    assert isinstance(onnx_restorer, Restorer)
    assert onnx_restorer.name == "codeformer_small.onnx"
    assert onnx_restorer.input_size == SMALL_SIDE
    np.testing.assert_array_equal(onnx_restorer.template, ffhq_template(SMALL_SIDE))
    assert onnx_restorer.supports_fidelity and onnx_restorer.precision == "fp32"
    assert onnx_restorer.describe().startswith(f"onnxruntime {ort.__version__}, CPUExecutionProvider, fp32")


def test_onnx_restorer_keeps_order_across_batches(onnx_restorer: OnnxRestorer, crops: list[np.ndarray]):
    a, b, _ = crops
    restored = onnx_restorer.restore_crops([a, b, a], batch_size=2)  # batches [a, b], [a]; default w = 0.5
    assert len(restored) == 3
    assert_same_crops([restored[0]], [restored[2]])
    assert np.abs(restored[0].astype(int) - restored[1].astype(int)).max() > 10
    assert onnx_restorer.restore_crops([]) == []


@pytest.mark.parametrize("w", [-0.1, 1.5, float("nan")])
def test_onnx_restorer_refuses_weights_outside_the_unit_interval(onnx_restorer, crops, w):
    with pytest.raises(OptionError, match="outside"):
        onnx_restorer.restore_crops(crops[:1], fidelity_weight=w)


def test_onnx_restorer_refuses_bad_crops_and_batch_sizes(onnx_restorer: OnnxRestorer, crops: list[np.ndarray]):
    with pytest.raises(ValueError, match="face crop 0 must be"):
        onnx_restorer.restore_crops([np.zeros((SMALL_SIDE // 2, SMALL_SIDE // 2, 3), np.uint8)])
    with pytest.raises(OptionError, match="batch_size"):
        onnx_restorer.restore_crops(crops, batch_size=0)


def test_onnx_restorer_pins_a_fixed_weight(
    onnx_path: Path, crops: list[np.ndarray], onnx_outputs: dict[float, np.ndarray]
):
    pinned = OnnxRestorer(onnx_path, fixed_weight=0.0, threads=ort_threads())
    assert not pinned.supports_fidelity
    with pytest.raises(NoFidelityControlError):
        pinned.restore_crops(crops, fidelity_weight=0.5)
    restored = pinned.restore_crops(crops, fidelity_weight=0.0, batch_size=len(crops))
    for a, b in zip(restored, batch_to_crops(torch.from_numpy(onnx_outputs[0.0]))):
        np.testing.assert_array_equal(a, b)


def test_onnx_restorer_refuses_a_missing_file(tmp_path: Path):
    with pytest.raises(CodeFormerError, match="does not exist"):
        OnnxRestorer(tmp_path / "missing.onnx")


# ------------------------------------------------------------------ refusals


def test_export_refuses_what_it_cannot_export(restorer: FaceRestorer, tmp_path: Path):
    with pytest.raises(CodeFormerError, match="cannot export a Conv2d"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "conv.onnx")
    with pytest.raises(OptionError, match=f"{SMALL_SIDE}x{SMALL_SIDE} crops only"):
        export_onnx(restorer.net, tmp_path / "x.onnx", input_size=512)
    with pytest.raises(OptionError, match="opset"):
        export_onnx(restorer.net, tmp_path / "x.onnx", opset=11)
    half = copy.deepcopy(restorer.net).set_decoder_precision(torch.bfloat16)
    with pytest.raises(CodeFormerError, match="float32 CodeFormer"):
        export_onnx(half, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())  # nothing written


# ------------------------------------------------------------------ GFPGAN


@pytest.fixture(scope="module")
def gfpgan() -> GFPGAN:
    torch.manual_seed(0)
    net = GFPGAN(**SMALL_GFPGAN).eval()
    with torch.no_grad():
        for module in net.stylegan_decoder.modules():
            if type(module).__name__ == "StyleConv":
                module.weight.fill_(NOISE_STRENGTH)  # the stored noise maps now change the output
    return net


def gfpgan_output(net: GFPGAN, batch: torch.Tensor) -> np.ndarray:
    """What SpandrelRestorer computes: the stored noise maps, no intermediate RGB outputs."""
    with torch.inference_mode():
        return net(batch, return_rgb=False, randomize_noise=False)[0].numpy()


def test_gfpgan_exports_with_input_and_output_only(gfpgan: GFPGAN, tmp_path: Path):
    side = SMALL_GFPGAN["out_size"]
    path = export_onnx(gfpgan, tmp_path / "gfpgan_small.onnx")
    session = onnx_session(path, threads=ort_threads())
    assert [(s.name, s.shape) for s in session.get_inputs()] == [("input", ["batch", 3, side, side])]
    assert [(s.name, s.shape) for s in session.get_outputs()] == [("output", ["batch", 3, side, side])]
    crops = [smooth_crop(seed, side) for seed in (1, 2, 3)]
    batch = crops_to_batch(crops, CPU)
    expected = gfpgan_output(gfpgan, batch)
    assert_close_to_rounding(run_onnx(session, batch.numpy()), expected)  # N = 3
    assert_close_to_rounding(run_onnx(session, batch[1:2].numpy()), expected[1:2])  # N = 1

    restorer = OnnxRestorer(path, threads=ort_threads())
    assert isinstance(restorer, Restorer) and not restorer.supports_fidelity
    with pytest.raises(NoFidelityControlError):
        restorer.restore_crops(crops, fidelity_weight=0.5)
    with pytest.raises(NoFidelityControlError):
        run_onnx(session, batch.numpy(), 0.5)
    assert_same_crops(restorer.restore_crops(crops), run_onnx(session, crops))


def test_batch_independent_modulated_convs_match_and_are_undone(gfpgan: GFPGAN):
    batch = crops_to_batch([smooth_crop(seed, SMALL_GFPGAN["out_size"]) for seed in (4, 5)], CPU)
    expected = gfpgan_output(gfpgan, batch)
    with batch_independent_modulated_convs(gfpgan):
        assert_close_to_rounding(gfpgan_output(gfpgan, batch), expected)
    assert not any("forward" in vars(module) for module in gfpgan.modules())
    np.testing.assert_array_equal(gfpgan_output(gfpgan, batch), expected)


def test_export_command_writes_a_graph_other_tools_can_run(onnx_path: Path) -> None:
    """The module's graph is the command's output (see ``onnx_path``): plain ONNX Runtime runs it by its names."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "weight"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    zeros = np.zeros((2, 3, SMALL_SIDE, SMALL_SIDE), np.float32)
    (result,) = session.run(None, {"input": zeros, "weight": np.array([0.5])})
    assert result.shape == (2, 3, SMALL_SIDE, SMALL_SIDE)
