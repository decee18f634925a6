"""The front door: ``codeformer.load_pipeline`` and ``Pipeline.restore`` on a fake detector and a small network.

The small CodeFormer takes 128x128 crops (a 4x4 token grid), so whole-picture behaviour (plan,
restore, compose, the result's faces) is checked in seconds; the official 512 size is covered by
the end-to-end CLI tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

import codeformer
from checkpoint_factory import random_codeformer
from codeformer.archs import CodeFormerConfig
from codeformer.cli import phrase_error
from codeformer.face.alignment import FFHQ_TEMPLATE_5
from codeformer.face.detection import DetectedFace
from codeformer.imageio import write_image
from codeformer.pipeline import Pipeline, load_pipeline
from codeformer.registry import MODELS, model_spec
from codeformer.restoration import RestoreResult
from codeformer.restorer import FaceRestorer
from codeformer.weights import WEIGHTS

SIDE = 128  # crops of the small network
SMALL_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=(SIDE // 32) ** 2, base_channels=32)
# Two faces, each given by where its 5 FFHQ landmarks are, as fractions of the picture's width and height.
FACE_CENTRES = ((0.3, 0.45), (0.72, 0.55))
FACE_WIDTH = 0.25  # eye-to-mouth template spread, as a fraction of the picture width


class FakeDetector:
    """Faces at fixed places relative to the picture it is shown (detection may see it resized)."""

    name = "fake"
    template_name = "ffhq"

    def __init__(self, centres=FACE_CENTRES) -> None:
        self.centres = centres

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        faces = []
        template = (FFHQ_TEMPLATE_5 - 256.0) / 512.0  # (5, 2) around 0, face width 1
        for cx, cy in self.centres:
            points = template * FACE_WIDTH * width + [cx * width, cy * height]
            box = [*(points.min(axis=0) - 20), *(points.max(axis=0) + 20)]
            faces.append(DetectedFace(box=box, score=0.9, landmarks=points))
        return faces


def expected_landmarks(width: int, height: int) -> list[np.ndarray]:
    template = (FFHQ_TEMPLATE_5 - 256.0) / 512.0
    return [template * FACE_WIDTH * width + [cx * width, cy * height] for cx, cy in FACE_CENTRES]


def small_pipeline(detector: object | None = None, config: CodeFormerConfig = SMALL_CONFIG) -> Pipeline:
    """A whole-picture pipeline on the small network (128x128 crops; ``TINY_CONFIG``: 64x64, a quarter of the
    time, where the crop's size does not matter), with the fake two-face detector."""
    restorer = FaceRestorer(random_codeformer(config, seed=5), "cpu")
    return Pipeline(model_spec("codeformer", "restorer"), restorer, detector=detector or FakeDetector())


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return small_pipeline()


@pytest.fixture(scope="module")
def restorer(pipe: Pipeline) -> FaceRestorer:
    return pipe.restorer


def picture(width: int = 640, height: int = 520, seed: int = 0) -> np.ndarray:
    """A smooth random BGR uint8 picture."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def restored(pipe: Pipeline) -> Callable[..., RestoreResult]:
    """``pipe.restore(picture(width, height, seed))`` with the default options, restored once per module for each
    picture asked for: several tests compare another way of restoring a picture with it (they only read it)."""
    results: dict[tuple[int, int, int], RestoreResult] = {}

    def restore(width: int = 640, height: int = 520, seed: int = 0) -> RestoreResult:
        if (width, height, seed) not in results:
            results[width, height, seed] = pipe.restore(picture(width, height, seed))
        return results[width, height, seed]

    return restore


@pytest.mark.parametrize("layout", ["bgr8", "bgr16", "gray", "bgra"])
def test_whole_picture_keeps_size_times_upscale_dtype_and_channels(pipe: Pipeline, layout: str) -> None:
    image = picture(300, 200)  # short side below 512: worked on enlarged, returned at input x s
    if layout == "bgr16":
        image = image.astype(np.uint16) * 257
    elif layout == "gray":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif layout == "bgra":
        image = np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])
    result = pipe.restore(image, upscale=3)
    assert result.image.dtype == image.dtype
    assert result.image.shape == (600, 900, *image.shape[2:])
    assert len(result.faces) == 2
    if layout == "bgra":
        assert np.all(result.image[:, :, 3] == 200)


def test_faces_are_reported_in_the_input_pictures_pixels(restored: Callable[..., RestoreResult]) -> None:
    for width, height in ((640, 520), (300, 200)):  # as detected, and enlarged for detection
        result = restored(width, height)  # upscale 2, the default
        for face, landmarks in zip(result.faces, expected_landmarks(width, height)):
            # Detection sees the picture resized to whole pixels: the fake's fractions shift by < 0.5 px.
            np.testing.assert_allclose(face.landmarks, landmarks, atol=0.5)
            assert face.box[0] < landmarks[:, 0].min() and face.box[2] > landmarks[:, 0].max()
            assert face.score == pytest.approx(0.9)
            assert face.aligned.shape == face.restored.shape == (SIDE, SIDE, 3)
            assert not np.array_equal(face.aligned, face.restored)


def test_only_faces_change_and_the_input_is_kept(pipe: Pipeline) -> None:
    image = picture()
    before = image.copy()
    result = pipe.restore(image, upscale=1)
    np.testing.assert_array_equal(image, before)
    changed = np.any(result.image != image, axis=2)
    assert changed.any()
    # Far from both faces (the top corners and the bottom strip) every pixel is the input's.
    assert not changed[:60, :60].any() and not changed[:60, -60:].any() and not changed[-40:, :].any()


def test_only_center_face_restores_the_face_nearest_the_centre(pipe: Pipeline) -> None:
    result = pipe.restore(picture(), upscale=1, only_center_face=True)
    assert len(result.faces) == 1
    np.testing.assert_allclose(result.faces[0].landmarks, expected_landmarks(640, 520)[0], atol=0.5)  # 131 px off centre, the other 143


def test_several_pictures_at_once_equal_one_by_one(pipe: Pipeline, restored: Callable[..., RestoreResult]) -> None:
    seeds = (1, 2)
    images = [picture(seed=seed) for seed in seeds]
    together = pipe.restore_pictures([codeformer.pipeline.as_picture(i) for i in images], pipe.options(upscale=2))
    assert len(together) == len(seeds)
    for seed, result in zip(seeds, together):
        np.testing.assert_array_equal(result.image, restored(seed=seed).image)  # restored alone, at upscale 2


def test_a_path_gives_the_same_result_as_the_array(pipe: Pipeline, restored: Callable[..., RestoreResult],
                                                   tmp_path: Path) -> None:
    path = write_image(tmp_path / "-dash.png", picture(seed=1))
    np.testing.assert_array_equal(pipe.restore(path).image, restored(seed=1).image)  # the array, restored alone


def test_fidelity_weight_changes_the_faces(pipe: Pipeline) -> None:
    image = picture(seed=6)
    assert not np.array_equal(pipe.restore(image, fidelity_weight=0.0).image,
                              pipe.restore(image, fidelity_weight=1.0).image)


def test_aligned_face_comes_back_as_the_restored_crop_with_its_alpha(pipe: Pipeline) -> None:
    crop = np.dstack([picture(SIDE, SIDE, seed=7), np.full((SIDE, SIDE), 77, np.uint8)])
    result = pipe.restore(crop, has_aligned=True, fidelity_weight=0.3)
    assert result.image.shape == (SIDE, SIDE, 4) and np.all(result.image[:, :, 3] == 77)
    (face,) = result.faces
    np.testing.assert_array_equal(result.image[:, :, :3], face.restored)
    np.testing.assert_array_equal(face.aligned, crop[:, :, :3])


def test_models_without_fidelity_control_refuse_a_weight(restorer: FaceRestorer) -> None:
    pinned = FaceRestorer(restorer.net, "cpu", name="codeformer_colorization", fixed_weight=0.0)
    pipe = Pipeline(model_spec("codeformer_colorization", "restorer"), pinned)
    with pytest.raises(codeformer.OptionError) as caught:
        pipe.restore(picture(SIDE, SIDE), has_aligned=True, fidelity_weight=0.3)
    assert phrase_error(caught.value) == "-w 0.3: codeformer_colorization has no fidelity control; leave the weight out"
    assert pipe.restore(picture(SIDE, SIDE), has_aligned=True).image.shape == (SIDE, SIDE, 3)


def test_aligned_only_models_say_so_for_whole_pictures(restorer: FaceRestorer) -> None:
    pipe = Pipeline(model_spec("codeformer_inpainting", "restorer"), restorer, detector=FakeDetector())
    with pytest.raises(codeformer.CodeFormerError, match="works on aligned faces only: pass has_aligned=True"):
        pipe.restore(picture())
    without_detector = Pipeline(model_spec("codeformer", "restorer"), restorer)
    with pytest.raises(codeformer.CodeFormerError, match="without a face detector"):
        without_detector.restore(picture())


def test_bad_inputs_are_one_line_errors(pipe: Pipeline) -> None:
    for bad in (np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4, 3), np.float32), 42):
        with pytest.raises(codeformer.CodeFormerError) as caught:
            pipe.restore(bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(codeformer.OptionError, match="upscale 0"):
        pipe.restore(picture(), upscale=0)


# ------------------------------------------------------------------------------------ load_pipeline


@pytest.mark.parametrize(("kwargs", "kind", "listed"), [
    ({"model": "codeformr"}, "model", "codeformer, codeformer_colorization"),
    ({"detector": "bogus"}, "face detector", "retinaface_resnet50, retinaface_mobile0.25, dlib"),
    ({"bg_upsampler": "esrgan"}, "upsampler", "realesrgan"),
])
def test_unknown_names_are_refused_before_anything_loads(kwargs, kind, listed, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEFORMER_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # a download would fail differently
    with pytest.raises(codeformer.UnknownModelError) as caught:
        load_pipeline(**{"weights_dir": tmp_path / "w", **kwargs})
    assert str(caught.value).startswith(f"unknown {kind} ")
    assert listed in str(caught.value)
    assert not (tmp_path / "w").exists()


def test_bad_device_and_precision_fail_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(codeformer.OptionError, match="^precision fp16: CPUs compute float16 slowly"):
        load_pipeline(device="cpu", precision="fp16", weights_dir=tmp_path / "w")
    with pytest.raises(codeformer.OptionError, match="^device tpu: unknown device"):
        load_pipeline(device="tpu", weights_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_public_names_and_registry() -> None:
    for name in ("load_pipeline", "available_models", "available_detectors", "CodeFormerError", "Pipeline",
                 "RestoreResult"):
        assert name in codeformer.__all__ and getattr(codeformer, name) is not None
    assert codeformer.available_models()[:3] == ["codeformer", "codeformer_colorization", "codeformer_inpainting"]
    assert codeformer.available_detectors()[:3] == ["retinaface_resnet50", "retinaface_mobile0.25", "dlib"]
    for spec in MODELS.values():
        assert all(key in WEIGHTS for key in spec.weights), spec.name
        assert spec.license  # every model says under which terms its weights come
        if spec.kind == "restorer":
            assert spec.input_size in (256, 512, 1024, 2048) and spec.template in ("ffhq", "gpen") and spec.task


def test_cli_choices_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import restore_main

    with pytest.raises(SystemExit) as caught:
        restore_main(["--detection_model", "bogus", "-i", "x"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    for name in codeformer.available_detectors():
        assert name in err
    with pytest.raises(SystemExit) as caught:
        restore_main(["--bg_upsampler", "esrgan", "-i", "x"])
    assert caught.value.code == 2 and "realesrgan" in capsys.readouterr().err


def test_console_script_has_real_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import build_parser, main

    for command in ("restore", "colorize", "inpaint", "vqgan", "crop", "download"):
        assert build_parser().parse_args([command, *(["all"] if command == "download" else [])]).command == command
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    assert "colorize" in capsys.readouterr().out
    # Flags straight after the program name mean `restore`, as with the reference's script.
    assert main(["-i", "/nonexistent/folder", "-q"]) == 1


@pytest.mark.parametrize("argv", [["restore", "--bogus"], ["--bogus"], ["colorize", "-w", "0.5"],
                                  ["download", "all", "--bogus"]])
def test_a_subcommands_errors_show_its_own_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    command = argv[0] if argv[0] in ("restore", "colorize", "download") else "restore"
    assert err.startswith(f"usage: codeformer {command} [-h]")
    assert "COMMAND ..." not in err and "unrecognized arguments" in err


def test_fidelity_weight_with_a_model_without_it_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import restore_main

    with pytest.raises(SystemExit) as caught:
        restore_main(["--model", "gfpgan_v1.4", "-w", "0.7", "-i", "x"])
    assert caught.value.code == 2
    assert "gfpgan_v1.4 has no fidelity control; leave -w out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        restore_main(["--model", "restoreformer", "-i", "x"])
    assert caught.value.code == 2 and "gfpgan_v1.3, gfpgan_v1.4" in capsys.readouterr().err


@pytest.mark.parametrize(("ext", "input_name", "expected"), [
    ("png", "a.jpg", "a.png"), ("auto", "a.jpg", "a.jpg"), ("auto", "b.webp", "b.webp"), ("jpg", "c.png", "c.jpg"),
])
def test_ext_names_the_final_picture(ext: str, input_name: str, expected: str, pipe: Pipeline, tmp_path: Path) -> None:
    from codeformer.imageio import read_image
    from codeformer.jobs.local import restore_picture_files

    # A picture without faces: how the final picture is named and written does not depend on what was restored.
    faceless = Pipeline(pipe.spec, pipe.restorer, detector=FakeDetector(centres=()))
    source = write_image(tmp_path / "in" / input_name, picture(200, 160))
    report = restore_picture_files(faceless, [source], tmp_path / "out", faceless.options(upscale=1), progress=False,
                                   extension=ext)
    assert report.done == 1
    assert [p.name for p in (tmp_path / "out" / "final_results").iterdir()] == [expected]
    assert read_image(tmp_path / "out" / "final_results" / expected).width == 200


def test_faces_of_one_picture_tick_the_progress_bar_one_batch_at_a_time(pipe: Pipeline,
                                                                       restored: Callable[..., RestoreResult],
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    expected = restored(300, 200).image  # the quiet module pipeline's result
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: bars (elsewhere: log lines)
    # The quiet pipeline's network (a restorer keeps no state between calls), shown each face alone.
    ticking = Pipeline(pipe.spec, pipe.restorer, detector=FakeDetector())
    ticking.batch_size, ticking.progress = 1, True
    result = ticking.restore(picture(300, 200))
    bars = capsys.readouterr().err
    assert "faces: " in bars and "1/2" in bars and "2/2" in bars
    np.testing.assert_array_equal(result.image, expected)  # same outputs as one restore call


def test_load_pipeline_restores_one_face_at_a_time_on_cpu_by_default(restoration_weights: Path) -> None:
    from codeformer import load_pipeline

    # On a CPU a batch is no faster and each face in it adds about 0.45 GiB (benchmarks/bench_memory.py).
    assert load_pipeline(device="cpu", detector=None, weights_dir=restoration_weights).batch_size == 1
