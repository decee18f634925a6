"""Tests for codeformer.upsampler: spandrel loading, exact output sizes, tiling, dtypes and errors.

Official weights are unavailable, so the checkpoints are random-initialised in the official
Real-ESRGAN layout (new-arch RRDBNet names, ``params_ema`` wrapper). Their last layer is calibrated
so outputs spread around mid-grey instead of clipping, which makes value comparisons meaningful.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import spandrel
import torch
from safetensors.torch import save_file

from codeformer.errors import CodeFormerError
from codeformer.registry import load_model
from codeformer.upsampler import Upsampler, load_upsampler, tile_grid
from upsampler_factory import (
    SMALL_FEAT, X2PLUS_BLOCKS, X2PLUS_FEAT, X2PLUS_UNSHUFFLE, random_state_dict, rrdbnet_layout,
    save_checkpoint,
)

# The published tensor names and shapes of the official checkpoints (a copy kept with the tests).
SPEC_PATH = Path(__file__).resolve().parent / "data" / "checkpoint_layouts.json"
X2PLUS_NUM_TENSORS = 702
X2PLUS_NUM_PARAMS = 16703171


def picture(height: int, width: int, top: int = 60, left: int = 150) -> np.ndarray:
    """A BGR uint8 crop of the astronaut photo (face and suit: edges, flat areas, colour)."""
    rgb = skimage.data.astronaut()[top:top + height, left:left + width]
    return np.ascontiguousarray(rgb[:, :, ::-1])


def network_reference(descriptor: spandrel.ImageModelDescriptor, bgr: np.ndarray) -> np.ndarray:
    """The model applied the plain way (whole picture, RGB in [0, 1]) -> BGR uint8."""
    x = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    y = descriptor(x)[0].permute(1, 2, 0).numpy()  # (sH, sW, 3) RGB in [0, 1]
    return (y[:, :, ::-1] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoint files: the official x2plus layout in a weights root, and small x1/x2/x4 variants."""
    root = tmp_path_factory.mktemp("upsampler_models")
    official = rrdbnet_layout(num_feat=X2PLUS_FEAT, num_block=X2PLUS_BLOCKS, unshuffle=X2PLUS_UNSHUFFLE)
    files = {"weights_dir": root / "weights"}
    files["official"] = save_checkpoint(root / "weights" / "realesrgan" / "RealESRGAN_x2plus.pth",
                                        random_state_dict(official))
    for seed, (name, unshuffle) in enumerate((("x1", 4), ("x2", 2), ("x4", 1)), start=1):
        layout = rrdbnet_layout(num_feat=SMALL_FEAT, num_block=1, unshuffle=unshuffle)
        files[name] = save_checkpoint(root / f"small_{name}.pth", random_state_dict(layout, seed=seed))
    return files


def small(models: dict[str, Path], name: str, **options: object) -> Upsampler:
    options = {"device": torch.device("cpu"), "tile": 0, **options}
    return load_upsampler(models[name], **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- official layout


def test_official_layout_matches_spec() -> None:
    layout = rrdbnet_layout(num_feat=X2PLUS_FEAT, num_block=X2PLUS_BLOCKS, unshuffle=X2PLUS_UNSHUFFLE)
    assert len(layout) == X2PLUS_NUM_TENSORS
    assert sum(math.prod(shape) for shape in layout.values()) == X2PLUS_NUM_PARAMS
    assert layout["conv_first.weight"] == (64, 12, 3, 3)  # pixel-unshuffled input: 3 * 2 * 2 channels
    spec = json.loads(SPEC_PATH.read_text())["RealESRGAN_x2plus.pth"]
    assert {name: tuple(shape) for name, shape in spec["tensors"].items()} == layout
    assert spec["num_params"] == X2PLUS_NUM_PARAMS


def test_registry_name_loads_official_file_and_matches_plain_inference(models: dict[str, Path]) -> None:
    upsampler = load_model("realesrgan", "upsampler", device="cpu", tile=0, weights_dir=models["weights_dir"])
    assert upsampler.scale == 2
    assert sum(p.numel() for p in upsampler.descriptor.model.parameters()) == X2PLUS_NUM_PARAMS
    assert upsampler.describe() == "ESRGAN x2 (64nf, 23nb, unshuffle), fp32, untiled, cpu"

    image = picture(40, 48)
    result = upsampler.upscale(image, 2)
    expected = network_reference(spandrel.ModelLoader().load_from_file(models["official"]), image)
    assert result.shape == (80, 96, 3) and result.dtype == np.uint8
    # Same network, same numbers: catches a BGR/RGB swap, wrong normalisation or misplaced crop.
    assert np.abs(result.astype(int) - expected).max() <= 1
    assert result.std() > 10  # a real picture came out, not a flat one

    by_path = load_upsampler(models["official"], device="cpu", tile=0)
    np.testing.assert_array_equal(by_path.upscale(image, 2), result)


def test_plain_params_key_and_safetensors_are_accepted(models: dict[str, Path], tmp_path: Path) -> None:
    state = random_state_dict(rrdbnet_layout(num_feat=SMALL_FEAT, num_block=1, unshuffle=2), seed=7)
    params = save_checkpoint(tmp_path / "plain.pth", state, key="params")
    safetensors = tmp_path / "user_model.safetensors"
    save_file(state, str(safetensors))
    image = picture(24, 20)
    outputs = [load_upsampler(path, device="cpu", tile=0).upscale(image, 2) for path in (params, safetensors)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


# ----------------------------------------------------------------------------- sizes and resizing


@pytest.mark.parametrize("name", ["x1", "x2", "x4"])
@pytest.mark.parametrize("outscale", [1, 2, 3, 1.5])
def test_output_size_is_exact_for_any_model_scale(models: dict[str, Path], name: str, outscale: float) -> None:
    image = picture(37, 53)  # odd sizes: x2 needs padding to even, x1 (unshuffle 4) to multiples of 4
    result = small(models, name, tile=24, tile_pad=8).upscale(image, outscale)
    assert result.shape == (round(37 * outscale), round(53 * outscale), 3)
    assert result.dtype == np.uint8


def test_lanczos_resize_only_when_outscale_differs_from_model_scale(models: dict[str, Path]) -> None:
    upsampler = small(models, "x4")
    assert upsampler.scale == 4
    image = picture(21, 27)
    native = upsampler.upscale(image, 4)
    expected = network_reference(upsampler.descriptor, image)
    np.testing.assert_allclose(native.astype(int), expected.astype(int), atol=1)
    np.testing.assert_array_equal(
        upsampler.upscale(image, 3), cv2.resize(native, (81, 63), interpolation=cv2.INTER_LANCZOS4)
    )


def test_one_x_restoration_model_is_accepted(models: dict[str, Path]) -> None:
    upsampler = small(models, "x1")
    assert upsampler.scale == 1 and upsampler.descriptor.purpose == "Restoration"


# ----------------------------------------------------------------------------- tiling


def test_tile_grid_covers_every_pixel_once_with_clipped_context() -> None:
    height, width, tile, pad = 101, 70, 32, 8
    coverage = np.zeros((height, width), dtype=int)
    tiles = tile_grid(height, width, tile, pad)
    assert len(tiles) == 4 * 3
    for t in tiles:
        coverage[t.y0:t.y1, t.x0:t.x1] += 1
        assert (t.pad_y0, t.pad_x0) == (max(t.y0 - pad, 0), max(t.x0 - pad, 0))
        assert (t.pad_y1, t.pad_x1) == (min(t.y1 + pad, height), min(t.x1 + pad, width))
    assert (coverage == 1).all()
    assert tile_grid(height, width, 0, pad) == [tile_grid(height, width, max(height, width), 0)[0]]


def test_tile_sizes_follow_the_model_size_step(models: dict[str, Path]) -> None:
    # x2plus pixel-unshuffles: spandrel asks for multiples of 4, so tiles start on that grid.
    upsampler = small(models, "x2", tile=30, tile_pad=10)
    assert (upsampler.tile, upsampler.tile_pad) == (32, 12)
    assert "tile 32 (pad 12)" in upsampler.describe()


def seam_distance(shape: tuple[int, int], tile_out: int) -> np.ndarray:
    """Per output pixel, the distance to the nearest interior tile border (seam)."""
    def axis(n: int) -> np.ndarray:
        seams = np.arange(tile_out, n, tile_out)  # (k,)
        positions = np.arange(n) + 0.5
        return np.abs(positions[:, None] - seams[None, :]).min(axis=1)  # (n,)

    return np.minimum(axis(shape[0])[:, None], axis(shape[1])[None, :])  # (H, W)


@pytest.mark.parametrize("name", ["x2", "official"])
def test_tiled_output_matches_untiled_except_small_seam_differences(models: dict[str, Path], name: str) -> None:
    tile, pad = 32, 8
    image = picture(54, 46)  # edge tiles are partial and their sizes not multiples of 4
    whole = small(models, name).upscale(image, 2).astype(int)
    tiled = small(models, name, tile=tile, tile_pad=pad).upscale(image, 2).astype(int)
    diff = np.abs(whole - tiled).max(axis=2)  # (108, 92) in 8-bit levels
    near_seam = seam_distance(diff.shape, tile * 2) < 2 * pad * 2
    # Measured with these random networks: max 1 level, < 1% of pixels differ, all near seams.
    assert diff.max() <= 2
    assert (diff > 0).mean() < 0.02
    assert diff[~near_seam].max() <= 1 and (diff[~near_seam] > 0).mean() < 0.005


def test_without_context_seams_appear_only_at_tile_borders(models: dict[str, Path]) -> None:
    # The control for the test above: with tile_pad 0 the seams are plain to see, and they stay
    # within the network's reach of the borders, so the padding is what removes them.
    image = picture(70, 66)
    whole = small(models, "x2").upscale(image, 2).astype(int)
    tiled = small(models, "x2", tile=32, tile_pad=0).upscale(image, 2).astype(int)
    diff = np.abs(whole - tiled).max(axis=2)  # (140, 132)
    distance = seam_distance(diff.shape, 32 * 2)
    assert diff[distance < 2].max() > 50
    assert diff[distance >= 32].max() <= 1


class RecordingDescriptor:
    """Wraps a spandrel descriptor and records the shape and device of every input."""

    def __init__(self, inner: spandrel.ImageModelDescriptor) -> None:
        self.inner = inner
        self.calls: list[tuple[tuple[int, ...], torch.device]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), x.device))
        return self.inner(x)


def test_only_one_padded_tile_reaches_the_network_at_a_time(models: dict[str, Path]) -> None:
    upsampler = small(models, "x2", tile=16, tile_pad=4)
    recorder = RecordingDescriptor(upsampler.descriptor)
    upsampler._descriptor = recorder  # type: ignore[assignment]
    result = upsampler.upscale(picture(45, 38), 2)
    assert result.shape == (90, 76, 3)
    assert len(recorder.calls) == len(tile_grid(45, 38, 16, 4)) == 9
    for shape, device in recorder.calls:
        assert shape[:2] == (1, 3) and max(shape[2:]) <= 16 + 2 * 4
        assert device == torch.device("cpu")


# ----------------------------------------------------------------------------- dtypes and channels


def test_uint16_stays_16_bit_and_matches_8_bit(models: dict[str, Path]) -> None:
    upsampler = small(models, "x2")
    image8 = picture(30, 26)
    image16 = image8.astype(np.uint16) * 257  # the same picture: 257 = 65535 / 255
    result16 = upsampler.upscale(image16, 2)
    result8 = upsampler.upscale(image8, 2)
    assert result16.dtype == np.uint16 and result16.shape == (60, 52, 3)
    assert np.abs(result16 / 257 - result8).max() <= 1
    assert (result16 % 257 != 0).mean() > 0.5  # real 16-bit values, not 8-bit ones scaled up


@pytest.mark.parametrize("outscale", [2, 1.5])
def test_bgra_alpha_is_resized_bilinearly(models: dict[str, Path], outscale: float) -> None:
    upsampler = small(models, "x2")
    bgr = picture(30, 26)
    alpha = np.tile(np.linspace(0, 255, 26, dtype=np.float32), (30, 1)).astype(np.uint8)  # (30, 26) ramp
    alpha[10:20, 5:15] = 0  # a hole with hard edges
    result = upsampler.upscale(np.dstack([bgr, alpha]), outscale)
    target = (round(30 * outscale), round(26 * outscale))
    assert result.shape == (*target, 4)
    np.testing.assert_array_equal(result[:, :, :3], upsampler.upscale(bgr, outscale))
    np.testing.assert_array_equal(
        result[:, :, 3], cv2.resize(alpha, target[::-1], interpolation=cv2.INTER_LINEAR)
    )


def test_gray_is_upscaled_as_three_channels_and_returned_gray(models: dict[str, Path]) -> None:
    upsampler = small(models, "x2")
    gray = cv2.cvtColor(picture(30, 26), cv2.COLOR_BGR2GRAY)
    result = upsampler.upscale(gray, 2)
    assert result.shape == (60, 52) and result.dtype == np.uint8
    via_color = cv2.cvtColor(upsampler.upscale(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 2), cv2.COLOR_BGR2GRAY)
    assert np.abs(result.astype(int) - via_color).max() <= 1
    single = upsampler.upscale(gray[:, :, None], 1.5)
    assert single.shape == (45, 39, 1)


# ----------------------------------------------------------------------------- errors and options


def test_unrelated_state_dict_names_file_and_what_spandrel_missed(tmp_path: Path) -> None:
    path = tmp_path / "not_an_upscaler.pth"
    torch.save({"encoder.weight": torch.randn(8, 4), "head.bias": torch.randn(8)}, path)
    with pytest.raises(CodeFormerError, match="could not detect the architecture") as caught:
        load_upsampler(path, device="cpu")
    message = str(caught.value)
    assert str(path) in message and "realesrgan" in message and "\n" not in message


def test_text_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("this is not a model\n")
    with pytest.raises(CodeFormerError, match="notes.pth"):
        load_upsampler(path, device="cpu")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CodeFormerError, match="upsampler model .*missing.pth' does not exist: check the path"):
        load_upsampler(tmp_path / "missing.pth", device="cpu")


def test_non_rgb_model_is_refused(tmp_path: Path) -> None:
    layout = rrdbnet_layout(num_feat=SMALL_FEAT, num_block=1, unshuffle=1, in_ch=1, out_ch=1)
    path = save_checkpoint(tmp_path / "gray_x4.pth", random_state_dict(layout))
    with pytest.raises(CodeFormerError, match="1 input and 1 output channels"):
        load_upsampler(path, device="cpu")


@pytest.mark.parametrize(
    "image, outscale, match",
    [
        (np.zeros((8, 8, 3), np.float32), 2, "uint8 or uint16"),
        (np.zeros((8, 8, 5), np.uint8), 2, "uint8 or uint16"),
        (np.zeros((0, 8, 3), np.uint8), 2, "empty picture"),
        (np.zeros((8, 8, 3), np.uint8), 0, "positive number"),
        (np.zeros((8, 8, 3), np.uint8), float("nan"), "positive number"),
        (np.zeros((8, 8, 3), np.uint8), 0.01, "larger factor"),
    ],
)
def test_bad_inputs_are_clear_errors(models: dict[str, Path], image: np.ndarray, outscale: float, match: str) -> None:
    with pytest.raises(CodeFormerError, match=match):
        small(models, "x2").upscale(image, outscale)


def test_bad_tile_options_are_clear_errors(models: dict[str, Path]) -> None:
    with pytest.raises(CodeFormerError, match="tile size"):
        small(models, "x2", tile=-1)
    with pytest.raises(CodeFormerError, match="tile padding"):
        small(models, "x2", tile_pad=-8)


def test_cpu_runs_fp32_and_warns_that_it_is_slow(models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="codeformer.upsampler"):
        default = small(models, "x2")
        forced = small(models, "x2", half=True)
    assert not default.half and not forced.half
    assert next(forced.descriptor.model.parameters()).dtype == torch.float32
    assert "fp32" in forced.describe()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("CPU: this is slow" in m for m in messages) == 2  # one line per loaded upsampler
    assert any("fp16 is not used on the CPU" in m for m in messages)
