"""Where a job's outputs go and what they are called: the reference's layout, one rule for every backend.

- whole pictures: ``<out>/cropped_faces/<name>_<k>.png``, ``<out>/restored_faces/<name>_<k>[_<suffix>].png``
  and ``<out>/final_results/<name>[_<suffix>].<ext>`` (the final picture last: its presence means done);
- aligned faces: ``<out>/restored_faces/<name>[_<suffix>].png`` for restoration (``--has_aligned``),
  ``<out>/<name>[_<suffix>].png`` for colorization, inpainting and VQGAN reconstruction;
- videos: ``<out>/<name>[_<suffix>].mp4`` (and per-frame pictures named by frame number);
- ``<out>`` by default: ``results/<input name>_<w>`` (``results/test_img_<w>`` for one picture), as the
  reference's scripts name it, or the task's own default (:func:`default_output_root`).

Pure functions of names and results: the in-process backend and the Ray workers write exactly these
files, so a resumed run, either way, finds what the other wrote.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Sequence

import numpy as np

from codeformer.imageio import to_uint8

if TYPE_CHECKING:
    from codeformer.restoration import RestoreResult

__all__ = [
    "FINAL_FOLDER",
    "RESTORED_FACES_FOLDER",
    "aligned_output_name",
    "default_output_root",
    "face_outputs",
    "final_extension",
    "final_image",
    "final_picture_name",
    "frame_outputs",
    "input_name",
    "output_stems",
    "picture_outputs",
    "with_suffix_name",
]

logger = logging.getLogger(__name__)

FINAL_FOLDER = "final_results"  # a whole picture's final result; its presence means the input is done
RESTORED_FACES_FOLDER = "restored_faces"  # restored crops (and aligned faces restored with --has_aligned)
CROPPED_FACES_FOLDER = "cropped_faces"
# What a JPEG can hold: 8 bits, no alpha.
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
# The reference scripts' output folders for one picture, by task; a folder of them gets its own name.
_SINGLE_PICTURE_ROOTS = {
    "restore": "results/test_img_{tag}",
    "colorize": "results/test_colorization_img",
    "inpaint": "results/test_inpainting_img",
}
VQGAN_ROOT = "results/vqgan_rec"  # inference_vqgan.py's --save_root default


def input_name(location: str) -> str:
    """The input's name for default output folders (a trailing slash is ignored, as the reference does)."""
    if "://" in location:
        return PurePath(location.rstrip("/")).name
    # abspath, not resolve: the name as written (".." and "." made concrete), never following links.
    return Path(os.path.abspath(location.rstrip("/\\") or ".")).name


def default_output_root(location: str, *, task: str, tag: str, is_folder: bool, is_video: bool) -> str:
    """The reference's output folder for an input when ``-o`` is not given.

    ``tag`` suffixes restoration folders: the fidelity weight (``0.7``), or the model's name for
    models without one.
    """
    if task == "reconstruct":
        return VQGAN_ROOT
    if is_video:
        return f"results/{PurePath(input_name(location)).stem}_{tag}"
    if not is_folder:
        return _SINGLE_PICTURE_ROOTS[task].format(tag=tag)
    name = input_name(location)
    return f"results/{name}_{tag}" if task == "restore" else f"results/{name}"


def output_stems(inputs: Sequence[PurePath]) -> dict[PurePath, str]:
    """Output base names for inputs, unique even when two inputs share a stem (``a.jpg`` and ``a.png``).

    Inputs keep their stem; when several inputs of a batch share one, each of them gets its extension
    appended (``a_jpg``, ``a_png``) so no output overwrites another.
    """
    counts: dict[str, int] = {}
    for path in inputs:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    stems = {}
    for path in inputs:
        clash = counts[path.stem] > 1
        stems[path] = f"{path.stem}_{path.suffix.lstrip('.').lower()}" if clash else path.stem
    if any(count > 1 for count in counts.values()):
        logger.warning("some inputs share a name; their outputs are named <name>_<extension> to keep them apart")
    return stems


def with_suffix_name(stem: str, suffix: str | None, extension: str = ".png") -> str:
    """``<stem>[_<suffix>]<extension>``: the reference's ``--suffix`` naming."""
    return f"{stem}_{suffix}{extension}" if suffix else f"{stem}{extension}"


def final_extension(path: PurePath, extension: str | None) -> str:
    """The final picture's file extension: ``.png`` by default, the input's for ``auto``."""
    if extension is None or extension == "png":
        return ".png"
    if extension == "auto":
        return path.suffix.lower() or ".png"
    return f".{extension.lstrip('.').lower()}"


def final_picture_name(path: PurePath, stem: str, suffix: str | None, extension: str | None) -> str:
    """``<stem>[_<suffix>].<ext>``: a whole picture's name in ``final_results/`` (``extension`` as ``--ext``)."""
    return with_suffix_name(stem, suffix, final_extension(path, extension))


def aligned_output_name(stem: str, suffix: str | None, task: str) -> str:
    """An aligned face's output, relative to the output root."""
    name = with_suffix_name(stem, suffix)
    return f"{RESTORED_FACES_FOLDER}/{name}" if task == "restore" else name


def final_image(name: str, image: np.ndarray) -> np.ndarray:
    """The final picture as saved under ``name``: a JPEG gets 8 bits and no alpha (it holds neither), with a note."""
    has_alpha = image.ndim == 3 and image.shape[2] == 4
    if PurePath(name).suffix.lower() in _JPEG_EXTENSIONS and (image.dtype != np.uint8 or has_alpha):
        logger.info("%s: JPEG keeps neither 16 bits nor transparency; saved as 8-bit colour", name)
        image = to_uint8(image[:, :, :3] if image.ndim == 3 else image)
    return image


def face_outputs(stem: str, suffix: str | None, result: RestoreResult) -> list[tuple[str, np.ndarray]]:
    """A picture's face crops as (path relative to the output root, image): ``cropped_faces/``, ``restored_faces/``."""
    files = []
    for index, face in enumerate(result.faces):
        name = f"{stem}_{index:02d}"
        files.append((f"{CROPPED_FACES_FOLDER}/{name}.png", face.aligned))
        files.append((f"{RESTORED_FACES_FOLDER}/{with_suffix_name(name, suffix)}", face.restored))
    return files


def picture_outputs(stem: str, suffix: str | None, final_name: str,
                    result: RestoreResult) -> list[tuple[str, np.ndarray]]:
    """Every file of a restored whole picture as (path relative to the output root, image), the final one last.

    The final picture is written last: its presence means the input is complete (resuming skips it).
    Writers encode each image by its name's extension (:func:`codeformer.imageio.encode_image`).
    """
    return [*face_outputs(stem, suffix, result), (f"{FINAL_FOLDER}/{final_name}", final_image(final_name, result.image))]


def frame_outputs(index: int, suffix: str | None, result: RestoreResult) -> list[tuple[str, np.ndarray]]:
    """A video frame's files with ``save_frames``: its faces and its final picture, named by frame number."""
    stem = f"{index:06d}"  # the reference's per-frame names
    return [*face_outputs(stem, suffix, result), (f"{FINAL_FOLDER}/{with_suffix_name(stem, suffix)}", result.image)]
