"""The web app: its handlers in-process, the ``/restore`` API through gradio_client, the page in Chromium.

Every network is one of the session's small random CodeFormers (checkpoints tests/checkpoint_factory.py
writes once: 64x64 crops, but 128x128 for the served app's inpainting, whose brush is sized for faces
of at least that size) behind a fake detector that "finds" faces at fixed places, injected through
the app's pipeline factory; nothing is downloaded. The server listens on 127.0.0.1 on a free port
and is closed by its fixture. The browser tests drive Debian's ``chromium`` (``.ci/run`` installs it)
through Playwright, with every request that leaves 127.0.0.1 aborted and recorded: the page must
work, and ask for nothing, with the network closed.
Set ``CODEFORMER_WEBAPP_SCREENSHOTS`` to a folder to keep the screenshots the tests take.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the web app needs gradio (requirements.txt)")

import gradio as gr  # noqa: E402
from checkpoint_factory import SMALL_CONFIG, TINY_CONFIG, cached_small_codeformer_checkpoint  # noqa: E402

from codeformer import webapp  # noqa: E402
from codeformer.webapp import page as webpage  # noqa: E402
from codeformer.archs import CodeFormer, build_codeformer  # noqa: E402
from codeformer.errors import CodeFormerError  # noqa: E402
from codeformer.face.alignment import FFHQ_TEMPLATE_5  # noqa: E402
from codeformer.face.detection import DetectedFace  # noqa: E402
from codeformer.pipeline import Pipeline  # noqa: E402
from codeformer.registry import model_spec  # noqa: E402
from codeformer.restorer import FaceRestorer  # noqa: E402
from codeformer.options import LoadOptions  # noqa: E402
from codeformer.webapp import PipelineCache  # noqa: E402

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # the browser tests skip; the others run
    PlaywrightTimeout = TimeoutError  # type: ignore[misc, assignment]
    sync_playwright = None  # type: ignore[assignment]

SIDE = 64  # crops of the small network (TINY_CONFIG: a 2x2 latent grid)
# Crops of the served app's inpainting network (SMALL_CONFIG: a 4x4 latent grid): the page's brush, sized for
# 512 px faces, would paint most of a 64 px face.
SERVED_INPAINTING_SIDE = 128
# Where the fake detector's faces are, as fractions of the picture. One face unless a test needs more:
# every face is a network forward, the slowest part of these tests.
ONE_FACE = ((0.5, 0.45),)
TWO_FACES = ((0.3, 0.45), (0.72, 0.55))
FACE_WIDTH = 0.25  # their size, as a fraction of the picture's width
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_TIMEOUT_MS = 60_000
EDITOR_UPLOAD_TRIES = 3

pytestmark = [
    # Gradio's queue calls pandas in ways pandas 3 deprecates: not this project's to fix.
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


class FakeDetector:
    """Faces at fixed places relative to the picture it is shown."""

    name = "fake"
    template_name = "ffhq"

    def __init__(self, centres: tuple[tuple[float, float], ...], gil_hold: int = 0) -> None:
        self.centres = centres
        self.gil_hold = gil_hold

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        # One C call that never releases Python's GIL, as dlib's detector runs (sum over a range runs in C).
        sum(range(self.gil_hold))
        height, width = image.shape[:2]
        template = (FFHQ_TEMPLATE_5 - 256.0) / 512.0
        faces = []
        for cx, cy in self.centres:
            points = template * FACE_WIDTH * width + [cx * width, cy * height]
            faces.append(DetectedFace(box=[*(points.min(axis=0) - 20), *(points.max(axis=0) + 20)], score=0.9,
                                      landmarks=points))
        return faces


@functools.lru_cache(maxsize=2)
def small_network(checkpoint: Path) -> CodeFormer:
    """One small random CodeFormer per checkpoint for every model of a process: using it is read-only."""
    from codeformer.weights import load_state_dict

    net = build_codeformer(load_state_dict(checkpoint))
    assert net.config in (TINY_CONFIG, SMALL_CONFIG)
    return net


class SmallFactory:
    """Builds pipelines of the small random network in ``checkpoint`` (the inpainting model's in
    ``inpainting_checkpoint`` if given), as :func:`codeformer.load_pipeline` builds real ones."""

    def __init__(self, checkpoint: Path, centres: tuple[tuple[float, float], ...] = ONE_FACE,
                 dlib_gil_hold: int = 0, inpainting_checkpoint: Path | None = None) -> None:
        self.checkpoint = checkpoint
        self.inpainting_checkpoint = inpainting_checkpoint or checkpoint
        self.centres = centres
        self.dlib_gil_hold = dlib_gil_hold  # the "dlib" detector's GIL-holding work (see FakeDetector)
        self.choices: list[LoadOptions] = []
        # The restoration process starts afresh with a thread per core: give it this process's share of the
        # cores (tests/conftest.py shares them out between the suite's processes).
        self.torch_threads = torch.get_num_threads()

    def __call__(self, choice: LoadOptions) -> Pipeline:
        self.choices.append(choice)
        torch.set_num_threads(self.torch_threads)
        spec = model_spec(choice.model, "restorer")
        # As the registry builds them: colorization pinned at w=0, inpainting at w=1 without AdaIN; models
        # without a fidelity weight (GFPGAN) stand in as a CodeFormer pinned at w=0.
        fixed = None if spec.supports_fidelity else 1.0 if spec.task == "inpaint" else 0.0
        network = small_network(self.inpainting_checkpoint if spec.task == "inpaint" else self.checkpoint)
        restorer = FaceRestorer(network, "cpu", name=choice.model, fixed_weight=fixed, adain=spec.task != "inpaint")
        hold = self.dlib_gil_hold if choice.detector == "dlib" else 0
        detector = FakeDetector(self.centres, hold) if choice.detector is not None and spec.task == "restore" else None
        return Pipeline(spec, restorer, detector=detector)


def ask(**values) -> webapp.PageRequest:
    """What the Restore tab (or the API) sends with these widget values, for a server with default settings."""
    return webapp.page_request(LoadOptions(), **values)


def smooth_picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random BGR uint8 picture, with no pure-white pixel (white means a hole to inpaint)."""
    coarse = np.random.default_rng(seed).integers(0, 250, (6, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 250).astype(np.uint8)


def face_picture(side: int) -> np.ndarray:
    """scikit-image's astronaut (a real face, public domain) as BGR, ``side`` x ``side``, no pure white."""
    from skimage import data

    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return np.minimum(cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA), 250)


def save_png(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A small, valid PNG whose header says ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4)  # a few rows; never decoded
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's random CodeFormer for 64x64 crops (TINY_CONFIG): loading it is cheaper than making it."""
    return cached_small_codeformer_checkpoint(tmp_path_factory, TINY_CONFIG)


@pytest.fixture()
def factory(tiny_checkpoint: Path) -> SmallFactory:
    return SmallFactory(tiny_checkpoint)


@pytest.fixture()
def cache(factory: SmallFactory) -> PipelineCache:
    return PipelineCache(factory)


@pytest.fixture()
def two_face_cache(tiny_checkpoint: Path) -> PipelineCache:
    return PipelineCache(SmallFactory(tiny_checkpoint, TWO_FACES))


# ---------------------------------------------------------------------------------------- handlers


def test_restore_keeps_size_depth_and_alpha_in_the_download(two_face_cache: PipelineCache, tmp_path: Path) -> None:
    cache = two_face_cache
    bgr16 = smooth_picture(200, 160).astype(np.uint16) * 257
    alpha = np.full((160, 200), 40_000, np.uint16)
    upload = save_png(tmp_path / "family photo.png", np.dstack([bgr16, alpha]))
    outcome = webapp.restore_uploads(cache, [upload], ask(fidelity_weight=0.7, upscale=2),
                                     tmp_path / "out")
    (result,) = outcome.results
    download = cv2.imread(str(result.download), cv2.IMREAD_UNCHANGED)
    assert download.dtype == np.uint16 and download.shape == (320, 400, 4)
    assert np.all(download[:, :, 3] == 40_000)
    assert (result.width, result.height, result.faces) == (400, 320, 2)
    for preview in (result.before, result.after):  # what the page shows: 8-bit, the output's size
        shown = cv2.imread(str(preview), cv2.IMREAD_UNCHANGED)
        assert shown.dtype == np.uint8 and shown.shape[:2] == (320, 400)
    assert [caption for _, caption in outcome.faces] == ["family photo.png: face 1", "family photo.png: face 2"]
    assert outcome.message.startswith("family photo.png restored, 2 faces: 400x320 px")
    assert outcome.notes == ()


def test_face_choices_restore_only_the_chosen_faces(two_face_cache: PipelineCache, tmp_path: Path) -> None:
    cache = two_face_cache
    upload = save_png(tmp_path / "pair.png", smooth_picture(200, 160))
    for options, count in ((ask(upscale=1, face_index="1"), 1), (ask(upscale=1, largest_face=True), 1),
                           (ask(upscale=1, min_face_size=10_000), 0), (ask(upscale=1), 2)):
        outcome = webapp.restore_uploads(cache, [upload], options, tmp_path / f"out{count}{options.restore.face_index}")
        assert outcome.results[0].faces == count, options
    with pytest.raises(CodeFormerError) as caught:
        webapp.restore_uploads(cache, [upload], ask(face_index="one"), tmp_path / "bad")
    assert webapp.phrase(caught.value).startswith("Only these faces one: face numbers from 0")


def test_a_reference_photo_restores_only_that_person(two_face_cache: PipelineCache, tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    cache = two_face_cache
    upload = save_png(tmp_path / "pair.png", face_picture(256))
    # The same photo as the reference: its first face is the person (distance 0), the other one is not chosen.
    outcome = webapp.restore_uploads(cache, [upload], ask(upscale=1, reference_face=str(upload)), tmp_path / "out")
    assert outcome.results[0].faces == 1
    assert webapp.restore_uploads(cache, [upload], ask(upscale=1), tmp_path / "all").results[0].faces == 2


def test_aligned_faces_come_back_at_the_networks_size(cache: PipelineCache, tmp_path: Path) -> None:
    upload = save_png(tmp_path / "crop.png", face_picture(SIDE))
    outcome = webapp.restore_uploads(cache, [upload], ask(has_aligned=True, upscale=4), tmp_path / "o")
    assert cv2.imread(str(outcome.results[0].download)).shape == (SIDE, SIDE, 3)
    assert len(outcome.faces) == 1 and outcome.notes == ()


def test_several_pictures_go_on_past_a_bad_one(cache: PipelineCache, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = save_png(tmp_path / "a" / "same.png", smooth_picture(160, 120, seed=1))
    second = save_png(tmp_path / "b" / "same.png", smooth_picture(160, 120, seed=2))
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    outcome = webapp.restore_uploads(cache, [first, bad, second], ask(upscale=1), tmp_path / "out")
    assert [result.name for result in outcome.results] == ["same.png", "same.png"]
    assert len({result.download for result in outcome.results}) == 2  # same names, distinct downloads
    assert outcome.notes == ("notes.png: not a readable picture (corrupt, truncated or unsupported format)",)
    assert outcome.message.startswith("2 pictures restored (2 faces)")


def _bad_upload(kind: str, folder: Path) -> Path:
    if kind == "not a picture":
        path = folder / "letter.png"
        path.write_bytes(b"Dear friend,\n" * 10)
    elif kind == "truncated":
        path = save_png(folder / "cut.png", smooth_picture(120, 100))
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "huge":
        path = folder / "bomb.png"
        path.write_bytes(png_claiming(30_000, 30_000))
    else:
        path = folder / "empty.png"
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("not a picture", "letter.png: not a readable picture (corrupt, truncated or unsupported format)"),
    ("truncated", "cut.png: not a readable picture (corrupt, truncated or unsupported format)"),
    ("huge", ("bomb.png: 30000x30000 pixels (900.0 megapixels) is over the limit of 150 megapixels; raise it with "
              "codeformer ui --max_pixels if you trust this file")),
    ("empty", "empty.png: file is empty"),
])
def test_bad_uploads_are_one_readable_line(kind: str, message: str, cache: PipelineCache, tmp_path: Path,
                                           factory: SmallFactory) -> None:
    upload = _bad_upload(kind, tmp_path)
    with pytest.raises(CodeFormerError) as caught:
        webapp.restore_uploads(cache, [upload], ask(), tmp_path / "out")
    assert webapp.phrase(caught.value) == message
    # What the page gets: that line as a Gradio error, not a traceback.
    page_handler = webpage.shown_in_page(webapp.restore_uploads)
    with pytest.raises(gr.Error) as shown:
        page_handler(cache, [upload], ask(), tmp_path / "out")
    assert shown.value.message == message and not shown.value.print_exception and shown.value.duration is None
    assert factory.choices == []  # refused before any network was loaded


def test_an_output_over_the_limit_is_refused_before_any_work(cache: PipelineCache, tmp_path: Path,
                                                             factory: SmallFactory) -> None:
    upload = save_png(tmp_path / "wide.png", smooth_picture(200, 100))
    with pytest.raises(CodeFormerError) as caught:
        webapp.restore_uploads(cache, [upload], ask(upscale=4, max_pixels=100_000), tmp_path / "out")
    assert webapp.phrase(caught.value) == (
        "wide.png: an output of 800x400 pixels (0.3 megapixels) is over the limit of 0.1 megapixels; use a smaller "
        "scale, or raise the limit with codeformer ui --max_pixels")
    assert factory.choices == []
    assert webapp.restore_uploads(cache, [upload], ask(upscale=2, max_pixels=100_000),
                                  tmp_path / "out").results[0].width == 400


def test_models_without_fidelity_control_ignore_the_slider(cache: PipelineCache, tmp_path: Path) -> None:
    upload = save_png(tmp_path / "p.png", smooth_picture(160, 120))
    gfpgan = next(name for name in webapp.restoration_models() if not webapp.supports_fidelity(name))
    outcome = webapp.restore_uploads(cache, [upload], ask(fidelity_weight=0.7, model=gfpgan, upscale=1),
                                     tmp_path / "o")
    assert outcome.results[0].faces == 1


def test_unexpected_failures_are_one_line_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise KeyError("boom")

    with pytest.raises(gr.Error) as shown:
        webpage.shown_in_page(broken)()
    assert shown.value.message == "something went wrong (KeyError); the app's log has the details"
    assert "Traceback" in caplog.text  # the details are in the server's log, not the page

    def exhausted() -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 123456789 bytes")

    with pytest.raises(gr.Error) as shown:
        webpage.shown_in_page(exhausted)()
    assert shown.value.message == "out of memory: try a smaller upscale or a smaller picture"


def test_pipelines_are_loaded_once_per_choice_and_bounded(tmp_path: Path, factory: SmallFactory) -> None:
    cache = PipelineCache(factory, capacity=2)
    upload = save_png(tmp_path / "p.png", smooth_picture(160, 120))
    webapp.restore_uploads(cache, [upload], ask(upscale=1), tmp_path / "o")
    webapp.restore_uploads(cache, [upload], ask(upscale=1, fidelity_weight=0.9), tmp_path / "o")
    assert cache.loads == 1  # per-call options need no other networks
    for choice in (LoadOptions(detector="YOLOv5n"), LoadOptions("codeformer_colorization", None)):
        with cache.using(choice):
            pass
    assert cache.loads == 3
    # The least recently used one made room.
    assert cache.loaded() == (LoadOptions(detector="YOLOv5n"), LoadOptions("codeformer_colorization", None))


def test_device_work_is_serialised(tmp_path: Path, factory: SmallFactory) -> None:
    from codeformer.restoration import RestoreResult

    cache = PipelineCache(factory)
    active, most = 0, 0
    guard = threading.Lock()

    def counted(pictures, options):
        # Stands in for the networks: long enough for another request to try to get in.
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        time.sleep(0.1)
        with guard:
            active -= 1
        return [RestoreResult(picture.bgr, ()) for picture in pictures]

    with cache.using(ask().load) as pipeline:
        pipeline.restore_pictures = counted  # type: ignore[method-assign]
    upload = save_png(tmp_path / "p.png", smooth_picture(160, 120))
    errors: list[BaseException] = []

    def request(index: int) -> None:
        try:
            webapp.restore_uploads(cache, [upload], ask(upscale=1), tmp_path / f"o{index}")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=request, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and most == 1 and cache.loads == 1


def test_colorize_and_inpaint(cache: PipelineCache, tmp_path: Path) -> None:
    gray = cv2.cvtColor(cv2.cvtColor(face_picture(SIDE), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    colorized = webapp.colorize_uploads(cache, [save_png(tmp_path / "gray.png", gray)], tmp_path / "c")
    assert cv2.imread(str(colorized.results[0].download)).shape == (SIDE, SIDE, 3)

    face = face_picture(SIDE)
    painted = face.copy()
    hole = np.s_[SIDE * 5 // 16:SIDE * 9 // 16, SIDE * 3 // 8:SIDE * 11 // 16]  # a box across the middle
    painted[hole] = 255
    outcome = webapp.inpaint_uploads(cache, [save_png(tmp_path / "holes.png", painted)], tmp_path / "i")
    filled = cv2.imread(str(outcome.results[0].download))
    changed = np.any(filled != painted, axis=2)
    above, below = SIDE * 5 // 16 - SIDE // 32, SIDE * 9 // 16 + SIDE // 32  # a few rows off the box's edges
    assert changed[hole].mean() > 0.9 and not changed[:above].any() and not changed[below:].any()

    # From the page's editor: RGB(A) with an opaque canvas; the alpha it adds is not kept.
    rgba = np.dstack([cv2.cvtColor(painted, cv2.COLOR_BGR2RGB), np.full((SIDE, SIDE), 255, np.uint8)])
    edited = webapp.inpaint_painted(cache, rgba, tmp_path / "e")
    np.testing.assert_array_equal(cv2.imread(str(edited.results[0].download)), filled)

    unpainted = webapp.inpaint_uploads(cache, [save_png(tmp_path / "clean.png", face)], tmp_path / "u")
    assert unpainted.notes[0].startswith("clean.png: no pure-white (255, 255, 255) pixels, so nothing is filled")
    with pytest.raises(CodeFormerError, match="upload an aligned face into the editor"):
        webapp.inpaint_painted(cache, None, tmp_path / "n")


def test_aligned_faces_of_another_size_are_resized_with_a_note(cache: PipelineCache, tmp_path: Path) -> None:
    upload = save_png(tmp_path / "big.png", face_picture(200))
    outcome = webapp.colorize_uploads(cache, [upload], tmp_path / "c")
    assert outcome.notes == ((f"big.png: 200x200 is resized to {SIDE}x{SIDE}, the size of aligned faces "
                              "(see codeformer crop)"),)


def test_video_keeps_frames_and_audio_and_reports_progress(cache: PipelineCache, tmp_path: Path) -> None:
    from video_factory import make_clip

    from codeformer.video import probe_video

    clip = make_clip(tmp_path / "holiday.mp4", frames=3, fps=10.0, size=(96, 64), audio="aac")
    seen: list[float] = []
    outcome = webapp.restore_video_upload(cache, clip, ask(upscale=2), tmp_path / "out",
                                          progress=lambda fraction, _: seen.append(fraction))
    info = probe_video(outcome.path)
    assert (info.width, info.height, info.frame_count, info.has_audio) == (192, 128, 3, True)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert outcome.message.startswith("holiday.mp4 restored: 3 frames at 192x128, audio kept (1 track)")
    not_video = save_png(tmp_path / "still.png", smooth_picture(64, 64))
    with pytest.raises(CodeFormerError, match=r"^still.png: not a video this app reads \(.mp4, .mov"):
        webapp.restore_video_upload(cache, not_video, ask(), tmp_path / "out")


def test_bad_option_values_name_the_pages_controls(cache: PipelineCache, tmp_path: Path) -> None:
    upload = save_png(tmp_path / "p.png", smooth_picture(64, 64))
    with pytest.raises(CodeFormerError) as caught:
        webapp.restore_uploads(cache, [upload], ask(upscale=2.5), tmp_path / "o")  # type: ignore[arg-type]
    assert webapp.phrase(caught.value) == "Upscale 2.5: must be a whole number from 1 to 4"
    with pytest.raises(CodeFormerError, match="unknown face detector 'bogus'; choose one of: retinaface_resnet50"):
        webapp.restore_uploads(cache, [upload], ask(detector="bogus"), tmp_path / "o")
    with pytest.raises(CodeFormerError, match="^upload a picture first$"):
        webapp.restore_uploads(cache, [], ask(), tmp_path / "o")


def test_ui_command_prints_the_address_and_serves(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import COMMANDS, build_parser

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.share, args.device, args.precision) == ("127.0.0.1", None, False, "auto", "fp32")
    launched = {}

    class Running:
        local_url, share_url = "http://127.0.0.1:1234/", None

        def serve_forever(self) -> None:
            launched["served"] = True

    def fake_launch(**kwargs):
        launched.update(kwargs)
        return Running()

    monkeypatch.setattr(webapp, "launch_app", fake_launch)
    # The command's body, without the process-wide CPU tuning `main` applies (it would outlive this test).
    ui_args = build_parser().parse_args(["ui", "--port", "1234", "--device", "cpu", "--max_pixels", "1000000"])
    assert COMMANDS["ui"].run(ui_args) == 0
    assert capsys.readouterr().out == "CodeFormer web app: http://127.0.0.1:1234/  (Ctrl+C to stop)\n"
    assert launched == {"host": "127.0.0.1", "port": 1234, "share": False, "device": "cpu", "precision": "fp32",
                        "weights_dir": None, "max_pixels": 1_000_000, "served": True}


# ---------------------------------------------------------------------------------- the live app


# How long the "dlib" detector of the live app's pipelines holds the GIL: longer than the page may take.
DLIB_GIL_SECONDS = 2.5
PAGE_SECONDS = 2.0


# Loads a page of this machine's app every 0.1 s until stopped; prints the seconds each load took, a line each.
# Loopback only, and never through a proxy from the environment (that would leave the machine).
PAGE_PROBE = """
import sys, time, urllib.parse, urllib.request
url = sys.argv[1]
assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", url
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
while True:
    started = time.perf_counter()
    opener.open(url, timeout=30).read()
    print(time.perf_counter() - started, flush=True)
    time.sleep(0.1)
"""


def gil_hold_for(seconds: float) -> int:
    """The length of the range FakeDetector sums to hold the GIL about ``seconds`` on this machine."""
    count = 2_000_000
    started = time.perf_counter()
    sum(range(count))
    return int(count * seconds / (time.perf_counter() - started))


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webapp.RunningApp]:
    """The app on 127.0.0.1 (a free port) with small random networks in a restoration process, as the
    ``ui`` command serves it; closed after the module's tests, which stops that process."""
    inpainting = cached_small_codeformer_checkpoint(tmp_path_factory, SMALL_CONFIG)
    factory = SmallFactory(tiny_checkpoint, dlib_gil_hold=gil_hold_for(DLIB_GIL_SECONDS),
                           inpainting_checkpoint=inpainting)
    running = webapp.serve(webapp.RestorationProcess(factory), host="127.0.0.1", port=webapp.free_port())
    try:
        yield running
    finally:
        running.close()
    assert running.runner.pid is None


def test_the_app_listens_on_loopback_without_analytics(server: webapp.RunningApp) -> None:
    assert server.local_url.startswith("http://127.0.0.1:")
    assert server.share_url is None
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and server.app.analytics_enabled is False


def test_restore_api_through_gradio_client(server: webapp.RunningApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    picture = smooth_picture(120, 100).astype(np.uint16) * 257
    upload = save_png(tmp_path / "scan.png", picture)
    client = Client(server.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
    path = client.predict(handle_file(str(upload)), fidelity_weight=0.7, upscale=3, api_name="/restore")
    restored = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert Path(path).name == "scan_restored.png"
    assert restored.dtype == np.uint16 and restored.shape == (300, 360, 3)

    bad = tmp_path / "scan2.png"
    bad.write_bytes(upload.read_bytes()[:200])
    with pytest.raises(Exception) as caught:
        client.predict(handle_file(str(bad)), api_name="/restore")
    assert "scan2.png: not a readable picture (corrupt, truncated or unsupported format)" in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_the_server_answers_while_it_restores_and_every_queued_call_returns(server: webapp.RunningApp,
                                                                          tmp_path: Path) -> None:
    """A call whose detector holds the GIL for seconds (as dlib's does), then 8 default gradio_client calls
    at once: the page keeps loading in under 2 s meanwhile, and every call returns its picture."""
    from gradio_client import Client, handle_file

    upload = save_png(tmp_path / "photo.png", smooth_picture(120, 100))
    results: dict[str, str | BaseException] = {}

    def call(name: str, **options) -> None:
        started = time.perf_counter()
        try:
            client = Client(server.local_url, verbose=False, download_files=str(tmp_path / name))
            results[name] = client.predict(handle_file(str(upload)), api_name="/restore", **options)
        except Exception as error:  # noqa: BLE001 - asserted below
            results[name] = error
        results[f"{name} seconds"] = time.perf_counter() - started

    # The page is loaded from another process: in this one, a held GIL would stop the clock too.
    probe = subprocess.Popen([sys.executable, "-c", PAGE_PROBE, server.local_url], stdout=subprocess.PIPE, text=True)
    try:
        slow = threading.Thread(target=call, args=("dlib",), kwargs={"detector": "dlib"})
        slow.start()
        time.sleep(0.5)
        calls = [threading.Thread(target=call, args=(f"client{index}",)) for index in range(8)]
        for thread in calls:
            thread.start()
        slow.join(timeout=120)
    finally:
        probe.terminate()
    page_seconds = [float(line) for line in probe.communicate(timeout=30)[0].split()]
    for thread in calls:
        thread.join(timeout=120)
    assert results["dlib seconds"] > DLIB_GIL_SECONDS  # the page was loaded while the GIL was held
    assert len(page_seconds) >= 5 and max(page_seconds) < PAGE_SECONDS, page_seconds
    for name in ["dlib", *(f"client{index}" for index in range(8))]:
        assert isinstance(results[name], str) and Path(results[name]).name == "photo_restored.png", results[name]
        assert cv2.imread(results[name]).shape == (200, 240, 3)


# -------------------------------------------------------------------------------------- the browser


# The network as the browser sees it: closed, but for this machine. Every request goes to a proxy
# that is not there (loopback is never proxied), and no host name resolves. (Playwright's request
# interception is not used for this: it breaks the image editor's uploads, which go through blob URLs.)
CLOSED_NETWORK = ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        message = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if sync_playwright is None:
        pytest.skip("playwright (requirements.txt) is not installed")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *CLOSED_NETWORK])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser, server: webapp.RunningApp) -> Iterator[tuple[object, list[str]]]:
    """A fresh page on the app, and the requests it made for anything not on this machine (all fail)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []
    context.on("request", lambda request: None if request.url.startswith((server.local_url, "blob:", "data:"))
               else outside.append(request.url))
    tab = context.new_page()
    tab.set_default_timeout(BROWSER_TIMEOUT_MS)
    tab.goto(server.local_url)
    tab.wait_for_selector("#restore-button")
    try:
        yield tab, outside
    finally:
        context.close()


def _upload(tab, zone: str, path: Path) -> None:
    """Choose ``path`` in the file upload ``zone`` and wait until the page lists it."""
    tab.locator(f"{zone} input[type=file]").set_input_files(str(path))
    # The page shows a name's stem and extension in separate elements when it shortens long names.
    tab.locator(zone).get_by_text(path.stem).first.wait_for()


def _open_in_editor(tab, path: Path) -> None:
    """Open the Inpaint tab and load ``path`` into its image editor."""
    placeholder = tab.locator("#inpaint-editor").get_by_text("Upload an image")
    for attempt in range(EDITOR_UPLOAD_TRIES):
        tab.get_by_role("tab", name="Inpaint").click()
        # The editor makes its two canvases once its drawing engine is ready; a file chosen before that
        # breaks it (Gradio's editor reads its layers before they exist), so wait for them.
        tab.locator("#inpaint-editor canvas").nth(1).wait_for()
        tab.locator("#inpaint-editor input[type=file]").first.set_input_files(str(path))
        try:
            placeholder.wait_for(state="hidden", timeout=BROWSER_TIMEOUT_MS // EDITOR_UPLOAD_TRIES)
            return
        except PlaywrightTimeout:
            if attempt == EDITOR_UPLOAD_TRIES - 1:
                raise
            tab.reload()  # a broken editor stays broken: start over on a fresh page
            tab.wait_for_selector("#restore-button")


def _screenshot(tab, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("CODEFORMER_WEBAPP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tab.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def _downloaded(tab, tab_name: str, tmp_path: Path, name: str) -> np.ndarray:
    """The picture behind the first download link of a tab, decoded as stored."""
    link = tab.locator(f"#{tab_name}-downloads a").first
    link.wait_for()
    response = tab.request.get(link.get_attribute("href"))
    assert response.ok
    path = tmp_path / name
    path.write_bytes(response.body())
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_browser_restore(page, tmp_path: Path) -> None:
    tab, outside = page
    # The network is closed for the page, as on a machine without one...
    assert tab.evaluate("fetch('http://example.com/').then(() => 'open', () => 'closed')") == "closed"
    outside.remove("http://example.com/")
    upload = save_png(tmp_path / "astronaut.png", face_picture(240))
    _upload(tab, "#restore-input", upload)
    tab.click("#restore-button")
    tab.locator("#restore-message").get_by_text("astronaut.png restored, 1 face: 480x480 px").wait_for()
    images = tab.locator("#restore-comparison img")
    images.last.wait_for()
    sizes = [images.nth(index).evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]")
             for index in range(images.count())]
    assert sizes == [[480, 480], [480, 480]]  # before and after, at the output's size
    assert tab.locator("#restore-faces img").count() == 1
    assert _downloaded(tab, "restore", tmp_path, "result.png").shape == (480, 480, 3)
    _screenshot(tab, tmp_path, "restore.png")
    assert outside == []  # ...and the page asked for nothing off this machine


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_browser_the_button_is_in_view_and_ctrl_enter_presses_it(browser, server: webapp.RunningApp, tmp_path: Path,
                                                                  width: int, height: int) -> None:
    """A laptop screen and a phone: after an upload the Restore button shows without scrolling."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        tab = context.new_page()
        tab.set_default_timeout(BROWSER_TIMEOUT_MS)
        tab.goto(server.local_url)
        tab.wait_for_selector("#restore-button")
        assert tab.get_by_text("Or try a sample").count() >= 1  # the bundled photos, to click
        _upload(tab, "#restore-input", save_png(tmp_path / "photo.png", face_picture(160)))
        box = tab.locator("#restore-button").bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= height, box
        _screenshot(tab, tmp_path, f"restore_{width}x{height}.png")
        tab.keyboard.press("Control+Enter")
        tab.locator("#restore-message").get_by_text("photo.png restored").wait_for()
        # On a phone the result comes below the button: the page scrolls to it.
        message = tab.locator("#restore-message").bounding_box()
        assert message is not None and message["y"] < height
    finally:
        context.close()


def test_browser_bad_upload_shows_a_message(page, tmp_path: Path) -> None:
    tab, outside = page
    upload = tmp_path / "holiday.png"
    upload.write_text("this is not a picture")
    _upload(tab, "#restore-input", upload)
    tab.click("#restore-button")
    message = tab.get_by_text("holiday.png: not a readable picture (corrupt, truncated or unsupported format)")
    message.wait_for()
    # The message stays until dismissed; wait for its fade-in before taking the picture of the page.
    tab.wait_for_function("el => getComputedStyle(el.closest('[data-testid=toast-body]') || el).opacity === '1'",
                          arg=message.element_handle())
    _screenshot(tab, tmp_path, "bad_upload.png")
    assert "Traceback" not in tab.content()
    assert outside == []


def test_browser_inpaint_with_the_brush(page, tmp_path: Path) -> None:
    tab, outside = page
    side = SERVED_INPAINTING_SIDE
    face = face_picture(side)
    upload = save_png(tmp_path / "face.png", face)
    _open_in_editor(tab, upload)
    box = tab.locator("#inpaint-editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # One horizontal stroke of the white brush across the middle of the face.
    tab.mouse.move(cx - 40, cy)
    tab.mouse.down()
    for step in range(1, 11):
        tab.mouse.move(cx - 40 + 8 * step, cy)
    tab.mouse.up()
    tab.click("#inpaint-button")
    tab.locator("#inpaint-message").get_by_text("painted_face.png inpainted").wait_for()
    filled = _downloaded(tab, "inpaint", tmp_path, "inpainted.png")
    assert filled.shape == (side, side, 3)
    changed = np.any(np.abs(filled.astype(int) - face.astype(int)) > 8, axis=2)
    rows = np.flatnonzero(changed.any(axis=1))
    # The stroke, and only the stroke: a band across the middle changed, top and bottom kept.
    assert 0.05 < changed.mean() < 0.5 and rows.min() > side * 0.2 and rows.max() < side * 0.8
    _screenshot(tab, tmp_path, "inpaint.png")
    assert outside == []


# ------------------------------------------------------------------------- the restoration process dies
# Last in the module: it kills the server's restoration process, after every other test has used it, rather
# than start a process of its own (each start imports torch and Gradio afresh).


def test_a_restoration_process_that_dies_fails_one_request_and_the_next_one_works(server: webapp.RunningApp,
                                                                                   tmp_path: Path) -> None:
    # The server fixture checks, after this, that closing stops the process that replaced the killed one.
    runner = server.runner
    assert isinstance(runner, webapp.RestorationProcess)
    with pytest.raises(CodeFormerError, match=r"^the restoration process stopped \(exit code 3\); try a smaller"):
        runner.run(os_exit, 3)
    assert runner.run(loaded_choices) == []
    with pytest.raises(webapp.PhrasedError) as caught:
        runner.run(webapp.restore_api, None, ask(), tmp_path)
    assert webapp.phrase(caught.value) == "send a picture"


def os_exit(cache: PipelineCache, code: int) -> None:
    """A handler that ends the restoration process, as the kernel's out-of-memory killer would."""
    os._exit(code)


def loaded_choices(cache: PipelineCache) -> list:
    return list(cache.loaded())
