"""RetinaFace (facexlib's network), run as the reference runs it: boxes, scores and 5 FFHQ-order landmarks.

The reference (sczhou/CodeFormer, ``facelib/detection/__init__.py``) calls ``detect_faces`` with its
defaults: confidence > 0.8, NMS IoU 0.4, the picture at its own size, full precision. The
landmarks are left eye, right eye, nose, left and right mouth corners (image left/right): the FFHQ
template. The network is built here without facexlib's downloader and loaded strictly from the file
:mod:`codeformer.registry` resolves. Example::

    detector = load_retinaface(path, "resnet50", device=torch.device("cpu"))
    faces = detector.detect(picture)   # (H, W, 3) BGR uint8
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from codeformer.face.detection import TEMPLATE_FFHQ, DetectedFace, check_bgr_image
from codeformer.weights import load_state_dict, load_strict

__all__ = ["RETINAFACE_NETWORKS", "RetinaFaceDetector", "build_retinaface", "load_retinaface"]

# facexlib's two RetinaFace trunks.
RETINAFACE_NETWORKS = ("resnet50", "mobile0.25")
# facexlib's / the reference's `detect_faces` defaults, which the reference never overrides.
RETINAFACE_CONF_THRESHOLD = 0.8
RETINAFACE_NMS_THRESHOLD = 0.4


class RetinaFaceDetector:
    """facexlib's RetinaFace, run as the reference runs it (a :class:`~codeformer.face.detection.FaceDetector`)."""

    template_name = TEMPLATE_FFHQ
    # The reference's face helper divides these float32 rows by the detection scale in float32, and
    # measures its eye-distance filter one column off the eyes (see find_faces).
    row_dtype = np.float32
    shifted_eye_distance = True

    def __init__(self, name: str, network: torch.nn.Module) -> None:
        self.name = name
        self._network = network  # facexlib.detection.retinaface.RetinaFace, eval(), on its device

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = check_bgr_image(image)
        with torch.inference_mode():
            # (K, 15) float32: x1, y1, x2, y2, score, then 5 (x, y) landmarks; sorted by score.
            rows = self._network.detect_faces(
                image, conf_threshold=RETINAFACE_CONF_THRESHOLD, nms_threshold=RETINAFACE_NMS_THRESHOLD
            )
        return [DetectedFace(box=row[0:4], score=row[4], landmarks=row[5:15].reshape(5, 2)) for row in rows]


def build_retinaface(network_name: str, device: torch.device) -> torch.nn.Module:
    """facexlib's RetinaFace network (random weights), built without its downloader."""
    from facexlib.detection.retinaface import RetinaFace  # facexlib's package import is slow: only when used

    with warnings.catch_warnings():
        # facexlib builds the ResNet-50 trunk with `resnet50(pretrained=False)`: torchvision 0.29
        # still accepts it (same as weights=None, nothing downloaded) but warns on every call.
        warnings.filterwarnings("ignore", message=r".*'pretrained' is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Arguments other than a weight enum", category=UserWarning)
        return RetinaFace(network_name=network_name, half=False, phase="test", device=device)


def load_retinaface(path: str | os.PathLike[str], network_name: str, *, device: torch.device,
                    name: str | None = None) -> RetinaFaceDetector:
    """A RetinaFace detector (``network_name``: ``resnet50`` or ``mobile0.25``) from an official file."""
    state = load_state_dict(path)  # the official files carry DataParallel's `module.`: stripped there
    network = build_retinaface(network_name, device)
    load_strict(network, state, path, f"RetinaFace ({network_name})")
    network.eval()
    return RetinaFaceDetector(name or f"retinaface_{network_name}", network)
