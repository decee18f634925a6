"""The web app: CodeFormer in the browser, on this machine, on the user's own files.

Start it with ``codeformer ui`` (or ``python app.py``); it listens on 127.0.0.1 unless told otherwise.
Tabs: **Restore** (whole pictures or aligned faces, several at once), **Video**, **Colorize** and
**Inpaint** (paint the holes white in the browser). The main action is also an HTTP API::

    from gradio_client import Client, handle_file
    client = Client(address_printed_by_codeformer_ui)
    path = client.predict(handle_file("photo.jpg"), fidelity_weight=0.7, upscale=2, api_name="/restore")

Design:

- The handlers (:func:`restore_uploads`, :func:`colorize_uploads`, :func:`inpaint_uploads`,
  :func:`inpaint_painted`, :func:`restore_video_upload`) are plain functions of a
  :class:`PipelineCache` and plain values; :func:`build_app` only wires them to Gradio components and
  turns a :class:`~codeformer.errors.CodeFormerError` into a one-line message in the page. Tests
  call the handlers directly, with a cache built on small random networks.
- Networks are loaded on first use, once per :class:`PipelineChoice`, and kept for the next requests
  (the few most recent choices: each pipeline holds its own CodeFormer). One lock serialises all
  work on the device, and every heavy event shares one Gradio queue slot, so requests wait their
  turn instead of competing for memory.
- Uploads are read by :mod:`codeformer.imageio` from the uploaded file (16-bit, alpha, EXIF
  rotation, the pixel limit), never through Gradio's 8-bit conversion; downloads are PNGs written
  as the command line writes them. What the page shows are 8-bit previews of at most
  :data:`PREVIEW_MAX_SIDE` pixels a side, and the page says so when a preview is smaller.
- Offline: Gradio's analytics and version check are off, no share link unless asked for,
  server-side rendering (which needs Node) off; the page's fonts and scripts come from the
  installed Gradio package, so the page works without a network.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from codeformer.color import GRAY_MODES, GrayMode
from codeformer.errors import CodeFormerError, OptionError
from codeformer.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    Picture,
    PixelLimitError,
    check_output_pixels,
    decode_image,
    picture_from_array,
    to_uint8,
    write_image,
)
from codeformer.registry import (
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    DEFAULT_UPSAMPLER,
    available_detectors,
    available_models,
    available_upsamplers,
    model_spec,
)
from codeformer.video import VIDEO_EXTENSIONS

# Gradio reads this variable itself before each analytics call (whatever the Blocks argument says),
# and its version check runs unless it is off: set it before gradio is imported, so the app never
# calls out.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

if TYPE_CHECKING:
    from codeformer.face.pipeline import RestoreResult
    from codeformer.pipeline import Pipeline

__all__ = [
    "PREVIEW_MAX_SIDE",
    "PictureOptions",
    "PictureOutcome",
    "PipelineCache",
    "PipelineChoice",
    "RunningApp",
    "VideoOutcome",
    "build_app",
    "colorize_uploads",
    "free_port",
    "inpaint_painted",
    "inpaint_uploads",
    "launch_app",
    "pipeline_loader",
    "restoration_models",
    "restore_api",
    "restore_uploads",
    "restore_video_upload",
    "serve",
    "supports_fidelity",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only: the user's pictures never leave it unless asked
# Pipelines kept loaded: each holds a CodeFormer (~370 MB of weights) and its helpers, so a few
# choices switch instantly and memory stays bounded however many choices a user tries.
DEFAULT_CACHE_SIZE = 3
# Longest side of what the page shows; downloads are always full resolution. 2048 px keeps a 4x
# upscale of a phone photo from sending a 100-megapixel preview to the browser.
PREVIEW_MAX_SIDE = 2048
# Requests whose output files are kept on disk (for their downloads); older ones are deleted.
KEEP_REQUESTS = 32
# How often and after how long Gradio deletes the copies it serves (seconds): an hour each.
GRADIO_CACHE_CLEANUP = (3600, 3600)
MAX_UPSCALE = 4
GALLERY_HEIGHT = 320  # px: a row of faces and the start of the next (it scrolls); Gradio's default leaves a gap
# The page's names for the library options an OptionError can name.
OPTION_LABELS = {"fidelity_weight": "Fidelity", "upscale": "Upscale", "grayscale": "Keep gray faces",
                 "face_index": "Only these faces", "min_face_size": "Minimum face size"}
PIXEL_LIMIT_OPTION = "codeformer ui --max_pixels"  # toasts show text as it is: no markdown

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, description: str) -> None:
    pass


# ----------------------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class PipelineChoice:
    """What to load: one pipeline per distinct choice is loaded and reused."""

    model: str = DEFAULT_MODEL
    detector: str | None = DEFAULT_DETECTOR  # None: aligned faces only
    bg_upsampler: str | None = None
    face_upsample: bool = False


PipelineFactory = Callable[[PipelineChoice], "Pipeline"]


def pipeline_loader(*, device: str = "auto", precision: str = "fp32",
                    weights_dir: str | os.PathLike[str] | None = None) -> PipelineFactory:
    """A factory that loads the real networks with :func:`codeformer.load_pipeline`."""

    def load(choice: PipelineChoice) -> Pipeline:
        from codeformer.pipeline import load_pipeline

        return load_pipeline(choice.model, detector=choice.detector, device=device, precision=precision,
                             bg_upsampler=choice.bg_upsampler, face_upsample=choice.face_upsample,
                             weights_dir=weights_dir)

    return load


class PipelineCache:
    """Loaded pipelines by choice (the most recent ``capacity``), and the lock that serialises device work.

    ``factory`` loads a pipeline for a choice: :func:`pipeline_loader` for the real networks, or a
    test's function that builds small random ones.
    """

    def __init__(self, factory: PipelineFactory, *, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise OptionError("capacity", capacity, "must be at least 1")
        self._factory = factory
        self._capacity = capacity
        self._loaded: OrderedDict[PipelineChoice, Pipeline] = OrderedDict()
        # Re-entrant: a handler holding it may ask for a second pipeline.
        self.lock = threading.RLock()
        self.loads = 0  # how many times the factory ran (tests check reuse)

    def loaded(self) -> tuple[PipelineChoice, ...]:
        with self.lock:
            return tuple(self._loaded)

    @contextmanager
    def using(self, choice: PipelineChoice) -> Iterator[Pipeline]:
        """The pipeline for ``choice`` (loaded on first use), used while no other request runs."""
        with self.lock:
            pipeline = self._loaded.get(choice)
            if pipeline is None:
                pipeline = self._load(choice)
            else:
                self._loaded.move_to_end(choice)
            yield pipeline

    def _load(self, choice: PipelineChoice) -> Pipeline:
        if len(self._loaded) >= self._capacity:
            # Free the oldest first, so that peak memory is `capacity` pipelines, not one more.
            dropped, _ = self._loaded.popitem(last=False)
            logger.info("unloading %s to make room", dropped)
            gc.collect()
        pipeline = self._factory(choice)
        self.loads += 1
        self._loaded[choice] = pipeline
        return pipeline


# ------------------------------------------------------------------------------------------ options


def restoration_models() -> list[str]:
    """The models the Restore tab offers: those whose task is restoration."""
    return [name for name in available_models() if model_spec(name, "restorer").task == "restore"]


def supports_fidelity(model: str) -> bool:
    """Whether the model has a fidelity weight (CodeFormer does, GFPGAN does not)."""
    return model_spec(model, "restorer").supports_fidelity


@dataclass(frozen=True)
class PictureOptions:
    """The Restore tab's (and the API's) settings, as the command line names them."""

    fidelity_weight: float | None = 0.5  # None: the model's default
    upscale: int = 2
    has_aligned: bool = False
    background_enhance: bool = False
    face_upsample: bool = False
    detector: str = DEFAULT_DETECTOR
    model: str = DEFAULT_MODEL
    only_center_face: bool = False
    draw_box: bool = False
    grayscale: GrayMode = "auto"
    upsampler: str = DEFAULT_UPSAMPLER
    largest_face: bool = False
    face_index: str = ""  # face numbers as the page sends them, e.g. "0, 2"; empty: every face
    min_face_size: float = 0.0  # pixels on the box's short side; 0: no minimum

    def face_choices(self) -> dict[str, Any]:
        """The face-choice keywords of :meth:`codeformer.Pipeline.options`."""
        numbers = tuple(int(part) for part in self.face_index.replace(" ", "").split(",") if part)
        return {"only_center_face": self.only_center_face, "largest_face": self.largest_face,
                "face_index": numbers or None, "min_face_size": self.min_face_size or None}

    def choice(self) -> PipelineChoice:
        return PipelineChoice(self.model, self.detector, self.upsampler if self.background_enhance else None,
                              self.face_upsample)

    def checked(self) -> PictureOptions:
        """These options with page values made exact (sliders send floats); bad names refused with the choices."""
        model_spec(self.model, "restorer")
        model_spec(self.detector, "detector")
        model_spec(self.upsampler, "upsampler")
        if self.grayscale not in GRAY_MODES:
            raise OptionError("grayscale", self.grayscale, f"choose one of {', '.join(GRAY_MODES)}")
        upscale = float(self.upscale)
        if not upscale.is_integer() or not 1 <= upscale <= MAX_UPSCALE:
            raise OptionError("upscale", self.upscale, f"must be a whole number from 1 to {MAX_UPSCALE}")
        # The page always sends the slider's value; a model without fidelity control (GFPGAN) ignores it.
        weight = None if self.fidelity_weight is None or not supports_fidelity(self.model) else float(
            self.fidelity_weight)
        text = str(self.face_index or "").strip()
        if text and not all(part.strip().isdigit() for part in text.split(",")):
            raise OptionError("face_index", text, "face numbers from 0, separated by commas, e.g. 0, 2")
        minimum = float(self.min_face_size or 0)
        if minimum < 0:
            raise OptionError("min_face_size", minimum, "must be 0 (no minimum) or a number of pixels")
        return replace(self, fidelity_weight=weight, upscale=int(upscale), has_aligned=bool(self.has_aligned),
                       background_enhance=bool(self.background_enhance), face_upsample=bool(self.face_upsample),
                       only_center_face=bool(self.only_center_face), draw_box=bool(self.draw_box),
                       largest_face=bool(self.largest_face), face_index=text, min_face_size=minimum)


# ----------------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class PictureResult:
    """One processed picture: what the page shows and what it offers to download."""

    name: str  # the uploaded file's name
    before: Path  # preview of the input, at the preview size of the output
    after: Path  # preview of the output
    download: Path  # the full-resolution PNG (16-bit and alpha as the input had them)
    width: int  # of the full-resolution output
    height: int
    faces: int
    preview_reduced: bool  # the previews are smaller than the output


@dataclass(frozen=True)
class PictureOutcome:
    """The result of one request on pictures."""

    results: tuple[PictureResult, ...]
    faces: tuple[tuple[Path, str], ...]  # gallery: restored face previews and their captions
    message: str  # one paragraph for the page
    notes: tuple[str, ...] = ()  # one-line warnings (a failed file among several, no face found)


@dataclass(frozen=True)
class VideoOutcome:
    path: Path  # the restored H.264 video, audio kept
    message: str


class OutputFolders:
    """A fresh folder per request under ``root``; only the newest ``keep`` are kept on disk."""

    def __init__(self, root: Path, keep: int = KEEP_REQUESTS) -> None:
        self.root = root
        self.keep = keep
        self._made: list[Path] = []
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.root))
            self._made.append(folder)
            while len(self._made) > self.keep:
                shutil.rmtree(self._made.pop(0), ignore_errors=True)
            return folder


# ------------------------------------------------------------------------------------------ pictures


def _upload_name(path: str | os.PathLike[str]) -> str:
    # Gradio keeps the uploaded file's own name inside a random folder: the user knows that name.
    return Path(path).name


def read_upload(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an uploaded picture file, messages naming the file as the user named it."""
    name = _upload_name(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CodeFormerError(f"{name}: cannot read the upload ({error.strerror or error})") from None
    return decode_image(data, name=name, max_pixels=max_pixels)


# A picture to process: its name for the user, and how to get it decoded (only when its turn comes).
Source = tuple[str, Callable[[], Picture]]


def _upload_sources(paths: Sequence[str | os.PathLike[str]], max_pixels: int | None) -> list[Source]:
    if not paths:
        raise CodeFormerError("upload a picture first")
    return [(_upload_name(path), functools.partial(read_upload, path, max_pixels=max_pixels)) for path in paths]


def _bgr8(image: np.ndarray) -> np.ndarray:
    """An OpenCV-order image (gray, BGR, BGRA; 8 or 16 bits) as 8-bit BGR or BGRA."""
    image = to_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _preview_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, PREVIEW_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    shrinking = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _save_result(folder: Path, stem: str, name: str, picture: Picture, result: RestoreResult) -> PictureResult:
    """Write the full-resolution PNG and the two previews of one picture."""
    height, width = result.image.shape[:2]
    download = write_image(folder / f"{stem}.png", result.image)
    size = _preview_size(width, height)
    after = write_image(folder / "preview" / f"{stem}_after.png", _resized(_bgr8(result.image), size))
    before_image = _bgr8(picture.with_alpha(picture.bgr))
    before = write_image(folder / "preview" / f"{stem}_before.png", _resized(before_image, size))
    return PictureResult(name, before, after, download, width, height, len(result.faces), size != (width, height))


def _unique_stems(names: Sequence[str], tag: str) -> list[str]:
    """Output names ``<stem>_<tag>``, made distinct when two uploads share a name."""
    stems, seen = [], set()
    for name in names:
        stem = f"{Path(name).stem}_{tag}"
        candidate, number = stem, 1
        while candidate in seen:
            number += 1
            candidate = f"{stem}_{number}"
        seen.add(candidate)
        stems.append(candidate)
    return stems


def _process_pictures(cache: PipelineCache, choice: PipelineChoice, sources: Sequence[Source], folder: Path, *,
                      aligned: bool, options: PictureOptions | None, verb: str, max_pixels: int | None,
                      progress: ProgressFn,
                      check: Callable[[str, Picture], str | None] | None = None) -> PictureOutcome:
    """Run pictures through the pipeline for ``choice`` and save what the page needs.

    One picture is decoded at a time, so memory holds one picture (and its result) however many were
    uploaded. A picture that cannot be read or is too big is a note and the others go on; when none
    is left the first such message is the error. The networks are loaded only once a picture is
    ready for them, so a bad upload is refused before anything loads. ``check`` may return a note
    about a picture (e.g. nothing painted to inpaint).
    """
    upscale = options.upscale if options is not None and not aligned else 1
    stems = _unique_stems([name for name, _ in sources], verb)
    started = time.perf_counter()
    results: list[PictureResult] = []
    gallery: list[tuple[Path, str]] = []
    notes: list[str] = []
    failures: list[str] = []
    with ExitStack() as held:
        pipeline, run_options = None, None
        for index, ((name, load), stem) in enumerate(zip(sources, stems)):
            progress(index / len(sources), f"reading {name}")
            try:
                picture = load()
                if not aligned:
                    # Refused before any work: a 4x upscale of a big picture must not run out of memory halfway.
                    check_output_pixels(picture.width, picture.height, upscale, max_pixels, name=name)
            except CodeFormerError as error:
                failures.append(_phrase(error))
                continue
            if pipeline is None:
                progress(index / len(sources), "loading the networks")
                pipeline = held.enter_context(cache.using(choice))
                run_options = pipeline.options(
                    fidelity_weight=options.fidelity_weight if options is not None else None,
                    upscale=upscale,
                    **(options.face_choices() if options is not None else {}),
                    draw_box=options.draw_box if options is not None else False,
                    grayscale=options.grayscale if options is not None else "auto",
                )
            assert run_options is not None
            progress(index / len(sources), name)
            note = check(name, picture) if check is not None else None
            if note is not None:
                notes.append(note)
            size = pipeline.restorer.input_size
            if aligned and (picture.width, picture.height) != (size, size):
                notes.append(f"{name}: {picture.width}x{picture.height} is resized to {size}x{size}, the size of "
                             "aligned faces (see codeformer crop)")
            if aligned:
                result = pipeline.restore_aligned([picture], run_options, names=[name])[0]
            else:
                result = pipeline.restore_pictures([picture], run_options)[0]
                if not result.faces:
                    notes.append(f"{name}: no face found; the picture is only upscaled")
            results.append(_save_result(folder, stem, name, picture, result))
            for number, face in enumerate(result.faces, 1):
                face_path = write_image(folder / "faces" / f"{stem}_{number:02d}.png", face.restored)
                gallery.append((face_path, name if aligned else f"{name}: face {number}"))
    if not results:
        raise CodeFormerError(failures[0] if len(failures) == 1 else
                              f"none of the {len(failures)} pictures could be used; first: {failures[0]}")
    progress(1.0, "done")
    return PictureOutcome(tuple(results), tuple(gallery),
                          _summary(results, verb, aligned, time.perf_counter() - started), (*failures, *notes))


def _summary(results: Sequence[PictureResult], verb: str, aligned: bool, seconds: float) -> str:
    faces = sum(result.faces for result in results)
    if len(results) == 1:
        only = results[0]
        what = "" if aligned else f", {faces} face{'s' if faces != 1 else ''}"
        text = f"{only.name} {verb}{what}: {only.width}x{only.height} px in {seconds:.1f} s."
    else:
        what = "" if aligned else f" ({faces} face{'s' if faces != 1 else ''})"
        text = f"{len(results)} pictures {verb}{what} in {seconds:.1f} s."
    if any(result.preview_reduced for result in results):
        text += f" The page shows previews at most {PREVIEW_MAX_SIDE} px wide; the downloads are full size."
    return text


def restore_uploads(cache: PipelineCache, paths: Sequence[str | os.PathLike[str]], options: PictureOptions,
                    folder: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    progress: ProgressFn = _no_progress) -> PictureOutcome:
    """The Restore tab: restore the faces of uploaded pictures (whole, or aligned 512x512 crops).

    A file that cannot be read among several is a note and the others go on; a picture (or its
    output at ``options.upscale``) over ``max_pixels`` is refused before any work on it.
    """
    options = options.checked()
    if options.fidelity_weight is not None and not 0.0 <= options.fidelity_weight <= 1.0:
        raise OptionError("fidelity_weight", options.fidelity_weight, "is outside [0, 1]")
    return _process_pictures(cache, options.choice(), _upload_sources(paths, max_pixels), folder,
                             aligned=options.has_aligned, options=options, verb="restored", max_pixels=max_pixels,
                             progress=progress)


def colorize_uploads(cache: PipelineCache, paths: Sequence[str | os.PathLike[str]], folder: Path, *,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     progress: ProgressFn = _no_progress) -> PictureOutcome:
    """The Colorize tab: colorize black-and-white or faded aligned faces."""
    return _process_pictures(cache, PipelineChoice("codeformer_colorization", None),
                             _upload_sources(paths, max_pixels), folder, aligned=True, options=None,
                             verb="colorized", max_pixels=max_pixels, progress=progress)


def inpaint_uploads(cache: PipelineCache, paths: Sequence[str | os.PathLike[str]], folder: Path, *,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    progress: ProgressFn = _no_progress) -> PictureOutcome:
    """The Inpaint tab, for faces painted elsewhere: fill their pure-white pixels."""
    return _inpaint(cache, _upload_sources(paths, max_pixels), folder, max_pixels, progress)


def inpaint_painted(cache: PipelineCache, painted_rgb: np.ndarray | None, folder: Path, *,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    progress: ProgressFn = _no_progress) -> PictureOutcome:
    """The Inpaint tab's editor: an aligned face (RGB or RGBA, 8-bit) with holes painted white in the page."""
    if painted_rgb is None or painted_rgb.size == 0:
        raise CodeFormerError("upload an aligned face into the editor and paint the holes white first")
    if painted_rgb.ndim == 3 and painted_rgb.shape[2] == 4:
        bgr = cv2.cvtColor(painted_rgb, cv2.COLOR_RGBA2BGRA)
        if np.all(bgr[:, :, 3] == 255):  # the editor's own opaque canvas: no alpha to keep
            bgr = np.ascontiguousarray(bgr[:, :, :3])
    elif painted_rgb.ndim == 3:
        bgr = cv2.cvtColor(painted_rgb, cv2.COLOR_RGB2BGR)
    else:
        bgr = painted_rgb
    picture = picture_from_array(np.ascontiguousarray(bgr), name="the painted face", max_pixels=max_pixels)
    return _inpaint(cache, [("painted_face.png", lambda: picture)], folder, max_pixels, progress)


def _inpaint(cache: PipelineCache, sources: Sequence[Source], folder: Path, max_pixels: int | None,
             progress: ProgressFn) -> PictureOutcome:
    return _process_pictures(cache, PipelineChoice("codeformer_inpainting", None), sources, folder, aligned=True,
                             options=None, verb="inpainted", max_pixels=max_pixels, progress=progress,
                             check=_unpainted)


def _unpainted(name: str, picture: Picture) -> str | None:
    """A note when a face to inpaint has no hole painted: the network would change nothing."""
    from codeformer.aligned import PAINT_VALUE

    if np.any(np.all(picture.bgr8() == PAINT_VALUE, axis=2)):
        return None
    return (f"{name}: no pure-white (255, 255, 255) pixels, so nothing is filled; paint the holes with the "
            "white brush")


def restore_api(cache: PipelineCache, path: str | os.PathLike[str] | None, options: PictureOptions,
                folder: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Path:
    """The ``/restore`` API: one picture in, the full-resolution restored PNG out."""
    if path is None:
        raise CodeFormerError("send a picture")
    return restore_uploads(cache, [path], options, folder, max_pixels=max_pixels).results[0].download


# --------------------------------------------------------------------------------------------- video


def restore_video_upload(cache: PipelineCache, path: str | os.PathLike[str] | None, options: PictureOptions,
                         folder: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                         progress: ProgressFn = _no_progress) -> VideoOutcome:
    """The Video tab: restore every face of every frame; the result keeps the audio and timing."""
    from codeformer.video import is_video_path, probe_video

    if path is None:
        raise CodeFormerError("upload a video first")
    name = _upload_name(path)
    if not is_video_path(path):
        raise CodeFormerError(f"{name}: not a video this app reads ({', '.join(VIDEO_EXTENSIONS)})")
    options = options.checked()
    info = probe_video(path)
    check_output_pixels(info.width, info.height, options.upscale, max_pixels, name=name)
    total = info.frame_count
    destination = folder / f"{Path(name).stem}_restored.mp4"
    started = time.perf_counter()
    progress(0.0, "loading the networks")
    with cache.using(options.choice()) as pipeline:

        def on_frame(index: int, result: RestoreResult) -> None:
            # The container's frame count can be an estimate: never report past 100 %.
            done = min(1.0, (index + 1) / total) if total else 0.0
            progress(done, f"frame {index + 1}" + (f" of {total}" if total else ""))

        run_options = pipeline.options(fidelity_weight=options.fidelity_weight, upscale=options.upscale,
                                       **options.face_choices(), draw_box=options.draw_box,
                                       grayscale=options.grayscale)
        stats = pipeline.restore_video(path, destination, options=run_options, progress=False, on_frame=on_frame)
    audio = f", audio kept ({len(stats.audio)} track{'s' if len(stats.audio) != 1 else ''})" if stats.audio else ""
    message = (f"{name} restored: {stats.frames_out} frames at {stats.width}x{stats.height}{audio}, "
               f"in {time.perf_counter() - started:.1f} s.")
    return VideoOutcome(stats.output, message)


# ------------------------------------------------------------------------------------------ the page


def _phrase(error: CodeFormerError) -> str:
    """A library error as the page says it: options by their labels, the pixel limit by its flag."""
    if isinstance(error, PixelLimitError):
        return error.phrased(PIXEL_LIMIT_OPTION)
    if isinstance(error, OptionError) and error.option in OPTION_LABELS:
        return error.phrased(OPTION_LABELS[error.option])
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _shown_in_page(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Errors become one line in the page (never a traceback); unexpected ones are logged in full."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except CodeFormerError as error:
            raise gr.Error(_phrase(error), duration=None, print_exception=False) from None
        except Exception as error:  # the page gets one line, the log gets the traceback
            if _out_of_memory(error):
                raise gr.Error("out of memory: try a smaller upscale or a smaller picture", duration=None,
                               print_exception=False) from None
            logger.exception("web app request failed")
            raise gr.Error(f"something went wrong ({type(error).__name__}); the app's log has the details",
                           duration=None, print_exception=False) from None

    return wrapper


def _out_of_memory(error: BaseException) -> bool:
    """An allocation failure: Python's, the GPU's, or torch's CPU allocator (a plain RuntimeError)."""
    import torch

    return (isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError))
            or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error)))


def _progress_of(progress: gr.Progress) -> ProgressFn:
    def report(fraction: float, description: str) -> None:
        progress(fraction, desc=description)

    return report


def _show_notes(notes: Sequence[str]) -> None:
    for note in notes:
        gr.Warning(note)


def _file_paths(files: Any) -> list[str]:
    """Gradio's value of a File component (None, one path or a list) as a list of paths."""
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [str(files)]
    return [str(getattr(file, "name", file)) for file in files]


@dataclass
class _PictureOutputs:
    """The output panel every picture tab shows: message, picker, comparison, faces, downloads."""

    message: Any
    picker: Any
    comparison: Any
    gallery: Any
    downloads: Any
    state: Any
    components: list[Any] = field(default_factory=list)

    def values(self, outcome: PictureOutcome) -> list[Any]:
        # Keyed by position: two uploads may share a name.
        choices = [(result.name, str(index)) for index, result in enumerate(outcome.results)]
        pairs = {str(index): (str(result.before), str(result.after)) for index, result in enumerate(outcome.results)}
        first = outcome.results[0]
        return [
            outcome.message,
            gr.Dropdown(choices=choices, value="0", visible=len(choices) > 1),
            (str(first.before), str(first.after)),
            [(str(path), caption) for path, caption in outcome.faces],
            [str(result.download) for result in outcome.results],
            pairs,
        ]


def _picture_outputs(tab: str, gallery_label: str) -> _PictureOutputs:
    """The output panel of the picture tab ``tab`` (its elements' ids start with it)."""
    message = gr.Markdown(elem_id=f"{tab}-message", elem_classes=["message"])
    picker = gr.Dropdown(label="Compare", choices=[], visible=False, interactive=True)
    comparison = gr.ImageSlider(label="Before / after", type="filepath", format="png", elem_id=f"{tab}-comparison",
                                interactive=False, buttons=["fullscreen"])
    gallery = gr.Gallery(label=gallery_label, columns=4, fit_columns=False, height=GALLERY_HEIGHT, format="png",
                         elem_id=f"{tab}-faces", interactive=False)
    downloads = gr.File(label="Download (full resolution PNG)", file_count="multiple", interactive=False,
                        elem_id=f"{tab}-downloads")
    state = gr.State({})
    picker.change(lambda name, pairs: pairs.get(name), inputs=[picker, state], outputs=comparison, queue=False,
                  api_visibility="private")
    outputs = _PictureOutputs(message, picker, comparison, gallery, downloads, state)
    outputs.components = [message, picker, comparison, gallery, downloads, state]
    return outputs


def _options_of(fidelity_weight: float, upscale: float, has_aligned: bool, background_enhance: bool,
                face_upsample: bool, detector: str, model: str, only_center_face: bool, draw_box: bool,
                grayscale: str, upsampler: str, largest_face: bool = False, face_index: str = "",
                min_face_size: float = 0.0) -> PictureOptions:
    """The options from the page's widgets, in the order the events list them (the sliders send floats)."""
    return PictureOptions(fidelity_weight, upscale, has_aligned, background_enhance,  # type: ignore[arg-type]
                          face_upsample, detector, model, only_center_face, draw_box, grayscale,  # type: ignore[arg-type]
                          upsampler, bool(largest_face), face_index or "", min_face_size or 0.0)


_CSS = """
.message p { font-size: 1.05em; }
"""


def build_app(cache: PipelineCache, *, output_root: str | os.PathLike[str],
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The app's page and its events; ``output_root`` holds the files of recent requests."""
    folders = OutputFolders(Path(output_root))
    picture_types = list(IMAGE_EXTENSIONS)
    detectors = available_detectors()
    models = restoration_models()
    upsampler_name = DEFAULT_UPSAMPLER if DEFAULT_UPSAMPLER in available_upsamplers() else available_upsamplers()[0]
    device = "serialised"  # every event that runs networks shares this queue slot

    with gr.Blocks(title="CodeFormer", analytics_enabled=False,
                   delete_cache=GRADIO_CACHE_CLEANUP) as app:
        gr.Markdown("## CodeFormer face restoration\nRuns on this computer: your pictures are not sent anywhere.")
        with gr.Tabs():
            # ------------------------------------------------------------------------- Restore
            with gr.Tab("Restore", id="restore"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        files = gr.File(label="Pictures", file_count="multiple", file_types=picture_types,
                                        elem_id="restore-input")
                        has_aligned = gr.Checkbox(label="Aligned faces (512x512 crops, as made by codeformer crop)",
                                                  value=False)
                        fidelity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Fidelity",
                                             info="0 = best quality, 1 = most faithful to the input")
                        upscale = gr.Slider(1, MAX_UPSCALE, value=2, step=1, label="Upscale",
                                            info="the result is the picture's size times this")
                        with gr.Row():
                            background = gr.Checkbox(label="Background enhance (Real-ESRGAN)", value=False)
                            face_upsample = gr.Checkbox(label="Face upsample", value=False)
                        detector = gr.Dropdown(detectors, value=DEFAULT_DETECTOR, label="Face detector")
                        model = gr.Dropdown(models, value=DEFAULT_MODEL, label="Model", visible=len(models) > 1)
                        with gr.Accordion("Face choices", open=False):
                            center = gr.Checkbox(label="Only the face nearest the centre", value=False)
                            largest = gr.Checkbox(label="Only the largest face", value=False)
                            numbers = gr.Textbox(value="", label="Only these faces", placeholder="e.g. 0, 2",
                                                 info="faces are numbered left to right from 0")
                            min_size = gr.Number(label="Minimum face size (pixels, 0 = any)", value=0, minimum=0)
                            draw_box = gr.Checkbox(label="Outline the detected faces", value=False)
                            grayscale = gr.Radio(list(GRAY_MODES), value="auto", label="Keep gray faces",
                                                 info="auto: black-and-white pictures keep gray faces")
                        restore_button = gr.Button("Restore", variant="primary", elem_id="restore-button")
                    with gr.Column(scale=3):
                        restored = _picture_outputs("restore", "Restored faces")
                # GFPGAN has no fidelity weight: the slider is shown greyed out while it is chosen.
                model.change(lambda name: gr.Slider(interactive=supports_fidelity(name)), inputs=model,
                             outputs=fidelity, queue=False, api_visibility="private")
                option_inputs = [fidelity, upscale, has_aligned, background, face_upsample, detector, model, center,
                                 draw_box, grayscale, largest, numbers, min_size]

                @_shown_in_page
                def on_restore(uploads: Any, fidelity_weight: float, upscale_: float, aligned: bool, bg: bool,
                               face_up: bool, detector_: str, model_: str, only_center: bool, box: bool, gray: str,
                               largest_: bool, numbers_: str, min_size_: float,
                               progress: gr.Progress = gr.Progress()) -> list[Any]:
                    options = _options_of(fidelity_weight, upscale_, aligned, bg, face_up, detector_, model_,
                                          only_center, box, gray, upsampler_name, largest_, numbers_, min_size_)
                    outcome = restore_uploads(cache, _file_paths(uploads), options, folders.new(),
                                              max_pixels=max_pixels, progress=_progress_of(progress))
                    _show_notes(outcome.notes)
                    return restored.values(outcome)

                restore_button.click(on_restore, inputs=[files, *option_inputs], outputs=restored.components,
                                     concurrency_id=device, concurrency_limit=1, api_visibility="private")

                # The HTTP API: one picture and the same options in, the full-resolution PNG out.
                api_picture = gr.File(label="picture", file_types=picture_types, visible=False)
                api_result = gr.File(label="restored picture", visible=False)
                api_trigger = gr.Button(visible=False)

                @_shown_in_page
                def restore(picture: str, fidelity_weight: float = 0.5, upscale: float = 2,
                            has_aligned: bool = False, background_enhance: bool = False, face_upsample: bool = False,
                            detector: str = DEFAULT_DETECTOR, model: str = DEFAULT_MODEL,
                            only_center_face: bool = False, draw_box: bool = False, grayscale: str = "auto",
                            largest_face: bool = False, face_index: str = "", min_face_size: float = 0.0) -> str:
                    options = _options_of(fidelity_weight, upscale, has_aligned, background_enhance, face_upsample,
                                          detector, model, only_center_face, draw_box, grayscale, upsampler_name,
                                          largest_face, face_index, min_face_size)
                    paths = _file_paths(picture)
                    return str(restore_api(cache, paths[0] if paths else None, options, folders.new(),
                                           max_pixels=max_pixels))

                api_trigger.click(restore, inputs=[api_picture, *option_inputs], outputs=api_result,
                                  api_name="restore", concurrency_id=device, concurrency_limit=1)

            # --------------------------------------------------------------------------- Video
            with gr.Tab("Video", id="video"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        video_file = gr.File(label="Video", file_types=list(VIDEO_EXTENSIONS),
                                             elem_id="video-input")
                        video_fidelity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Fidelity",
                                                   info="0 = best quality, 1 = most faithful to the input")
                        video_upscale = gr.Slider(1, MAX_UPSCALE, value=2, step=1, label="Upscale")
                        with gr.Row():
                            video_background = gr.Checkbox(label="Background enhance (Real-ESRGAN)", value=False)
                            video_face_upsample = gr.Checkbox(label="Face upsample", value=False)
                        video_detector = gr.Dropdown(detectors, value=DEFAULT_DETECTOR, label="Face detector")
                        video_center = gr.Checkbox(label="Only the face nearest the centre", value=False)
                        video_button = gr.Button("Restore video", variant="primary", elem_id="video-button")
                    with gr.Column(scale=3):
                        video_message = gr.Markdown(elem_id="video-message", elem_classes=["message"])
                        video_result = gr.Video(label="Restored video (download keeps the audio)",
                                                interactive=False, buttons=["download"], elem_id="video-result")

                @_shown_in_page
                def on_video(upload: Any, fidelity_weight: float, upscale_: float, bg: bool, face_up: bool,
                             detector_: str, only_center: bool, progress: gr.Progress = gr.Progress()) -> list[Any]:
                    options = _options_of(fidelity_weight, upscale_, False, bg, face_up, detector_, DEFAULT_MODEL,
                                          only_center, False, "auto", upsampler_name)
                    paths = _file_paths(upload)
                    outcome = restore_video_upload(cache, paths[0] if paths else None, options, folders.new(),
                                                   max_pixels=max_pixels, progress=_progress_of(progress))
                    return [outcome.message, str(outcome.path)]

                video_button.click(on_video, inputs=[video_file, video_fidelity, video_upscale, video_background,
                                                     video_face_upsample, video_detector, video_center],
                                   outputs=[video_message, video_result], concurrency_id=device,
                                   concurrency_limit=1, api_visibility="private")

            # ------------------------------------------------------------------------ Colorize
            with gr.Tab("Colorize", id="colorize"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        colorize_files = gr.File(label="Aligned faces (black-and-white or faded, 512x512)",
                                                 file_count="multiple", file_types=picture_types,
                                                 elem_id="colorize-input")
                        colorize_button = gr.Button("Colorize", variant="primary", elem_id="colorize-button")
                    with gr.Column(scale=3):
                        colorized = _picture_outputs("colorize", "Colorized faces")

                @_shown_in_page
                def on_colorize(uploads: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
                    outcome = colorize_uploads(cache, _file_paths(uploads), folders.new(), max_pixels=max_pixels,
                                               progress=_progress_of(progress))
                    _show_notes(outcome.notes)
                    return colorized.values(outcome)

                colorize_button.click(on_colorize, inputs=colorize_files, outputs=colorized.components,
                                      concurrency_id=device, concurrency_limit=1, api_visibility="private")

            # ------------------------------------------------------------------------- Inpaint
            with gr.Tab("Inpaint", id="inpaint"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        gr.Markdown("Upload an aligned face, paint the holes with the white brush, then press "
                                    "**Inpaint**. Or upload faces already painted pure white (255, 255, 255).")
                        editor = gr.ImageEditor(
                            label="Aligned face: paint the holes white", type="numpy", image_mode="RGB",
                            sources=["upload", "clipboard"], layers=False, transforms=(),
                            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed",
                                           default_size=24),
                            eraser=gr.Eraser(default_size=24), canvas_size=(512, 512), format="png",
                            elem_id="inpaint-editor")
                        painted_files = gr.File(label="Or: faces already painted", file_count="multiple",
                                                file_types=picture_types, elem_id="inpaint-files")
                        inpaint_button = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
                    with gr.Column(scale=3):
                        inpainted = _picture_outputs("inpaint", "Inpainted faces")

                @_shown_in_page
                def on_inpaint(edited: Any, uploads: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
                    paths = _file_paths(uploads)
                    if paths:
                        outcome = inpaint_uploads(cache, paths, folders.new(), max_pixels=max_pixels,
                                                  progress=_progress_of(progress))
                    else:
                        composite = edited.get("composite") if isinstance(edited, dict) else None
                        outcome = inpaint_painted(cache, composite, folders.new(), max_pixels=max_pixels,
                                                  progress=_progress_of(progress))
                    _show_notes(outcome.notes)
                    return inpainted.values(outcome)

                inpaint_button.click(on_inpaint, inputs=[editor, painted_files], outputs=inpainted.components,
                                     concurrency_id=device, concurrency_limit=1, api_visibility="private")

    # One request at a time on the device; the rest wait in the queue with their position shown.
    app.queue(default_concurrency_limit=1)
    return app


# --------------------------------------------------------------------------------------------- serving


@dataclass
class RunningApp:
    """A launched app: its address, and how to stop it."""

    app: gr.Blocks
    local_url: str
    share_url: str | None
    output_root: Path

    def close(self) -> None:
        self.app.close(verbose=False)
        shutil.rmtree(self.output_root, ignore_errors=True)

    def serve_forever(self) -> None:
        """Block until Ctrl+C or SIGTERM (or the server stops), then close."""
        if threading.current_thread() is threading.main_thread():
            # A service manager stops with SIGTERM: close as on Ctrl+C, so the request files are removed.
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self.app.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def serve(cache: PipelineCache, *, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False,
          max_pixels: int | None = DEFAULT_MAX_PIXELS) -> RunningApp:
    """Build the app on ``cache`` and start serving it in the background; see :class:`RunningApp`."""
    output_root = Path(tempfile.mkdtemp(prefix="codeformer-web-"))
    try:
        app = build_app(cache, output_root=output_root, max_pixels=max_pixels)
        _, local_url, share_url = app.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
            inbrowser=False, show_error=False, ssr_mode=False, pwa=False, mcp_server=False,
            allowed_paths=[str(output_root)], footer_links=["api"], theme=gr.themes.Default(), css=_CSS,
        )
    except OSError as error:
        shutil.rmtree(output_root, ignore_errors=True)
        where = f"{host}:{port}" if port is not None else f"{host} (ports 7860-7959)"
        logger.debug("launch failed: %s", error)
        raise CodeFormerError(f"cannot listen on {where}: the port is taken or not allowed; choose another port") \
            from None
    except BaseException:
        shutil.rmtree(output_root, ignore_errors=True)
        raise
    return RunningApp(app, local_url, share_url, output_root)


def launch_app(*, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False, device: str = "auto",
               precision: str = "fp32", weights_dir: str | os.PathLike[str] | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> RunningApp:
    """Serve the app with the real networks (loaded on first use). A bad device or precision fails here."""
    from codeformer.device import resolve_device
    from codeformer.precision import resolve_precision

    resolve_precision(precision, resolve_device(device))
    cache = PipelineCache(pipeline_loader(device=device, precision=precision, weights_dir=weights_dir))
    return serve(cache, host=host, port=port, share=share, max_pixels=max_pixels)
