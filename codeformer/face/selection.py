"""Which detected faces to restore: by position, size, number or identity.

Pure functions over boxes (and, for identity, embedding distances), so the same rules serve pictures
(faces numbered left to right) and videos (faces numbered by track, in order of first appearance).
A face that is not chosen gets the reason why, for the per-face report.

Example::

    selection = FaceSelection(face_index=(0, 2), min_face_size=40)
    reasons = choose_faces(boxes, numbers=left_to_right_numbers(boxes), height=h, width=w, selection=selection)
    restored = [i for i, reason in enumerate(reasons) if reason is None]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["DEFAULT_REFERENCE_DISTANCE", "FaceSelection", "choose_faces", "left_to_right_numbers"]

# dlib's face-recognition network: embeddings of one person are mostly closer than this (its authors' threshold).
DEFAULT_REFERENCE_DISTANCE = 0.6


@dataclass(frozen=True)
class FaceSelection:
    """The faces to restore; the default restores every face."""

    only_center_face: bool = False  # only the face nearest the picture's centre
    largest_face: bool = False  # only the largest face
    face_index: tuple[int, ...] | None = None  # only faces with these numbers
    min_face_size: float | None = None  # only faces whose box is at least this many pixels on its short side
    reference: np.ndarray | None = None  # (128,) embedding: only faces of this person
    reference_distance: float = DEFAULT_REFERENCE_DISTANCE

    @property
    def selects_all(self) -> bool:
        return (not self.only_center_face and not self.largest_face and self.face_index is None
                and self.min_face_size is None and self.reference is None)


def left_to_right_numbers(boxes: np.ndarray) -> list[int]:
    """Each face's number when faces are counted left to right by box centre (top to bottom on ties)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2  # (N, 2)
    order = sorted(range(len(boxes)), key=lambda i: (centres[i, 0], centres[i, 1], i))
    numbers = [0] * len(boxes)
    for number, index in enumerate(order):
        numbers[index] = number
    return numbers


def _short_side(box: np.ndarray) -> float:
    return float(min(box[2] - box[0], box[3] - box[1]))


def choose_faces(
    boxes: np.ndarray,
    *,
    numbers: Sequence[int],
    height: int,
    width: int,
    selection: FaceSelection,
    distances: Sequence[float] | None = None,
) -> list[str | None]:
    """For each face (boxes (N, 4) in picture pixels): None when it is to be restored, else why not.

    Filters apply in order: size, number, identity (``distances`` to the reference person, needed
    when ``selection.reference`` is set: faces farther than ``reference_distance`` are another
    person, and since one person appears at most once in a picture, of the faces close enough only
    the nearest is chosen); then, among the faces left, ``largest_face`` or ``only_center_face``
    keeps one. In a video ``distances`` may be each face's track's distance, so the choice follows
    the track that resembles the person most, frame after frame.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    reasons: list[str | None] = [None] * len(boxes)
    for i, box in enumerate(boxes):
        if selection.min_face_size is not None and _short_side(box) < selection.min_face_size:
            reasons[i] = f"smaller than {selection.min_face_size:g} px ({_short_side(box):.0f} px)"
        elif selection.face_index is not None and numbers[i] not in selection.face_index:
            reasons[i] = f"face {numbers[i]} is not among the chosen faces"
        elif selection.reference is not None:
            if distances is None:
                raise ValueError("choosing faces by a reference person needs their embedding distances")
            if distances[i] > selection.reference_distance:
                reasons[i] = (f"another person (identity distance {distances[i]:.2f} > "
                              f"{selection.reference_distance:g})")
    if selection.reference is not None and distances is not None:
        close = [i for i, reason in enumerate(reasons) if reason is None]
        if len(close) > 1:
            nearest = min(close, key=lambda i: (distances[i], i))
            for i in close:
                if i != nearest:
                    reasons[i] = (f"face {numbers[nearest]} is nearer the reference person (identity distance "
                                  f"{distances[nearest]:.2f} < {distances[i]:.2f})")
    remaining = [i for i, reason in enumerate(reasons) if reason is None]
    if remaining and (selection.largest_face or selection.only_center_face):
        if selection.largest_face:
            clipped = np.clip(boxes[remaining], 0, [width, height, width, height])
            areas = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            keep, why = remaining[int(np.argmax(areas))], "not the largest face"
        else:
            centres = (boxes[remaining, 0:2] + boxes[remaining, 2:4]) / 2
            offsets = np.linalg.norm(centres - [width / 2, height / 2], axis=1)
            keep, why = remaining[int(np.argmin(offsets))], "not the face nearest the centre"
        for i in remaining:
            if i != keep:
                reasons[i] = why
    return reasons
