"""Grayscale pictures: the reference's is_gray statistic, bgr2gray and the colour transfer."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from codeformer.color import GRAY_THRESHOLD, is_gray, to_gray, transfer_color


def astronaut_bgr() -> np.ndarray:
    """skimage's public-domain astronaut photo (512, 512, 3) as BGR uint8: a colour picture."""
    return np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])


def gray_astronaut() -> np.ndarray:
    luma = skimage.data.astronaut().astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])  # (H, W)
    return np.repeat(np.rint(luma).astype(np.uint8)[:, :, None], 3, axis=2)


def test_threshold_is_the_reference_value() -> None:
    assert GRAY_THRESHOLD == 10


def test_colour_and_gray_pictures() -> None:
    assert not is_gray(astronaut_bgr())
    assert is_gray(gray_astronaut())
    assert is_gray(gray_astronaut()[:, :, 0])  # one channel, 2-D
    assert is_gray(gray_astronaut()[:, :, :1])  # one channel, 3-D


def test_near_gray_pictures_follow_the_channel_difference_variance() -> None:
    rng = np.random.default_rng(0)
    gray = gray_astronaut().astype(np.float64)

    def noisy(std: float) -> np.ndarray:
        return np.clip(np.rint(gray + rng.normal(0.0, std, gray.shape)), 0, 255).astype(np.uint8)

    # Independent noise of std s per channel: each difference has variance 2 s^2.
    assert is_gray(noisy(1.0))  # statistic about 2
    assert not is_gray(noisy(3.0))  # about 18
    tinted = gray_astronaut().astype(np.int64)
    tinted[:, :, 0] = np.minimum(tinted[:, :, 0] + 20, 255)  # a constant blue cast: zero variance...
    assert is_gray(tinted.astype(np.uint8))  # ...so it counts as gray, as in the reference (up to clipping)


def test_the_statistic_is_compared_with_less_or_equal() -> None:
    base = np.full((64, 64), 100.0)
    swing = np.where(np.indices((64, 64)).sum(axis=0) % 2 == 0, 3.0, -3.0)  # +-3: variance exactly 9
    image = np.stack([base, base + swing, base], axis=2).astype(np.uint8)  # differences: 9, 9, 0 -> mean 6
    assert is_gray(image, threshold=6.0)
    assert not is_gray(image, threshold=5.9)


def test_other_dtypes_are_judged_on_the_8_bit_scale() -> None:
    rng = np.random.default_rng(1)
    gray16 = gray_astronaut().astype(np.uint16) * 257
    noise = np.rint(rng.normal(0.0, 257.0, gray16.shape))  # one 8-bit grey level of noise per channel
    assert is_gray(np.clip(gray16 + noise, 0, 65535).astype(np.uint16))
    assert not is_gray(astronaut_bgr().astype(np.uint16) * 257)
    assert not is_gray(astronaut_bgr().astype(np.float32) / 255)
    assert is_gray(gray_astronaut().astype(np.float32) / 255)


def test_alpha_is_ignored() -> None:
    alpha = np.random.default_rng(2).integers(0, 256, (512, 512, 1), dtype=np.uint8)
    assert is_gray(np.concatenate([gray_astronaut(), alpha], axis=2))


def test_to_gray_uses_the_reference_weights_and_rounds() -> None:
    pixels = np.array([[[0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 255], [0, 0, 0]]], np.uint8)  # BGR
    gray = to_gray(pixels)
    assert gray.dtype == np.uint8 and gray.shape == pixels.shape
    # red 0.2989 * 255 = 76.2, green 149.7, blue 29.1, white 254.97 (the weights sum to 0.9999).
    np.testing.assert_array_equal(gray[0, :, 0], [76, 150, 29, 255, 0])
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 1])
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 2])


def test_to_gray_keeps_16_bit() -> None:
    gray = to_gray(astronaut_bgr().astype(np.uint16) * 257)
    assert gray.dtype == np.uint16 and is_gray(gray)
    np.testing.assert_allclose(gray[:, :, 0].astype(np.float64) / 257, gray_astronaut()[:, :, 0], atol=1)


def test_restored_face_of_a_gray_picture_stays_gray_and_takes_the_input_tone() -> None:
    restored = astronaut_bgr()[:256, 128:384]  # a colour "restored face"
    # The input crop: a dark, low-contrast gray crop with a slight warm cast.
    crop = gray_astronaut()[256:, 128:384].astype(np.float64) * 0.5 + 30
    crop[:, :, 2] += 4
    crop = np.rint(crop).astype(np.uint8)
    result = to_gray(restored, reference=crop)
    assert result.dtype == np.uint8 and result.shape == restored.shape
    assert is_gray(result)
    assert not is_gray(restored)
    flat_result = result.reshape(-1, 3).astype(np.float64)
    flat_crop = crop.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat_result.mean(axis=0), flat_crop.mean(axis=0), atol=0.6)  # the tone...
    np.testing.assert_allclose(flat_result.std(axis=0), flat_crop.std(axis=0), rtol=0.02)  # ...and contrast
    # The structure is the restored face's gray, not the crop's.
    correlation = np.corrcoef(flat_result[:, 0], to_gray(restored).reshape(-1, 3)[:, 0].astype(np.float64))[0, 1]
    assert correlation > 0.99


def test_colour_transfer_reduces_the_contrast_instead_of_clipping() -> None:
    rng = np.random.default_rng(3)
    content = rng.normal(128.0, 50.0, (64, 64, 3))
    style = np.clip(rng.normal(225.0, 40.0, (64, 64, 3)), 0, 255)  # bright and contrasty
    plain_scale = transfer_color(content, style, bit_range=1e9)  # no clamping: overflows 255
    assert plain_scale.max() > 256
    result = transfer_color(content, style)
    assert result.min() >= 0.0 and result.max() <= 256.0
    # The means are kept; the std is reduced by one common factor.
    np.testing.assert_allclose(result.reshape(-1, 3).mean(axis=0), style.reshape(-1, 3).mean(axis=0), atol=1e-9)
    ratios = result.reshape(-1, 3).std(axis=0) / style.reshape(-1, 3).std(axis=0)
    assert np.all(ratios < 1.0)
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        to_gray(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        transfer_color(np.zeros((4, 4, 3)), np.zeros((4, 4, 1)))
    with pytest.raises(ValueError):
        is_gray(np.zeros((4, 4, 2), np.uint8))
