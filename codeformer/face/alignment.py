"""Face alignment geometry: templates, similarity estimation, warps to 512x512, paste-back affines.

The recipe is the reference's (sczhou/CodeFormer ``FaceRestoreHelper.align_warp_face``,
``get_inverse_affine`` and the affine handling of ``paste_faces_to_input_image``):

1. :func:`estimate_alignment` fits a similarity transform (rotation, uniform scale, translation) from
   a detector's 5 landmarks onto a template, with ``cv2.estimateAffinePartial2D(method=cv2.LMEDS)``;
2. :func:`warp_face` warps the picture with it into a 512x512 crop (bilinear, gray border fill);
3. after restoration, :func:`paste_affine` gives the affine that maps the restored crop into the
   picture upscaled by ``s`` (the inverse alignment times ``s``, with the reference's half-pixel
   offset, or the face-upsampler variant for a crop already enlarged to ``512 * s``).

Every affine is a ``(2, 3)`` float64 matrix mapping source pixel coordinates to destination ones
(OpenCV's convention: pixel centres at integer coordinates). Example::

    affine = estimate_alignment(face.landmarks, FFHQ_TEMPLATE_5)
    if affine is not None:
        crop = warp_face(picture, affine)                     # (512, 512, 3)
        to_canvas = paste_affine(affine, upscale=2)           # crop -> picture upscaled 2x
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import cv2
import numpy as np

from codeformer.errors import OptionError

__all__ = [
    "BORDER_FILL_BGR",
    "DLIB_TEMPLATE_5",
    "FACE_SIZE",
    "FFHQ_TEMPLATE_5",
    "TEMPLATES",
    "estimate_alignment",
    "gpen_template",
    "inverse_alignment",
    "paste_affine",
    "transform_points",
    "validate_upscale",
    "warp_face",
]

FACE_SIZE = 512  # side of the aligned crop the networks work on
# The reference fills what lies outside the picture with this gray (BGR) when it warps a crop.
BORDER_FILL_BGR: tuple[int, int, int] = (135, 133, 132)
# The reference adds half an output pixel per unit of upscale to the paste-back translation when it
# pastes a 512 px crop into a picture upscaled by s > 1 ("for more precise back alignment").
HALF_PIXEL = 0.5

_AFFINE_SHAPE = (2, 3)
_LANDMARKS_SHAPE = (5, 2)
# Below this |determinant| an alignment affine is treated as degenerate (all points collapsed).
_MIN_ABS_DETERMINANT = 1e-12


def _read_only(values: object) -> np.ndarray:
    """A float64 array that cannot be modified in place (templates are shared by every caller)."""
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    return array


# RetinaFace's 5 points on a 512x512 FFHQ crop (the reference's / facexlib's template): left eye,
# right eye, nose tip, left mouth corner, right mouth corner (left/right as seen in the image).
FFHQ_TEMPLATE_5 = _read_only([
    [192.98138, 239.94708],
    [318.90277, 240.1936],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
])

# dlib's 5-point shape predictor order on a 1024x1024 FFHQ crop, as the reference's newest face helper
# gives it: outer then inner corner of the eye on the image's right, outer then inner corner of the eye
# on the image's left, bottom of the nose. The reference divides it by 1024 // 512 = 2 for 512 crops.
_DLIB_TEMPLATE_5_AT_1024 = (
    (686.77227723, 488.62376238),
    (586.77227723, 493.59405941),
    (337.91089109, 488.38613861),
    (437.95049505, 493.51485149),
    (513.58415842, 678.5049505),
)
_DLIB_TEMPLATE_SCALE = 1024 // FACE_SIZE
DLIB_TEMPLATE_5 = _read_only(np.array(_DLIB_TEMPLATE_5_AT_1024) / _DLIB_TEMPLATE_SCALE)

# Template by the name a detector gives its landmark order (``FaceDetector.template_name``).
TEMPLATES: Mapping[str, np.ndarray] = MappingProxyType({"ffhq": FFHQ_TEMPLATE_5, "dlib": DLIB_TEMPLATE_5})

# GPEN's alignment (its align_faces.py): the 5 points of ``REFERENCE_FACIAL_POINTS`` on a 96x112 crop.
_GPEN_POINTS_96X112 = (
    (30.29459953, 51.69630051),
    (65.53179932, 51.50139999),
    (48.02519989, 71.73660278),
    (33.54930115, 92.3655014),
    (62.72990036, 92.20410156),
)
_GPEN_SQUARE_SHIFT = (112 - 96) / 2  # default_square: 96x112 -> 112x112, points move right by half the difference
_GPEN_INNER_PAD = 112 * 0.25 * 2 / 2  # inner_padding_factor 0.25: 56 px more per side length, half of it before
_GPEN_SQUARE_SIDE = 112 + 56  # the padded square the points live in before scaling to S


def gpen_template(size: int) -> tuple[tuple[float, float], ...]:
    """The 5 reference points GPEN aligns an S x S crop to (left eye, right eye, nose, mouth left, right).

    The reference's ``get_reference_facial_points((S, S), 0.25, (0, 0), True)``: the 96x112
    ArcFace-style points shifted 8 px right to a 112x112 square, padded by 25% of 112 on each side
    (28 px) to 168x168, scaled to S / 168 (computed in float64 in the same order, so the values are
    bit-identical). The reference casts them to float32 before fitting the similarity.
    """
    scale = float(size) / _GPEN_SQUARE_SIDE
    shift = _GPEN_SQUARE_SHIFT + _GPEN_INNER_PAD
    return tuple(((x + shift) * scale, (y + _GPEN_INNER_PAD) * scale) for x, y in _GPEN_POINTS_96X112)


# Where the 5 FFHQ-order landmarks sit in a restorer's crops, as fractions of the crop's side, by the
# names other face tools give them (facefusion's warp templates): ``ffhq_512`` is the template above;
# ``arcface_128`` is insightface's 112 px ArcFace template moved into a 128 px square (facefusion
# aligns its GPEN-BFR-256 file with it); ``gpen`` is GPEN's own (the same fractions at every size).
CROP_TEMPLATES: Mapping[str, np.ndarray] = MappingProxyType({
    "gpen": _read_only(np.array(gpen_template(FACE_SIZE)) / FACE_SIZE),
    "ffhq_512": _read_only(FFHQ_TEMPLATE_5 / FACE_SIZE),
    "arcface_128": _read_only([
        [0.36167656, 0.40387734],
        [0.63696719, 0.40235469],
        [0.50019687, 0.56044219],
        [0.38710391, 0.72160547],
        [0.61507734, 0.72034453],
    ]),
})


def _check_affine(affine: np.ndarray) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != _AFFINE_SHAPE or not np.all(np.isfinite(matrix)):
        raise ValueError(f"expected a finite (2, 3) affine matrix, got {matrix.shape}")
    if abs(np.linalg.det(matrix[:, :2])) < _MIN_ABS_DETERMINANT:
        raise ValueError("the affine matrix is not invertible (its 2x2 part has a zero determinant)")
    return matrix


def validate_upscale(upscale: int) -> int:
    """``upscale`` as an int; a fractional, zero or negative factor is a user error."""
    # The reference takes int(upscale) and builds pixel kernels from it: only whole factors make sense.
    if isinstance(upscale, bool) or int(upscale) != upscale or upscale < 1:
        raise OptionError("upscale", upscale, "must be a whole number >= 1")
    return int(upscale)


def transform_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points; returns (N, 2) float64."""
    matrix = np.asarray(affine, dtype=np.float64)
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    return xy @ matrix[:, :2].T + matrix[:, 2]


def estimate_alignment(landmarks: np.ndarray, template: np.ndarray = FFHQ_TEMPLATE_5) -> np.ndarray | None:
    """Similarity transform (2, 3) float64 mapping a face's 5 landmarks onto ``template``.

    ``landmarks`` are (5, 2) picture coordinates in the order the template expects
    (:data:`FFHQ_TEMPLATE_5` for RetinaFace, :data:`DLIB_TEMPLATE_5` for dlib). Estimated, as the
    reference does, with ``cv2.estimateAffinePartial2D(..., method=cv2.LMEDS)`` (least median of
    squares, then refinement), which matches skimage's similarity fit on clean points.

    Returns ``None`` when no transform can be estimated (all landmarks on one point, non-finite
    landmarks): the caller skips that face. Wrong array shapes raise ``ValueError``.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    target = np.asarray(template, dtype=np.float64)
    if points.shape != _LANDMARKS_SHAPE or target.shape != _LANDMARKS_SHAPE:
        raise ValueError(f"expected (5, 2) landmarks and template, got {points.shape} and {target.shape}")
    if not np.all(np.isfinite(points)):
        return None
    affine, _inliers = cv2.estimateAffinePartial2D(points, target, method=cv2.LMEDS)
    if affine is None or not np.all(np.isfinite(affine)):
        return None
    if abs(np.linalg.det(affine[:, :2])) < _MIN_ABS_DETERMINANT:
        return None
    return affine.astype(np.float64)


def warp_face(
    image: np.ndarray,
    affine: np.ndarray,
    size: int = FACE_SIZE,
    *,
    interpolation: int = cv2.INTER_LINEAR,
    border_value: tuple[int, int, int] = BORDER_FILL_BGR,
) -> np.ndarray:
    """The (size, size, C) crop of ``image`` that ``affine`` maps onto the template.

    ``cv2.warpAffine`` with the reference's settings: bilinear by default, and what falls outside the
    picture is filled with the gray ``border_value`` (BGR, in the image's value scale: the default is
    the reference's 8-bit gray). Same dtype as ``image``.
    """
    matrix = _check_affine(affine)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border_value
    )


def inverse_alignment(affine: np.ndarray, upscale: int) -> np.ndarray:
    """The reference's ``get_inverse_affine``: the inverse of ``affine`` times ``upscale``, (2, 3).

    It maps crop coordinates to coordinates in the picture upscaled by ``upscale`` (without the
    half-pixel offset that :func:`paste_affine` adds for 512 px crops).
    """
    matrix = _check_affine(affine)
    return cv2.invertAffineTransform(matrix) * validate_upscale(upscale)


def paste_affine(affine: np.ndarray, upscale: int, face_size: int = FACE_SIZE, crop_size: int = FACE_SIZE) -> np.ndarray:
    """The (2, 3) affine that maps a restored face of side ``face_size`` into the upscaled picture.

    ``affine`` is the alignment (picture at 1x -> ``crop_size`` crop, 512 for the official networks);
    the canvas is the picture upscaled by the whole number ``upscale``. Two cases, as in the
    reference's ``paste_faces_to_input_image``:

    - ``face_size == crop_size``: the inverse alignment times ``upscale``, plus ``0.5 * upscale`` on
      the translation when ``upscale > 1`` (the reference's half-pixel offset);
    - any other side (a face upsampler enlarged the crop; the reference's case is ``512 * upscale``):
      the face is taken as the crop scaled by ``k = face_size / crop_size``, so the linear part is the
      inverse alignment's times ``upscale / k`` and its translation is times ``upscale``; no offset.
    """
    scale = validate_upscale(upscale)
    if face_size < 1:
        raise ValueError(f"face_size must be positive, got {face_size}")
    inverse = cv2.invertAffineTransform(_check_affine(affine))  # (2, 3): crop -> picture at 1x
    if face_size == crop_size:
        to_canvas = inverse * scale
        if scale > 1:
            to_canvas[:, 2] += HALF_PIXEL * scale
        return to_canvas
    crop_scale = face_size / crop_size
    to_canvas = inverse.copy()
    to_canvas[:, :2] *= scale / crop_scale
    to_canvas[:, 2] *= scale
    return to_canvas
