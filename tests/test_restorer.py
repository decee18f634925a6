"""FaceRestorer (batched crop restoration), its pre/post-processing, and device selection."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from checkpoint_factory import cached_codeformer_checkpoint, random_codeformer

from codeformer.archs import CodeFormerConfig
from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError
from codeformer.restorer import FaceRestorer, batch_to_crops, crops_to_batch

SMALL_SIDE = 128  # crops of the small test network (4x4 latent grid): 16x cheaper than 512
SMALL_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=(SMALL_SIDE // 32) ** 2,
                                base_channels=32)


def smooth_crop(seed: int, side: int) -> np.ndarray:
    """A smooth random BGR uint8 picture (side, side, 3), face-crop sized."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(2, 0, 1)[None], size=side, mode="bilinear", align_corners=False
    )
    return image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


# ------------------------------------------------------------------ device


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_resolve_device_auto_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device() == torch.device(expected)


def test_resolve_device_refuses_missing_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(CodeFormerError) as info:
        resolve_device("cuda")
    assert str(info.value) == (
        "device cuda: PyTorch sees no CUDA GPU; use cpu or install a CUDA build of PyTorch"
    )
    with pytest.raises(CodeFormerError, match="device mps: PyTorch sees no Apple GPU"):
        resolve_device("mps")


def test_resolve_device_checks_the_cuda_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(CodeFormerError, match="sees 1 CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "", "cpu:0", "cuda:x"])
def test_resolve_device_refuses_unknown_names(name):
    with pytest.raises(CodeFormerError, match="unknown device"):
        resolve_device(name)


# --------------------------------------------------------- pre/post-processing


def test_crops_to_batch_matches_the_reference_formula():
    crops = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(2)]
    crops[0][0, 0] = [0, 128, 255]
    batch = crops_to_batch(crops, torch.device("cpu"))
    # reference: img2tensor(crop / 255., bgr2rgb=True, float32=True), then normalize(0.5, 0.5)
    expected = np.stack([((c[..., ::-1] / 255.0).astype(np.float32) - 0.5) / 0.5 for c in crops])
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    np.testing.assert_array_equal(batch.numpy(), expected.transpose(0, 3, 1, 2))
    assert batch[0, :, 0, 0].tolist() == pytest.approx([1.0, 128 / 127.5 - 1, -1.0], abs=1e-6)  # RGB of BGR


def test_batch_to_crops_matches_the_reference_formula():
    # a dense sweep over [-1.2, 1.2]: clamped ends and every grey level
    values = torch.linspace(-1.2, 1.2, 3 * 16 * 16 * 2, dtype=torch.float32).reshape(2, 3, 16, 16)
    crops = batch_to_crops(values)
    # reference: tensor2img(out, rgb2bgr=True, min_max=(-1, 1)): clamp, rescale, BGR, (x * 255).round()
    unit = (values.clamp(-1, 1).numpy() - (-1)) / (1 - (-1))
    expected = (unit.transpose(0, 2, 3, 1)[..., ::-1] * 255.0).round().astype(np.uint8)
    assert len(crops) == 2
    assert all(c.dtype == np.uint8 and c.shape == (16, 16, 3) and c.flags.c_contiguous for c in crops)
    np.testing.assert_array_equal(np.stack(crops), expected)
    # half to even, like numpy: 100.5 -> 100 and 101.5 -> 102 (values where float32 lands on .5 exactly)
    halves = torch.tensor([100.5, 101.5]) / 127.5 - 1
    assert ((halves + 1) / 2 * 255).tolist() == [100.5, 101.5]
    assert batch_to_crops(halves.view(1, 1, 1, 2).expand(1, 3, 1, 2))[0][0, :, 0].tolist() == [100, 102]


# ------------------------------------------------------------------ restoring


@pytest.fixture(scope="module")
def small_restorer() -> FaceRestorer:
    return FaceRestorer(random_codeformer(SMALL_CONFIG, seed=7), "cpu")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [smooth_crop(seed, SMALL_SIDE) for seed in (10, 11)]


def test_restore_keeps_shape_dtype_and_order(small_restorer, crops):
    a, b = crops
    restored = small_restorer.restore_crops([a, b, a], fidelity_weight=0.7, batch_size=2)  # batches [a, b], [a]
    assert len(restored) == 3
    for r in restored:
        assert r.dtype == np.uint8 and r.shape == (SMALL_SIDE, SMALL_SIDE, 3) and r.flags.c_contiguous
    # the lone `a` of the second batch is exactly the network run on `a` by hand
    with torch.inference_mode():
        out, _, _ = small_restorer.net(crops_to_batch([a], torch.device("cpu")), w=0.7, adain=True)
    np.testing.assert_array_equal(restored[2], batch_to_crops(out)[0])
    # `a` batched with `b` differs at most by float rounding (one grey level after rounding)
    assert np.abs(restored[0].astype(int) - restored[2].astype(int)).max() <= 1
    assert np.abs(restored[0].astype(int) - restored[1].astype(int)).max() > 10
    assert not np.array_equal(restored[0], a)


def test_restore_options_change_the_result(small_restorer, crops):
    base = small_restorer.restore_crops(crops[:1], fidelity_weight=0.0)[0]
    assert not np.array_equal(base, small_restorer.restore_crops(crops[:1], fidelity_weight=1.0)[0])
    assert not np.array_equal(base, small_restorer.restore_crops(crops[:1], fidelity_weight=0.0, adain=False)[0])


def test_predict_codes(small_restorer, crops):
    codes = small_restorer.predict_codes(crops, batch_size=1)
    assert codes.shape == (2, SMALL_CONFIG.latent_size) and codes.dtype == np.int64
    with torch.inference_mode():
        _, logits, _ = small_restorer.net(crops_to_batch(crops, torch.device("cpu")))
    np.testing.assert_array_equal(codes, logits.argmax(dim=2).numpy())
    assert small_restorer.predict_codes([]).shape == (0, SMALL_CONFIG.latent_size)


def test_restore_nothing(small_restorer):
    assert small_restorer.restore_crops([], fidelity_weight=0.5) == []


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((SMALL_SIDE, SMALL_SIDE), np.uint8),
        np.zeros((SMALL_SIDE, SMALL_SIDE, 4), np.uint8),
        np.zeros((SMALL_SIDE + 1, SMALL_SIDE, 3), np.uint8),
        np.zeros((SMALL_SIDE, SMALL_SIDE, 3), np.float32),
        "face.png",
    ],
    ids=["gray", "bgra", "size", "float", "path"],
)
def test_restore_refuses_wrong_crops(small_restorer, crops, bad):
    expected = rf"face crop 1 must be a \({SMALL_SIDE}, {SMALL_SIDE}, 3\) uint8 BGR array"
    with pytest.raises(ValueError, match=expected):
        small_restorer.restore_crops([crops[0], bad], fidelity_weight=0.5)


@pytest.mark.parametrize("w", [-0.1, 1.5, float("nan")])
def test_restore_refuses_w_outside_unit_interval(small_restorer, crops, w):
    with pytest.raises(CodeFormerError, match="outside \\[0, 1\\]"):
        small_restorer.restore_crops(crops, fidelity_weight=w)


def test_restore_refuses_empty_batches(small_restorer, crops):
    with pytest.raises(CodeFormerError, match="batch size 0 must be at least 1"):
        small_restorer.restore_crops(crops, fidelity_weight=0.5, batch_size=0)


# ---------------------------------------------------------------- from a file


def test_from_file_restores_official_size_crops(tmp_path_factory):
    path = cached_codeformer_checkpoint(tmp_path_factory, "codeformer")
    restorer = FaceRestorer.from_file(path, device="cpu")
    assert restorer.image_size == 512 and restorer.device == torch.device("cpu")
    assert restorer.net.config == CodeFormerConfig()
    crop = smooth_crop(20, 512)
    (restored,) = restorer.restore_crops([crop], fidelity_weight=0.5)
    assert restored.shape == (512, 512, 3) and restored.dtype == np.uint8
    assert restored.std() > 10  # a picture, not a flat field
    with pytest.raises(ValueError, match=r"\(512, 512, 3\)"):
        restorer.restore_crops([smooth_crop(20, SMALL_SIDE)], fidelity_weight=0.5)


def test_from_file_refuses_a_foreign_checkpoint(tmp_path):
    path = tmp_path / "RealESRGAN_x2plus.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(64, 12, 3, 3)}}, path)
    expected = f"^{re.escape(str(path))} is not a CodeFormer checkpoint: missing position_emb"
    with pytest.raises(CodeFormerError, match=expected):
        FaceRestorer.from_file(path, device="cpu")


def test_from_file_checks_the_device_before_reading(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CodeFormerError, match="device cuda: PyTorch sees no CUDA GPU"):
        FaceRestorer.from_file(tmp_path / "missing.pth", device="cuda")
