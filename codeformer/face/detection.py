"""Faces in a picture: the detector protocol, and the reference's recipe around any detector.

A detector (:class:`FaceDetector`) returns boxes, scores and 5 landmarks; the detectors themselves
live in their own modules (:mod:`~codeformer.face.retinaface`, :mod:`~codeformer.face.dlib_detector`,
:mod:`~codeformer.face.yolov5face`) and :mod:`codeformer.registry` loads them by name. This module
adds what the reference (sczhou/CodeFormer's ``FaceRestoreHelper.get_face_landmarks_5``) does
around a detector, so that, with the same weights, our detections and therefore our aligned crops
match the reference's: detection on a copy whose short side is 640, coordinates mapped back, the
eye-distance filter, centre / largest face. Example::

    faces = find_faces(picture, detector, only_center_face=True)   # picture: (H, W, 3) BGR uint8

One departure, for memory: no detector processes more than :data:`MAX_DETECTION_PIXELS` pixels. The
reference's rule gives a 640 px copy whose long side grows with the aspect ratio, and dlib the
picture itself, which its pyramid upsamples (a 108 MP photo: over 400 MP, hundreds of GB). Where the
rule would go over the budget, the detector sees a copy scaled down to it instead, and its
coordinates are mapped back exactly; below the budget the reference's rule holds unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_DETECTION_PIXELS",
    "DetectedFace",
    "FaceDetector",
    "center_face",
    "check_bgr_image",
    "detection_size",
    "eye_distance",
    "find_faces",
    "find_faces_in_frames",
    "largest_face",
    "rescale_face",
]


TEMPLATE_FFHQ = "ffhq"  # RetinaFace's 5 points: eye centres, nose tip, mouth corners
TEMPLATE_DLIB = "dlib"  # dlib's 5 points: outer/inner corner of each eye, bottom of the nose

# `get_face_landmarks_5(resize=640, eye_dist_threshold=5)` as the reference's scripts call it.
DEFAULT_DETECTION_SHORT_SIDE = 640
DEFAULT_EYE_DIST_THRESHOLD = 5.0
# The most pixels a detector effectively processes for one picture: the pixels of the copy it is
# given times its own upsampling (``area_factor``; dlib: 4, its pyramid's 2x). dlib's CNN takes about
# 0.95 GiB per such megapixel (measured, dlib 20), so 2 MP keep it near 1.9 GiB, which leaves a
# 150 MP photo's whole restoration under 4 GiB; RetinaFace takes about 0.45 GiB there. The reference's
# rule stays exact below it: RetinaFace / YOLOv5 copies up to a 4.9:1 aspect ratio (640 x 3125),
# dlib on pictures up to 0.5 MP (e.g. 816 x 612), the 512 px minimum working picture included.
MAX_DETECTION_PIXELS = 2_000_000

_BOX_SHAPE = (4,)
_LANDMARKS_SHAPE = (5, 2)


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One detected face. Arrays are float64 copies, read-only (the value is frozen).

    ``eq=False``: faces compare by identity (element-wise array equality has no single truth value).
    """

    box: np.ndarray  # (4,) float: x1, y1, x2, y2 in the given image's pixel coordinates
    score: float  # the detector's confidence (RetinaFace: probability; dlib: MMOD detection score)
    landmarks: np.ndarray  # (5, 2) float, (x, y) in the order the detector's template expects

    def __post_init__(self) -> None:
        box = _frozen_array(self.box, _BOX_SHAPE, "box")
        landmarks = _frozen_array(self.landmarks, _LANDMARKS_SHAPE, "landmarks")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "score", float(self.score))


def _frozen_array(values: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64)  # always a copy: callers keep their own arrays
    if array.shape != shape:
        raise ValueError(f"DetectedFace.{what} must have shape {shape}, got {array.shape}")
    array.setflags(write=False)
    return array


class FaceDetector(Protocol):
    """What the pipeline needs from a detector.

    Optional attributes, read with these defaults, say how the reference treats a detector:
    ``resize_for_detection`` (True: detected on a copy whose short side is 640; dlib: False, its own
    pyramid), ``row_dtype`` (np.float32: the dtype its result rows are mapped back in),
    ``shifted_eye_distance`` (False: see :func:`find_faces`), and ``detect_batch(images)`` (several
    frames of one size in one forward pass). Two more bound its memory: ``area_factor`` (1: pixels it
    processes per pixel it is given; dlib: 4 ** upsampling) and ``pixel_centred`` (False: coordinates
    are continuous, pixel ``i`` spanning ``[i, i + 1)``; dlib: True, whole pixel indices, pixel ``i``'s
    centre at ``i``), which says how coordinates found on a copy scaled down to the budget map back.
    ``memory_per_pixel`` (bytes its network takes per pixel processed) feeds the memory estimate of
    :func:`codeformer.restoration.memory_needed`.
    """

    name: str
    template_name: str  # "ffhq" for RetinaFace's landmarks, "dlib" for dlib's 5-point order

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in a (H, W, 3) BGR uint8 picture, in the order the detector returns them."""
        ...


def check_bgr_image(image: np.ndarray) -> np.ndarray:
    """The picture as a C-contiguous (H, W, 3) uint8 array (what every detector takes)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a (H, W, 3) BGR uint8 picture, got {got}")
    return np.ascontiguousarray(image)


# ------------------------------------------------------------------------------------------------
# Selection around a detector (the reference's get_face_landmarks_5)


def eye_distance(face: DetectedFace, template_name: str) -> float:
    """Distance in pixels between the two eye centres (dlib: midpoints of each eye's two corners)."""
    points = face.landmarks  # (5, 2)
    if template_name == TEMPLATE_DLIB:
        first_eye, second_eye = points[0:2].mean(axis=0), points[2:4].mean(axis=0)
    else:
        first_eye, second_eye = points[0], points[1]
    return float(np.linalg.norm(first_eye - second_eye))


def rescale_face(face: DetectedFace, factor: float) -> DetectedFace:
    """The same face with its box and landmarks multiplied by ``factor`` (score unchanged)."""
    return DetectedFace(box=face.box * factor, score=face.score, landmarks=face.landmarks * factor)


def _unscale_like_reference(face: DetectedFace, scale: float, row_dtype: type = np.float32) -> DetectedFace:
    """Coordinates found on the resized picture, mapped back as the reference does.

    The reference divides its detector's result rows by the scale in their own dtype: RetinaFace's
    float32 rows in float32, YOLOv5's whole-pixel int64 rows in float64 (``row_dtype``). Doing the
    same keeps our boxes and landmarks bit-identical to its.
    """
    # A Python float divisor takes the array's precision: float32 stays float32, int64 gives float64.
    return DetectedFace(
        box=face.box.astype(row_dtype) / scale,
        score=face.score,
        landmarks=face.landmarks.astype(row_dtype) / scale,
    )


def _clipped_area(box: np.ndarray, height: int, width: int) -> float:
    left, right = np.clip(box[[0, 2]], 0, width)
    top, bottom = np.clip(box[[1, 3]], 0, height)
    return float((right - left) * (bottom - top))


def largest_face(faces: Sequence[DetectedFace], height: int, width: int) -> DetectedFace:
    """The face whose box, clipped to the picture, has the largest area (first one on ties)."""
    if not faces:
        raise ValueError("largest_face needs at least one face")
    areas = [_clipped_area(face.box, height, width) for face in faces]
    return faces[int(np.argmax(areas))]


def center_face(faces: Sequence[DetectedFace], height: int, width: int) -> DetectedFace:
    """The face whose box centre is nearest the picture centre (first one on ties)."""
    if not faces:
        raise ValueError("center_face needs at least one face")
    picture_centre = np.array([width / 2, height / 2])
    distances = [np.linalg.norm((face.box[0:2] + face.box[2:4]) / 2 - picture_centre) for face in faces]
    return faces[int(np.argmin(distances))]


def _detection_scale(height: int, width: int, short_side: int | None) -> float:
    """Factor the picture is resized by for detection: its short side becomes ``short_side``.

    Both ways, as the reference since September 2024 (sczhou/CodeFormer a75e7ae, for HD pictures):
    a big photo is detected on a 640 px copy, which also makes detection several times cheaper.
    """
    if short_side is None:
        return 1.0
    return short_side / min(height, width)


def find_faces(
    image: np.ndarray,
    detector: FaceDetector,
    *,
    only_center_face: bool = False,
    only_keep_largest: bool = False,
    eye_dist_threshold: float | None = DEFAULT_EYE_DIST_THRESHOLD,
    detection_short_side: int | None = DEFAULT_DETECTION_SHORT_SIDE,
    max_detection_pixels: int | None = MAX_DETECTION_PIXELS,
) -> list[DetectedFace]:
    """Detect faces as the reference's ``get_face_landmarks_5(resize=640, eye_dist_threshold=5)``.

    ``image`` is the picture the reference would detect on: (H, W, 3) BGR uint8, already upsampled
    so that its short side is at least 512 when it was smaller (the reference's ``read_image``; that
    step belongs to the caller). Coordinates returned are in ``image``'s pixels.

    - RetinaFace and YOLOv5 detectors see the picture resized by ``detection_short_side / short
      side`` (bilinear up, area down; ``None``: no resize); boxes and landmarks are mapped back. dlib
      sees the picture at its own size, as in the reference (its own pyramid upsampling does the rest).
    - Where that copy, times the detector's ``area_factor``, has more than ``max_detection_pixels``
      pixels (``None``: no bound), the detector sees a copy of the picture with that many pixels
      instead (area when shrinking), and coordinates are mapped back through the copy's exact size
      ratio per axis.
    - Faces whose eyes are closer than ``eye_dist_threshold`` pixels (side or tiny faces) are dropped.
    - ``only_keep_largest`` keeps the largest box (clipped to the picture); otherwise
      ``only_center_face`` keeps the face nearest the picture centre. Either returns at most one face.

    Deviations from the reference, all deliberate: the returned score is the detector's (the
    reference divides it by the detection scale along with the coordinates); for dlib the eye
    distance filter uses eye-corner midpoints and ``only_center_face`` is honoured (the reference
    ignores both for dlib).
    """
    image = check_bgr_image(image)
    height, width = image.shape[:2]
    faces = _detect_resized([image], detector, detection_short_side, max_detection_pixels)[0]
    faces = _keep_frontal(faces, detector, eye_dist_threshold)
    if not faces:
        return []
    if only_keep_largest:
        return [largest_face(faces, height, width)]
    if only_center_face:
        return [center_face(faces, height, width)]
    return faces


def find_faces_in_frames(
    frames: Sequence[np.ndarray],
    detector: FaceDetector,
    *,
    eye_dist_threshold: float | None = DEFAULT_EYE_DIST_THRESHOLD,
    detection_short_side: int | None = DEFAULT_DETECTION_SHORT_SIDE,
    max_detection_pixels: int | None = MAX_DETECTION_PIXELS,
) -> list[list[DetectedFace]]:
    """:func:`find_faces` (without the one-face choices) for several frames of one size.

    A detector with ``detect_batch`` (YOLOv5-face) sees all frames in one forward pass; others one
    by one. The faces found are those :func:`find_faces` finds on each frame (up to float rounding
    in batched convolutions).
    """
    images = [check_bgr_image(frame) for frame in frames]
    found = _detect_resized(images, detector, detection_short_side, max_detection_pixels)
    return [_keep_frontal(faces, detector, eye_dist_threshold) for faces in found]


def detection_size(height: int, width: int, detector: FaceDetector, *,
                   detection_short_side: int | None = DEFAULT_DETECTION_SHORT_SIDE,
                   max_detection_pixels: int | None = MAX_DETECTION_PIXELS) -> tuple[tuple[int, int], float | None]:
    """The size (width, height) of the copy ``detector`` sees of a picture of ``height`` rows and
    ``width`` columns, and the reference's scale when its rule gives the copy (``None``: the budget did).

    The reference's rule: the short side to ``detection_short_side`` (sizes truncated, as the
    reference does), or no resize for a detector without ``resize_for_detection`` (dlib). When the
    copy's pixels times the detector's ``area_factor`` are over ``max_detection_pixels``, the largest
    copy of the picture's aspect ratio within that many pixels instead.
    """
    resize = getattr(detector, "resize_for_detection", True)
    scale = _detection_scale(height, width, detection_short_side) if resize else 1.0
    size = (int(width * scale), int(height * scale)) if scale != 1.0 else (width, height)
    area_factor = getattr(detector, "area_factor", 1)
    if max_detection_pixels is None or size[0] * size[1] * area_factor <= max_detection_pixels:
        return size, scale
    limit = max(1, max_detection_pixels // area_factor)  # pixels of the copy
    bounded = math.sqrt(limit / (width * height))
    copy_width, copy_height = max(1, int(width * bounded)), max(1, int(height * bounded))
    if copy_width * copy_height > limit:  # one side under a pixel (a thin strip): the other gets the rest
        copy_width, copy_height = min(copy_width, limit), min(copy_height, limit)
    return (copy_width, copy_height), None


def _detect_resized(images: Sequence[np.ndarray], detector: FaceDetector, detection_short_side: int | None,
                    max_detection_pixels: int | None = MAX_DETECTION_PIXELS) -> list[list[DetectedFace]]:
    """Detections per image, each resized for detection as the reference does (within the budget), mapped back."""
    if not images:
        return []
    height, width = images[0].shape[:2]
    size, scale = detection_size(height, width, detector, detection_short_side=detection_short_side,
                                 max_detection_pixels=max_detection_pixels)
    if size != (width, height):
        # Same size rounding as the reference (int truncation), and the same inverse mapping (/ scale).
        enlarging = scale > 1.0 if scale is not None else size[0] * size[1] > width * height
        interpolation = cv2.INTER_LINEAR if enlarging else cv2.INTER_AREA
        images = [cv2.resize(image, size, interpolation=interpolation) for image in images]
        logger.debug("%s detects on a %dx%d copy of a %dx%d picture", detector.name, *size, width, height)
    batch_detect = getattr(detector, "detect_batch", None)
    same_size = all(image.shape == images[0].shape for image in images)
    if batch_detect is not None and len(images) > 1 and same_size:
        found = batch_detect(images)
    else:
        found = [detector.detect(image) for image in images]
    if scale is None:  # a copy scaled down to the budget: the exact size ratio, per axis
        ratio = np.array([size[0] / width, size[1] / height])  # (x, y)
        centred = getattr(detector, "pixel_centred", False)
        found = [[_unscale_exactly(face, ratio, centred) for face in faces] for faces in found]
    elif scale != 1.0:
        row_dtype = getattr(detector, "row_dtype", np.float32)  # YOLOv5: int64
        found = [[_unscale_like_reference(face, scale, row_dtype) for face in faces] for faces in found]
    for faces in found:
        logger.debug("%s found %d face(s) in a %dx%d picture", detector.name, len(faces), width, height)
    return found


def _unscale_exactly(face: DetectedFace, ratio: np.ndarray, pixel_centred: bool) -> DetectedFace:
    """Coordinates found on a copy resized by ``ratio`` = (copy / picture) per axis, in the picture's pixels.

    ``cv2.resize`` puts the copy's pixel ``i`` over the picture's ``[i / r, (i + 1) / r)``: a continuous
    coordinate ``x`` maps back to ``x / r``, a pixel index (``pixel_centred``) to ``(x + 0.5) / r - 0.5``.
    """
    offset = 0.5 if pixel_centred else 0.0
    box = (face.box.reshape(2, 2) + offset) / ratio - offset  # (2, 2): (x1, y1), (x2, y2)
    landmarks = (face.landmarks + offset) / ratio - offset  # (5, 2)
    return DetectedFace(box=box.ravel(), score=face.score, landmarks=landmarks)


def _keep_frontal(faces: list[DetectedFace], detector: FaceDetector,
                  eye_dist_threshold: float | None) -> list[DetectedFace]:
    """Faces whose eyes are at least ``eye_dist_threshold`` pixels apart (drops side views and specks).

    A detector with ``shifted_eye_distance`` set (RetinaFace, YOLOv5) is measured as the reference measures its
    rows: ``norm(row[6] - row[8], row[7] - row[9])``, one column off the eyes' (5-8), that is the
    left eye's y minus the right eye's, and the right eye's x minus the nose's. The filter runs
    after the coordinates are mapped back to ``image``, as in the reference.
    """
    if eye_dist_threshold is None:
        return faces
    if getattr(detector, "shifted_eye_distance", False):
        def distance(face: DetectedFace) -> float:
            (_, left_y), (right_x, right_y), (nose_x, _) = face.landmarks[:3]
            return float(np.linalg.norm([left_y - right_y, right_x - nose_x]))
    else:
        def distance(face: DetectedFace) -> float:
            return eye_distance(face, detector.template_name)
    return [face for face in faces if distance(face) >= eye_dist_threshold]
