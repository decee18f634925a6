"""FFHQ-style cropping: geometry of the recipe, real landmarks on a real photo, the script end to end."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from codeformer.face.ffhq_align import (
    LEFT_EYE, MOUTH_LEFT_CORNER, MOUTH_RIGHT_CORNER, RIGHT_EYE, align_ffhq, detect_faces_68, ffhq_quad,
    largest_face_index, load_dlib_models, quad_affine,
)
from codeformer.face.alignment import FFHQ_TEMPLATE_5

pytest.importorskip("dlib")

REPO = Path(__file__).resolve().parents[1]
# Eye centres land near here whenever 2x the eye distance sets the square's size (every ordinary
# frontal face): half the square is 4 eye distances, so the eyes sit about 1/8 of 512 off centre (the
# square's axis averages the eye line with the mouth direction, so a tilted mouth moves them slightly).
FFHQ_EYE_X = (192.0, 320.0)


def _keypoints(landmarks: np.ndarray) -> np.ndarray:
    """Left eye centre, right eye centre, mouth centre: (3, 2)."""
    return np.stack([landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0),
                     (landmarks[MOUTH_LEFT_CORNER] + landmarks[MOUTH_RIGHT_CORNER]) / 2])


def _transform(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


@pytest.fixture(scope="module")
def dlib_models():
    return load_dlib_models()


def _variants(astronaut_bgr: np.ndarray) -> dict[str, np.ndarray]:
    canvas = np.full((900, 1200, 3), 90, np.uint8)
    canvas[200:712, 500:1012] = astronaut_bgr
    centre = (256, 120)
    rotation = cv2.getRotationMatrix2D(centre, 15, 1.0)
    rotated = cv2.warpAffine(astronaut_bgr, rotation, (512, 512), borderMode=cv2.BORDER_REFLECT)
    return {"plain": astronaut_bgr, "in a larger canvas": canvas, "rotated 15 degrees": rotated}


@pytest.mark.parametrize("variant", ["plain", "in a larger canvas", "rotated 15 degrees"])
def test_eyes_and_mouth_land_on_the_ffhq_positions(variant: str, astronaut_bgr: np.ndarray, dlib_models) -> None:
    image = _variants(astronaut_bgr)[variant]
    faces = detect_faces_68(image, *dlib_models)
    # dlib's HOG detector also fires on the mission patch on her sleeve: the face is the topmost box.
    face = min(faces, key=lambda found: found.box[1])
    assert 30 < face.box[2] - face.box[0] < 200  # the astronaut's face, not the whole picture
    crop = align_ffhq(image, face.landmarks)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8

    # Where the recipe puts the keypoints: eyes near x = 192 and 320, about level.
    quad, _ = ffhq_quad(face.landmarks)
    expected = _transform(quad_affine(quad, 512), _keypoints(face.landmarks))
    assert np.allclose(expected[:2, 0], FFHQ_EYE_X, atol=3.0)
    assert abs(expected[0, 1] - expected[1, 1]) < 10
    # And the FFHQ template's neighbourhood: eyes near y 240, mouth near (257, 371).
    template_mouth = FFHQ_TEMPLATE_5[3:].mean(0)
    assert abs(expected[:2, 1].mean() - FFHQ_TEMPLATE_5[:2, 1].mean()) < 15
    assert np.linalg.norm(expected[2] - template_mouth) < 25

    # The pixels really moved there: landmarks found again on the crop agree within a few pixels.
    again = detect_faces_68(crop, *dlib_models, upsample=0)
    found = _keypoints(again[largest_face_index(again)].landmarks)
    assert np.abs(found - expected).max() < 4.0


def test_crop_script_end_to_end(tmp_path: Path, astronaut_bgr: np.ndarray) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, image in (("astro.png", astronaut_bgr), ("宇航员.jpg", astronaut_bgr[:, ::-1]),
                        ("wall.png", np.full((200, 300, 3), 128, np.uint8))):
        ok, data = cv2.imencode(Path(name).suffix, image)
        (photos / name).write_bytes(data.tobytes())
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()}
    out = tmp_path / "faces"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "crop_align_face.py"), "-i", str(photos),
                           "-o", str(out), "--only_keep_largest"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "broken.png" in done.stderr and "wall.png: no face found" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astro.png", "宇航员.png"]
    for face in out.iterdir():
        crop = cv2.imdecode(np.fromfile(face, np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (512, 512, 3)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()} == before


def test_all_faces_get_an_index(tmp_path: Path, astronaut_bgr: np.ndarray) -> None:
    from codeformer.cli import crop_main

    pair = np.concatenate([astronaut_bgr, astronaut_bgr[:, ::-1]], axis=1)
    photos = tmp_path / "in"
    photos.mkdir()
    cv2.imwrite(str(photos / "pair.png"), pair)
    assert crop_main(["-i", str(photos / "pair.png"), "-o", str(tmp_path / "out"), "-q"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names[:2] == ["pair_00.png", "pair_01.png"] and all(n.startswith("pair_") for n in names)
