"""FFHQ-style cropping and alignment of faces in whole photos (dlib 68-point landmarks).

This is the recipe the FFHQ dataset was made with (NVlabs/ffhq-dataset, ``recreate_aligned_images``)
and that sczhou/CodeFormer's ``scripts/crop_align_face.py`` applies to users' photos before
``inference_codeformer.py --has_aligned``:

1. dlib's HOG frontal face detector (upsampling the picture once) and its 68-point shape predictor;
2. eye centres and mouth corners -> an oriented square (:func:`ffhq_quad`);
3. shrink the picture by an integer factor when the square is much larger than the output;
4. crop the square plus a border; pad with reflected, blurred content where the square leaves the
   picture (:func:`pad_reflect_blur`; FFHQ does, CodeFormer's script leaves it black:
   ``enable_padding=False``);
5. resample the square onto the output grid (:func:`warp_quad`).

The reference resamples the square with Pillow's bilinear ``QUAD`` transform onto a 4096x4096 grid
and then downsizes that to the output with Lanczos. Here the square is mapped with one affine warp
(the square is a rotated square, so the quad transform is affine) onto a grid ``transform_size``
wide and averaged down to the output; see :func:`default_transform_size` for why a grid just finer
than the square's own pixels gives the reference's result at a fraction of its cost.

Every image is BGR ``uint8`` ``(H, W, 3)``; landmarks are ``(x, y)`` pixel coordinates.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.weights import weight_path

__all__ = [
    "Face68",
    "OUTPUT_SIZE",
    "PREDICTOR_68_KEY",
    "align_ffhq",
    "crop_align_faces",
    "default_transform_size",
    "detect_faces_68",
    "ffhq_quad",
    "landmarks_68",
    "largest_face_index",
    "load_dlib_models",
    "pad_reflect_blur",
    "quad_affine",
    "warp_quad",
]

# The shape predictor's key in the weights table (`codeformer.weights.WEIGHTS`); the PyPI package
# face-recognition-models ships a byte-identical copy, used without any download when installed.
PREDICTOR_68_KEY = "dlib/shape_predictor_68_face_landmarks-fbdc2cb8.dat"
# The reference calls `detector(img, 1)`: upsample the picture once so faces down to ~40 px are found.
DETECTOR_UPSAMPLE = 1
# Side of the aligned crops CodeFormer restores.
OUTPUT_SIZE = 512
# The reference's supersampling grid (and FFHQ's).
REFERENCE_TRANSFORM_SIZE = 4096

# dlib 68-point layout: index ranges of the parts the recipe uses.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT_CORNER = 48
MOUTH_RIGHT_CORNER = 54

# FFHQ recipe constants.
# Half the square's side is the larger of 2x the eye distance and 1.8x the eye-to-mouth distance.
EYE_TO_EYE_SCALE = 2.0
EYE_TO_MOUTH_SCALE = 1.8
# The square's centre sits 10% of the way from the eyes' midpoint to the mouth's.
CENTRE_TOWARDS_MOUTH = 0.1
# Shrink by floor(qsize / output_size * 0.5): keep at least 2x the output resolution in the square.
SHRINK_RATIO = 0.5
# Crop margin around the square: 10% of its side, at least 3 px (room for the resampling kernel).
BORDER_FRACTION = 0.1
MIN_BORDER = 3
# Padding is only worth it when the square leaves the picture by more than (border - 4) px.
PAD_SLACK = 4
# Padding is at least 30% of the square's side, so the blur ramp has room.
PAD_FRACTION = 0.3
# Gaussian sigma of the padding blur: 2% of the square's side.
BLUR_FRACTION = 0.02
# The blur reaches full strength a third of the way into the padding (mask * 3 + 1, clipped).
BLUR_RAMP = 3.0
# scipy.ndimage.gaussian_filter (the reference's blur) truncates its kernel at 4 sigma.
GAUSS_TRUNCATE = 4.0
# A blur wider than this many pixels (sigma) is computed at a reduced resolution.
MIN_SMALL_SIGMA = 4.0
# Pixels the padding's median colour is estimated from (the exact median of a 3000 px padded
# picture takes most of a second and differs by a fraction of a grey level).
MEDIAN_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Face68:
    """One face found by dlib: its detection box and 68 landmarks."""

    box: np.ndarray  # (4,) float: x1, y1, x2, y2 of the detector's rectangle (may leave the picture)
    landmarks: np.ndarray  # (68, 2) float: x, y in dlib's 68-point order

    @property
    def area(self) -> float:
        """The detection rectangle's area: what "largest face" compares, as in the reference."""
        x1, y1, x2, y2 = self.box
        return float((x2 - x1) * (y2 - y1))


def load_dlib_models(weights_dir: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """dlib's HOG frontal face detector and 68-point shape predictor, ready to call.

    The predictor file comes from face-recognition-models when installed, else from the weights
    root (downloaded on first use).
    """
    try:
        import dlib
    except ImportError:
        raise CodeFormerError(
            "FFHQ alignment needs dlib: pip install dlib-bin face-recognition-models"
        ) from None
    path = weight_path(PREDICTOR_68_KEY, weights_dir)
    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as error:
        raise CodeFormerError(
            f"cannot load the dlib shape predictor {path} ({str(error).strip()}): delete it so it is downloaded again"
        ) from None
    # The reference uses the HOG detector (not the CNN one): it is what FFHQ's landmarks came from.
    return dlib.get_frontal_face_detector(), predictor


def detect_faces_68(
    image: np.ndarray, detector: Any, predictor: Any, *, upsample: int = DETECTOR_UPSAMPLE
) -> list[Face68]:
    """All faces in a BGR ``uint8`` picture, in the detector's order, with their 68 landmarks."""
    _check_bgr8(image)
    rgb = np.ascontiguousarray(image[:, :, ::-1])  # (H, W, 3): dlib expects RGB, contiguous
    faces = []
    for rect in detector(rgb, upsample):
        shape = predictor(rgb, rect)
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # (68, 2)
        box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
        faces.append(Face68(box=box, landmarks=landmarks))
    return faces


def _check_bgr8(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def landmarks_68(image: np.ndarray, detector: Any, predictor: Any) -> list[np.ndarray]:
    """The ``(68, 2)`` landmarks of every face in a BGR picture, in detection order."""
    return [face.landmarks for face in detect_faces_68(image, detector, predictor)]


def largest_face_index(faces: Sequence[Face68]) -> int:
    """Index of the face with the largest detection box (the first one on a tie, as the reference)."""
    if not faces:
        raise ValueError("largest_face_index needs at least one face")
    return int(np.argmax([face.area for face in faces]))


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """FFHQ's oriented crop square from 68 landmarks.

    Returns ``quad`` ``(4, 2)``: the corners that become the output's top-left, bottom-left,
    bottom-right and top-right (in that order), and ``qsize``, the square's side in pixels.
    The eyes' axis (tilted by the mouth's position) becomes horizontal in the output.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {landmarks.shape}")
    eye_left = landmarks[LEFT_EYE].mean(axis=0)
    eye_right = landmarks[RIGHT_EYE].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (landmarks[MOUTH_LEFT_CORNER] + landmarks[MOUTH_RIGHT_CORNER]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # x: half the square's top edge; the eye axis averaged with the mouth direction turned 90 degrees.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * EYE_TO_EYE_SCALE, np.hypot(*eye_to_mouth) * EYE_TO_MOUTH_SCALE)
    y = np.flipud(x) * [-1, 1]  # x turned 90 degrees: half the square's left edge, pointing down
    centre = eye_avg + eye_to_mouth * CENTRE_TOWARDS_MOUTH
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])  # (4, 2)
    return quad, float(np.hypot(*x) * 2)


def quad_affine(quad: np.ndarray, size: int) -> np.ndarray:
    """The ``(2, 3)`` affine matrix taking picture pixel coordinates to a ``size`` x ``size`` grid.

    As Pillow's ``QUAD`` transform with ``quad + 0.5`` (what the reference passes): the quad's
    corners land on the grid's outer pixel corners, i.e. at -0.5 and size - 0.5 in pixel-centre
    coordinates.
    """
    top_left, bottom_left, _, top_right = np.asarray(quad, dtype=np.float64)
    # Columns: where one output pixel step along x and along y goes in the picture.
    step = np.stack([top_right - top_left, bottom_left - top_left], axis=1) / size  # (2, 2)
    inverse = np.linalg.inv(step)
    # dst = inverse @ (src - top_left) - 0.5
    return np.concatenate([inverse, (-inverse @ top_left - 0.5)[:, None]], axis=1)  # (2, 3)


def default_transform_size(qsize: float, output_size: int = OUTPUT_SIZE) -> int:
    """The resampling grid for a square of ``qsize`` picture pixels: the smallest multiple of
    ``output_size`` with at least one sample per picture pixel.

    The reference samples a 4096x4096 grid bilinearly and then downsizes it. Once the grid is as fine
    as the picture pixels inside the square, a finer grid only repeats interpolated values: the
    average over an output pixel stops changing. A multiple of ``output_size`` makes the final step
    an exact average of whole grid cells. After the shrink step the square is under
    ``4 * output_size`` pixels wide, so the grid never exceeds the reference's 4096 for 512 outputs,
    and for the common case of a face smaller than the output the warp goes straight to the output.
    Measured on the astronaut photo scaled 1x-14x with strong pixel noise (the worst case for a
    coarser grid): 0.3-0.7 grey levels mean difference from a 4096 grid, 2.5-30x faster.
    """
    return output_size * max(1, math.ceil(qsize / output_size))


def pad_reflect_blur(image: np.ndarray, pad: Sequence[int], qsize: float) -> np.ndarray:
    """Pad ``image`` by ``pad`` = (left, top, right, bottom) with mirrored content that fades into a
    blurred, then flat (median colour) version of itself away from the picture, as FFHQ does, so the
    network never sees a hard black edge. Returns BGR ``uint8``.
    """
    left, top, right, bottom = (int(p) for p in pad)
    # numpy's "reflect" mirrors without repeating the edge pixel and repeats itself for wide pads.
    padded = np.pad(image.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")  # (H, W, 3)
    height, width = padded.shape[:2]
    ys = np.arange(height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    xs = np.arange(width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    # 0 inside the picture, rising to 1 at the padded image's outer edge (per side; the larger wins).
    mask_x = 1.0 - np.minimum(_fraction_of_pad(xs, left), _fraction_of_pad(width - 1 - xs, right))
    mask_y = 1.0 - np.minimum(_fraction_of_pad(ys, top), _fraction_of_pad(height - 1 - ys, bottom))
    mask = np.maximum(mask_x, mask_y)  # (H, W, 1)
    blurred = _gaussian_blur(padded, qsize * BLUR_FRACTION)
    padded += (blurred - padded) * np.clip(mask * BLUR_RAMP + 1.0, 0.0, 1.0)
    padded += (_median_colour(padded) - padded) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(padded), 0, 255).astype(np.uint8)


def _fraction_of_pad(distance: np.ndarray, pad: int) -> np.ndarray:
    """Distance from the padded image's edge in units of that side's padding (inf: side not padded)."""
    return distance / np.float32(pad) if pad > 0 else np.full_like(distance, np.inf)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's blur (truncated at 4 sigma, mirrored edges) with OpenCV.

    A wide blur is computed on a picture downsized by an integer factor and scaled back: the result
    is smooth at that scale anyway, and a 40-sigma kernel on a 3000 px picture otherwise takes seconds.
    """
    if sigma <= 0:
        return image.copy()
    factor = max(1, int(sigma // MIN_SMALL_SIGMA))
    small = image
    if factor > 1:
        height, width = image.shape[:2]
        size = (max(1, round(width / factor)), max(1, round(height / factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # The area downsizing (box, variance f^2/12) and the linear upsizing (triangle, f^2/6) blur too.
        sigma = math.sqrt(max(sigma**2 - factor**2 / 4, 0.0)) / factor
    radius = int(GAUSS_TRUNCATE * sigma + 0.5)
    # BORDER_REFLECT (edge pixel repeated) is scipy's default "reflect" mode.
    blurred = cv2.GaussianBlur(small, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)
    if factor > 1:
        blurred = cv2.resize(blurred, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return blurred.reshape(image.shape)


def _median_colour(image: np.ndarray) -> np.ndarray:
    """Per-channel median of a float picture, from an evenly spaced subset of at most ~1M pixels."""
    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / MEDIAN_SAMPLES)))
    return np.median(image[::step, ::step], axis=(0, 1))  # (3,)


def warp_quad(image: np.ndarray, quad: np.ndarray, output_size: int, transform_size: int) -> np.ndarray:
    """Resample the square ``quad`` of ``image`` onto an ``output_size`` grid.

    Bilinear samples on a ``transform_size`` grid, then each output pixel is the average of the grid
    cells it covers. Outside the picture the result is black (as Pillow's transform).
    """
    matrix = quad_affine(quad, transform_size)
    grid = cv2.warpAffine(
        image, matrix, (transform_size, transform_size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )  # (T, T, 3)
    if transform_size == output_size:
        return grid
    return cv2.resize(grid, (output_size, output_size), interpolation=cv2.INTER_AREA)  # (S, S, 3)


def align_ffhq(
    image: np.ndarray,
    landmarks: np.ndarray,
    output_size: int = OUTPUT_SIZE,
    transform_size: int | None = None,
    enable_padding: bool = True,
) -> np.ndarray:
    """The FFHQ-aligned ``(output_size, output_size, 3)`` BGR ``uint8`` crop of one face.

    ``landmarks``: the face's ``(68, 2)`` dlib landmarks in ``image``'s pixel coordinates.
    ``transform_size``: the resampling grid; ``None`` picks :func:`default_transform_size` (the
    reference's 4096 gives the same picture, several times slower).
    ``enable_padding``: fill the part of the square outside the picture with mirrored, blurred
    content (FFHQ) instead of black (what CodeFormer's script does, with padding turned off).
    """
    _check_bgr8(image)
    quad, qsize = ffhq_quad(landmarks)
    height, width = image.shape[:2]

    # Shrink: a square far larger than the output is first downsized by an integer factor.
    shrink = int(np.floor(qsize / output_size * SHRINK_RATIO))
    if shrink > 1:
        size = (int(np.rint(width / shrink)), int(np.rint(height / shrink)))
        # Area averaging where the reference uses Lanczos: both low-pass before decimating.
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        quad /= shrink
        qsize /= shrink
        height, width = image.shape[:2]

    # Crop: the square's bounding box plus a border, clipped to the picture.
    border = max(int(np.rint(qsize * BORDER_FRACTION)), MIN_BORDER)
    x1 = max(int(np.floor(quad[:, 0].min())) - border, 0)
    y1 = max(int(np.floor(quad[:, 1].min())) - border, 0)
    x2 = min(int(np.ceil(quad[:, 0].max())) + border, width)
    y2 = min(int(np.ceil(quad[:, 1].max())) + border, height)
    image = image[y1:y2, x1:x2]
    quad = quad - [x1, y1]
    height, width = image.shape[:2]

    # Pad: how far (plus the border) the square leaves the crop on each side.
    pad = (
        max(-int(np.floor(quad[:, 0].min())) + border, 0),
        max(-int(np.floor(quad[:, 1].min())) + border, 0),
        max(int(np.ceil(quad[:, 0].max())) - width + border, 0),
        max(int(np.ceil(quad[:, 1].max())) - height + border, 0),
    )
    if enable_padding and max(pad) > border - PAD_SLACK:
        pad = tuple(max(p, int(np.rint(qsize * PAD_FRACTION))) for p in pad)
        image = pad_reflect_blur(image, pad, qsize)
        quad = quad + pad[:2]

    if transform_size is None:
        transform_size = default_transform_size(qsize, output_size)
    elif transform_size < output_size:
        raise ValueError(f"transform_size ({transform_size}) must be at least output_size ({output_size})")
    return warp_quad(image, quad, output_size, transform_size)


def crop_align_faces(
    image: np.ndarray,
    detector: Any,
    predictor: Any,
    *,
    only_keep_largest: bool = False,
    output_size: int = OUTPUT_SIZE,
    enable_padding: bool = True,
) -> list[np.ndarray]:
    """FFHQ-aligned crops of the faces in a BGR picture: all of them in detection order, or only the
    largest one. An empty list when dlib finds no face."""
    faces = detect_faces_68(image, detector, predictor)
    if only_keep_largest and faces:
        faces = [faces[largest_face_index(faces)]]
    return [
        align_ffhq(image, face.landmarks, output_size=output_size, enable_padding=enable_padding)
        for face in faces
    ]
