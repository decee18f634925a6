"""Cropping jobs: FFHQ-style aligned 512x512 faces from whole photos (``codeformer crop``).

Faces are found with dlib's detector and 68 landmarks and cropped the FFHQ way
(:mod:`codeformer.face.ffhq_align`), ready for ``has_aligned`` restoration, colorization and
inpainting: ``<out>/<name>_00.png``, ``<name>_01.png`` ... in detection order, or ``<name>.png``
with ``only_keep_largest``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from codeformer.imageio import DEFAULT_MAX_PIXELS, read_image, write_image
from codeformer.jobs.inputs import collect_pictures
from codeformer.jobs.layout import input_name, output_stems
from codeformer.jobs.loop import Batch, BatchReport, describe_failure, ensure_writable_folder, run_batch

__all__ = ["CropJob", "crop_faces"]

logger = logging.getLogger(__name__)

DEFAULT_CROP_FOLDER = "./inputs/cropped_faces"  # the reference script's --out_dir


@dataclass(frozen=True)
class CropJob:
    """Crop every face of a picture or a folder of pictures."""

    input: str
    output: str = DEFAULT_CROP_FOLDER
    only_keep_largest: bool = False  # only the largest face of each picture, as <name>.png
    enable_padding: bool = False  # fill outside the photo with FFHQ's blurred mirror instead of black
    skip_existing: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    weights_dir: str | os.PathLike[str] | None = None
    progress: bool = True


def crop_faces(job: CropJob, *, describe: Callable[[BaseException], str] = describe_failure) -> BatchReport:
    """Run a :class:`CropJob`; one line per failed input, and a summary that counts faces and pictures."""
    from codeformer.face.ffhq_align import crop_align_faces, load_dlib_models

    collected = collect_pictures(job.input)
    inputs = collected.pictures
    out_dir = Path(job.output)
    ensure_writable_folder(out_dir)
    detector, predictor = load_dlib_models(job.weights_dir)
    stems = output_stems(inputs)
    counts = {"faces": 0, "faceless": 0}

    def name(path: Path, index: int) -> str:
        return f"{stems[path]}.png" if job.only_keep_largest else f"{stems[path]}_{index:02d}.png"

    def process(pictures: list) -> list:
        return [crop_align_faces(picture.bgr8(), detector, predictor, only_keep_largest=job.only_keep_largest,
                                 enable_padding=job.enable_padding) for picture in pictures]

    def save(path: Path, faces: list[np.ndarray]) -> None:
        if not faces:
            logger.warning("%s: no face found", path.name)
            counts["faceless"] += 1
            return
        for index, face in enumerate(faces):
            write_image(out_dir / name(path, index), face)
        counts["faces"] += len(faces)

    batch = Batch(load=lambda path: read_image(path, max_pixels=job.max_pixels), process=process, save=save,
                  is_done=(lambda path: (out_dir / name(path, 0)).is_file()) if job.skip_existing else None)
    report = run_batch(inputs, batch, desc="cropping", unit="image", progress=job.progress, describe=describe)
    for path, reason in collected.skipped:
        logger.warning("skipped %s: %s", input_name(str(path)), reason)
    report.skipped += len(collected.skipped)
    with_faces = report.done - counts["faceless"]
    logger.info("%d face%s from %d picture%s (%d without a face), skipped %d, failed %d; results in %s",
                counts["faces"], "" if counts["faces"] == 1 else "s", with_faces, "" if with_faces == 1 else "s",
                counts["faceless"], report.skipped, report.failed, out_dir)
    return report
