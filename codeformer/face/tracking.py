"""Faces tracked across video frames: an identity per track, smoothed landmarks, short gaps filled.

A video restored frame by frame flickers: the detector's landmarks jitter by a pixel or so from
frame to frame, so the aligned crop, the restored face and its paste-back all shake, and a face the
detector misses in one frame blinks back to unrestored. :class:`FaceTracker` fixes both, streaming:

- **Identities.** Each frame's detections are matched to the live tracks by squared landmark
  distance to where each track is predicted to be (constant velocity fitted to its recent
  detections), with an optimal one-to-one assignment, so two faces crossing paths keep their
  tracks. A detection matching no track starts a new one; track ids number tracks by first
  appearance (0, 1, 2, ...).
- **Smoothing.** Box and landmarks are smoothed by a centred local linear fit (see
  :func:`smooth_sequence`), which uses the ``window`` frames after a frame as well as those before.
- **Gaps.** A track missed for at most ``max_gap`` frames between two detections is filled in by
  the same fit (faces marked ``detected=False``). A track missed for longer ends; a face seen again
  later starts a new track. Nothing is extrapolated past a track's last detection.

The price of the look-ahead is latency: :meth:`FaceTracker.push` returns a frame once ``window``
later frames have been pushed, and :meth:`FaceTracker.flush` returns the rest at the end. Memory is
bounded by the window (a few detections per track), never by the video's length. Example::

    tracker = FaceTracker(window=4, max_gap=3)
    for index, frame in enumerate(frames):
        for tracked in tracker.push(index, find_faces(frame, detector)):
            restore(tracked.frame_index, [face.face for face in tracked.faces])
    for tracked in tracker.flush():
        restore(tracked.frame_index, [face.face for face in tracked.faces])

Everything here is pure NumPy and deterministic: the same detections give the same tracks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from codeformer.face.detection import DetectedFace

__all__ = [
    "DEFAULT_MAX_GAP",
    "DEFAULT_MAX_MATCH_DISTANCE",
    "DEFAULT_WINDOW",
    "MOTION_SAMPLES",
    "FaceTracker",
    "TrackedFace",
    "TrackedFrame",
    "min_cost_assignment",
    "smooth_sequence",
]

# Look-ahead frames, which are also the radius of the smoothing window: 4 frames (133 ms at 30 fps)
# cut frame-to-frame jitter on a still face about tenfold and are a few frames the video stream
# holds in flight anyway.
DEFAULT_WINDOW = 4
# Frames a face may be missed inside a track and still be filled in (100 ms at 30 fps): a blink, a
# hand passing, motion blur. Must not exceed the window: the detection after the gap must be seen.
DEFAULT_MAX_GAP = 3
# Largest root-mean-square landmark distance, in face sizes (square root of the box area), between a
# detection and a track's predicted position for the two to be matched: well above a prediction's
# error, well below the distance between two faces side by side.
DEFAULT_MAX_MATCH_DISTANCE = 0.5
# Recent detections the constant-velocity prediction is fitted to: enough to average the landmark
# noise out of the velocity, few enough to follow a change of direction within a few frames.
MOTION_SAMPLES = 5

_BOX_SIZE = 4  # a face as a (14,) vector: box (x1, y1, x2, y2), then the 5 landmarks (x, y) row by row


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """One face of one frame, as its track has it."""

    track_id: int  # tracks are numbered by first appearance: 0, 1, 2, ...
    face: DetectedFace  # smoothed box and landmarks; the detector's score (filled in: its neighbours')
    detected: bool  # False when filled in from the track's detections around a missed frame
    raw: DetectedFace | None  # the detection as pushed (the same object); None when filled in


@dataclass(frozen=True, eq=False)
class TrackedFrame:
    """The faces of one frame, decided: ordered by track id, so face order is stable over time."""

    frame_index: int
    faces: tuple[TrackedFace, ...]


@dataclass(frozen=True, eq=False)
class _Detection:
    frame_index: int
    face: DetectedFace
    vector: np.ndarray  # (14,): box, then landmarks


@dataclass(eq=False)
class _Track:
    track_id: int
    detections: deque[_Detection] = field(default_factory=deque)  # oldest first, one per frame at most
    alive: bool = True  # may still be matched; a dead track only lingers for the frames that need it

    @property
    def last_index(self) -> int:
        return self.detections[-1].frame_index


def _as_vector(face: DetectedFace) -> np.ndarray:
    return np.concatenate([face.box, face.landmarks.reshape(-1)])  # (14,)


def _linear_fit_at_zero(offsets: Sequence[int], values: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """Weighted least-squares line through (offset, value) pairs, evaluated at offset 0.

    ``offsets`` and ``weights`` (positive) are integers, so the determinant is exact and is zero
    exactly when all offsets are equal; the fit is then the weighted mean. values: (n, D) -> (D,).
    """
    s0 = sum(weights)
    s1 = sum(w * o for w, o in zip(weights, offsets))
    s2 = sum(w * o * o for w, o in zip(weights, offsets))
    determinant = s0 * s2 - s1 * s1
    w = np.asarray(weights, dtype=np.float64)  # (n,)
    weighted_sum = w @ values  # (D,)
    if determinant == 0:
        return weighted_sum / s0
    weighted_moment = (w * np.asarray(offsets, dtype=np.float64)) @ values  # (D,)
    return (s2 * weighted_sum - s1 * weighted_moment) / determinant


def _triangular_weights(offsets: Sequence[int], window: int) -> list[int]:
    """Integer weights falling linearly from window + 1 at the centre to 1 at +-window."""
    return [window + 1 - abs(offset) for offset in offsets]


def smooth_sequence(values: np.ndarray, *, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """A whole sequence of coordinates smoothed as :class:`FaceTracker` smooths a track: (T, ...) -> (T, ...).

    Each frame's value is a straight line fitted by weighted least squares to the frames within
    ``window`` of it, with triangular weights (``window + 1 - distance``), evaluated at that frame.

    Why this filter rather than a causal one (One-Euro, exponential): the video stream holds frames
    in flight anyway, so the filter may look ahead, and a centred fit has no lag at all: a straight
    line is reproduced exactly, so a face panning at constant speed is followed to within its noise,
    including at the ends of a track, where the window is cut short and the line is fitted to the
    frames there are. A causal filter must trade jitter for lag. On a still face, consecutive
    outputs share most of their inputs; the triangular weights, which change by the same small step
    at every offset, make frame-to-frame change smaller than a box window of the same length does
    (its standard deviation is ``(window + 1) ** -1.5`` of the input's: 0.09 for ``window=4``). A
    sudden start or stop of motion is rounded off over about ``window`` frames, with no overshoot.

    ``window=0`` returns the values unchanged (as float64).
    """
    if window < 0:
        raise ValueError(f"window must be 0 or more frames, got {window}")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError("values must have a frame axis first: (T, ...)")
    flat = array.reshape(len(array), -1)  # (T, D)
    smoothed = np.empty_like(flat)
    for index in range(len(flat)):
        first, last = max(0, index - window), min(len(flat) - 1, index + window)
        offsets = list(range(first - index, last - index + 1))
        smoothed[index] = _linear_fit_at_zero(offsets, flat[first : last + 1], _triangular_weights(offsets, window))
    return smoothed.reshape(array.shape)


def min_cost_assignment(cost: np.ndarray) -> list[int]:
    """The column for each row of a square cost matrix that minimises the total cost: (n, n) -> n.

    The Hungarian method with shortest augmenting paths (O(n^3)): rows are added one at a time and
    the dual potentials ``row_potential`` / ``column_potential`` keep every reduced cost non-negative.
    A few faces per frame make this instant; written here rather than taken from SciPy, which the
    package does not otherwise need. Ties go to the lower column index, deterministically.
    """
    matrix = np.asarray(cost, dtype=np.float64)
    size = matrix.shape[0]
    if matrix.shape != (size, size):
        raise ValueError(f"cost must be a square matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("cost must be finite")
    rows = matrix.tolist()  # plain floats: much faster than NumPy scalars in the loops below
    # 1-based columns with column 0 as the virtual start of each augmenting path.
    row_potential = [0.0] * (size + 1)
    column_potential = [0.0] * (size + 1)
    row_of_column = [0] * (size + 1)  # 1-based row matched to each column; 0: free
    previous_column = [0] * (size + 1)  # the augmenting path, walked back from its free end
    for row in range(1, size + 1):
        row_of_column[0] = row
        column = 0
        slack = [math.inf] * (size + 1)
        visited = [False] * (size + 1)
        while True:  # grow the shortest-path tree until it reaches a free column
            visited[column] = True
            current_row = row_of_column[column]
            costs_of_row, potential_of_row = rows[current_row - 1], row_potential[current_row]
            delta, next_column = math.inf, 0
            for candidate in range(1, size + 1):
                if visited[candidate]:
                    continue
                reduced = costs_of_row[candidate - 1] - potential_of_row - column_potential[candidate]
                if reduced < slack[candidate]:
                    slack[candidate], previous_column[candidate] = reduced, column
                if slack[candidate] < delta:
                    delta, next_column = slack[candidate], candidate
            for candidate in range(size + 1):
                if visited[candidate]:
                    row_potential[row_of_column[candidate]] += delta
                    column_potential[candidate] -= delta
                else:
                    slack[candidate] -= delta
            column = next_column
            if row_of_column[column] == 0:
                break
        while column:  # flip the path: every row on it moves to the next column
            before = previous_column[column]
            row_of_column[column] = row_of_column[before]
            column = before
    assignment = [0] * size
    for column in range(1, size + 1):
        assignment[row_of_column[column] - 1] = column - 1
    return assignment


def _match(costs: np.ndarray, gate: float) -> list[tuple[int, int]]:
    """(track, detection) pairs with the least total cost, every pair's cost below ``gate``.

    costs: (tracks, detections). Padded to a square matrix where leaving a track or a detection
    unmatched costs ``gate / 2`` each, so a pair is worth matching only when its cost is below
    ``gate``; pairs at or above it are priced out (``2 * gate``).
    """
    tracks, detections = costs.shape
    size = tracks + detections
    square = np.zeros((size, size))  # the dummy-to-dummy corner costs nothing
    square[:tracks, :detections] = np.where(costs < gate, costs, 2 * gate)
    square[:tracks, detections:] = gate / 2  # a track left unmatched
    square[tracks:, :detections] = gate / 2  # a detection left unmatched (starts a track)
    assignment = min_cost_assignment(square)
    return [(track, assignment[track]) for track in range(tracks)
            if assignment[track] < detections and costs[track, assignment[track]] < gate]


class FaceTracker:
    """Streaming face tracker over consecutive video frames; see the module docstring.

    Push every frame's detections in order with :meth:`push`, which returns the frames now decided
    (each frame ``window`` pushes later), then call :meth:`flush` once at the end for the rest.
    Every pushed frame comes out exactly once, in order. After :meth:`flush` the tracker is empty
    and a new stream may start (track ids start again at 0).

    Every track is kept, however short: a detection the detector was confident about is restored,
    as in a single picture, and a one-frame track cannot be told from a face entering or leaving
    the picture without a longer look-ahead.
    """

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        max_gap: int = DEFAULT_MAX_GAP,
        max_match_distance: float = DEFAULT_MAX_MATCH_DISTANCE,
    ) -> None:
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an integer number of frames, 0 or more, got {window!r}")
        if not isinstance(max_gap, int) or not 0 <= max_gap <= window:
            raise ValueError(
                f"max_gap must be an integer from 0 to window ({window}), got {max_gap!r}: "
                "a gap is filled only once the detection after it has been seen"
            )
        if not (math.isfinite(max_match_distance) and max_match_distance > 0):
            raise ValueError(f"max_match_distance must be a positive number of face sizes, got {max_match_distance!r}")
        self.window = window
        self.max_gap = max_gap
        self.max_match_distance = float(max_match_distance)
        self._reset()

    def _reset(self) -> None:
        self._tracks: dict[int, _Track] = {}  # by id; insertion order is id order
        self._next_id = 0
        self._next_to_return: int | None = None  # oldest frame not returned yet
        self._last_pushed: int | None = None

    # --------------------------------------------------------------------------------------------
    # What the tracker holds (bounded by the window; tests and callers may check)

    @property
    def pending_frames(self) -> int:
        """Frames pushed but not returned yet: at most ``window`` between pushes."""
        if self._last_pushed is None or self._next_to_return is None:
            return 0
        return self._last_pushed - self._next_to_return + 1

    @property
    def track_count(self) -> int:
        """Tracks held: live ones, and ended ones whose detections frames still need."""
        return len(self._tracks)

    @property
    def stored_detections(self) -> int:
        """Detections held over all tracks: at most ``max(2 * window + 1, MOTION_SAMPLES)`` per track."""
        return sum(len(track.detections) for track in self._tracks.values())

    # --------------------------------------------------------------------------------------------
    # Streaming

    def push(self, frame_index: int, faces: Sequence[DetectedFace]) -> list[TrackedFrame]:
        """Add one frame's detections; returns the frames now decided, oldest first.

        ``frame_index`` must follow the previous one by exactly 1 (any start). ``faces`` in any
        order: the detector's order does not affect ids or the order of the returned faces.
        """
        if self._last_pushed is not None and frame_index != self._last_pushed + 1:
            raise ValueError(
                f"frames must be pushed in order without gaps: expected frame {self._last_pushed + 1}, "
                f"got {frame_index} (push an empty list for a frame without faces)"
            )
        if self._next_to_return is None:
            self._next_to_return = frame_index
        self._last_pushed = frame_index
        self._associate(frame_index, faces)
        decided = []
        while self._next_to_return + self.window <= frame_index:
            decided.append(self._decide(self._next_to_return))
            self._next_to_return += 1
        self._forget()
        return decided

    def flush(self) -> list[TrackedFrame]:
        """The frames not returned yet, at the end of the stream; the tracker is then empty.

        Tracks still missed at the end are not filled in: there is no detection after the gap.
        """
        if self._next_to_return is None or self._last_pushed is None:
            return []
        decided = [self._decide(index) for index in range(self._next_to_return, self._last_pushed + 1)]
        self._reset()
        return decided

    # --------------------------------------------------------------------------------------------
    # Association

    def _predict(self, track: _Track, frame_index: int) -> np.ndarray:
        """Where the track's face should be in ``frame_index``: a line through its recent detections."""
        recent = list(track.detections)[-MOTION_SAMPLES:]
        offsets = [detection.frame_index - frame_index for detection in recent]
        values = np.stack([detection.vector for detection in recent])  # (n, 14)
        return _linear_fit_at_zero(offsets, values, [1] * len(recent))  # (14,)

    def _costs(self, tracks: Sequence[_Track], vectors: Sequence[np.ndarray], frame_index: int) -> np.ndarray:
        """Mean squared landmark distance, in face sizes squared, from each track's prediction to each detection.

        Squared distances summed over an assignment are what Gaussian landmark noise makes the most
        likely assignment: when two faces cross, this swaps them about a third as often as summed
        plain distances do, with 2 px of noise (mean distances are dominated by the noise itself).
        """
        predicted = np.stack([self._predict(track, frame_index) for track in tracks])  # (t, 14)
        detected = np.stack(vectors)  # (d, 14)
        widths = np.abs(predicted[:, 2] - predicted[:, 0])
        heights = np.abs(predicted[:, 3] - predicted[:, 1])
        sizes = np.maximum(np.sqrt(widths * heights), 1.0)  # (t,) 1 px floor: degenerate boxes
        points_predicted = predicted[:, _BOX_SIZE:].reshape(-1, 1, 5, 2)  # (t, 1, 5, 2)
        points_detected = detected[:, _BOX_SIZE:].reshape(1, -1, 5, 2)  # (1, d, 5, 2)
        squared = ((points_predicted - points_detected) ** 2).sum(axis=-1).mean(axis=-1)  # (t, d)
        return squared / (sizes**2)[:, None]

    def _associate(self, frame_index: int, faces: Sequence[DetectedFace]) -> None:
        faces = list(faces)
        vectors = [_as_vector(face) for face in faces]
        # Dead tracks are never matched again, so every live one was last seen at most max_gap + 1
        # frames ago: matching it here leaves a gap of at most max_gap frames.
        live = [track for track in self._tracks.values() if track.alive]
        matched_tracks: set[int] = set()
        matched_faces: set[int] = set()
        if live and vectors:
            costs = self._costs(live, vectors, frame_index)  # (live, faces)
            for track_position, face_position in _match(costs, self.max_match_distance**2):
                track = live[track_position]
                track.detections.append(_Detection(frame_index, faces[face_position], vectors[face_position]))
                matched_tracks.add(track.track_id)
                matched_faces.add(face_position)
        for track in live:
            if track.track_id not in matched_tracks and frame_index - track.last_index > self.max_gap:
                track.alive = False  # the next match would leave a gap longer than max_gap
        # New tracks left to right (then top to bottom, then detector order): ids that do not depend
        # on the order the detector lists faces that appear together.
        new = sorted(
            (position for position in range(len(faces)) if position not in matched_faces),
            key=lambda position: (
                (vectors[position][0] + vectors[position][2]) / 2,
                (vectors[position][1] + vectors[position][3]) / 2,
                position,
            ),
        )
        for position in new:
            track = _Track(self._next_id)
            track.detections.append(_Detection(frame_index, faces[position], vectors[position]))
            self._tracks[track.track_id] = track
            self._next_id += 1

    # --------------------------------------------------------------------------------------------
    # Decisions

    def _decide(self, frame_index: int) -> TrackedFrame:
        faces = []
        for track in self._tracks.values():  # id order
            face = self._face_at(track, frame_index)
            if face is not None:
                faces.append(face)
        return TrackedFrame(frame_index, tuple(faces))

    def _face_at(self, track: _Track, frame_index: int) -> TrackedFace | None:
        """The track's smoothed face in ``frame_index``, or None where the track has none."""
        nearby = [d for d in track.detections if abs(d.frame_index - frame_index) <= self.window]
        here = next((d for d in nearby if d.frame_index == frame_index), None)
        before = [d for d in nearby if d.frame_index < frame_index]
        after = [d for d in nearby if d.frame_index > frame_index]
        # A track's consecutive detections are at most max_gap + 1 <= window + 1 frames apart, so a
        # frame inside a gap always has both neighbouring detections within the window.
        if here is None and not (before and after):
            return None
        offsets = [d.frame_index - frame_index for d in nearby]
        values = np.stack([d.vector for d in nearby])  # (n, 14)
        vector = _linear_fit_at_zero(offsets, values, _triangular_weights(offsets, self.window))  # (14,)
        # A filled-in face is as trustworthy as the weaker of the detections around it.
        score = here.face.score if here is not None else min(before[-1].face.score, after[0].face.score)
        smoothed = DetectedFace(box=vector[:_BOX_SIZE], score=score, landmarks=vector[_BOX_SIZE:].reshape(5, 2))
        return TrackedFace(track.track_id, smoothed, here is not None, None if here is None else here.face)

    def _forget(self) -> None:
        """Drop what no frame still to be decided and no prediction needs."""
        if self._next_to_return is None:
            return
        oldest_needed = self._next_to_return - self.window  # the window of the oldest undecided frame
        for track_id in list(self._tracks):
            track = self._tracks[track_id]
            # A live track keeps its last MOTION_SAMPLES detections for its prediction.
            keep = MOTION_SAMPLES if track.alive else 0
            while len(track.detections) > keep and track.detections[0].frame_index < oldest_needed:
                track.detections.popleft()
            if not track.detections:
                del self._tracks[track_id]
