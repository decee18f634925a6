"""Paste-back: parse masks, the identity round trip, and bounding-box == full-frame, bit for bit."""

from __future__ import annotations

import itertools
from typing import Sequence

import cv2
import numpy as np
import pytest
import skimage.data

from codeformer.errors import CodeFormerError
from codeformer.face.alignment import FACE_SIZE, paste_affine, warp_face
from codeformer.face.pasteback import (
    BOX_COLOR_BGR,
    PastedFace,
    _Box,
    _face_layers,
    _plan_face,
    parse_labels_to_mask,
    paste_faces,
    paste_faces_full_frame,
)

PARSE_CLASSES = 19


def alignment(center: tuple[float, float], side: float, degrees: float) -> np.ndarray:
    """Alignment affine (picture -> 512 crop) of a face of ``side`` px centred at ``center``."""
    angle = np.deg2rad(degrees)
    linear = side / FACE_SIZE * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    translation = np.asarray(center) - linear @ np.array([FACE_SIZE / 2, FACE_SIZE / 2])
    return cv2.invertAffineTransform(np.hstack([linear, translation[:, None]]))


def astronaut(width: int, height: int) -> np.ndarray:
    """skimage's public-domain astronaut photo, BGR uint8, resized (a textured picture with a face)."""
    rgb = skimage.data.astronaut()
    return cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (width, height), interpolation=cv2.INTER_AREA)


def blob_labels(rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """(512, 512) int64 ParseNet-like labels: blocks of random classes."""
    coarse = rng.integers(0, PARSE_CLASSES, (cells, cells)).astype(np.uint8)
    return cv2.resize(coarse, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def random_canvas(rng: np.random.Generator, height: int, width: int, dtype: type, channels: int) -> np.ndarray:
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, (height, width, channels)).astype(dtype)


def canvas_to_crop(face: PastedFace, upscale: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop coordinates (u, v) of every canvas pixel, (h, w) each."""
    inverse = cv2.invertAffineTransform(paste_affine(face.affine, upscale, face.face.shape[0]))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return (inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2],
            inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2])


# ------------------------------------------------------------------------------------------------
# Parse masks


def test_parse_mask_of_a_full_face_is_one_inside_and_zero_on_the_border() -> None:
    mask = parse_labels_to_mask(np.ones((FACE_SIZE, FACE_SIZE), np.int64))  # all skin
    assert mask.shape == (FACE_SIZE, FACE_SIZE) and mask.dtype == np.float64
    assert mask.min() >= 0.0 and mask.max() <= 1.0 + 1e-12
    np.testing.assert_allclose(mask[100:412, 100:412], 1.0, atol=1e-6)
    for border in (mask[:10], mask[-10:], mask[:, :10], mask[:, -10:]):
        assert not border.any()
    # The blurred image edge (reflected border) keeps the mask high right inside the zeroed band.
    assert mask[10, 256] > 0.5


@pytest.mark.parametrize("label", [0, 14, 16, 17, 18, 19, -1])
def test_dropped_and_unknown_classes_give_an_empty_mask(label: int) -> None:
    assert not parse_labels_to_mask(np.full((FACE_SIZE, FACE_SIZE), label, np.int64)).any()


def test_parse_mask_is_soft_across_a_class_boundary() -> None:
    labels = np.ones((FACE_SIZE, FACE_SIZE), np.int64)
    labels[:, 256:] = 17  # right half: a dropped class
    row = parse_labels_to_mask(labels)[256, 10:-10]
    assert row[0] > 0.99 and row[-1] < 0.01
    assert np.all(np.diff(row) <= 1e-12)  # decreasing ...
    assert np.count_nonzero((row > 0.05) & (row < 0.95)) > 40  # ... over a wide soft ramp (two sigma-11 blurs)


def test_parse_labels_must_be_integers() -> None:
    with pytest.raises(ValueError, match="integer"):
        parse_labels_to_mask(np.zeros((FACE_SIZE, FACE_SIZE), np.float32))


# ------------------------------------------------------------------------------------------------
# The identity restorer round trip


@pytest.mark.parametrize("upscale", [1, 2])
def test_identity_restorer_reproduces_the_upscaled_picture(upscale: int) -> None:
    picture = astronaut(400, 400)
    face_alignment = alignment((200.0, 190.0), 250.0, 20.0)
    crop = warp_face(picture, face_alignment)
    canvas = cv2.resize(picture, (400 * upscale, 400 * upscale), interpolation=cv2.INTER_LINEAR)
    face = PastedFace(crop, face_alignment)
    result = paste_faces(canvas, [face], upscale=upscale)

    u, v = canvas_to_crop(face, upscale, *canvas.shape[:2])
    inner = (u > 64) & (u < 448) & (v > 64) & (v < 448)  # well inside the soft edge: the face alone
    # Outside the square plus the soft edge's reach (edge = sqrt(area) / 20 < 10 % of the side).
    reach = 0.1 * FACE_SIZE
    outside = (u < -reach) | (u > FACE_SIZE + reach) | (v < -reach) | (v > FACE_SIZE + reach)
    error = np.abs(result.astype(np.int64) - canvas.astype(np.int64))
    np.testing.assert_array_equal(result[outside], canvas[outside])
    # Measured: 1.24 (s=1: picture -> crop -> picture resampling) and 2.47 grey levels (s=2, where
    # the reference's half-pixel offset, 0.5 * s instead of (s - 1) / 2, shifts the face by 0.5 px).
    assert error[inner].mean() < (1.6 if upscale == 1 else 3.0)

    if upscale > 1:
        # Paste with the exact pixel-centre offset instead: the error is resampling only (0.25).
        exact = cv2.invertAffineTransform(face_alignment)
        exact[:, 2] -= 0.5 / upscale
        shifted = paste_faces(canvas, [PastedFace(crop, cv2.invertAffineTransform(exact))], upscale=upscale)
        assert np.abs(shifted.astype(np.int64) - canvas.astype(np.int64))[inner].mean() < 0.5


# ------------------------------------------------------------------------------------------------
# Bounding-box path == full-frame path, bit for bit

PICTURE_HEIGHT, PICTURE_WIDTH = 130, 171  # 1x picture; canvas widths 171, 342, 513: not multiples of 64

# (centre, side, degrees) at 1x: an interior face, one overlapping it, one across the right edge, one
# across the top-left corner, a tiny one across the bottom edge (edge width 0: OpenCV's 3x3 erosion),
# one entirely outside the canvas.
SCENE_FACES: tuple[tuple[tuple[float, float], float, float], ...] = (
    ((70.0, 60.0), 70.0, 10.0),
    ((98.3, 72.6), 64.0, -25.0),
    ((160.0, 80.0), 84.0, 35.0),
    ((6.0, 2.0), 52.0, 60.0),
    ((40.0, 126.0), 15.0, 5.0),
    ((-300.0, 50.0), 40.0, 0.0),
)


def scene_faces(rng: np.random.Generator, upscale: int, parse_masks: Sequence[np.ndarray] | None) -> list[PastedFace]:
    faces = []
    for index, (center, side, degrees) in enumerate(SCENE_FACES):
        # The second face comes from a face upsampler (512 * s) when the canvas is upscaled.
        size = FACE_SIZE * upscale if index == 1 and upscale > 1 else FACE_SIZE
        restored = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noise: every sample shows
        mask = None if parse_masks is None else parse_masks[index % len(parse_masks)]
        faces.append(PastedFace(restored, alignment(center, side, degrees), mask))
    return faces


@pytest.fixture(scope="module")
def parse_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    # A realistic blurred mask, and a rough one (uniform noise) that stresses the sampling.
    return [parse_labels_to_mask(blob_labels(rng)), rng.random((FACE_SIZE, FACE_SIZE))]


@pytest.mark.parametrize(
    ("upscale", "dtype", "channels", "with_parse", "draw_box"),
    list(itertools.product([1, 2, 3], [np.uint8, np.uint16], [3, 4], [False, True], [False, True])),
)
def test_bounding_box_paste_equals_full_frame(upscale: int, dtype: type, channels: int, with_parse: bool,
                                             draw_box: bool, parse_masks: list[np.ndarray]) -> None:
    rng = np.random.default_rng(upscale * 100 + channels)
    canvas = random_canvas(rng, PICTURE_HEIGHT * upscale, PICTURE_WIDTH * upscale, dtype, channels)
    faces = scene_faces(rng, upscale, parse_masks if with_parse else None)
    fast = paste_faces(canvas, faces, upscale=upscale, draw_box=draw_box)
    full = paste_faces_full_frame(canvas, faces, upscale=upscale, draw_box=draw_box)
    assert fast.dtype == canvas.dtype and fast.shape == canvas.shape
    np.testing.assert_array_equal(fast, full)
    assert np.count_nonzero(fast != canvas) > 0.1 * canvas[:, :, :3].size  # the faces really were pasted


def test_bounding_box_paste_equals_full_frame_on_random_scenes(parse_masks: list[np.ndarray]) -> None:
    rng = np.random.default_rng(2024)
    for _ in range(16):
        upscale = int(rng.integers(1, 4))
        height, width = (int(rng.integers(40, 200)) for _ in range(2))
        dtype = [np.uint8, np.uint16][int(rng.integers(0, 2))]
        canvas = random_canvas(rng, height * upscale, width * upscale, dtype, int(rng.integers(3, 5)))
        faces = []
        for _ in range(int(rng.integers(1, 6))):
            center = (rng.uniform(-0.2, 1.2) * width, rng.uniform(-0.2, 1.2) * height)
            face_alignment = alignment(center, rng.uniform(8, 0.9 * min(height, width)), rng.uniform(-180, 180))
            mask = parse_masks[int(rng.integers(0, 2))] if rng.random() < 0.5 else None
            restored = rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
            faces.append(PastedFace(restored, face_alignment, mask))
        draw_box = bool(rng.random() < 0.3)
        np.testing.assert_array_equal(paste_faces(canvas, faces, upscale=upscale, draw_box=draw_box),
                                      paste_faces_full_frame(canvas, faces, upscale=upscale, draw_box=draw_box))


@pytest.mark.parametrize(("upscale", "width"), [(3, 333), (2, 301), (1, 999)])
def test_window_layers_equal_full_canvas_layers(upscale: int, width: int, parse_masks: list[np.ndarray]) -> None:
    """Each float layer (soft mask, pasted face, box border) is bit-identical in the face's window.

    Layers are floats, so a last-bit difference shows here even where truncation to integers would
    hide it (e.g. OpenCV's vector loop tails on windows whose columns are not aligned like the canvas's).
    """
    rng = np.random.default_rng(upscale)
    height = 200
    canvas_width, canvas_height = width * upscale, height * upscale
    whole = _Box(0, 0, canvas_width, canvas_height)
    placements = [((width - 20.0, height / 2), 0.6 * height, 30.0), ((width - 5.0, 0.3 * height), 0.5 * height, -50.0),
                  ((10.0, 10.0), 0.5 * height, 10.0), ((width / 2, height / 2), 0.3 * height, 5.0)]
    for center, side, degrees in placements:
        face = PastedFace(rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8),
                          alignment(center, side, degrees), parse_masks[1])
        plan = _plan_face(face, upscale, canvas_width, canvas_height)
        assert plan is not None
        options = dict(upscale=upscale, value_scale=1, draw_box=True, crop_to_reach=False)
        in_window = _face_layers(face, plan, plan.window, **options)
        on_canvas = _face_layers(face, plan, whole, **options)
        assert in_window is not None and on_canvas is not None
        rows, columns = plan.window.within(whole)
        for name in ("soft", "pasted", "border"):
            full_canvas_layer = getattr(on_canvas, name)[rows, columns]
            np.testing.assert_array_equal(getattr(in_window, name), full_canvas_layer, err_msg=name)
        # Nothing of the face reaches outside its window on the full canvas.
        outside = on_canvas.soft.copy()
        outside[rows, columns] = 0
        assert not outside.any()


# ------------------------------------------------------------------------------------------------
# The recipe against a transliteration of the reference (which samples with cv2.warpAffine)


def reference_paste(canvas: np.ndarray, faces: Sequence[PastedFace], upscale: int, draw_box: bool) -> np.ndarray:
    """sczhou/CodeFormer's paste_faces_to_input_image, step by step, on a uint8 BGR canvas.

    The draw_box result is rounded to uint8 as cv2.imwrite does with the reference's float32 output.
    """
    height, width = canvas.shape[:2]
    picture: np.ndarray = canvas
    borders = []
    for face in faces:
        size = face.face.shape[0]
        inverse = cv2.invertAffineTransform(face.affine) * upscale
        if size != FACE_SIZE:  # face upsampler
            inverse /= upscale
            inverse[:, 2] *= upscale
        elif upscale > 1:
            inverse[:, 2] += 0.5 * upscale
        inv_restored = cv2.warpAffine(face.face, inverse, (width, height))
        inv_mask = cv2.warpAffine(np.ones((size, size), np.float32), inverse, (width, height))
        eroded = cv2.erode(inv_mask, np.ones((2 * upscale, 2 * upscale), np.uint8))
        pasted = eroded[:, :, None] * inv_restored
        area = np.sum(eroded)
        if draw_box:
            frame = np.ones((size, size, 3), np.float32)
            thickness = int(1400 / np.sqrt(area))
            frame[thickness:size - thickness, thickness:size - thickness, :] = 0
            borders.append(cv2.warpAffine(frame, inverse, (width, height)))
        edge = int(area**0.5) // 20
        center = cv2.erode(eroded, np.ones((2 * edge, 2 * edge), np.uint8))
        soft = cv2.GaussianBlur(center, (2 * edge + 1, 2 * edge + 1), 0)[:, :, None]
        if face.parse_mask is not None:
            parse = cv2.resize(face.parse_mask, (size, size))
            parse = cv2.warpAffine(parse, inverse, (width, height), flags=3)[:, :, None]
            lower = (parse < soft).astype("int")
            soft = parse * lower + soft * (1 - lower)
        picture = soft * pasted + (1 - soft) * picture
    result = picture.astype(np.uint8)
    if draw_box:
        green = np.zeros(result.shape, np.float32)
        green[:, :, 1] = 255
        boxed: np.ndarray = result
        for border in borders:
            boxed = border * green + (1 - border) * boxed
        result = np.clip(np.rint(boxed), 0, 255).astype(np.uint8)
    return result


@pytest.mark.parametrize(("upscale", "with_parse", "draw_box"), [(1, False, False), (2, False, True), (2, True, False),
                                                                  (3, True, True)])
def test_recipe_matches_the_reference_within_sampling_differences(upscale: int, with_parse: bool, draw_box: bool,
                                                                  parse_masks: list[np.ndarray]) -> None:
    rng = np.random.default_rng(11)
    canvas = cv2.resize(astronaut(PICTURE_WIDTH, PICTURE_HEIGHT), (PICTURE_WIDTH * upscale, PICTURE_HEIGHT * upscale))
    faces = scene_faces(rng, upscale, parse_masks[:1] if with_parse else None)[:4]
    ours = paste_faces(canvas, faces, upscale=upscale, draw_box=draw_box).astype(np.int64)
    difference = np.abs(ours - reference_paste(canvas, faces, upscale, draw_box))
    # Only cv2.warpAffine's fixed-point sampling differs from ours (measured: 1 grey level on about
    # 0.1 % of the values; a wrong erosion, edge width, offset or blend would change far more).
    assert difference.max() <= 2
    assert np.count_nonzero(difference) < 0.005 * difference.size
    assert np.count_nonzero(difference > 1) < 1e-4 * difference.size


# ------------------------------------------------------------------------------------------------
# Behaviour


def test_inputs_are_not_modified_and_alpha_is_kept() -> None:
    rng = np.random.default_rng(3)
    canvas = random_canvas(rng, 260, 340, np.uint8, 4)
    faces = scene_faces(rng, 2, [np.full((FACE_SIZE, FACE_SIZE), 0.8)])
    canvas_before = canvas.copy()
    faces_before = [(face.face.copy(), face.affine.copy(), face.parse_mask.copy()) for face in faces]
    result = paste_faces(canvas, faces, upscale=2, draw_box=True)
    assert result is not canvas
    np.testing.assert_array_equal(canvas, canvas_before)
    for face, (image, affine, mask) in zip(faces, faces_before):
        np.testing.assert_array_equal(face.face, image)
        np.testing.assert_array_equal(face.affine, affine)
        np.testing.assert_array_equal(face.parse_mask, mask)
    np.testing.assert_array_equal(result[:, :, 3], canvas[:, :, 3])
    assert np.count_nonzero(result[:, :, :3] != canvas[:, :, :3]) > 0


def test_sixteen_bit_canvas_keeps_its_precision_outside_and_gets_the_face_inside() -> None:
    canvas = np.full((300, 300, 3), 12345, np.uint16)  # not a multiple of 257: 16-bit only
    face = PastedFace(np.full((FACE_SIZE, FACE_SIZE, 3), 200, np.uint8), alignment((150.0, 150.0), 150.0, 0.0))
    result = paste_faces(canvas, [face], upscale=1)
    assert result.dtype == np.uint16
    assert result[5, 5, 0] == 12345  # far outside the face
    # Inside: the face's 200 on the 16-bit scale (truncation may take one 16-bit level off).
    assert 200 * 257 - 1 <= result[150, 150, 0] <= 200 * 257


def test_later_faces_go_over_earlier_ones() -> None:
    canvas = np.full((200, 200, 3), 128, np.uint8)
    where = alignment((100.0, 100.0), 120.0, 0.0)
    white = PastedFace(np.full((FACE_SIZE, FACE_SIZE, 3), 255, np.uint8), where)
    black = PastedFace(np.zeros((FACE_SIZE, FACE_SIZE, 3), np.uint8), where)
    assert tuple(paste_faces(canvas, [white, black], upscale=1)[100, 100]) == (0, 0, 0)
    assert tuple(paste_faces(canvas, [black, white], upscale=1)[100, 100]) == (255, 255, 255)


def test_draw_box_draws_a_green_square_border() -> None:
    canvas = np.full((200, 200, 3), 128, np.uint8)
    face = PastedFace(np.full((FACE_SIZE, FACE_SIZE, 3), 60, np.uint8), alignment((100.0, 100.0), 120.0, 0.0))
    plain = paste_faces(canvas, [face], upscale=1)
    boxed = paste_faces(canvas, [face], upscale=1, draw_box=True)
    green = np.all(boxed == BOX_COLOR_BGR, axis=2)
    assert not np.all(plain == BOX_COLOR_BGR, axis=2).any()
    # The face spans x, y in [40, 160); the border runs along its edge, not through its middle.
    assert green[100, 40:50].any() and green[100, 150:160].any() and green[40:50, 100].any()
    assert not green[60:140, 60:140].any()


def test_a_face_outside_the_canvas_changes_nothing() -> None:
    canvas = np.random.default_rng(5).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    face = PastedFace(np.zeros((FACE_SIZE, FACE_SIZE, 3), np.uint8), alignment((500.0, 500.0), 80.0, 0.0))
    np.testing.assert_array_equal(paste_faces(canvas, [face], upscale=1, draw_box=True), canvas)
    np.testing.assert_array_equal(paste_faces(canvas, [], upscale=1), canvas)


@pytest.mark.parametrize("canvas", [np.zeros((50, 50, 3), np.float32), np.zeros((50, 50), np.uint8),
                                    np.zeros((50, 50, 2), np.uint8)], ids=["float", "2-d", "2-channel"])
def test_unsupported_canvases_are_user_errors(canvas: np.ndarray) -> None:
    with pytest.raises(CodeFormerError, match="8- or 16-bit BGR"):
        paste_faces(canvas, [], upscale=1)


def test_bad_arguments_are_rejected() -> None:
    canvas = np.zeros((50, 50, 3), np.uint8)
    where = alignment((25.0, 25.0), 20.0, 0.0)
    with pytest.raises(CodeFormerError, match="whole number"):
        paste_faces(canvas, [], upscale=0)
    with pytest.raises(ValueError, match="face 0"):
        paste_faces(canvas, [PastedFace(np.zeros((FACE_SIZE, FACE_SIZE, 3), np.float32), where)], upscale=1)
    with pytest.raises(ValueError, match="face 0"):
        paste_faces(canvas, [PastedFace(np.zeros((FACE_SIZE, 256, 3), np.uint8), where)], upscale=1)
