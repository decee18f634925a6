"""Big pictures within memory (issue 27): bounded detector copies, banded paste-back, lean decoding, refusals.

All on small synthetic pictures: the budgets are passed as parameters (or available memory is
monkeypatched), so each check runs in a fraction of a second.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from codeformer import imageio
from codeformer.face.alignment import FACE_SIZE, FFHQ_TEMPLATE_5
from codeformer.face.detection import MAX_DETECTION_PIXELS, DetectedFace, detection_size, find_faces
from codeformer.face.dlib_detector import DlibDetector
from codeformer.face.pasteback import (
    PASTE_BAND_PIXELS,
    PastedFace,
    parse_labels_to_mask,
    paste_faces,
    paste_faces_full_frame,
)
from codeformer.imageio import MemoryLimitError, Picture, decode_image, encode_image, to_uint8, write_image
from codeformer.options import RestoreOptions
from codeformer.restoration import (
    NETWORK_WORK_BYTES,
    PASTE_BYTES_PER_PIXEL,
    Models,
    _canvas,
    memory_needed,
    plan_faces,
)

GIB = 1 << 30


class RecordingDetector:
    """Finds nothing; records the size of every picture it is given."""

    def __init__(self, *, resize_for_detection: bool = True, area_factor: int = 1,
                 pixel_centred: bool = False) -> None:
        self.name, self.template_name = "recording", "ffhq"
        self.resize_for_detection, self.area_factor = resize_for_detection, area_factor
        self.pixel_centred = pixel_centred
        self.seen: list[tuple[int, int]] = []  # (width, height)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.seen.append((image.shape[1], image.shape[0]))
        return []


class MarkerDetector(RecordingDetector):
    """'Detects' the bright rectangle: its bounds (continuous coordinates: pixel i spans [i, i + 1)) or,
    when ``pixel_centred``, dlib-style whole pixel indices (box corners and points at pixel centres)."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        super().detect(image)
        ys, xs = np.nonzero(image[:, :, 1] > 127)
        if self.pixel_centred:  # inclusive pixel indices; the points at pixel centres
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
        else:  # bounds
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        landmarks = [(x1, y1), (x2, y1), (x1, y2), (x2, y2), ((x1 + x2) / 2, (y1 + y2) / 2)]
        return [DetectedFace(box=(x1, y1, x2, y2), score=1.0, landmarks=landmarks)]


def marker_picture(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    picture = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    picture[y1:y2, x1:x2] = 255
    return picture


# ------------------------------------------------------------------------------------------------
# The detector's copy


@pytest.mark.parametrize(("width", "height", "area_factor", "resize"), [
    (400, 300, 1, True), (300, 400, 1, True), (400, 300, 4, False), (2000, 37, 1, True), (37, 2000, 4, False),
])
def test_the_detectors_copy_stays_within_the_budget(width: int, height: int, area_factor: int, resize: bool) -> None:
    budget = 10_000
    detector = RecordingDetector(resize_for_detection=resize, area_factor=area_factor)
    find_faces(np.zeros((height, width, 3), np.uint8), detector, max_detection_pixels=budget)
    ((seen_width, seen_height),) = detector.seen
    assert seen_width * seen_height * area_factor <= budget < (seen_width + 1) * (seen_height + 1) * area_factor
    scale = math.sqrt(budget / (area_factor * width * height))  # the picture's shape, sides truncated
    assert 0 <= width * scale - seen_width < 1 and 0 <= height * scale - seen_height < 1


def test_extreme_aspect_ratios_no_longer_give_the_640_px_copy_a_huge_long_side() -> None:
    detector = RecordingDetector()
    find_faces(np.zeros((64, 4000, 3), np.uint8), detector)  # the reference: 640 x 40000 (25.6 MP)
    ((width, height),) = detector.seen
    assert width * height <= MAX_DETECTION_PIXELS and width / height == pytest.approx(4000 / 64, rel=0.01)


def test_a_thin_strip_gets_a_copy_one_pixel_high_within_the_budget() -> None:
    (width, height), scale = detection_size(2, 100_000, RecordingDetector(resize_for_detection=False),
                                            max_detection_pixels=5_000)
    assert scale is None and (width, height) == (5_000, 1)


def test_dlibs_upsampling_counts_four_times() -> None:
    assert DlibDetector.resize_for_detection is False and DlibDetector.pixel_centred is True
    assert DlibDetector(None, None, upsample_times=1).area_factor == 4
    assert DlibDetector(None, None, upsample_times=2).area_factor == 16


@pytest.mark.parametrize(("width", "height", "resize", "area_factor"), [
    (640, 480, True, 1), (1920, 1080, True, 1), (4000, 3000, True, 1), (12000, 9000, True, 1),
    (3125, 640, True, 1), (480, 300, True, 1),  # up to 4.9:1, and a small one enlarged to 640
    (512, 512, False, 4), (816, 612, False, 4), (1000, 500, False, 4),  # dlib up to 0.5 MP
])
def test_ordinary_sizes_keep_the_references_rule_exactly(width: int, height: int, resize: bool,
                                                         area_factor: int) -> None:
    detector = RecordingDetector(resize_for_detection=resize, area_factor=area_factor)
    size, scale = detection_size(height, width, detector)
    reference_scale = 640 / min(width, height) if resize else 1.0
    assert scale == reference_scale
    assert size == ((int(width * scale), int(height * scale)) if resize else (width, height))


def test_ordinary_pictures_find_exactly_what_the_unbounded_rule_finds() -> None:
    picture = marker_picture(1600, 1200, (600, 200, 801, 403))
    for resize, area_factor in ((True, 1), (False, 1)):
        bounded = MarkerDetector(resize_for_detection=resize, area_factor=area_factor)
        unbounded = MarkerDetector(resize_for_detection=resize, area_factor=area_factor)
        (face,) = find_faces(picture, bounded, eye_dist_threshold=None)
        (same,) = find_faces(picture, unbounded, eye_dist_threshold=None, max_detection_pixels=None)
        assert bounded.seen == unbounded.seen
        np.testing.assert_array_equal(face.box, same.box)
        np.testing.assert_array_equal(face.landmarks, same.landmarks)


def test_just_over_the_budget_the_copy_shrinks() -> None:
    detector = RecordingDetector(resize_for_detection=False, area_factor=4)
    (width, height), scale = detection_size(613, 817, detector)  # 4 x 500 821 > 2 000 000
    assert scale is None and width * height * 4 <= MAX_DETECTION_PIXELS and (width, height) < (817, 613)


# ------------------------------------------------------------------------------------------------
# Mapping back


def test_boxes_and_landmarks_found_on_the_bounded_copy_map_back_exactly() -> None:
    marker = (400, 240, 720, 560)  # multiples of 4: the 1/4 copy holds it whole
    picture = marker_picture(1600, 1200, marker)
    detector = MarkerDetector(resize_for_detection=False)
    (face,) = find_faces(picture, detector, eye_dist_threshold=None, max_detection_pixels=400 * 300)
    assert detector.seen == [(400, 300)]
    x1, y1, x2, y2 = marker
    np.testing.assert_array_equal(face.box, marker)
    corners_and_centre = [(x1, y1), (x2, y1), (x1, y2), (x2, y2), ((x1 + x2) / 2, (y1 + y2) / 2)]
    np.testing.assert_array_equal(face.landmarks, corners_and_centre)


def test_pixel_indices_map_back_to_the_centre_of_the_pixels_they_cover() -> None:
    # dlib-style: copy pixel i covers picture pixels [4 i, 4 i + 4), whose centre is 4 i + 1.5.
    marker = (400, 240, 720, 560)
    picture = marker_picture(1600, 1200, marker)
    detector = MarkerDetector(resize_for_detection=False, area_factor=4, pixel_centred=True)
    (face,) = find_faces(picture, detector, eye_dist_threshold=None, max_detection_pixels=4 * 400 * 300)
    assert detector.seen == [(400, 300)]
    first, last = (400 + 1.5, 240 + 1.5), (720 - 4 + 1.5, 560 - 4 + 1.5)  # centres of the corner 4x4 blocks
    np.testing.assert_array_equal(face.box, [*first, *last])
    np.testing.assert_array_equal(face.landmarks[0], first)
    np.testing.assert_array_equal(face.landmarks[3], last)


def test_a_copy_whose_sides_shrink_by_different_ratios_maps_back_per_axis() -> None:
    marker = (300, 100, 700, 500)
    picture = marker_picture(1000, 700, marker)
    detector = MarkerDetector(resize_for_detection=False)
    (face,) = find_faces(picture, detector, eye_dist_threshold=None, max_detection_pixels=50_000)
    ((width, height),) = detector.seen
    assert width / 1000 != height / 700  # truncated sizes: the two ratios differ
    # Each bound is off by less than one copy pixel, mapped back through its own axis' ratio.
    np.testing.assert_allclose(face.box, marker, atol=1000 / width)
    np.testing.assert_allclose(face.box[[1, 3]], marker[1::2], atol=700 / height)


# ------------------------------------------------------------------------------------------------
# Paste-back in bands of rows


def _alignment(center: tuple[float, float], side: float, degrees: float) -> np.ndarray:
    """A (2, 3) alignment: picture -> 512 crop, the crop square centred at ``center`` with side ``side``."""
    scale = FACE_SIZE / side
    rotation = cv2.getRotationMatrix2D(center, degrees, scale)
    rotation[:, 2] += np.array([FACE_SIZE / 2, FACE_SIZE / 2]) - np.array(center)
    return rotation


@pytest.fixture(scope="module")
def parse_mask() -> np.ndarray:
    labels = np.zeros((FACE_SIZE, FACE_SIZE), np.int32)
    cv2.circle(labels, (256, 256), 180, 1, -1)  # a round face class
    return parse_labels_to_mask(labels)


@pytest.mark.parametrize(("upscale", "dtype", "channels", "parse", "draw_box"), [
    (1, np.uint8, 3, False, False), (2, np.uint8, 4, True, True), (1, np.uint16, 3, True, False),
    (3, np.uint16, 4, False, True),
])
def test_paste_back_in_bands_equals_the_whole_canvas_bit_for_bit(upscale: int, dtype: type, channels: int,
                                                                 parse: bool, draw_box: bool,
                                                                 parse_mask: np.ndarray) -> None:
    rng = np.random.default_rng(upscale)
    height, width = 90 * upscale, 131 * upscale
    canvas = rng.integers(0, np.iinfo(dtype).max + 1, (height, width, channels), dtype=dtype)
    places = [((50.0, 40.0), 60.0, 10.0), ((70.0, 55.0), 50.0, -30.0), ((125.0, 85.0), 40.0, 45.0),
              ((20.0, 80.0), 12.0, 0.0)]  # two overlapping, one across a corner, a tiny one
    faces = [PastedFace(rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8),
                        _alignment(center, side, degrees), parse_mask if parse else None)
             for center, side, degrees in places]
    whole = paste_faces_full_frame(canvas, faces, upscale=upscale, draw_box=draw_box)
    for band_pixels in (1, 997, 6000):  # a row at a time, a few rows, bands larger than some faces
        banded = paste_faces(canvas, faces, upscale=upscale, draw_box=draw_box, band_pixels=band_pixels)
        np.testing.assert_array_equal(banded, whole, err_msg=f"band_pixels={band_pixels}")
    np.testing.assert_array_equal(paste_faces(canvas, faces, upscale=upscale, draw_box=draw_box), whole)


def test_paste_back_in_place_blends_into_the_given_canvas_only() -> None:
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    faces = [PastedFace(rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8), _alignment((80, 60), 70, 5))]
    expected = paste_faces(canvas, faces, upscale=1)
    assert not np.array_equal(expected, canvas)  # a copy: the canvas is untouched
    result = paste_faces(canvas, faces, upscale=1, in_place=True, band_pixels=500)
    assert result is canvas
    np.testing.assert_array_equal(canvas, expected)


@pytest.mark.parametrize("alpha", [False, True])
def test_the_canvas_at_upscale_1_is_one_new_copy_of_the_picture(alpha: bool) -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    picture = Picture(bgr, rng.integers(0, 256, (40, 50), dtype=np.uint8) if alpha else None, 4 if alpha else 3)
    canvas = _canvas(picture, (50, 40), None, 1)
    assert not np.shares_memory(canvas, bgr)
    np.testing.assert_array_equal(canvas, cv2.resize(picture.with_alpha(bgr), (50, 40), interpolation=cv2.INTER_LINEAR))


# ------------------------------------------------------------------------------------------------
# Decoding, 8-bit copies and encoding without full-size temporaries


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_pillow_pictures_convert_to_bgr_in_bands_exactly(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (37, 23, len(mode)), dtype=np.uint8)
    monkeypatch.setattr(imageio, "_CONVERT_BAND_BYTES", 23 * 4 * 5)  # five rows at a time
    got = imageio._pillow_to_bgr(Image.fromarray(pixels, mode))
    code = cv2.COLOR_RGB2BGR if mode == "RGB" else cv2.COLOR_RGBA2BGRA
    np.testing.assert_array_equal(got, cv2.cvtColor(pixels, code))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_on_the_array_matches_pillows_exif_transpose(orientation: int) -> None:
    from PIL import ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 256, (9, 14, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))[:, :, ::-1]
    np.testing.assert_array_equal(decode_image(buffer.getvalue()).bgr, expected)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG", exif=exif.tobytes())  # OpenCV decodes it: the same turn
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(png.getvalue()))))[:, :, ::-1]
    np.testing.assert_array_equal(decode_image(png.getvalue()).bgr, expected)


def test_16_bit_pictures_become_8_bit_in_bands_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.random.default_rng(3).integers(0, 65536, (29, 17, 3), dtype=np.uint16)
    monkeypatch.setattr(imageio, "_CONVERT_BAND_BYTES", 17 * 3 * 2 * 4)  # four rows at a time
    np.testing.assert_array_equal(to_uint8(image), ((image.astype(np.float32) / 257.0) + 0.5).astype(np.uint8))


def test_written_files_hold_the_encoded_bytes(tmp_path: Path) -> None:
    image = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = write_image(tmp_path / "picture.png", image)
    assert path.read_bytes() == encode_image("picture.png", image)


# ------------------------------------------------------------------------------------------------
# Refusing what does not fit


def _models(detector: object) -> Models:
    restorer = SimpleNamespace(template=FFHQ_TEMPLATE_5, input_size=FACE_SIZE)  # aligns; never restores here
    return Models(restorer=restorer, detector=detector)  # type: ignore[arg-type]


def test_a_picture_that_does_not_fit_is_refused_in_one_line_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio, "available_memory", lambda: 3 * GIB)
    detector = RecordingDetector()
    picture = Picture(np.zeros((300, 400, 3), np.uint8), None, 3)
    models = _models(detector)
    options = RestoreOptions(upscale=80, max_pixels=None)  # 32000 x 24000 out: a 2.3 GB canvas, and its file
    assert memory_needed(400, 300, models, options) > 3 * GIB
    with pytest.raises(MemoryLimitError) as refused:
        plan_faces(picture, models, options)
    message = str(refused.value)
    assert "\n" not in message and detector.seen == []
    assert message.startswith("restoring a 400x300 picture (0.1 megapixels) at upscale 80 takes about 4.3 GiB ")
    assert "3.0 GiB is available; use a smaller upscale (about " in message
    fits = float(message.split("(about ")[1].split()[0]) * 1e6  # output pixels at this upscale
    side = math.sqrt(fits / (400 * 300 * 80**2))  # the picture's sides scaled by this
    assert memory_needed(int(400 * side), int(300 * side), models, options) <= 3 * GIB
    assert memory_needed(int(400 * side * 1.05), int(300 * side * 1.05), models, options) > 3 * GIB


def test_at_upscale_1_the_refusal_says_how_small_to_make_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio, "available_memory", lambda: int(1.5 * GIB))
    picture = Picture(np.zeros((100, 120, 3), np.uint8), None, 3)
    models = _models(DlibDetector(None, None))
    options = RestoreOptions(upscale=1, max_pixels=None)
    # The real size would fit; pretend it is 100 times larger on each side (memory_needed alone is tested).
    needed = memory_needed(12000, 10000, models, options)
    assert needed > 1.5 * GIB
    monkeypatch.setattr("codeformer.restoration._picture_memory",
                        lambda picture, width, height, models, options: memory_needed(width * 100, height * 100,
                                                                                       models, options))
    with pytest.raises(MemoryLimitError, match=r"takes about .* GiB of memory and 1\.5 GiB is available; "
                                               r"downscale it to about \d+ megapixels, or free memory"):
        plan_faces(picture, models, options)


def test_a_video_whose_frames_do_not_fit_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from codeformer.temporal import TemporalFaceRestorer

    monkeypatch.setattr(imageio, "available_memory", lambda: 3 * GIB)
    detector = RecordingDetector()
    frames = [np.zeros((300, 400, 3), np.uint8)] * 2
    processor = TemporalFaceRestorer(_models(detector), RestoreOptions(upscale=80, max_pixels=None))
    with pytest.raises(MemoryLimitError, match=r"^restoring a 400x300 picture .* at upscale 80 takes about "):
        processor.process(frames)
    assert detector.seen == [] and processor.held_frames == 0


def test_the_video_command_refuses_it_in_one_line_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   small_restoration_weights: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import restore_main
    from video_factory import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=3, size=(400, 300), audio=None)
    monkeypatch.setattr(imageio, "available_memory", lambda: 3 * GIB)
    out = tmp_path / "out"
    # x80: frames of 32000 x 24000 (allowed by --max_pixels), a 2.3 GB canvas and its file: over 3 GiB.
    code = restore_main(["-i", str(clip), "-o", str(out), "-s", "80", "--max_pixels", "1000000000", "--weights_dir",
                         str(small_restoration_weights), "--detection_model", "retinaface_mobile0.25",
                         "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # (the random weights get a warning)
    assert len(errors) == 1 and "GiB of memory and 3.0 GiB is available; use a smaller upscale" in errors[0]
    assert not out.exists() or not any(out.rglob("*.mp4"))  # no half-written video


def test_what_fits_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio, "available_memory", lambda: 64 * GIB)
    detector = RecordingDetector()
    plan = plan_faces(Picture(np.zeros((300, 400, 3), np.uint8), None, 3), _models(detector), RestoreOptions())
    assert plan.faces == () and detector.seen == [(853, 640)]


def test_unknown_available_memory_refuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio, "available_memory", lambda: None)
    assert imageio.short_of_memory(1 << 60) is None


def test_decoding_a_picture_that_does_not_fit_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buffer, "PNG")
    monkeypatch.setattr(imageio, "available_memory", lambda: 1000)
    with pytest.raises(MemoryLimitError, match=r"^x\.png: decoding a 40x30 picture .* free memory, or save"):
        decode_image(buffer.getvalue(), name="x.png")


def test_the_estimate_grows_with_the_output_and_bounds_the_detector() -> None:
    options = RestoreOptions(upscale=1, max_pixels=None, grayscale="off")
    retinaface_like = _models(RecordingDetector())
    # Beyond the networks and the decoded picture: the canvas with the parser's work and a paste-back
    # band, or the finished picture and its file, whichever is larger.
    paste_and_parse = NETWORK_WORK_BYTES + PASTE_BYTES_PER_PIXEL * PASTE_BAND_PIXELS
    assert memory_needed(14140, 10605, retinaface_like, options) == 14140 * 10605 * 3 + paste_and_parse
    upscaled = RestoreOptions(upscale=8, max_pixels=None, grayscale="off")
    assert memory_needed(4000, 3000, retinaface_like, upscaled) == 2 * 32000 * 24000 * 3
    # dlib's part is the same for every picture over its budget, and the largest below 150 MP at -s 1.
    dlib = _models(DlibDetector(None, None))
    detection = memory_needed(4000, 3000, dlib, options)
    assert detection == memory_needed(14140, 10605, dlib, options) == pytest.approx(2 * GIB, rel=0.1)


def test_available_memory_reads_the_system_and_a_cgroup_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable:  8388608 kB\nSwapFree: 1048576 kB\n")
    cgroups = tmp_path / "cgroup"
    cgroups.write_text("0::/job\n")
    root = tmp_path / "fs"
    (root / "job").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{6 * GIB}\n")
    (root / "job" / "memory.current").write_text(f"{4 * GIB}\n")
    (root / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {GIB}\n")
    (root / "memory.max").write_text("max\n")
    monkeypatch.setattr(imageio, "_MEMINFO", meminfo)
    monkeypatch.setattr(imageio, "_OWN_CGROUPS", cgroups)
    monkeypatch.setattr(imageio, "_CGROUP_ROOT", root)
    assert imageio._system_available() == 9 * GIB  # MemAvailable + SwapFree
    assert imageio.available_memory() == 3 * GIB  # the cgroup's limit - use + reclaimable cache
    (root / "job" / "memory.max").write_text("max\n")
    assert imageio.available_memory() == 9 * GIB
