"""SpandrelRestorer: GFPGAN (and other spandrel face models) as a Restorer, on random official-layout files.

The full GFPGAN takes several seconds per 512x512 crop on a small CPU: the network is written and
loaded once per module, and the few crops it restores are shared between the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel.architectures.RestoreFormer import RestoreFormer
from upsampler_factory import (
    SMALL_FEAT,
    random_state_dict,
    rrdbnet_layout,
    save_checkpoint,
)

from codeformer.errors import CodeFormerError
from codeformer.face.alignment import FFHQ_TEMPLATE_5
from codeformer.pipeline import Pipeline
from codeformer.restorer import Restorer
from codeformer.spandrel_restorer import SpandrelRestorer

SIDE = 512  # GFPGAN's crop side
# GFPGANv1Clean's hyperparameters in GFPGANv1.3.pth / GFPGANv1.4.pth (GFPGANer's arch="clean").
GFPGAN_V14 = {
    "out_size": 512, "num_style_feat": 512, "channel_multiplier": 2, "decoder_load_path": None,
    "fix_decoder": False, "num_mlp": 8, "input_is_latent": True, "different_w": True, "narrow": 1, "sft_half": True,
}
# Strength of the decoder's noise injection in the random file. Random init leaves it at 0 (noise
# would then change nothing and the determinism test would prove nothing); trained files have it non-zero.
NOISE_STRENGTH = 0.5
# Batched and single convolutions sum in different orders: restored pixels may differ by one level,
# on a small share of the pixels.
BATCH_MAX_LEVELS = 1
BATCH_MAX_SHARE = 1e-3


def smooth_crop(seed: int, side: int = SIDE) -> np.ndarray:
    """A smooth random (side, side, 3) BGR uint8 picture, like a blurry face crop."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(2, 0, 1)[None], size=side, mode="bilinear", align_corners=False
    )  # (1, 3, side, side)
    return image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def assert_one_line(error: pytest.ExceptionInfo[CodeFormerError], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def gfpgan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GFPGAN v1.4 file in the official layout: ``{"params_ema": state_dict}``, about 350 MB."""
    torch.manual_seed(0)
    net = GFPGAN(**GFPGAN_V14)
    state = net.state_dict()
    noise_strengths = [name for name, value in state.items() if name.startswith("stylegan_decoder.style_conv")
                       and value.shape == (1,)]  # StyleConv.weight: how much noise each layer adds
    assert len(noise_strengths) == 15  # style_conv1 + 14 style_convs at 512
    for name in noise_strengths:
        state[name] = torch.full((1,), NOISE_STRENGTH)
    path = tmp_path_factory.mktemp("gfpgan") / "GFPGANv1.4.pth"
    torch.save({"params_ema": state}, path)
    return path


@pytest.fixture(scope="module")
def gfpgan(gfpgan_file: Path) -> SpandrelRestorer:
    return SpandrelRestorer.from_file(gfpgan_file, device="cpu")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [smooth_crop(1), smooth_crop(2)]


@pytest.fixture(scope="module")
def batched(gfpgan: SpandrelRestorer, crops: list[np.ndarray]) -> list[np.ndarray]:
    """Both crops restored in one batch."""
    return gfpgan.restore_crops(crops, batch_size=2)


@pytest.fixture(scope="module")
def single(gfpgan: SpandrelRestorer, crops: list[np.ndarray], batched: list[np.ndarray]) -> np.ndarray:
    """The first crop restored on its own, by a later call on the restorer than the batch's (the determinism test
    compares it with a first call)."""
    return gfpgan.restore_crops(crops[:1])[0]


@pytest.fixture(scope="module")
def by_name(gfpgan_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """``load_pipeline("gfpgan_v1.4")`` on a weights root holding the module's file: a second restorer of it."""
    import codeformer

    root = tmp_path_factory.mktemp("gfpgan_weights")
    (root / "gfpgan").mkdir()
    (root / "gfpgan" / "GFPGANv1.4.pth").symlink_to(gfpgan_file)
    return codeformer.load_pipeline("gfpgan_v1.4", detector=None, device="cpu", weights_dir=root)


@pytest.fixture(scope="module")
def restored_by_name(by_name: Pipeline, crops: list[np.ndarray]) -> np.ndarray:
    """The first crop, in the first call on the by-name pipeline's restorer."""
    return by_name.restore(crops[0], has_aligned=True).image


# ------------------------------------------------------------------ GFPGAN


def test_loads_an_official_layout_gfpgan_file(gfpgan: SpandrelRestorer):
    assert gfpgan.architecture == "GFPGAN"
    assert isinstance(gfpgan.descriptor.model, GFPGAN)
    assert gfpgan.name == "GFPGANv1.4.pth"
    assert gfpgan.input_size == SIDE
    np.testing.assert_array_equal(gfpgan.template, FFHQ_TEMPLATE_5)
    assert gfpgan.supports_fidelity is False
    assert gfpgan.precision == "fp32"
    assert isinstance(gfpgan, Restorer)
    assert gfpgan.describe() == "GFPGAN, 512x512 crops, cpu, fp32, fixed noise"


def test_restored_crops_are_bgr_uint8_and_follow_the_input(
    single: np.ndarray, batched: list[np.ndarray], crops: list[np.ndarray]
):
    assert len(batched) == len(crops)
    for restored in [single, *batched]:
        assert restored.shape == (SIDE, SIDE, 3) and restored.dtype == np.uint8
        assert restored.flags.c_contiguous
        assert len(np.unique(restored)) > 16  # not a flat or saturated picture
    assert not np.array_equal(batched[0], batched[1])
    assert not np.array_equal(single, crops[0])


def test_restoration_is_deterministic(gfpgan: SpandrelRestorer, single: np.ndarray, restored_by_name: np.ndarray):
    decoder_noise = gfpgan.descriptor.model.stylegan_decoder.style_conv1.weight
    assert decoder_noise.item() == NOISE_STRENGTH  # the noise injection is live: random noise would show
    # A first call on another restorer of the file gives the bytes of a later call on this one: the noise
    # depends neither on how many calls came before nor on the restorer instance.
    assert restored_by_name.tobytes() == single.tobytes()


def test_a_batch_restores_like_single_crops(single: np.ndarray, batched: list[np.ndarray]):
    levels = np.abs(batched[0].astype(np.int16) - single.astype(np.int16))
    assert levels.max() <= BATCH_MAX_LEVELS
    assert np.count_nonzero(levels) <= BATCH_MAX_SHARE * levels.size


def test_a_fidelity_weight_is_refused(gfpgan: SpandrelRestorer, crops: list[np.ndarray]):
    with pytest.raises(CodeFormerError) as error:
        gfpgan.restore_crops(crops[:1], fidelity_weight=0.5)
    assert_one_line(error, "GFPGANv1.4.pth has no fidelity control", "leave the weight out")


def test_bad_crops_and_batch_sizes_are_refused(gfpgan: SpandrelRestorer, crops: list[np.ndarray]):
    with pytest.raises(ValueError, match=r"face crop 0 must be a \(512, 512, 3\) uint8"):
        gfpgan.restore_crops([smooth_crop(3, side=256)])
    with pytest.raises(CodeFormerError, match="batch_size 0: must be a whole number"):
        gfpgan.restore_crops(crops, batch_size=0)
    assert gfpgan.restore_crops([]) == []


def test_fp16_is_refused_for_gfpgan(gfpgan: SpandrelRestorer):
    # An MPS device: resolve_precision lets fp16 through there (it refuses it on the CPU itself), and
    # the refusal comes before anything moves to the device.
    with pytest.raises(CodeFormerError) as error:
        SpandrelRestorer(gfpgan.descriptor, torch.device("mps"), precision="fp16")
    assert_one_line(error, "GFPGAN does not run in float16", "use bf16 or fp32")


# ------------------------------------------------------------------ refusals


def test_a_super_resolution_model_is_refused(tmp_path: Path):
    layout = rrdbnet_layout(num_feat=SMALL_FEAT, num_block=1, unshuffle=1)  # a tiny Real-ESRGAN x4
    path = save_checkpoint(tmp_path / "RealESRGAN_x4plus.pth", random_state_dict(layout))
    with pytest.raises(CodeFormerError) as error:
        SpandrelRestorer.from_file(path, device="cpu")
    assert_one_line(error, str(path), "ESRGAN x4, a super-resolution model, not a face restorer", "GFPGAN")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path):
    path = tmp_path / "GFPGANv1.4.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CodeFormerError) as error:
        SpandrelRestorer.from_file(path, device="cpu")
    assert_one_line(error, str(path), "not a PyTorch checkpoint")


def test_an_unidentified_state_dict_is_refused(tmp_path: Path):
    path = tmp_path / "mystery.pth"
    torch.save({"body.0.weight": torch.zeros(4, 3, 3, 3), "body.0.bias": torch.zeros(4)}, path)
    with pytest.raises(CodeFormerError) as error:
        SpandrelRestorer.from_file(path, device="cpu")
    assert_one_line(error, "spandrel could not identify the architecture", "body.0.weight", "GFPGAN")


# ------------------------------------------------------------------ RestoreFormer


def test_restoreformer_runs_without_fidelity_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Narrow (32 channels at every level instead of 64-512) and one block per level: spandrel reads these
    # from the file, like the real one's. Six levels, as in the real one, keep the attention at 16x16.
    torch.manual_seed(0)
    net = RestoreFormer(n_embed=64, embed_dim=32, ch=32, ch_mult=(1,) * 6, num_res_blocks=1, z_channels=32)
    path = tmp_path / "RestoreFormer.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    monkeypatch.setattr("codeformer.precision.cpu_has_native_bf16", lambda: True)  # auto would pick bf16
    restorer = SpandrelRestorer.from_file(path, device="cpu", precision="auto")
    assert (restorer.architecture, restorer.input_size, restorer.supports_fidelity) == ("RestoreFormer", 512, False)
    assert restorer.precision == "fp32"  # auto never picks bf16 for a network that picks codebook entries
    crop = smooth_crop(4)
    (restored,) = restorer.restore_crops([crop])
    assert restored.shape == (SIDE, SIDE, 3) and restored.dtype == np.uint8
    with pytest.raises(CodeFormerError, match="has no fidelity control"):
        restorer.restore_crops([crop], fidelity_weight=0.0)


# ------------------------------------------------------------------ CodeFormer (optional)


def test_codeformer_through_spandrel_takes_the_fidelity_weight(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("spandrel_extra_arches")  # spandrel identifies CodeFormer only with it
    from checkpoint_factory import cached_codeformer_checkpoint

    path = cached_codeformer_checkpoint(tmp_path_factory, "codeformer")
    restorer = SpandrelRestorer.from_file(path, device="cpu")
    assert (restorer.architecture, restorer.input_size, restorer.supports_fidelity) == ("CodeFormer", 512, True)
    with pytest.raises(CodeFormerError, match=r"fidelity_weight 1.5: is outside \[0, 1\]"):
        restorer.restore_crops([], fidelity_weight=1.5)
    # The network itself takes seconds per crop here: what is checked is the weight it is handed. (Its
    # output agrees with the built-in FaceRestorer's on the same file within one level of 255.)
    weights: list[float] = []

    def network(images: torch.Tensor, weight: float) -> tuple[torch.Tensor, None]:  # (n, 3, 512, 512)
        weights.append(weight)
        return images, None

    monkeypatch.setattr(restorer.descriptor.model, "forward", network)
    crop = smooth_crop(5)
    assert restorer.restore_crops([crop])[0].tobytes() == crop.tobytes()  # the identity round-trips exactly
    restorer.restore_crops([crop], fidelity_weight=0.0)
    assert weights == [0.5, 0.0]  # no weight: CodeFormer's default


# ------------------------------------------------------------------------------ through the front door


def test_gfpgan_by_name_and_by_path_through_load_pipeline(gfpgan_file: Path, crops: list[np.ndarray], by_name: Pipeline,
                                                          restored_by_name: np.ndarray, single: np.ndarray) -> None:
    import codeformer

    assert isinstance(by_name.restorer, SpandrelRestorer) and by_name.restorer.name == "gfpgan_v1.4"
    # The first crop: `single` is its restoration by the module's restorer of the same file.
    np.testing.assert_array_equal(restored_by_name, single)
    with pytest.raises(codeformer.OptionError, match="gfpgan_v1.4 has no fidelity control"):
        by_name.restore(crops[0], has_aligned=True, fidelity_weight=0.5)
    by_path = codeformer.load_pipeline(str(gfpgan_file), detector=None, device="cpu")
    assert isinstance(by_path.restorer, SpandrelRestorer) and by_path.restorer.name == "GFPGANv1.4.pth"


def test_model_flag_takes_a_checkpoint_file_end_to_end(gfpgan_file: Path, crops: list[np.ndarray], single: np.ndarray,
                                                        tmp_path: Path) -> None:
    from codeformer.cli import restore_main
    from codeformer.imageio import read_image, write_image

    write_image(tmp_path / "in" / "face.png", crops[0])  # PNG: the command reads back the same pixels
    out = tmp_path / "out"
    assert restore_main(["--model", str(gfpgan_file), "--has_aligned", "-i", str(tmp_path / "in"), "-o", str(out),
                         "--device", "cpu", "-q"]) == 0
    np.testing.assert_array_equal(read_image(out / "restored_faces" / "face.png").bgr, single)


def test_a_codeformer_file_given_as_model_loads_as_codeformer(tmp_path: Path) -> None:
    import codeformer
    from checkpoint_factory import random_codeformer
    from codeformer.archs import CodeFormerConfig
    from codeformer.restorer import FaceRestorer

    small = random_codeformer(CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=16, base_channels=32))
    path = tmp_path / "my_codeformer.pth"
    torch.save({"params_ema": small.state_dict()}, path)
    pipe = codeformer.load_pipeline(str(path), detector=None, device="cpu")
    assert isinstance(pipe.restorer, FaceRestorer) and pipe.restorer.supports_fidelity
    assert pipe.restorer.input_size == 128
