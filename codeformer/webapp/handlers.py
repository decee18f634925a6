"""The web app's handlers: plain functions of a :class:`~codeformer.webapp.cache.PipelineCache` and a request.

They read uploads with :mod:`codeformer.imageio` (16-bit, alpha, EXIF rotation, the pixel limit),
run them through the pipeline the request names, and write what the page shows: 8-bit previews of
at most :data:`PREVIEW_MAX_SIDE` pixels a side, the restored faces, and full-resolution PNG
downloads written as the command line writes them. Gradio is not needed here: tests call these
functions directly, and :mod:`codeformer.webapp.app` wires them to the page.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.imageio import (
    DEFAULT_MAX_PIXELS,
    Picture,
    check_output_pixels,
    decode_image,
    picture_from_array,
    to_uint8,
    write_image,
)
from codeformer.video import VIDEO_EXTENSIONS
from codeformer.webapp.cache import PipelineCache
from codeformer.webapp.requests import PageRequest, aligned_request, phrase

if TYPE_CHECKING:
    from codeformer.restoration import RestoreResult

__all__ = [
    "PREVIEW_MAX_SIDE",
    "OutputFolders",
    "PictureOutcome",
    "PictureResult",
    "VideoOutcome",
    "colorize_uploads",
    "inpaint_painted",
    "inpaint_uploads",
    "restore_api",
    "restore_uploads",
    "restore_video_upload",
]

# Longest side of what the page shows; downloads are always full resolution. 2048 px keeps a 4x
# upscale of a phone photo from sending a 100-megapixel preview to the browser.
PREVIEW_MAX_SIDE = 2048
# Requests whose output files are kept on disk (for their downloads); older ones are deleted.
KEEP_REQUESTS = 32

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, description: str) -> None:
    pass


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


def _process_pictures(cache: PipelineCache, request: PageRequest, sources: Sequence[Source], folder: Path, *,
                      verb: str, progress: ProgressFn,
                      check: Callable[[str, Picture], str | None] | None = None) -> PictureOutcome:
    """Run pictures through the pipeline the request loads and save what the page needs.

    One picture is decoded at a time, so memory holds one picture (and its result) however many were
    uploaded. A picture that cannot be read or is too big is a note and the others go on; when none
    is left the first such message is the error. The networks are loaded only once a picture is
    ready for them, so a bad upload is refused before anything loads. ``check`` may return a note
    about a picture (e.g. nothing painted to inpaint).
    """
    aligned = request.aligned
    upscale = request.restore.upscale
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
                    check_output_pixels(picture.width, picture.height, upscale, request.restore.max_pixels,
                                        name=name)
            except CodeFormerError as error:
                failures.append(phrase(error))
                continue
            if pipeline is None:
                progress(index / len(sources), "loading the networks")
                pipeline = held.enter_context(cache.using(request.load))
                run_options = pipeline.prepare(request.restore)
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


def restore_uploads(cache: PipelineCache, paths: Sequence[str | os.PathLike[str]], request: PageRequest,
                    folder: Path, *, progress: ProgressFn = _no_progress) -> PictureOutcome:
    """The Restore tab: restore the faces of uploaded pictures (whole, or aligned crops with ``request.aligned``).

    A file that cannot be read among several is a note and the others go on; a picture (or its
    output at the request's upscale) over the pixel limit is refused before any work on it.
    """
    return _process_pictures(cache, request, _upload_sources(paths, request.restore.max_pixels), folder,
                             verb="restored", progress=progress)


def colorize_uploads(cache: PipelineCache, paths: Sequence[str | os.PathLike[str]], folder: Path, *,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     progress: ProgressFn = _no_progress) -> PictureOutcome:
    """The Colorize tab: colorize black-and-white or faded aligned faces."""
    request = aligned_request(cache.base, "codeformer_colorization", max_pixels=max_pixels)
    return _process_pictures(cache, request, _upload_sources(paths, max_pixels), folder, verb="colorized",
                             progress=progress)


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
    request = aligned_request(cache.base, "codeformer_inpainting", max_pixels=max_pixels)
    return _process_pictures(cache, request, sources, folder, verb="inpainted", progress=progress, check=_unpainted)


def _unpainted(name: str, picture: Picture) -> str | None:
    """A note when a face to inpaint has no hole painted: the network would change nothing."""
    from codeformer.aligned import PAINT_VALUE

    if np.any(np.all(picture.bgr8() == PAINT_VALUE, axis=2)):
        return None
    return (f"{name}: no pure-white (255, 255, 255) pixels, so nothing is filled; paint the holes with the "
            "white brush")


def restore_api(cache: PipelineCache, path: str | os.PathLike[str] | None, request: PageRequest,
                folder: Path) -> Path:
    """The ``/restore`` API: one picture in, the full-resolution restored PNG out."""
    if path is None:
        raise CodeFormerError("send a picture")
    return restore_uploads(cache, [path], request, folder).results[0].download


def restore_video_upload(cache: PipelineCache, path: str | os.PathLike[str] | None, request: PageRequest,
                         folder: Path, *, progress: ProgressFn = _no_progress) -> VideoOutcome:
    """The Video tab: restore every face of every frame; the result keeps the audio and timing."""
    from codeformer.video import is_video_path, probe_video

    if path is None:
        raise CodeFormerError("upload a video first")
    name = _upload_name(path)
    if not is_video_path(path):
        raise CodeFormerError(f"{name}: not a video this app reads ({', '.join(VIDEO_EXTENSIONS)})")
    info = probe_video(path)
    check_output_pixels(info.width, info.height, request.restore.upscale, request.restore.max_pixels, name=name)
    total = info.frame_count
    destination = folder / f"{Path(name).stem}_restored.mp4"
    started = time.perf_counter()
    progress(0.0, "loading the networks")
    with cache.using(request.load) as pipeline:

        def on_frame(index: int, result: RestoreResult) -> None:
            # The container's frame count can be an estimate: never report past 100 %.
            done = min(1.0, (index + 1) / total) if total else 0.0
            progress(done, f"frame {index + 1}" + (f" of {total}" if total else ""))

        stats = pipeline.restore_video(path, destination, pipeline.prepare(request.restore), progress=False,
                                       on_frame=on_frame)
    audio = f", audio kept ({len(stats.audio)} track{'s' if len(stats.audio) != 1 else ''})" if stats.audio else ""
    message = (f"{name} restored: {stats.frames_out} frames at {stats.width}x{stats.height}{audio}, "
               f"in {time.perf_counter() - started:.1f} s.")
    return VideoOutcome(stats.output, message)
