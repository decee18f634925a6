"""Video faces that hold still: detect every frame, track and smooth, then restore from the smoothed faces.

:class:`TemporalFaceRestorer` is a :class:`codeformer.video.FrameProcessor`: the video stream hands
it decoded frames; it detects faces on each, pushes them to a :class:`~codeformer.face.tracking.FaceTracker`
and holds the frames until the tracker has decided them (``window`` frames later). A decided frame is
aligned with its tracks' smoothed landmarks (so the crop does not shake with the detector's noise),
faces missed for a few frames are filled in from their neighbours (so they do not blink back to
unrestored), the faces of all decided frames are restored in one batch and pasted back. Memory is
the held frames: ``window`` plus one batch, whatever the video's length.

Faces are numbered by track (first appearance from 0), which is what a video's face choice uses. A
reference person is chosen by track too: each frame restores the track whose faces have been
nearest the person on average so far (one person is one track), not whichever face of the frame
happens to be nearest, so a look-alike never takes over for a frame.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from codeformer.face.detection import DetectedFace, find_faces_in_frames
from codeformer.options import RestoreOptions
from codeformer.restoration import (
    EYE_DIST_THRESHOLD,
    Models,
    RestoreResult,
    check_picture_memory,
    plan_detected,
    restore_plans,
    working_image,
)
from codeformer.face.tracking import DEFAULT_MAX_GAP, DEFAULT_WINDOW, FaceTracker, TrackedFrame
from codeformer.imageio import Picture, check_output_pixels

__all__ = ["TemporalFaceRestorer"]


class TemporalFaceRestorer:
    """Restores a video's frames with tracked, smoothed faces; frames come back ``window`` frames late."""

    def __init__(
        self,
        models: Models,
        options: RestoreOptions,
        *,
        window: int = DEFAULT_WINDOW,
        max_gap: int = DEFAULT_MAX_GAP,
        on_frame: Callable[[int, RestoreResult], None] | None = None,
        detect_ahead: int = 0,
    ) -> None:
        self._models = models
        self._options = options
        self._tracker = FaceTracker(window=window, max_gap=max_gap)
        self._on_frame = on_frame
        # Frames pushed to the tracker and not yet restored: (picture, working image, its scale).
        self._held: deque[tuple[Picture, np.ndarray, float]] = deque()
        self._next_index = 0
        # Each track's distances to the reference person so far: (sum, count).
        self._track_distances: dict[int, tuple[float, int]] = {}
        # detect_ahead: the frames of that many calls are detected at once in helper threads (the detector in
        # processes of its own, see Pipeline.detecting_apart) while the frames the calls before decided are
        # restored; their detections are tracked in call order.
        self._ahead_calls = max(0, int(detect_ahead))
        self._ahead = ThreadPoolExecutor(self._ahead_calls, thread_name_prefix="codeformer-detect") \
            if self._ahead_calls else None
        self._detecting: deque[Future[list[tuple[Picture, np.ndarray, float, list[DetectedFace]]]]] = deque()

    @property
    def held_frames(self) -> int:
        """Frames waiting for the tracker's look-ahead (bounded by the window plus one batch; with
        ``detect_ahead``, that many more calls' frames are being detected, not counted here)."""
        return len(self._held)

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Detect and track ``frames`` (BGR uint8); returns the restored frames now decided, oldest first.

        With ``detect_ahead`` the frames are detected while those of the calls before are restored:
        what comes back is decided by the detections up to ``detect_ahead`` calls before this one.
        """
        pictures = [Picture(frame, None, 3) for frame in frames]
        if self._next_index == 0 and pictures and not self._detecting:
            # Every frame has the first one's size: refuse the video before any work, as a picture would be
            # (plan_faces checks each picture; the tracked path plans from detections instead).
            check_output_pixels(pictures[0].width, pictures[0].height, self._options.upscale, self._options.max_pixels)
            check_picture_memory(pictures[0], self._models, self._options)
        if self._ahead is None:
            return self._restore(self._track(self._detect(pictures)))
        self._detecting.append(self._ahead.submit(self._detect, pictures))
        if len(self._detecting) <= self._ahead_calls:
            return []
        return self._restore(self._track(self._detecting.popleft().result()))

    def flush(self) -> list[np.ndarray]:
        """The frames still held, restored, at the end of the video."""
        decided: list[TrackedFrame] = []
        while self._detecting:
            decided += self._track(self._detecting.popleft().result())
        if self._ahead is not None:
            self._ahead.shutdown()
        return self._restore(decided + self._tracker.flush())

    def _detect(self, pictures: list[Picture]) -> list[tuple[Picture, np.ndarray, float, list[DetectedFace]]]:
        """Each frame with its working image, that image's scale and the faces found on it."""
        worked = [working_image(picture) for picture in pictures]
        found = find_faces_in_frames([image for image, _ in worked], self._models.detector,
                                     eye_dist_threshold=EYE_DIST_THRESHOLD)
        return [(picture, image, scale, faces) for picture, (image, scale), faces in zip(pictures, worked, found)]

    def _track(self, detected: list[tuple[Picture, np.ndarray, float, list[DetectedFace]]]) -> list[TrackedFrame]:
        """Frames pushed to the tracker in order (and held); returns the frames it has now decided."""
        decided: list[TrackedFrame] = []
        for picture, image, scale, faces in detected:
            self._held.append((picture, image, scale))
            decided += self._tracker.push(self._next_index, faces)
            self._next_index += 1
        return decided

    def _restore(self, decided: list[TrackedFrame]) -> list[np.ndarray]:
        if not decided:
            return []
        held = [self._held.popleft() for _ in decided]
        plans = [
            plan_detected(picture, image, scale, [face.face for face in frame.faces],
                          [face.track_id for face in frame.faces], self._models, self._options,
                          choice_distances=self._by_track)
            for (picture, image, scale), frame in zip(held, decided)
        ]
        detected = [[_was_detected(frame, number) for number in plan.numbers] for frame, plan in zip(decided, plans)]
        results = restore_plans([picture for picture, _, _ in held], plans, self._models, self._options,
                                detected=detected)
        if self._on_frame is not None:
            for frame, result in zip(decided, results):
                self._on_frame(frame.frame_index, result)
        return [result.image for result in results]


    def _by_track(self, tracks: Sequence[int], distances: Sequence[float]) -> list[float]:
        """Each face's track's mean distance to the reference person, this frame included."""
        for track, distance in zip(tracks, distances):
            total, count = self._track_distances.get(track, (0.0, 0))
            self._track_distances[track] = (total + distance, count + 1)
        return [self._track_distances[track][0] / self._track_distances[track][1] for track in tracks]


def _was_detected(frame: TrackedFrame, track_id: int) -> bool:
    return next(face.detected for face in frame.faces if face.track_id == track_id)
