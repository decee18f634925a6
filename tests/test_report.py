"""The per-face report: schema, values, resuming, videos; and the command line's face choices end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib")  # identity distances come from dlib's face-recognition network

from codeformer.face.identity import load_face_embedder  # noqa: E402
from codeformer.imageio import write_image  # noqa: E402
from codeformer.jobs.report import REPORT_NAME, FaceReport  # noqa: E402
from codeformer.jobs.local import restore_picture_files  # noqa: E402
from test_pipeline import picture  # noqa: E402

FACE_KEYS = {"number", "track", "box", "landmarks", "score", "restored", "reason", "detected", "identity_distance",
             "blend", "reference_distance"}


@pytest.fixture(scope="module")
def pipe():
    from test_pipeline import small_pipeline

    return small_pipeline()  # the small network, the fake two-face detector


def test_report_lists_every_face_restored_or_why_not(pipe, tmp_path: Path) -> None:
    first = write_image(tmp_path / "in" / "first.png", picture(640, 520, seed=1))
    out = tmp_path / "out"
    options = pipe.options(upscale=1, face_index=[1], measure_identity=True)
    report = FaceReport(out / REPORT_NAME)
    restore_picture_files(pipe, [first], out, options, progress=False, report=report)
    data = json.loads((out / REPORT_NAME).read_text())
    assert data["version"] == 1 and list(data["inputs"]) == ["first.png"]
    entry = data["inputs"]["first.png"]
    assert entry["kind"] == "picture"
    faces = entry["faces"]
    assert [face["number"] for face in faces] == [0, 1] and all(set(face) == FACE_KEYS for face in faces)
    skipped, restored = faces
    assert skipped["restored"] is False and skipped["reason"] == "face 0 is not among the chosen faces"
    assert skipped["identity_distance"] is None
    assert restored["restored"] is True and restored["reason"] is None and restored["track"] is None
    assert 0 < restored["identity_distance"] < 10  # a real distance, measured input crop -> restored crop
    assert len(restored["box"]) == 4 and np.array(restored["landmarks"]).shape == (5, 2)
    # The values are the restored face's own: the distance is the embedder's on its crops.
    result = pipe.restore(picture(640, 520, seed=1), upscale=1, face_index=[1], measure_identity=True)
    np.testing.assert_allclose(restored["box"], result.faces[0].box, atol=0.01)
    embedder = load_face_embedder()
    expected = np.linalg.norm(embedder.embed([result.faces[0].aligned]) - embedder.embed([result.faces[0].restored]))
    assert restored["identity_distance"] == pytest.approx(float(expected), abs=1e-3)


def test_a_resumed_run_keeps_earlier_entries(pipe, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_image(tmp_path / "in" / "first.png", picture(640, 520, seed=1))
    second = write_image(tmp_path / "in" / "second.png", picture(640, 520, seed=2))
    options = pipe.options(upscale=1)
    restore_picture_files(pipe, [first], out, options, progress=False, report=FaceReport(out / REPORT_NAME))
    restore_picture_files(pipe, [first, second], out, options, progress=False, skip_existing=True,
                          report=FaceReport(out / REPORT_NAME, keep_existing=True))
    assert sorted(json.loads((out / REPORT_NAME).read_text())["inputs"]) == ["first.png", "second.png"]
    # Without resuming, the report starts over.
    restore_picture_files(pipe, [second], out, options, progress=False, report=FaceReport(out / REPORT_NAME))
    assert sorted(json.loads((out / REPORT_NAME).read_text())["inputs"]) == ["second.png"]


def test_a_video_report_has_frames_and_tracks(pipe, tmp_path: Path) -> None:
    from codeformer.jobs.local import restore_video_file
    from video_factory import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=5, size=(640, 520), audio=None)
    out = tmp_path / "out"
    restore_video_file(pipe, clip, out, pipe.options(upscale=1), progress=False,
                       report=FaceReport(out / REPORT_NAME))
    entry = json.loads((out / REPORT_NAME).read_text())["inputs"]["clip.mp4"]
    assert entry["kind"] == "video" and [frame["frame"] for frame in entry["frames"]] == list(range(5))
    for frame in entry["frames"]:
        assert [face["track"] for face in frame["faces"]] == [0, 1]  # two tracks, in a stable order
        assert all(face["restored"] and face["detected"] for face in frame["faces"])
