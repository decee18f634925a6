"""Choosing faces: the pure rules, then through the pipeline (only the chosen faces change), by identity."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from codeformer.face.selection import FaceSelection, choose_faces, left_to_right_numbers

# Three faces: left small, middle large, right medium (x1, y1, x2, y2) in a 300 x 100 picture.
BOXES = np.array([[10, 40, 40, 70], [120, 10, 200, 90], [240, 30, 290, 80]], dtype=float)
NUMBERS = [0, 1, 2]


def reasons(selection: FaceSelection, distances=None) -> list[str | None]:
    return choose_faces(BOXES, numbers=NUMBERS, height=100, width=300, selection=selection, distances=distances)


def test_faces_are_numbered_left_to_right() -> None:
    shuffled = BOXES[[2, 0, 1]]
    assert left_to_right_numbers(shuffled) == [2, 0, 1]
    assert left_to_right_numbers(np.empty((0, 4))) == []


def test_every_face_by_default() -> None:
    assert reasons(FaceSelection()) == [None, None, None]
    assert FaceSelection().selects_all


def test_each_rule_keeps_the_right_faces_and_says_why_not() -> None:
    assert reasons(FaceSelection(face_index=(0, 2))) == [None, "face 1 is not among the chosen faces", None]
    assert reasons(FaceSelection(largest_face=True)) == ["not the largest face", None, "not the largest face"]
    assert reasons(FaceSelection(only_center_face=True))[1] is None
    assert reasons(FaceSelection(only_center_face=True)).count(None) == 1
    assert reasons(FaceSelection(min_face_size=40)) == ["smaller than 40 px (30 px)", None, None]
    by_person = reasons(FaceSelection(reference=np.zeros(128)), distances=[0.3, 0.9, 0.59])
    assert by_person == [None, "another person (identity distance 0.90 > 0.6)",
                         "face 0 is nearer the reference person (identity distance 0.30 < 0.59)"]


def test_rules_combine_filters_first_then_one_face() -> None:
    # The largest of the faces that pass the size filter and the numbers.
    assert reasons(FaceSelection(face_index=(0, 2), largest_face=True)) == [
        "not the largest face", "face 1 is not among the chosen faces", None]


def test_identity_needs_distances() -> None:
    with pytest.raises(ValueError, match="embedding distances"):
        reasons(FaceSelection(reference=np.zeros(128)))


# ------------------------------------------------------------------------------------ in the pipeline


@pytest.fixture(scope="module")
def pipe():
    from test_pipeline import small_pipeline

    return small_pipeline()


def test_only_the_chosen_face_changes(pipe) -> None:
    from test_pipeline import picture

    image = picture(640, 520)
    everything = pipe.restore(image, upscale=1).image
    second_only = pipe.restore(image, upscale=1, face_index=[1])
    assert [face.number for face in second_only.faces] == [1]
    assert [(face.number, face.reason) for face in second_only.skipped] == [(0, "face 0 is not among the chosen faces")]
    changed = np.any(second_only.image != image, axis=2)
    left, right = changed[:, :320], changed[:, 320:]
    assert not left.any() and right.any()  # face 0 (left) left exactly as it was
    # The same face as when every face is restored (one face per batch instead of two: rounding only).
    assert np.abs(second_only.image[:, 320:].astype(int) - everything[:, 320:]).max() <= 1


def test_face_choices_are_checked(pipe) -> None:
    from codeformer.errors import OptionError

    with pytest.raises(OptionError, match="face_index -1"):
        pipe.options(face_index=[-1])
    with pytest.raises(OptionError, match="min_face_size 0"):
        pipe.options(min_face_size=0)


def _two_people(astronaut_bgr: np.ndarray) -> np.ndarray:
    """The cameraman and the astronaut (scikit-image's public-domain photos) side by side, 512 x 512: the middle
    256 columns of each, both faces whole (a picture no wider than needed: dlib's time grows with the pixels)."""
    from skimage import data

    camera = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    return np.hstack([camera[:, 128:384], astronaut_bgr[:, 90:346]])


@pytest.mark.skipif(not __import__("importlib").util.find_spec("dlib"), reason="needs dlib")
def test_reference_face_restores_only_that_person(astronaut_bgr: np.ndarray, tmp_path: Path) -> None:
    from codeformer.registry import load_detector
    from codeformer.imageio import write_image
    from test_pipeline import small_pipeline

    pipe = small_pipeline(load_detector("dlib", device="cpu"))
    both = _two_people(astronaut_bgr)
    reference = write_image(tmp_path / "astronaut.png", astronaut_bgr)
    result = pipe.restore(both, upscale=1, reference_face=reference, measure_identity=True)
    assert len(result.faces) == 1 and len(result.skipped) == 1
    assert result.faces[0].box[0] > 256  # the astronaut, on the right
    assert result.skipped[0].reason.startswith("another person (identity distance 0.")
    assert result.faces[0].identity_distance is not None
    assert np.array_equal(result.image[:, :256], both[:, :256])  # the cameraman untouched


# ------------------------------------------------------------------------------------ one person, one face


class ChosenDistances:
    """A stand-in for dlib's embedder whose faces lie at chosen distances from the reference (at the origin).

    ``distance(crop, call)`` gives a crop's distance; ``call`` counts the embedder's calls (one per
    picture or frame), so a video can give each frame its own distances.
    """

    def __init__(self, distance) -> None:
        self.distance = distance
        self.calls = 0

    def embed(self, crops) -> np.ndarray:
        rows = np.zeros((len(crops), 128))
        rows[:, 0] = [self.distance(crop, self.calls) for crop in crops]
        self.calls += 1
        return rows


def _by_side(left: float, right: float):
    """Distances by where the crop came from: a dark left half and a bright right half of the picture."""
    return lambda crop, call: left if crop.mean() < 128 else right


def _halves(width: int = 300, height: int = 200) -> np.ndarray:
    picture = np.full((height, width, 3), 60, np.uint8)
    picture[:, width // 2:] = 200
    return picture


def test_of_several_faces_close_to_the_person_only_the_nearest_is_restored() -> None:
    from codeformer.options import ReferenceFace, RestoreOptions
    from test_pipeline import FakeDetector, small_pipeline

    # Three faces at distances 0.55, 0.10 and 0.58 from the person: all under 0.6, one is the person.
    three = ((0.2, 0.5), (0.5, 0.5), (0.8, 0.5))
    pipe = small_pipeline(FakeDetector(three))
    crops_at = {}

    def distance(crop, call):  # by where the crop's centre colour says it is
        return crops_at[int(crop[64, 64, 0])]

    picture = np.zeros((200, 400, 3), np.uint8)
    for (cx, _), value, d in zip(three, (40, 120, 220), (0.55, 0.10, 0.58)):
        picture[:, int((cx - 0.15) * 400):int((cx + 0.15) * 400)] = value
        crops_at[value] = d
    pipe._embedder = ChosenDistances(distance)
    options = RestoreOptions(upscale=1, reference_face=ReferenceFace(np.zeros(128), "reference"))
    result = pipe.restore(picture, options)
    assert [face.number for face in result.faces] == [1]
    assert result.faces[0].reference_distance == pytest.approx(0.10)
    why = {face.number: (face.reference_distance, face.reason) for face in result.skipped}
    assert why[0][0] == pytest.approx(0.55) and why[2][0] == pytest.approx(0.58)
    assert why[0][1] == "face 1 is nearer the reference person (identity distance 0.10 < 0.55)"
    from codeformer.jobs.report import face_entries

    entries = face_entries(result)
    assert [(entry["number"], entry["restored"], entry["reference_distance"]) for entry in entries] == [
        (0, False, 0.55), (1, True, 0.1), (2, False, 0.58)]


def test_in_a_video_the_person_is_followed_by_track_not_face_by_face() -> None:
    from codeformer.options import ReferenceFace, RestoreOptions
    from codeformer.restoration import Models
    from codeformer.temporal import TemporalFaceRestorer
    from test_pipeline import FakeDetector, small_pipeline

    # The person (left) and a look-alike (right) both under the threshold; on frame 2 the look-alike
    # looks more like the person than the person does (0.35 < 0.40): face by face, the choice would flip.
    person = [0.30, 0.30, 0.40, 0.30, 0.30]
    look_alike = [0.50, 0.50, 0.35, 0.50, 0.50]
    pipe = small_pipeline(FakeDetector(((0.25, 0.5), (0.75, 0.5))))
    embedder = ChosenDistances(lambda crop, call: (person if crop.mean() < 128 else look_alike)[call])
    models = Models(pipe.restorer, pipe.detector, batch_size=1, embedder=embedder)
    options = RestoreOptions(upscale=1, reference_face=ReferenceFace(np.zeros(128), "reference"))
    chosen: list[list[int]] = []
    processor = TemporalFaceRestorer(models, options, on_frame=lambda i, r: chosen.append([f.number for f in r.faces]))
    frames = [_halves() for _ in person]
    processor.process(frames)
    processor.flush()
    left_track = 0  # tracks are numbered by first appearance; the left face comes first in the detector's order
    assert chosen == [[left_track]] * len(person)
