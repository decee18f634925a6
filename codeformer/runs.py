"""What ``inference_codeformer.py`` runs on whole pictures and videos, from its parsed options.

Loads the networks the options ask for, then drives :mod:`codeformer.face.pipeline` over a batch of
pictures (through :func:`codeformer.batch.run_batch`) or over a video's frames (through
:func:`codeformer.video.transform_video`), and writes the reference's output layout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from codeformer.batch import Batch, BatchReport, ensure_writable_folder, output_stems, run_batch, with_suffix_name
from codeformer.face.pipeline import Models, PictureResult, RestoreOptions, restore_frames, restore_pictures
from codeformer.imageio import Picture, read_image, write_image

logger = logging.getLogger(__name__)

RESTORATION_CHECKPOINT = "CodeFormer/codeformer.pth"
REALESRGAN = "realesrgan"


def restore_options(args: argparse.Namespace) -> RestoreOptions:
    return RestoreOptions(
        fidelity_weight=args.fidelity_weight, upscale=args.upscale, only_center_face=args.only_center_face,
        grayscale=args.grayscale, use_parse=not args.no_parse, draw_box=args.draw_box, batch_size=args.batch_size,
    )


def load_models(args: argparse.Namespace) -> Models:
    """Every network the options ask for, on the chosen device (downloading weights on first use)."""
    from codeformer.device import resolve_device
    from codeformer.face.detection import load_detector
    from codeformer.precision import resolve_precision
    from codeformer.restorer import FaceRestorer
    from codeformer.weights import weight_path

    device = resolve_device(args.device)
    resolve_precision(args.precision, device)  # a precision the device cannot run fails before any download
    # The user's own upsampler file first: the likeliest to be wrong, and cheap to check.
    bg_upsampler = face_upsampler = None
    if args.bg_upsampler or args.face_upsample:
        from codeformer.upsampler import load_upsampler

        # --face_upsample alone loads the reference's upsampler for the faces only.
        upsampler = load_upsampler(args.bg_upsampler or REALESRGAN, device=device, tile=args.bg_tile,
                                   half=False if args.fp32 else None, weights_dir=args.weights_dir)
        bg_upsampler = upsampler if args.bg_upsampler else None
        face_upsampler = upsampler if args.face_upsample else None
        logger.info("upsampler: %s (background: %s, faces: %s)", upsampler.describe(),
                    "yes" if bg_upsampler else "no", "yes" if face_upsampler else "no")
    restorer = FaceRestorer.from_file(weight_path(RESTORATION_CHECKPOINT, args.weights_dir), device=device,
                                      precision=args.precision, compile=args.compile)
    detector = load_detector(args.detection_model, device=device, weights_dir=args.weights_dir)
    parser = None
    if not args.no_parse:
        from codeformer.face.parsing import load_face_parser

        parser = load_face_parser(device=device, weights_dir=args.weights_dir)
    logger.info("face detector: %s; network: %s", args.detection_model, restorer.describe())
    return Models(restorer, detector, parser, bg_upsampler, face_upsampler)


def _write_faces(out_root: Path, stem: str, suffix: str | None, result: PictureResult) -> None:
    for index, (cropped, restored) in enumerate(zip(result.cropped_faces, result.restored_faces)):
        name = f"{stem}_{index:02d}"
        write_image(out_root / "cropped_faces" / f"{name}.png", cropped)
        write_image(out_root / "restored_faces" / with_suffix_name(name, suffix), restored)


def restore_picture_files(args: argparse.Namespace, inputs: Sequence[Path], out_root: Path) -> BatchReport:
    """Restore every face of every picture; ``<out>/{cropped_faces,restored_faces,final_results}``."""
    ensure_writable_folder(out_root)
    models = load_models(args)
    options = restore_options(args)
    stems = output_stems(inputs)

    def final_path(path: Path) -> Path:
        return out_root / "final_results" / with_suffix_name(stems[path], args.suffix)

    def process(pictures: list[Picture]) -> list[PictureResult]:
        return restore_pictures(pictures, models, options)

    def save(path: Path, result: PictureResult) -> None:
        _write_faces(out_root, stems[path], args.suffix, result)
        # The final picture last: its presence means the input is complete (--skip_existing).
        write_image(final_path(path), result.final)
        count = len(result.faces)
        logger.info("%s: %d face%s", path.name, count, "" if count == 1 else "s")

    # One picture per step: whole pictures can be large; faces within a picture are batched.
    batch = Batch(load=read_image, process=process, save=save, chunk_size=1,
                  is_done=(lambda path: final_path(path).is_file()) if args.skip_existing else None)
    return run_batch(inputs, batch, desc="restoring", unit="image", progress=not args.quiet)


def restore_video_file(args: argparse.Namespace, path: Path, out_root: Path) -> int:
    """Restore every face in every frame of one video into ``<out>/<name>[_<suffix>].mp4``."""
    from codeformer.video import transform_video

    destination = out_root / with_suffix_name(path.stem, args.suffix, ".mp4")
    if args.skip_existing and destination.is_file():
        logger.info("%s already exists: skipped", destination)
        return 0
    ensure_writable_folder(out_root)
    models = load_models(args)
    options = restore_options(args)
    frame_index = 0
    faces_seen = 0

    def process_batch(frames: list[np.ndarray]) -> list[np.ndarray]:
        nonlocal frame_index, faces_seen
        results = restore_frames(frames, models, options)
        for result in results:
            faces_seen += len(result.faces)
            if args.save_frames:
                stem = f"{frame_index:06d}"  # the reference's per-frame names
                _write_faces(out_root, stem, args.suffix, result)
                write_image(out_root / "final_results" / with_suffix_name(stem, args.suffix), result.final)
            frame_index += 1
        return [result.final for result in results]

    stats = transform_video(path, destination, process_batch, batch_frames=args.batch_size,
                            fps=args.save_video_fps, crf=args.video_crf, preset=args.video_preset,
                            progress=not args.quiet)
    logger.info("%s: %d frames, %d faces, %.1f frames/s; saved %s", path.name, stats.frames_out, faces_seen,
                stats.fps, stats.output)
    return 0
