"""Jobs run in this process: folders of pictures, aligned faces and videos, in the layout of :mod:`~codeformer.jobs.layout`.

Each function takes a loaded :class:`~codeformer.pipeline.Pipeline` and prepared options, runs its
inputs through :func:`codeformer.jobs.loop.run_batch` (one line per failure, a summary, nothing
half-written) or :meth:`Pipeline.restore_video`, and writes every output atomically.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from codeformer.imageio import MemoryLimitError, Picture, read_image, write_image
from codeformer.jobs.layout import FINAL_FOLDER, final_picture_name, frame_outputs, output_stems, picture_outputs, with_suffix_name
from codeformer.jobs.loop import Batch, BatchReport, describe_failure, ensure_writable_folder, run_batch
from codeformer.options import RestoreOptions, VideoOptions
from codeformer.restoration import FacePlan, RestoreResult

if TYPE_CHECKING:
    from codeformer.pipeline import Pipeline
    from codeformer.jobs.report import FaceReport

logger = logging.getLogger(__name__)

# Progress-bar words by task: (bar label, summary verb).
_TASK_WORDS = {
    "restore": ("restoring", "restored"),
    "colorize": ("colorizing", "colorized"),
    "inpaint": ("inpainting", "inpainted"),
    "reconstruct": ("reconstructing", "reconstructed"),
}


def restore_aligned_images(pipeline: Pipeline, pictures: Sequence[Picture], names: Sequence[str],
                           options: RestoreOptions) -> list[np.ndarray]:
    """One chunk of aligned faces through the pipeline's model (batched together: results depend on the chunk)."""
    results = pipeline.restore_aligned(list(pictures), options, names=list(names))
    return [result.image for result in results]


def describe_rate(frames: int, seconds: float) -> str:
    """A processing rate people can read at any speed: ``12.5 frames/s``, or ``38.2 s/frame`` when slow."""
    if frames <= 0 or seconds <= 0:
        return "no frames"
    rate = frames / seconds
    return f"{rate:.1f} frames/s" if rate >= 1 else f"{seconds / frames:.1f} s/frame"


def task_words(task: str) -> tuple[str, str]:
    """(progress-bar label, summary verb) for a model's task: ("restoring", "restored") ..."""
    return _TASK_WORDS[task]


def task_verb(pipeline: Pipeline) -> str:
    """The summary's verb for the pipeline's task: restored, colorized, inpainted, reconstructed."""
    return _TASK_WORDS[pipeline.task][1]


def restore_picture_files(
    pipeline: Pipeline,
    inputs: Sequence[Path],
    out_root: Path,
    options: RestoreOptions,
    *,
    suffix: str | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    extension: str | None = None,
    report: FaceReport | None = None,
    describe: Callable[[BaseException], str] = describe_failure,
) -> BatchReport:
    """Restore every face of every picture; ``<out>/{cropped_faces,restored_faces,final_results}``.

    ``extension``: format of the final pictures, ``jpg``, ``png`` or ``auto`` (the input's); None: png.
    ``report``: gets every picture's faces.
    """
    ensure_writable_folder(out_root)
    stems = output_stems(inputs)

    def final_path(path: Path) -> Path:
        return out_root / FINAL_FOLDER / final_picture_name(path, stems[path], suffix, extension)

    options = pipeline.prepare(options)

    def load(path: Path) -> tuple[Picture, FacePlan]:
        picture = read_image(path, max_pixels=options.max_pixels)
        return picture, pipeline.plan_picture(picture, options)

    def process(planned: list[tuple[Picture, FacePlan]]) -> list[RestoreResult]:
        return pipeline.restore_planned([picture for picture, _ in planned], [plan for _, plan in planned], options)

    def save(path: Path, result: RestoreResult) -> None:
        # The final picture last: its presence means the input is complete (skip_existing).
        final_name = final_picture_name(path, stems[path], suffix, extension)
        for relative, image in picture_outputs(stems[path], suffix, final_name, result):
            write_image(out_root / relative, image)
        if report is not None:
            report.add_picture(path.name, result)
        count = len(result.faces)
        logger.info("%s: %d face%s", path.name, count, "" if count == 1 else "s")

    # One picture per step: whole pictures can be large; faces within a picture are batched. The next
    # pictures are read, detected and aligned while this one's faces are restored and pasted back (dlib in
    # processes of its own, two pictures at once: it holds the GIL and one core each); a plan refused for
    # memory then is planned again in its turn.
    with pipeline.detecting_apart(len(inputs)) if len(inputs) > 1 else contextlib.nullcontext(0) as apart:
        batch = Batch(load=load, process=process, save=save, chunk_size=1, load_ahead=max(1, apart),
                      retry_in_turn=lambda error: isinstance(error, MemoryLimitError),
                      is_done=(lambda path: final_path(path).is_file()) if skip_existing else None)
        return run_batch(inputs, batch, desc="restoring", unit="image", progress=progress, describe=describe)


def restore_aligned_files(
    pipeline: Pipeline,
    inputs: Sequence[Path],
    out_dir: Path,
    options: RestoreOptions,
    *,
    suffix: str | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    describe: Callable[[BaseException], str] = describe_failure,
) -> BatchReport:
    """Aligned faces through the pipeline's model (restore, colorize, inpaint or reconstruct): ``<out>/<name>.png``."""
    ensure_writable_folder(out_dir)
    stems = output_stems(inputs)

    def target(path: Path) -> Path:
        return out_dir / with_suffix_name(stems[path], suffix)

    def load(path: Path) -> tuple[Path, Picture]:
        return path, read_image(path, max_pixels=options.max_pixels)

    def process(items: list[tuple[Path, Picture]]) -> list[np.ndarray]:
        return restore_aligned_images(pipeline, [picture for _, picture in items], [path.name for path, _ in items],
                                      options)

    batch = Batch(load=load, process=process, save=lambda path, image: write_image(target(path), image),
                  chunk_size=pipeline.batch_size,
                  is_done=(lambda path: target(path).is_file()) if skip_existing else None)
    label, _verb = _TASK_WORDS[pipeline.task]
    return run_batch(inputs, batch, desc=label, unit="face", progress=progress, describe=describe)


def restore_video_file(
    pipeline: Pipeline,
    path: Path,
    out_root: Path,
    options: RestoreOptions,
    *,
    video: VideoOptions | None = None,
    suffix: str | None = None,
    skip_existing: bool = False,
    save_frames: bool = False,
    progress: bool = True,
    report: FaceReport | None = None,
) -> Path | None:
    """Restore every face in every frame of one video into ``<out>/<name>[_<suffix>].mp4``.

    Returns the output path, or None when ``skip_existing`` found it already there.
    """
    destination = out_root / with_suffix_name(path.stem, suffix, ".mp4")
    if skip_existing and destination.is_file():
        logger.info("%s already exists: skipped", destination)
        return None
    ensure_writable_folder(out_root)
    faces_seen = 0

    def on_frame(index: int, result: RestoreResult) -> None:
        nonlocal faces_seen
        faces_seen += len(result.faces)
        if report is not None:
            report.add_frame(index, result)
        if save_frames:
            for relative, image in frame_outputs(index, suffix, result):
                write_image(out_root / relative, image)

    stats = pipeline.restore_video(path, destination, options, video=video, progress=progress, on_frame=on_frame)
    if report is not None:
        report.add_video(path.name)
    logger.info("%s: %d frames, %d faces, %s; saved %s", path.name, stats.frames_out, faces_seen,
                describe_rate(stats.frames_out, stats.seconds), stats.output)
    return destination
