"""The per-face report: ``<out>/report.json``, every face of every input, restored or why not.

For each input (picture or video), each face: its box, 5 landmarks and detection score (input
pixels), its number (left to right in a picture) or track (in a video), whether it was restored or
why not, and the identity distance between the input face and the restored face (dlib's
face-recognition network; 0.6 and above usually means another person), so a user can find the faces
where restoration changed who the person is. Schema (``version`` 1)::

    {"version": 1,
     "inputs": {"photo.jpg": {"kind": "picture", "faces": [FACE, ...]},
                "clip.mp4": {"kind": "video", "frames": [{"frame": 0, "faces": [FACE, ...]}, ...]}}}
    FACE = {"number": 0, "track": null, "box": [x1, y1, x2, y2], "landmarks": [[x, y], ... 5],
            "score": 0.99, "restored": true, "reason": null, "detected": true, "identity_distance": 0.21,
            "blend": 1.0}

In a video, ``number`` and ``track`` are both the face's track; ``detected`` is false for a face
filled in from its neighbouring frames; ``blend`` is how much of the restored face was pasted
(the rest is the unrestored face; null for faces not restored); ``reference_distance`` is the face's
identity distance to the reference person when one is given (``--reference_face``), and ``reason``
says why a face was not chosen (another person, or a nearer face of the same picture or track). The file is rewritten atomically after every input, so it is
always complete for the inputs finished so far; a report opened with ``keep_existing`` (a resumed
run) keeps the entries of earlier runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codeformer.restoration import RestoredFace, RestoreResult, SkippedFace
from codeformer.imageio import write_bytes_atomic
from codeformer.jobs.storage import Folder

__all__ = ["REPORT_NAME", "REPORT_VERSION", "FaceReport", "face_entries", "frame_entry"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
REPORT_VERSION = 1
_DECIMALS = 2  # pixel coordinates: a hundredth of a pixel is plenty
_SCORE_DECIMALS = 4


def _coordinates(values: np.ndarray) -> list:
    return np.round(np.asarray(values, dtype=np.float64), _DECIMALS).tolist()


def _face_entry(face: RestoredFace | SkippedFace, *, track: bool) -> dict[str, Any]:
    restored = isinstance(face, RestoredFace)
    distance = face.identity_distance if restored else None
    return {
        "number": face.number,
        "track": face.number if track else None,
        "box": _coordinates(face.box),
        "landmarks": _coordinates(face.landmarks),
        "score": round(float(face.score), _SCORE_DECIMALS),
        "restored": restored,
        "reason": None if restored else face.reason,
        "detected": face.detected if restored else True,
        "identity_distance": None if distance is None else round(float(distance), _SCORE_DECIMALS),
        "blend": face.blend if restored else None,
        "reference_distance": None if face.reference_distance is None else round(float(face.reference_distance),
                                                                                  _SCORE_DECIMALS),
    }


def face_entries(result: RestoreResult, *, track: bool = False) -> list[dict[str, Any]]:
    """Report entries of a result's faces, restored and skipped, ordered by number."""
    faces: list[RestoredFace | SkippedFace] = [*result.faces, *result.skipped]
    return [_face_entry(face, track=track) for face in sorted(faces, key=lambda face: face.number)]


class FaceReport:
    """Collects per-face entries and keeps the report written, atomically, after every input.

    ``path``: the report file on this machine; :meth:`in_folder` writes into a :class:`~codeformer.jobs.storage.Folder`
    (a path or an fsspec URL) instead, as Ray jobs do.
    """

    def __init__(self, path: Path | None, *, keep_existing: bool = False,
                 storage: tuple[Callable[[], bytes | None], Callable[[bytes], None]] | None = None) -> None:
        self.path = path
        if storage is None:
            assert path is not None
            storage = (lambda: path.read_bytes() if path.is_file() else None,
                       lambda data: write_bytes_atomic(path, data))
        self._read, self._write = storage
        self._inputs: dict[str, Any] = self._read_existing() if keep_existing else {}
        self._frames: list[dict[str, Any]] = []

    @classmethod
    def in_folder(cls, folder: Folder, *, keep_existing: bool = False) -> FaceReport:
        """A report written as ``REPORT_NAME`` into ``folder`` (a local folder or a URL)."""
        return cls(None, keep_existing=keep_existing,
                   storage=(lambda: folder.read_bytes(REPORT_NAME) if folder.exists(REPORT_NAME) else None,
                            lambda data: folder.write_bytes(REPORT_NAME, data)))

    def _read_existing(self) -> dict[str, Any]:
        where = self.path or REPORT_NAME
        try:
            raw = self._read()
            if raw is None:
                return {}
            data = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as error:
            logger.warning("%s is unreadable (%s): starting a new report", where, error)
            return {}
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION or not isinstance(data.get("inputs"), dict):
            logger.warning("%s is not a report of this version: starting a new report", where)
            return {}
        return data["inputs"]

    @property
    def inputs(self) -> dict[str, Any]:
        return self._inputs

    def add_picture(self, name: str, result: RestoreResult) -> None:
        self.add_picture_entries(name, face_entries(result))

    def add_picture_entries(self, name: str, entries: list[dict[str, Any]], *, write: bool = True) -> None:
        """A picture's face entries made elsewhere (a Ray worker: :func:`face_entries`); ``write=False``: later."""
        self._inputs[name] = {"kind": "picture", "faces": entries}
        if write:
            self.write()

    def add_frame(self, index: int, result: RestoreResult) -> None:
        """One frame of the video being restored (call :meth:`add_video` when it is done)."""
        self._frames.append(frame_entry(index, result))

    def add_video(self, name: str, frames: list[dict[str, Any]] | None = None) -> None:
        """The video's frames: those added with :meth:`add_frame`, or ``frames`` made elsewhere (Ray segments)."""
        self._inputs[name] = {"kind": "video", "frames": self._frames if frames is None else frames}
        self._frames = []
        self.write()

    def write(self) -> None:
        data = {"version": REPORT_VERSION, "inputs": self._inputs}
        self._write(json.dumps(data, indent=1).encode("utf-8"))


def frame_entry(index: int, result: RestoreResult) -> dict[str, Any]:
    """A video frame's report entry: its index and its faces (numbered by track)."""
    return {"frame": index, "faces": face_entries(result, track=True)}
