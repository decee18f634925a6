"""Jobs over files: folders of pictures, aligned faces and videos, written in the reference's layout.

Each job takes a loaded :class:`~codeformer.pipeline.Pipeline` and plain keyword options, runs its
inputs through :func:`codeformer.batch.run_batch` (one line per failure, a summary, nothing
half-written) or :meth:`Pipeline.restore_video`, and writes:

- whole pictures: ``<out>/cropped_faces/<name>_<k>.png``, ``<out>/restored_faces/<name>_<k>[_<suffix>].png``
  and ``<out>/final_results/<name>[_<suffix>].png``;
- aligned faces: ``<out>/<name>[_<suffix>].png``;
- videos: ``<out>/<name>[_<suffix>].mp4`` (and per-frame pictures with ``save_frames``).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from codeformer.batch import (
    Batch,
    BatchReport,
    describe_failure,
    ensure_writable_folder,
    output_stems,
    run_batch,
    with_suffix_name,
)
from codeformer.face.pipeline import RestoreResult, RestoreOptions
from codeformer.imageio import Picture, read_image, to_uint8, write_image

if TYPE_CHECKING:
    from codeformer.pipeline import Pipeline
    from codeformer.report import FaceReport

logger = logging.getLogger(__name__)

# Progress-bar words by task: (bar label, summary verb).
_TASK_WORDS = {
    "restore": ("restoring", "restored"),
    "colorize": ("colorizing", "colorized"),
    "inpaint": ("inpainting", "inpainted"),
    "reconstruct": ("reconstructing", "reconstructed"),
}


# What a JPEG can hold: 8 bits, no alpha.
_JPEG_EXTENSIONS = (".jpg", ".jpeg")


def final_extension(path: PurePath, extension: str | None) -> str:
    """The final picture's file extension: ``.png`` by default, the input's for ``auto``."""
    if extension is None or extension == "png":
        return ".png"
    if extension == "auto":
        return path.suffix.lower() or ".png"
    return f".{extension.lstrip('.').lower()}"


def final_image(name: str, image: np.ndarray) -> np.ndarray:
    """The final picture as saved under ``name``: a JPEG gets 8 bits and no alpha (it holds neither), with a note."""
    has_alpha = image.ndim == 3 and image.shape[2] == 4
    if PurePath(name).suffix.lower() in _JPEG_EXTENSIONS and (image.dtype != np.uint8 or has_alpha):
        logger.info("%s: JPEG keeps neither 16 bits nor transparency; saved as 8-bit colour", name)
        image = to_uint8(image[:, :, :3] if image.ndim == 3 else image)
    return image


def final_picture_name(path: PurePath, stem: str, suffix: str | None, extension: str | None) -> str:
    """``<stem>[_<suffix>].<ext>``: a whole picture's name in ``final_results/`` (``extension`` as ``--ext``)."""
    return with_suffix_name(stem, suffix, final_extension(path, extension))


def face_outputs(stem: str, suffix: str | None, result: RestoreResult) -> list[tuple[str, np.ndarray]]:
    """A picture's face crops as (path relative to the output root, image): ``cropped_faces/``, ``restored_faces/``."""
    files = []
    for index, face in enumerate(result.faces):
        name = f"{stem}_{index:02d}"
        files.append((f"cropped_faces/{name}.png", face.aligned))
        files.append((f"restored_faces/{with_suffix_name(name, suffix)}", face.restored))
    return files


def picture_outputs(stem: str, suffix: str | None, final_name: str,
                    result: RestoreResult) -> list[tuple[str, np.ndarray]]:
    """Every file of a restored whole picture as (path relative to the output root, image), the final one last.

    The final picture is written last: its presence means the input is complete (resuming skips it).
    Writers encode each image by its name's extension (:func:`codeformer.imageio.encode_image`).
    """
    return [*face_outputs(stem, suffix, result), (f"final_results/{final_name}", final_image(final_name, result.image))]


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


def _write_faces(out_root: Path, stem: str, suffix: str | None, result: RestoreResult) -> None:
    for relative, image in face_outputs(stem, suffix, result):
        write_image(out_root / relative, image)


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
        return out_root / "final_results" / final_picture_name(path, stems[path], suffix, extension)

    def process(pictures: list[Picture]) -> list[RestoreResult]:
        return pipeline.restore_pictures(pictures, options)

    def save(path: Path, result: RestoreResult) -> None:
        # The final picture last: its presence means the input is complete (skip_existing).
        final_name = final_picture_name(path, stems[path], suffix, extension)
        for relative, image in picture_outputs(stems[path], suffix, final_name, result):
            write_image(out_root / relative, image)
        if report is not None:
            report.add_picture(path.name, result)
        count = len(result.faces)
        logger.info("%s: %d face%s", path.name, count, "" if count == 1 else "s")

    # One picture per step: whole pictures can be large; faces within a picture are batched.
    batch = Batch(load=lambda path: read_image(path, max_pixels=options.max_pixels), process=process, save=save,
                  chunk_size=1, is_done=(lambda path: final_path(path).is_file()) if skip_existing else None)
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
    suffix: str | None = None,
    skip_existing: bool = False,
    save_frames: bool = False,
    temporal_smoothing: bool = True,
    fps: float | None = None,
    crf: int = 18,
    preset: str = "medium",
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
            stem = f"{index:06d}"  # the reference's per-frame names
            _write_faces(out_root, stem, suffix, result)
            write_image(out_root / "final_results" / with_suffix_name(stem, suffix), result.image)

    stats = pipeline.restore_video(path, destination, options=options, temporal_smoothing=temporal_smoothing,
                                   fps=fps, crf=crf, preset=preset, progress=progress, on_frame=on_frame)
    if report is not None:
        report.add_video(path.name)
    logger.info("%s: %d frames, %d faces, %s; saved %s", path.name, stats.frames_out, faces_seen,
                describe_rate(stats.frames_out, stats.seconds), stats.output)
    return destination
