"""Face tracking across video frames: identities, smoothing, gap filling, bounded memory.

All sequences are synthetic: an FFHQ-order 5-point face of a given size moved along a path, with
Gaussian landmark noise from a fixed RNG where a test needs detector jitter.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pytest

from codeformer.face.detection import DetectedFace
from codeformer.face.tracking import (
    DEFAULT_MAX_GAP,
    DEFAULT_WINDOW,
    MOTION_SAMPLES,
    FaceTracker,
    TrackedFrame,
    min_cost_assignment,
    smooth_sequence,
)

# Landmarks of a face of size 1 centred at the origin: eyes, nose, mouth corners (FFHQ order).
FACE_POINTS = np.array([[-0.2, -0.12], [0.2, -0.12], [0.0, 0.05], [-0.16, 0.22], [0.16, 0.22]])  # (5, 2)
FACE_SIZE = 100.0  # px
NOISE_PX = 1.0  # standard deviation of the synthetic detector's landmark and box noise


def make_face(
    x: float, y: float, *, size: float = FACE_SIZE, noise: float = 0.0,
    rng: np.random.Generator | None = None, score: float = 0.99,
) -> DetectedFace:
    """A face centred at (x, y), optionally with Gaussian noise on every coordinate."""
    landmarks = np.array([x, y]) + FACE_POINTS * size  # (5, 2)
    box = np.array([x - size / 2, y - size / 2, x + size / 2, y + size / 2])  # (4,)
    if noise:
        assert rng is not None
        landmarks = landmarks + rng.normal(0.0, noise, landmarks.shape)
        box = box + rng.normal(0.0, noise, box.shape)
    return DetectedFace(box=box, score=score, landmarks=landmarks)


def run(tracker: FaceTracker, frames: Sequence[Sequence[DetectedFace]], start: int = 0) -> list[TrackedFrame]:
    """Push every frame, then flush: all frames the tracker returns, in the order it returns them."""
    decided: list[TrackedFrame] = []
    for offset, faces in enumerate(frames):
        decided += tracker.push(start + offset, list(faces))
    return decided + tracker.flush()


def landmarks_of(frames: Sequence[TrackedFrame], track_id: int) -> np.ndarray:
    """(T, 5, 2) smoothed landmarks of one track, for frames where it has a face."""
    return np.stack([face.face.landmarks for frame in frames for face in frame.faces if face.track_id == track_id])


def frame_to_frame_change(landmarks: np.ndarray) -> float:
    """Mean distance a landmark moves between consecutive frames: (T, 5, 2) -> px."""
    return float(np.linalg.norm(np.diff(landmarks, axis=0), axis=-1).mean())


# ------------------------------------------------------------------------------------------------
# Assignment


def test_min_cost_assignment_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for size in range(1, 7):
        for _ in range(20):
            cost = rng.integers(0, 5, (size, size)).astype(float)  # small integers: many ties
            assignment = min_cost_assignment(cost)
            assert sorted(assignment) == list(range(size))
            best = min(sum(cost[row, perm[row]] for row in range(size)) for perm in itertools.permutations(range(size)))
            assert sum(cost[row, assignment[row]] for row in range(size)) == pytest.approx(best)


def test_min_cost_assignment_rejects_bad_matrices() -> None:
    with pytest.raises(ValueError, match="square"):
        min_cost_assignment(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        min_cost_assignment(np.array([[0.0, np.inf], [1.0, 0.0]]))
    assert min_cost_assignment(np.zeros((0, 0))) == []


# ------------------------------------------------------------------------------------------------
# Smoothing


def test_jitter_on_a_still_face_is_removed() -> None:
    rng = np.random.default_rng(1)
    raw = [make_face(200.0, 150.0, noise=NOISE_PX, rng=rng) for _ in range(300)]
    frames = run(FaceTracker(), [[face] for face in raw])
    smoothed = landmarks_of(frames, 0)
    raw_landmarks = np.stack([face.landmarks for face in raw])
    ratio = frame_to_frame_change(smoothed) / frame_to_frame_change(raw_landmarks)
    assert ratio <= 0.5, ratio  # measured: 0.09
    boxes = np.stack([face.face.box for frame in frames for face in frame.faces])
    raw_boxes = np.stack([face.box for face in raw])
    assert np.abs(np.diff(boxes, axis=0)).mean() <= 0.5 * np.abs(np.diff(raw_boxes, axis=0)).mean()
    # Smoothing also brings the face closer to where it really is.
    truth = make_face(200.0, 150.0).landmarks
    assert np.abs(smoothed - truth).mean() < 0.5 * np.abs(raw_landmarks - truth).mean()


def test_constant_motion_is_followed_without_lag() -> None:
    speed = 2.0  # px per frame: a slow pan
    path = [(100.0 + speed * index, 150.0) for index in range(120)]
    exact = run(FaceTracker(), [[make_face(x, y)] for x, y in path])
    truth = np.stack([make_face(x, y).landmarks for x, y in path])
    # A centred line fit reproduces a straight path exactly, at the track's ends as well.
    np.testing.assert_allclose(landmarks_of(exact, 0), truth, atol=1e-9)

    rng = np.random.default_rng(2)
    noisy = run(FaceTracker(), [[make_face(x, y, noise=NOISE_PX, rng=rng)] for x, y in path])
    error_along_motion = (landmarks_of(noisy, 0) - truth)[..., 0]  # (T, 5): positive = ahead
    lag = -float(error_along_motion.mean())
    assert abs(lag) < 0.5, lag  # measured: 0.09 px (noise; 0.01 px averaged over 20 seeds)
    assert np.abs(error_along_motion.mean(axis=1)).max() < 1.0  # no single frame either (measured: 0.35 px)


def test_streaming_matches_offline_smoothing() -> None:
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(0.0, 3.0, (80, 2)), axis=0) + (300.0, 200.0)  # (T, 2) wandering centre
    raw = [make_face(x, y, noise=NOISE_PX, rng=rng) for x, y in walk]
    for window in (0, 1, DEFAULT_WINDOW, 7):
        frames = run(FaceTracker(window=window, max_gap=0), [[face] for face in raw])
        expected = smooth_sequence(np.stack([face.landmarks for face in raw]), window=window)  # (T, 5, 2)
        np.testing.assert_allclose(landmarks_of(frames, 0), expected, atol=1e-9)


def test_window_zero_passes_detections_through() -> None:
    rng = np.random.default_rng(4)
    raw = [make_face(200.0, 150.0, noise=NOISE_PX, rng=rng) for _ in range(10)]
    tracker = FaceTracker(window=0, max_gap=0)
    for index, face in enumerate(raw):
        (frame,) = tracker.push(index, [face])  # decided at once: no look-ahead
        (tracked,) = frame.faces
        assert tracked.raw is face and tracked.detected
        np.testing.assert_array_equal(tracked.face.landmarks, face.landmarks)
        np.testing.assert_array_equal(tracked.face.box, face.box)
    assert tracker.flush() == []


def test_smooth_sequence_keeps_shape_and_rejects_bad_windows() -> None:
    values = np.arange(24.0).reshape(6, 2, 2)
    np.testing.assert_allclose(smooth_sequence(values, window=2), values)  # a straight line is kept
    assert smooth_sequence(values[:1], window=3).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="window"):
        smooth_sequence(values, window=-1)


# ------------------------------------------------------------------------------------------------
# Gaps


def test_short_gap_inside_a_track_is_filled_with_interpolated_faces() -> None:
    path = [(100.0 + 3.0 * index, 150.0) for index in range(40)]
    missed = {20, 21, 22}  # DEFAULT_MAX_GAP frames
    raw = [make_face(x, y, score=0.9 if index == 19 else 0.99) for index, (x, y) in enumerate(path)]
    frames = run(FaceTracker(), [[] if index in missed else [face] for index, face in enumerate(raw)])
    assert [len(frame.faces) for frame in frames] == [1] * 40
    for index, frame in enumerate(frames):
        (tracked,) = frame.faces
        assert tracked.track_id == 0
        if index in missed:
            assert not tracked.detected and tracked.raw is None
            assert tracked.face.score == pytest.approx(0.9)  # the weaker neighbour's score
        else:
            assert tracked.detected and tracked.raw is raw[index]
        # Interpolated along the path: where the face would have been.
        np.testing.assert_allclose(tracked.face.landmarks, make_face(*path[index]).landmarks, atol=1e-9)


def test_gap_longer_than_max_gap_ends_the_track() -> None:
    missed = set(range(20, 20 + DEFAULT_MAX_GAP + 1))
    frames = run(FaceTracker(), [[] if index in missed else [make_face(200.0, 150.0)] for index in range(40)])
    for index, frame in enumerate(frames):
        if index in missed:
            assert frame.faces == ()  # not filled in
        else:
            (tracked,) = frame.faces
            assert tracked.detected
            assert tracked.track_id == (0 if index < 20 else 1)  # seen again: a new track


def test_track_is_not_extended_past_its_last_detection() -> None:
    # Missed for the last two frames of the stream: no detection after the gap, so nothing is filled.
    frames = run(FaceTracker(), [[make_face(200.0, 150.0)] if index < 28 else [] for index in range(30)])
    assert [len(frame.faces) for frame in frames] == [1] * 28 + [0] * 2
    # Missed for good in the middle of the stream.
    frames = run(FaceTracker(), [[make_face(200.0, 150.0)] if index < 10 else [] for index in range(30)])
    assert [len(frame.faces) for frame in frames] == [1] * 10 + [0] * 20


# ------------------------------------------------------------------------------------------------
# Identities and order


@pytest.mark.parametrize("occluded", [False, True], ids=["both-seen", "one-hidden"])
def test_two_faces_crossing_paths_keep_their_identities(occluded: bool) -> None:
    rng = np.random.default_rng(5)
    frames_in: list[list[DetectedFace]] = []
    source: dict[int, str] = {}  # id(raw face) -> which face it was made from
    for index in range(80):
        # Same size, 10 px apart vertically, 4 px/frame towards each other: they meet near frame 37.
        left = make_face(100.0 + 4.0 * index, 150.0, noise=NOISE_PX, rng=rng)
        right = make_face(401.0 - 4.0 * index, 160.0, noise=NOISE_PX, rng=rng)
        faces = [left, right]
        if occluded and 36 <= index <= 38:
            faces = [left]  # the left face passes in front: the right one is not detected
        source.update({id(left): "left", id(right): "right"})
        frames_in.append(faces[::-1] if index % 2 else faces)  # the detector's order changes too
    frames = run(FaceTracker(), frames_in)
    ids_of: dict[str, set[int]] = {"left": set(), "right": set()}
    for frame in frames:
        assert len(frame.faces) == 2  # hidden frames are filled in from the right face's track
        for tracked in frame.faces:
            if tracked.raw is not None:
                ids_of[source[id(tracked.raw)]].add(tracked.track_id)
    assert ids_of == {"left": {0}, "right": {1}}
    # Deterministic: the same detections give the same tracks and positions.
    again = run(FaceTracker(), frames_in)
    for first, second in zip(frames, again):
        for a, b in zip(first.faces, second.faces):
            assert a.track_id == b.track_id and a.raw is b.raw
            np.testing.assert_array_equal(a.face.landmarks, b.face.landmarks)


def test_face_order_is_stable_whatever_the_detector_order() -> None:
    rng = np.random.default_rng(6)
    centres = {"a": (400.0, 200.0), "b": (100.0, 220.0), "c": (250.0, 180.0)}
    frames_in, source = [], {}
    for _ in range(60):
        faces = {name: make_face(*centre, noise=NOISE_PX, rng=rng) for name, centre in centres.items()}
        source.update({id(face): name for name, face in faces.items()})
        listed = list(faces.values())
        rng.shuffle(listed)
        frames_in.append(listed)
    frames = run(FaceTracker(), frames_in)
    for frame in frames:
        assert [tracked.track_id for tracked in frame.faces] == [0, 1, 2]
        # Faces that appear together are numbered left to right.
        assert [source[id(tracked.raw)] for tracked in frame.faces] == ["b", "c", "a"]


def test_track_ids_number_tracks_by_first_appearance() -> None:
    appears = {0: (400.0, 200.0), 5: (100.0, 200.0), 10: (250.0, 200.0)}  # frame -> where a face appears
    frames_in = [[make_face(*centre) for start, centre in appears.items() if index >= start] for index in range(20)]
    frames = run(FaceTracker(), frames_in)
    last = frames[-1]
    xs = {tracked.track_id: float(tracked.face.box[[0, 2]].mean()) for tracked in last.faces}
    assert xs == pytest.approx({0: 400.0, 1: 100.0, 2: 250.0})
    assert [len(frame.faces) for frame in frames] == [1] * 5 + [2] * 5 + [3] * 10


# ------------------------------------------------------------------------------------------------
# Streaming contract


def test_memory_is_bounded_by_the_window() -> None:
    rng = np.random.default_rng(7)
    window, frames = DEFAULT_WINDOW, 10_000
    per_track = max(2 * window + 1, MOTION_SAMPLES)
    tracker = FaceTracker(window=window)
    indices = []
    for index in range(frames):
        faces = [make_face(200.0, 150.0, noise=NOISE_PX, rng=rng)]
        if index % 37 < 20:  # a face seen for 20 frames, gone for 17: a new track every time
            faces.append(make_face(400.0, 150.0, noise=NOISE_PX, rng=rng))
        decided = tracker.push(index, faces)
        indices += [frame.frame_index for frame in decided]
        assert tracker.pending_frames <= window
        assert tracker.track_count <= 3  # the still face, the current and at most the last other one
        assert tracker.stored_detections <= tracker.track_count * per_track
    tail = tracker.flush()
    indices += [frame.frame_index for frame in tail]
    assert indices == list(range(frames))
    assert tracker.pending_frames == tracker.track_count == tracker.stored_detections == 0
    # The still face kept track 0 throughout; the other face started one new track per appearance.
    assert {tracked.track_id for tracked in tail[-1].faces} == {0, 1 + (frames - 1) // 37}


@pytest.mark.parametrize("window", [0, 1, DEFAULT_WINDOW])
@pytest.mark.parametrize("length", [0, 1, 3, 12])
def test_every_pushed_frame_comes_out_exactly_once_in_order(window: int, length: int) -> None:
    start = 7  # any first index
    tracker = FaceTracker(window=window, max_gap=min(window, DEFAULT_MAX_GAP))
    pushed_out = []
    for index in range(start, start + length):
        decided = tracker.push(index, [make_face(200.0, 150.0)] if index % 3 else [])
        # Each frame is decided once `window` later frames are in.
        expected = [index - window] if index - window >= start else []
        assert [frame.frame_index for frame in decided] == expected
        pushed_out += decided
    flushed = tracker.flush()
    assert [frame.frame_index for frame in flushed] == list(range(max(start, start + length - window), start + length))
    assert [frame.frame_index for frame in pushed_out + flushed] == list(range(start, start + length))
    assert tracker.flush() == []


def test_tracker_starts_a_new_stream_after_flush() -> None:
    tracker = FaceTracker()
    first = run(tracker, [[make_face(200.0, 150.0)]] * 5)
    second = run(tracker, [[make_face(300.0, 150.0)]] * 5, start=100)
    assert [frame.frame_index for frame in second] == list(range(100, 105))
    assert {tracked.track_id for frame in first + second for tracked in frame.faces} == {0}


def test_invalid_options_and_frame_order_raise() -> None:
    with pytest.raises(ValueError, match="window"):
        FaceTracker(window=-1)
    with pytest.raises(ValueError, match="max_gap"):
        FaceTracker(window=2, max_gap=3)
    with pytest.raises(ValueError, match="max_match_distance"):
        FaceTracker(max_match_distance=0.0)
    tracker = FaceTracker()
    tracker.push(0, [])
    with pytest.raises(ValueError, match="expected frame 1, got 2"):
        tracker.push(2, [])
    with pytest.raises(ValueError, match="expected frame 1, got 0"):
        tracker.push(0, [])
