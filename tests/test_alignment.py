"""Face alignment geometry: templates, similarity fit, warp to 512, inverse affines for paste-back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from codeformer.errors import CodeFormerError
from codeformer.face.alignment import (
    BORDER_FILL_BGR,
    DLIB_TEMPLATE_5,
    FACE_SIZE,
    FFHQ_TEMPLATE_5,
    TEMPLATES,
    estimate_alignment,
    inverse_alignment,
    paste_affine,
    transform_points,
    warp_face,
)

BLOB_SIGMA = 2.5  # px in the picture: small bright dots marking the landmarks
CENTROID_RADIUS = 14  # px in the crop around each template point where a dot's centroid is measured


def crop_to_picture(center: tuple[float, float], face_side: float, degrees: float) -> np.ndarray:
    """Similarity (2, 3) mapping the 512 crop onto a face of ``face_side`` px centred at ``center``."""
    angle = np.deg2rad(degrees)
    linear = face_side / FACE_SIZE * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    translation = np.asarray(center) - linear @ np.array([FACE_SIZE / 2, FACE_SIZE / 2])
    return np.hstack([linear, translation[:, None]])


def picture_with_dots(points: np.ndarray, height: int = 420, width: int = 520) -> np.ndarray:
    """Dark BGR uint8 picture with a Gaussian dot (peak 250) at each of ``points``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.full((height, width), 10.0)
    for x, y in points:
        image += 240.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * BLOB_SIGMA**2))
    gray = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def dot_centroids(crop: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (above the background) of the dot near each expected point."""
    gray = crop[:, :, 0].astype(np.float64) - 10.0
    found = []
    for x, y in expected:
        x0, y0 = int(round(x)) - CENTROID_RADIUS, int(round(y)) - CENTROID_RADIUS
        patch = np.clip(gray[y0:y0 + 2 * CENTROID_RADIUS + 1, x0:x0 + 2 * CENTROID_RADIUS + 1], 0, None)
        ys, xs = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
        total = patch.sum()
        found.append([x0 + (xs * patch).sum() / total, y0 + (ys * patch).sum() / total])
    return np.array(found)


def test_templates_are_the_reference_values_and_read_only() -> None:
    assert FFHQ_TEMPLATE_5.shape == DLIB_TEMPLATE_5.shape == (5, 2)
    np.testing.assert_allclose(FFHQ_TEMPLATE_5[0], [192.98138, 239.94708])
    np.testing.assert_allclose(FFHQ_TEMPLATE_5[4], [313.08905, 371.15118])
    # dlib's template is given for 1024 px crops and halved for 512.
    np.testing.assert_allclose(DLIB_TEMPLATE_5[0], [686.77227723 / 2, 488.62376238 / 2])
    np.testing.assert_allclose(DLIB_TEMPLATE_5[4], [513.58415842 / 2, 678.5049505 / 2])
    with pytest.raises(ValueError):
        FFHQ_TEMPLATE_5[0, 0] = 0.0
    # By the names the detectors give their landmark orders.
    assert TEMPLATES["ffhq"] is FFHQ_TEMPLATE_5 and TEMPLATES["dlib"] is DLIB_TEMPLATE_5


@pytest.mark.parametrize("template", [FFHQ_TEMPLATE_5, DLIB_TEMPLATE_5], ids=["ffhq", "dlib"])
def test_alignment_recovers_a_known_similarity(template: np.ndarray) -> None:
    to_picture = crop_to_picture((260.0, 200.0), face_side=300.0, degrees=17.0)
    landmarks = transform_points(to_picture, template)
    affine = estimate_alignment(landmarks, template)
    assert affine is not None and affine.shape == (2, 3) and affine.dtype == np.float64
    # LMEDS then Levenberg-Marquardt refinement: exact up to the solver's tolerance (~1e-5 px).
    np.testing.assert_allclose(transform_points(affine, landmarks), template, atol=1e-3)
    np.testing.assert_allclose(affine, cv2.invertAffineTransform(to_picture), atol=1e-3)


@pytest.mark.parametrize(("center", "side", "degrees"),
                         [((260.0, 200.0), 300.0, -23.0), ((250.5, 230.25), 180.0, 41.0)])
def test_warp_puts_the_landmarks_on_the_template(center: tuple[float, float], side: float, degrees: float) -> None:
    to_picture = crop_to_picture(center, side, degrees)
    landmarks = transform_points(to_picture, FFHQ_TEMPLATE_5)
    picture = picture_with_dots(landmarks)
    affine = estimate_alignment(landmarks, FFHQ_TEMPLATE_5)
    assert affine is not None
    crop = warp_face(picture, affine)
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3) and crop.dtype == np.uint8
    error = np.linalg.norm(dot_centroids(crop, FFHQ_TEMPLATE_5) - FFHQ_TEMPLATE_5, axis=1)
    assert error.max() < 0.25, error  # measured: at most 0.11 px; a half-pixel shift gives 0.45-0.7


def test_warp_fills_outside_the_picture_with_the_reference_gray() -> None:
    picture = np.full((100, 100, 3), 200, np.uint8)
    # The face sits in the picture's top-left corner: most of the crop is outside the picture.
    affine = cv2.invertAffineTransform(crop_to_picture((0.0, 0.0), face_side=100.0, degrees=0.0))
    crop = warp_face(picture, affine)
    assert tuple(crop[10, 10]) == BORDER_FILL_BGR
    assert tuple(crop[400, 400]) == (200, 200, 200)


@pytest.mark.parametrize("upscale", [1, 2, 4])
def test_inverse_alignment_maps_the_template_back_to_the_landmarks(upscale: int) -> None:
    landmarks = transform_points(crop_to_picture((300.0, 220.0), 250.0, 12.0), FFHQ_TEMPLATE_5)
    affine = estimate_alignment(landmarks, FFHQ_TEMPLATE_5)
    assert affine is not None
    inverse = inverse_alignment(affine, upscale)
    np.testing.assert_allclose(transform_points(inverse, FFHQ_TEMPLATE_5), landmarks * upscale, atol=1e-3 * upscale)


def test_paste_affine_adds_the_reference_half_pixel_offset_for_512_crops() -> None:
    affine = cv2.invertAffineTransform(crop_to_picture((300.0, 220.0), 250.0, 12.0))
    np.testing.assert_array_equal(paste_affine(affine, 1), inverse_alignment(affine, 1))  # no offset at 1x
    for upscale in (2, 3):
        expected = inverse_alignment(affine, upscale)
        expected[:, 2] += 0.5 * upscale
        np.testing.assert_allclose(paste_affine(affine, upscale), expected, atol=1e-12)


def test_paste_affine_for_an_upsampled_face_has_no_offset() -> None:
    landmarks = transform_points(crop_to_picture((300.0, 220.0), 250.0, 12.0), FFHQ_TEMPLATE_5)
    affine = estimate_alignment(landmarks, FFHQ_TEMPLATE_5)
    assert affine is not None
    upscale = 3
    to_canvas = paste_affine(affine, upscale, face_size=FACE_SIZE * upscale)
    inverse = cv2.invertAffineTransform(affine)
    # The reference's face-upsampler case: inverse / s (linear part of the plain inverse), translation * s.
    np.testing.assert_allclose(to_canvas[:, :2], inverse[:, :2], atol=1e-12)
    np.testing.assert_allclose(to_canvas[:, 2], inverse[:, 2] * upscale, atol=1e-9)
    # A point of the enlarged crop lands where its 512 counterpart's picture point lands, times s.
    np.testing.assert_allclose(transform_points(to_canvas, FFHQ_TEMPLATE_5 * upscale), landmarks * upscale, atol=1e-2)


@pytest.mark.parametrize("upscale", [0, -1, 1.5, True])
def test_bad_upscale_factors_are_user_errors(upscale: object) -> None:
    affine = cv2.invertAffineTransform(crop_to_picture((300.0, 220.0), 250.0, 0.0))
    with pytest.raises(CodeFormerError, match="whole number"):
        paste_affine(affine, upscale)  # type: ignore[arg-type]


def test_degenerate_landmarks_give_none() -> None:
    assert estimate_alignment(np.full((5, 2), 100.0)) is None  # all points on one spot
    nan_points = FFHQ_TEMPLATE_5.copy()
    nan_points[2, 0] = np.nan
    assert estimate_alignment(nan_points) is None
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        estimate_alignment(np.zeros((4, 2)))


def test_a_singular_affine_is_rejected() -> None:
    with pytest.raises(ValueError, match="not invertible"):
        warp_face(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 3)))
