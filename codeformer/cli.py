"""Command line: argument parsing and dispatch for every entry point.

``inference_codeformer.py``, ``inference_colorization.py``, ``inference_inpainting.py``, the
``scripts/`` and the ``codeformer`` console script (real subcommands: ``restore``, ``colorize``,
``inpaint``, ``vqgan``, ``crop``, ``download``) are thin wrappers around the ``*_main`` functions
here. Flags keep the reference repository's names. This module only parses, validates combinations
and reports: loading is :func:`codeformer.load_pipeline`, the work is :mod:`codeformer.runs`, both
called with plain keyword arguments.

Exit codes: 0 everything worked, 1 something failed (per-file failures included), 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from codeformer import __version__
from codeformer.batch import Batch, BatchReport, describe_failure, ensure_writable_folder, output_stems, run_batch
from codeformer.color import GRAY_MODES
from codeformer.device import DEVICE_CHOICES
from codeformer.errors import CodeFormerError, OptionError
from codeformer.imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, PixelLimitError, is_image_path, read_image, write_image
from codeformer.registry import (
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    MODELS,
    available_detectors,
    available_models,
    available_upsamplers,
    whole_picture_models,
)
from codeformer.face.selection import DEFAULT_REFERENCE_DISTANCE

logger = logging.getLogger("codeformer")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The command line's name for each library option that an OptionError can name.
OPTION_FLAGS = {
    "device": "--device", "precision": "--precision", "fidelity_weight": "-w", "tile": "--bg_tile",
    "batch_size": "--batch_size", "upscale": "-s", "grayscale": "--grayscale", "max_pixels": "--max_pixels",
    "face_index": "--face_index", "min_face_size": "--min_face_size", "reference_distance": "--reference_distance",
}


# ----------------------------------------------------------------------------------------- logging


class _TqdmLogHandler(logging.Handler):
    """Log lines printed above any active progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


class _LevelPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Route the package's log records to stderr, one plain line each."""
    package_logger = logging.getLogger("codeformer")
    for handler in list(package_logger.handlers):
        if isinstance(handler, _TqdmLogHandler):
            package_logger.removeHandler(handler)
    handler = _TqdmLogHandler()
    handler.setFormatter(_LevelPrefixFormatter())
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    package_logger.propagate = False


# ------------------------------------------------------------------------------- argument types


def _fidelity_weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be between 0 (best quality) and 1 (most faithful to the input), got {text}"
        )
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


# ------------------------------------------------------------------------------ shared arguments


def _add_io_arguments(parser: argparse.ArgumentParser, *, default_input: str, output_help: str) -> None:
    parser.add_argument("-i", "--input_path", "--test_path", dest="input_path", default=default_input,
                        help="input picture or folder")
    parser.add_argument("-o", "--output_path", default=None, help=output_help)
    parser.add_argument("--suffix", default=None, help="suffix added to output file names")


def _upsampler(text: str) -> str | None:
    """``--bg_upsampler``: a registry name, a model file, or ``none`` (the reference's default spelling)."""
    if text.lower() == "none":
        return None
    if text in available_upsamplers() or Path(text).expanduser().is_file():
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither an upsampler name ({', '.join(available_upsamplers())}) nor an existing model file"
    )


def _face_numbers(text: str) -> tuple[int, ...]:
    """``--face_index 0,2``: face numbers from 0."""
    try:
        numbers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected face numbers like 0,2, got {text!r}") from None
    if not numbers or any(number < 0 for number in numbers):
        raise argparse.ArgumentTypeError(f"expected face numbers from 0 like 0,2, got {text!r}")
    return numbers


def _model_or_file(choices: Callable[[], list[str]]) -> Callable[[str], str]:
    """An argument type: a model name among ``choices()`` (from the registry), or an existing checkpoint file."""

    def parse(text: str) -> str:
        if text in choices() or Path(text).expanduser().is_file():
            return text
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a model ({', '.join(choices())}) nor an existing checkpoint file"
        )

    return parse


# ``restore --model``: restorers for whole pictures; ``export --model``: any restorer.
_restoration_model = _model_or_file(whole_picture_models)


def _add_runtime_arguments(parser: argparse.ArgumentParser, *, torch_networks: bool = True) -> None:
    """Device, batching, weights, resuming, logging; ``torch_networks=False`` (dlib only): no device flags."""
    if torch_networks:
        parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                            help="where the networks run (default: auto = cuda, else mps, else cpu)")
        parser.add_argument("--batch_size", type=_int_at_least(1), default=None,
                            help="faces restored together in one forward pass (default: 1 on CPU, 4 on GPU)")
        parser.add_argument("--low_memory", action="store_true",
                            help="return freed memory to the system at once: less resident memory, slower on CPU")
    parser.add_argument("--weights_dir", default=None,
                        help="weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)")
    parser.add_argument("--max_pixels", type=_int_at_least(1), default=DEFAULT_MAX_PIXELS,
                        help="refuse pictures, and outputs, with more pixels than this (checked before decoding; "
                             "default: 150 megapixels)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="skip inputs whose result is already in the output folder (resume a batch)")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s (codeformer {__version__})")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something: not None/False, not already in the help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    from codeformer.precision import PRECISION_CHOICES

    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                        help="CodeFormer arithmetic: fp32 (exact, default); bf16 / fp16 run the image generator in "
                             "half precision while the code prediction stays fp32; auto picks the fastest safe "
                             "one for the device (bf16 on CPUs with AVX512-BF16/AMX and recent GPUs)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the generator with torch.compile (slow first call; falls back if unavailable)")


def _tune_runtime(args: argparse.Namespace, enabled: bool) -> None:
    """Process-wide CPU settings that speed inference up ~1.5x for more resident memory (--low_memory: off)."""
    if not enabled or getattr(args, "low_memory", False):
        return
    from codeformer.precision import configure_cpu_runtime

    settings = configure_cpu_runtime()
    args.runtime_tuned = True  # --ray workers apply the same settings (they change float rounding)
    logger.debug("runtime: %s", ", ".join(settings) or "unchanged")


def _add_ray_arguments(parser: argparse.ArgumentParser, *, video: bool = False) -> None:
    """``--ray``: run on a Ray cluster (see :mod:`codeformer.cluster`); inputs and -o may then be fsspec URLs."""
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run on Ray: local (start an instance on this machine), auto (the cluster this machine "
                             "belongs to) or ray://host:port. -i and -o may then be URLs (s3://, gs://, file://); "
                             "inputs whose result exists are skipped; <out>/ray_report.jsonl lists every input. "
                             'Needs pip install "ray[data]"')
    parser.add_argument("--ray_workers", type=_int_at_least(1), default=None, metavar="N",
                        help="--ray: workers, each loading the networks once (default: one per GPU, else one per CPU)")
    parser.add_argument("--ray_worker_cpus", type=_int_at_least(1), default=None, metavar="N",
                        help="--ray: CPUs, and torch threads, of each worker (default: 1)")
    if video:
        parser.add_argument("--ray_segments", type=_int_at_least(1), default=None, metavar="N",
                            help="--ray: cut a video at keyframes into N segments restored in parallel "
                                 "(default: one per worker)")


def _new_parser(prog: str | None, description: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: a shortened flag must never silently mean another one (--w is not --weights_dir).
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=_HelpFormatter)


# --------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The pictures an input path names, and the folder entries that are not read (with why)."""

    pictures: list[Path]
    skipped: list[tuple[Path, str]]


def collect_images(input_path: str) -> Inputs:
    """The pictures named by ``--input_path``: one file, or a folder's pictures sorted by name.

    Every other entry of a folder is listed in ``skipped`` with its reason (hidden files aside), so
    the run's summary accounts for the whole folder. Any problem with the path is one line.
    """
    from codeformer.imageio import path_problem, scan_folder

    path = Path(input_path)
    kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    if path.is_dir():
        scan = scan_folder(path)
        if not scan.images:
            others = f" ({len(scan.skipped)} other entries skipped)" if scan.skipped else ""
            raise CodeFormerError(f"no pictures ({kinds}) in folder {path}{others}")
        return Inputs(scan.images, scan.skipped)
    if path.is_file():
        if not is_image_path(path):
            raise CodeFormerError(f"{path} is not a picture this command reads ({kinds})")
        return Inputs([path], [])
    try:
        path.stat()
    except OSError as error:
        problem = path_problem(path, error)
        if problem == "no such file":
            raise CodeFormerError(f"input path {path} does not exist") from None
        raise CodeFormerError(f"input path {path}: {problem}") from None
    except ValueError:
        raise CodeFormerError(f"input path {input_path!r} is not a valid file name") from None
    raise CodeFormerError(f"input path {path} is neither a picture, a video nor a folder")


def _note_skipped(inputs: Inputs, report: BatchReport) -> BatchReport:
    """Count and list the folder entries that were not read, so the summary adds up to the folder."""
    for path, reason in inputs.skipped:
        logger.warning("skipped %s: %s", path.name, reason)
    report.skipped += len(inputs.skipped)
    return report


def _input_name(input_path: str) -> str:
    """The input's name for default output folders (a trailing slash is ignored, as the reference does)."""
    # abspath, not resolve: the name as written (".." and "." made concrete), never following links.
    return Path(os.path.abspath(input_path.rstrip("/\\") or ".")).name


def describe_error(error: BaseException) -> str:
    """One line for a failed input, with the library's options named by their flags."""
    return phrase_error(error) if isinstance(error, CodeFormerError) else describe_failure(error)


def _finish(report: BatchReport, out_root: Path, verb: str) -> int:
    logger.info("%s; results in %s", report.summary(verb), out_root)
    return report.exit_code


def phrase_error(error: CodeFormerError) -> str:
    """A library error as the command line says it: options are named by their flags."""
    if isinstance(error, OptionError) and error.option in OPTION_FLAGS:
        return error.phrased(OPTION_FLAGS[error.option])
    if isinstance(error, PixelLimitError):
        return error.phrased("--max_pixels")
    return str(error)


def _run_guarded(body: Callable[[], int]) -> int:
    """Run a command body: one line and exit 1 for a user error, 130 when interrupted, no tracebacks."""
    try:
        return body()
    except CodeFormerError as error:
        logger.error("%s", phrase_error(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        logger.error("interrupted; finished outputs are kept, nothing half-written is left")
        return EXIT_INTERRUPTED


def _load(args: argparse.Namespace, model: str, *, whole_pictures: bool, checkpoint: str | None = None):
    """:func:`codeformer.load_pipeline` with the options the command line gives (names are checked already)."""
    from codeformer.pipeline import load_pipeline

    return load_pipeline(model, **_load_arguments(args, whole_pictures=whole_pictures, checkpoint=checkpoint))


def _load_arguments(args: argparse.Namespace, *, whole_pictures: bool, checkpoint: str | None = None) -> dict:
    """:func:`codeformer.load_pipeline`'s keyword arguments from the parsed flags."""
    return dict(
        detector=getattr(args, "detection_model", DEFAULT_DETECTOR) if whole_pictures else None,
        device=args.device,
        precision=getattr(args, "precision", "fp32"),
        parse=not getattr(args, "no_parse", False),
        bg_upsampler=getattr(args, "bg_upsampler", None),
        face_upsample=getattr(args, "face_upsample", False),
        weights_dir=args.weights_dir,
        batch_size=args.batch_size,
        compile=getattr(args, "compile", False),
        bg_tile=getattr(args, "bg_tile", 400),
        upsampler_half=False if getattr(args, "fp32", False) else None,
        checkpoint=checkpoint,
        progress=not args.quiet,
    )


def _options(args: argparse.Namespace, pipeline) -> object:
    """The per-call options of a loaded pipeline from the parsed flags."""
    return pipeline.options(**_option_arguments(args))


def _option_arguments(args: argparse.Namespace) -> dict:
    """:meth:`Pipeline.options`' keyword arguments from the parsed flags."""
    return dict(
        fidelity_weight=getattr(args, "fidelity_weight", None),
        upscale=getattr(args, "upscale", 2),
        only_center_face=getattr(args, "only_center_face", False),
        largest_face=getattr(args, "largest_face", False),
        face_index=getattr(args, "face_index", None),
        min_face_size=getattr(args, "min_face_size", None),
        reference_face=getattr(args, "reference_face", None),
        reference_distance=getattr(args, "reference_distance", DEFAULT_REFERENCE_DISTANCE),
        draw_box=getattr(args, "draw_box", False),
        grayscale=getattr(args, "grayscale", "auto"),
        measure_identity=getattr(args, "report", False),
        max_pixels=args.max_pixels,
    )


def _face_report(args: argparse.Namespace, out_root: Path):
    """The per-face report the flags ask for, or None."""
    if not args.report:
        return None
    from codeformer.report import REPORT_NAME, FaceReport

    return FaceReport(out_root / REPORT_NAME, keep_existing=args.skip_existing)


def _run_aligned_files(args: argparse.Namespace, model: str, out_dir: Path, out_root: Path, *,
                       checkpoint: str | None = None) -> int:
    from codeformer.runs import restore_aligned_files, task_verb

    inputs = collect_images(args.input_path)
    ensure_writable_folder(out_dir)
    pipeline = _load(args, model, whole_pictures=False, checkpoint=checkpoint)
    report = restore_aligned_files(pipeline, inputs.pictures, out_dir, _options(args, pipeline), suffix=args.suffix,
                                   skip_existing=args.skip_existing, progress=not args.quiet, describe=describe_error)
    return _finish(_note_skipped(inputs, report), out_root, task_verb(pipeline))


# ------------------------------------------------------------------------------ inference_codeformer


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    _add_io_arguments(parser, default_input="./inputs/whole_imgs",
                      output_help="output folder (default: results/<input name>_<w>, as the reference)")
    parser.add_argument("--model", type=_restoration_model, default=DEFAULT_MODEL,
                        help=f"face restorer: {', '.join(whole_picture_models())}, or a face restoration checkpoint "
                             "file spandrel can identify (GFPGAN, RestoreFormer, CodeFormer)")
    parser.add_argument("-w", "--fidelity_weight", "--w", dest="fidelity_weight", type=_fidelity_weight,
                        default=None, help="CodeFormer only: balance quality (0) and fidelity to the input (1) "
                                           "(default: 0.5)")
    parser.add_argument("-s", "--upscale", type=_int_at_least(1), default=2,
                        help="final upscaling of whole pictures: the output is exactly input size x s")
    parser.add_argument("--has_aligned", action="store_true", help="inputs are aligned 512x512 face crops")
    parser.add_argument("--only_center_face", action="store_true", help="restore only the face nearest the centre")
    parser.add_argument("--largest_face", action="store_true", help="restore only the largest face")
    parser.add_argument("--face_index", type=_face_numbers, default=None, metavar="N[,N...]",
                        help="restore only these faces: numbered left to right from 0 in a picture, by first "
                             "appearance in a video (e.g. 0,2)")
    parser.add_argument("--min_face_size", type=_positive_float, default=None, metavar="PX",
                        help="restore only faces whose box is at least PX pixels on its short side")
    parser.add_argument("--reference_face", default=None, metavar="PATH",
                        help="restore only the faces of the person in this photo (compared by a face embedding)")
    parser.add_argument("--reference_distance", type=_positive_float, default=DEFAULT_REFERENCE_DISTANCE,
                        help="how close a face must be to --reference_face to count as that person")
    parser.add_argument("--report", action="store_true",
                        help="write <out>/report.json: every face, restored or why not, and how far restoration "
                             "moved its identity")
    parser.add_argument("--no_temporal_smoothing", action="store_true",
                        help="videos: restore every frame on its own (default: faces are tracked and their "
                             "landmarks smoothed over time, so they do not flicker)")
    parser.add_argument("--draw_box", action="store_true", help="outline detected faces in the final picture")
    parser.add_argument("--detection_model", default=DEFAULT_DETECTOR, choices=available_detectors(),
                        help="face detector")
    parser.add_argument("--bg_upsampler", type=_upsampler, default=None,
                        help=f"background upsampler: {', '.join(available_upsamplers())}, or a path to a model "
                             "file spandrel can load")
    parser.add_argument("--face_upsample", action="store_true",
                        help="also run restored faces through the upsampler before pasting them back")
    parser.add_argument("--bg_tile", type=_int_at_least(0), default=400,
                        help="tile size for the upsampler, 0 = whole picture at once")
    parser.add_argument("--fp32", action="store_true",
                        help="run the upsampler in full precision on CUDA (if fp16 gives black output)")
    parser.add_argument("--ext", choices=("auto", "jpg", "png"), default="png",
                        help="format of the final pictures: png (default, as the reference), jpg, or auto (the "
                             "input's); restored and cropped faces stay png")
    parser.add_argument("--grayscale", choices=GRAY_MODES, default="auto",
                        help="treat pictures as black-and-white: detected (auto) or forced")
    parser.add_argument("--no_parse", action="store_true",
                        help="blend faces with the square soft mask alone, without face parsing")
    parser.add_argument("--save_video_fps", type=_positive_float, default=None,
                        help="frame rate of the output video (default: the input's)")
    parser.add_argument("--video_crf", type=_int_at_least(0), default=18,
                        help="H.264 quality of the output video (lower is better, 18 is visually lossless)")
    parser.add_argument("--video_preset", default="medium",
                        help="H.264 speed/size preset (ultrafast ... veryslow)")
    parser.add_argument("--save_frames", action="store_true",
                        help="for videos, also save cropped_faces/, restored_faces/ and final_results/ per frame")
    _add_precision_arguments(parser)
    _add_runtime_arguments(parser)
    _add_ray_arguments(parser, video=True)


def _output_tag(args: argparse.Namespace) -> str:
    """What the default output folder is suffixed with: ``w`` (the reference's), else the model's name."""
    if args.fidelity_weight is not None:
        return str(args.fidelity_weight)
    if args.model in MODELS and MODELS[args.model].default_fidelity is not None:
        return str(MODELS[args.model].default_fidelity)
    return Path(args.model).stem


def run_restore(args: argparse.Namespace) -> int:
    """``inference_codeformer.py`` / ``codeformer restore``: aligned faces, whole pictures, folders, videos."""
    from codeformer.runs import restore_picture_files, restore_video_file
    from codeformer.video import is_video_path

    w = _output_tag(args)
    if args.ray:
        return _run_restore_on_ray(args, w)
    input_path = Path(args.input_path)
    if input_path.is_file() and is_video_path(input_path):
        out_root = Path(args.output_path or f"results/{input_path.stem}_{w}")
        ensure_writable_folder(out_root)
        pipeline = _load(args, args.model, whole_pictures=True)
        restore_video_file(pipeline, input_path, out_root, _options(args, pipeline), suffix=args.suffix,
                           skip_existing=args.skip_existing, save_frames=args.save_frames,
                           temporal_smoothing=not args.no_temporal_smoothing, fps=args.save_video_fps,
                           crf=args.video_crf, preset=args.video_preset, progress=not args.quiet,
                           report=_face_report(args, out_root))
        return EXIT_OK
    if input_path.is_file():
        default_root = f"results/test_img_{w}"  # the reference's name for a single picture
    else:
        default_root = f"results/{_input_name(args.input_path)}_{w}"
    out_root = Path(args.output_path or default_root)
    if args.has_aligned:
        return _run_aligned_files(args, args.model, out_root / "restored_faces", out_root)
    inputs = collect_images(args.input_path)
    ensure_writable_folder(out_root)
    pipeline = _load(args, args.model, whole_pictures=True)
    report = restore_picture_files(pipeline, inputs.pictures, out_root, _options(args, pipeline), suffix=args.suffix,
                                   skip_existing=args.skip_existing, progress=not args.quiet,
                                   extension=None if args.ext == "png" else args.ext,
                                   report=_face_report(args, out_root), describe=describe_error)
    return _finish(_note_skipped(inputs, report), out_root, "restored")


# ------------------------------------------------------------------------------------------- --ray


def _ray_recipe(args: argparse.Namespace, model: str, *, whole_pictures: bool):
    """What each --ray worker loads: the same pipeline and options as this command without --ray."""
    from codeformer.cluster import PipelineRecipe

    load = _load_arguments(args, whole_pictures=whole_pictures)
    load["progress"] = False  # a worker's bars would go nowhere; the driver shows one over inputs
    return PipelineRecipe(model, load=load, options=_option_arguments(args),
                          runtime_tuning=getattr(args, "runtime_tuned", False))


def _ray_workers(args: argparse.Namespace):
    from codeformer.cluster import plan_workers

    return plan_workers(args.ray_workers, args.ray_worker_cpus, device=args.device)


def _run_restore_on_ray(args: argparse.Namespace, w: str) -> int:
    """``restore --ray``: a folder (or URL) of pictures, or a video cut into segments, on a Ray cluster."""
    from codeformer.cluster import Folder, ray_session, restore_video_on_ray
    from codeformer.cluster.storage import name_of
    from codeformer.video import is_video_path

    source = Folder(args.input_path)
    if not source.is_folder() and is_video_path(args.input_path) and not args.has_aligned:
        if args.face_index is not None:
            raise CodeFormerError("--face_index numbers a video's faces by first appearance, which a segment cannot "
                                  "know: run this video without --ray, or choose faces with --reference_face")
        out_root = args.output_path or f"results/{Path(name_of(args.input_path)).stem}_{w}"
        _check_local_output(out_root)
        with ray_session(args.ray):
            restore_video_on_ray(_ray_recipe(args, args.model, whole_pictures=True), args.input_path, out_root,
                                 suffix=args.suffix, segments=args.ray_segments, workers=_ray_workers(args),
                                 temporal_smoothing=not args.no_temporal_smoothing, fps=args.save_video_fps,
                                 crf=args.video_crf, preset=args.video_preset, progress=not args.quiet,
                                 describe=describe_error)
        return EXIT_OK
    default_root = f"results/{_input_name(args.input_path)}_{w}" if source.is_folder() else f"results/test_img_{w}"
    out_root = args.output_path or default_root
    if args.has_aligned:
        return _run_pictures_on_ray(args, args.model, Folder(out_root).child("restored_faces"), out_root, aligned=True)
    return _run_pictures_on_ray(args, args.model, out_root, out_root, aligned=False)


def _check_local_output(location: str) -> None:
    from codeformer.cluster import is_url

    if not is_url(location):
        ensure_writable_folder(Path(location))


def _run_pictures_on_ray(args: argparse.Namespace, model: str, out: str, out_root: str, *, aligned: bool) -> int:
    """Pictures (aligned faces with ``aligned``) on a Ray cluster into ``out``; the run's report in ``out_root``."""
    from codeformer.cluster import is_url, list_pictures, ray_session, restore_pictures_on_ray
    from codeformer.cluster.storage import name_of
    from codeformer.runs import task_words

    if is_url(args.input_path):
        pictures, not_read = list_pictures(args.input_path)
    else:
        collected = collect_images(args.input_path)
        pictures, not_read = [str(p) for p in collected.pictures], [(str(p), why) for p, why in collected.skipped]
    _check_local_output(out)
    task = MODELS[model].task if model in MODELS else "restore"
    label, verb = task_words(task or "restore")
    with ray_session(args.ray):
        report = restore_pictures_on_ray(
            _ray_recipe(args, model, whole_pictures=not aligned), pictures, out, aligned=aligned, suffix=args.suffix,
            extension=None if aligned or args.ext == "png" else args.ext, workers=_ray_workers(args),
            report_to=out_root, not_read=not_read, progress=not args.quiet, desc=label, describe=describe_error)
    for location, reason in not_read:
        logger.warning("skipped %s: %s", name_of(location), reason)
    report.skipped += len(not_read)
    logger.info("%s; results in %s", report.summary(verb), out_root)
    return report.exit_code


# ---------------------------------------------------------------- colorization / inpainting / vqgan


def _add_aligned_arguments(parser: argparse.ArgumentParser, *, default_input: str) -> None:
    _add_io_arguments(parser, default_input=default_input,
                      output_help="output folder (default: results/<input folder name>, as the reference)")
    _add_precision_arguments(parser)
    _add_runtime_arguments(parser)
    _add_ray_arguments(parser)


def add_colorize_arguments(parser: argparse.ArgumentParser) -> None:
    _add_aligned_arguments(parser, default_input="./inputs/gray_faces")


def add_inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    _add_aligned_arguments(parser, default_input="./inputs/masked_faces")


def _aligned_command(model: str, default_single: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.ray:
            from codeformer.cluster import Folder

            single = not Folder(args.input_path).is_folder()
            out = args.output_path or (default_single if single else f"results/{_input_name(args.input_path)}")
            return _run_pictures_on_ray(args, model, out, out, aligned=True)
        single = Path(args.input_path).is_file()
        out_root = Path(args.output_path or (default_single if single else f"results/{_input_name(args.input_path)}"))
        return _run_aligned_files(args, model, out_root, out_root)

    return run


run_colorize = _aligned_command("codeformer_colorization", "results/test_colorization_img")
run_inpaint = _aligned_command("codeformer_inpainting", "results/test_inpainting_img")


def add_vqgan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input_path", "--test_path", dest="input_path", default="./inputs/cropped_faces",
                        help="input picture or folder of aligned faces")
    parser.add_argument("-o", "--output_path", "--save_root", dest="output_path", default="results/vqgan_rec",
                        help="output folder")
    parser.add_argument("--suffix", default=None, help="suffix added to output file names")
    parser.add_argument("--ckpt_path", default=None,
                        help="VQGAN checkpoint (default: CodeFormer/vqgan_code1024.pth in the weights root)")
    parser.add_argument("--codebook_size", type=_int_at_least(1), default=None,
                        help="accepted for compatibility: the codebook size is read from the checkpoint")
    _add_runtime_arguments(parser)


def run_vqgan(args: argparse.Namespace) -> int:
    """``scripts/inference_vqgan.py`` / ``codeformer vqgan``: aligned faces through the VQGAN alone."""
    out_root = Path(args.output_path)
    return _run_aligned_files(args, "vqgan", out_root, out_root, checkpoint=args.ckpt_path)


# ---------------------------------------------------------------------------------- face cropping


def add_crop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input_path", "--in_dir", dest="input_path", default="./inputs/whole_imgs",
                        help="input picture or folder")
    parser.add_argument("-o", "--output_path", "--out_dir", dest="output_path", default="./inputs/cropped_faces",
                        help="output folder")
    parser.add_argument("--only_keep_largest", action="store_true",
                        help="keep only the largest face of each picture, saved as <name>.png "
                             "(default: every face, saved as <name>_00.png, <name>_01.png, ... in detection order)")
    parser.add_argument("--enable_padding", action="store_true",
                        help="fill the part of a crop outside the photo with blurred mirrored content (as FFHQ) "
                             "instead of black (as the reference script)")
    _add_runtime_arguments(parser, torch_networks=False)


def run_crop(args: argparse.Namespace) -> int:
    """``scripts/crop_align_face.py`` / ``codeformer crop``: FFHQ-style aligned 512x512 faces from whole photos."""
    from codeformer.face.ffhq_align import crop_align_faces, load_dlib_models

    collected = collect_images(args.input_path)
    inputs = collected.pictures
    out_dir = Path(args.output_path)
    ensure_writable_folder(out_dir)
    detector, predictor = load_dlib_models(args.weights_dir)
    stems = output_stems(inputs)
    counts = {"faces": 0, "faceless": 0}

    def first_output(path: Path) -> Path:
        return out_dir / (f"{stems[path]}.png" if args.only_keep_largest else f"{stems[path]}_00.png")

    def process(pictures: list) -> list:
        return [crop_align_faces(picture.bgr8(), detector, predictor, only_keep_largest=args.only_keep_largest,
                                 enable_padding=args.enable_padding) for picture in pictures]

    def save(path: Path, faces: list[np.ndarray]) -> None:
        if not faces:
            logger.warning("%s: no face found", path.name)
            counts["faceless"] += 1
            return
        for index, face in enumerate(faces):
            name = f"{stems[path]}.png" if args.only_keep_largest else f"{stems[path]}_{index:02d}.png"
            write_image(out_dir / name, face)
        counts["faces"] += len(faces)

    batch = Batch(load=lambda path: read_image(path, max_pixels=args.max_pixels), process=process, save=save,
                  is_done=(lambda path: first_output(path).is_file()) if args.skip_existing else None)
    report = _note_skipped(collected, run_batch(inputs, batch, desc="cropping", unit="image", progress=not args.quiet,
                                                describe=describe_error))
    with_faces = report.done - counts["faceless"]
    logger.info("%d face%s from %d picture%s (%d without a face), skipped %d, failed %d; results in %s",
                counts["faces"], "" if counts["faces"] == 1 else "s", with_faces, "" if with_faces == 1 else "s",
                counts["faceless"], report.skipped, report.failed, out_dir)
    return report.exit_code


# --------------------------------------------------------------------------------------- weights


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    from codeformer.weights import WEIGHT_GROUPS

    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help=f"a group ({', '.join(WEIGHT_GROUPS)}, all) or a file path such as "
                             "CodeFormer/codeformer.pth")
    parser.add_argument("--weights_dir", default=None,
                        help="weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)")
    parser.add_argument("--verify", action="store_true",
                        help="sha256-check the files already there instead of downloading")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run_download(args: argparse.Namespace) -> int:
    """``scripts/download_pretrained_models.py`` / ``codeformer download``: fetch or verify pretrained files."""
    from codeformer.weights import WEIGHT_GROUPS, group_entries, verify_weight, weight_entry, weight_path

    entries = []
    for target in args.targets:
        found = group_entries(target) if target == "all" or target in WEIGHT_GROUPS else [weight_entry(target)]
        entries.extend(e for e in found if e not in entries)
    failed = 0
    for entry in entries:
        if args.verify:
            result = verify_weight(entry, args.weights_dir)
            where = f" ({result.path})" if result.path else ""
            print(f"{'ok' if result.ok else 'BAD':4} {entry.key}: {result.detail}{where}")
            failed += not result.ok
            continue
        try:
            path = weight_path(entry.key, args.weights_dir, progress=not args.quiet)
        except CodeFormerError as error:
            logger.error("%s", error)
            failed += 1
            continue
        print(f"ok   {entry.key}: {path}")
    if failed:
        logger.error("%d of %d files %s", failed, len(entries), "failed the check" if args.verify else "missing")
    return EXIT_FAILED if failed else EXIT_OK


# --------------------------------------------------------------------------------------- web app


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    from codeformer.imageio import DEFAULT_MAX_PIXELS
    from codeformer.precision import PRECISION_CHOICES

    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=_int_at_least(1), default=None,
                        help="port to listen on (default: 7860, or the next free one)")
    parser.add_argument("--share", action="store_true",
                        help="also open a public link through Gradio's share servers (needs internet)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="where the networks run (default: auto = cuda, else mps, else cpu)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                        help="CodeFormer arithmetic: fp32 (exact), auto, bf16, fp16 (see `restore --help`)")
    parser.add_argument("--weights_dir", default=None,
                        help="weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)")
    parser.add_argument("--max_pixels", type=_int_at_least(1), default=DEFAULT_MAX_PIXELS,
                        help="largest picture, and largest result, in pixels; bigger ones are refused with a message")


def run_ui(args: argparse.Namespace) -> int:
    """``codeformer ui`` / ``python app.py``: serve the web app until Ctrl+C."""
    try:
        from codeformer.webapp import launch_app
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise CodeFormerError("the web app needs Gradio: pip install -r requirements.txt") from None
    app = launch_app(host=args.host, port=args.port, share=args.share, device=args.device, precision=args.precision,
                     weights_dir=args.weights_dir, max_pixels=args.max_pixels)
    print(f"CodeFormer web app: {app.local_url}  (Ctrl+C to stop)", flush=True)
    if app.share_url:
        print(f"public link: {app.share_url}", flush=True)
    app.serve_forever()
    return EXIT_OK


# ---------------------------------------------------------------------------------------- export


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=("onnx",), help="what to export to")
    parser.add_argument("-o", "--output_path", default=None,
                        help="the file to write (default: <model>.onnx in the current folder)")
    parser.add_argument("--model", type=_model_or_file(available_models), default=DEFAULT_MODEL,
                        help="the restorer to export: a name from the model table or a checkpoint file")
    parser.add_argument("--opset", type=_int_at_least(14), default=17, help="ONNX opset")
    parser.add_argument("--weights_dir", default=None,
                        help="weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def run_export(args: argparse.Namespace) -> int:
    """``codeformer export onnx``: one graph, inputs ``input`` (N x 3 x S x S, RGB in [-1, 1]) and ``weight``."""
    from codeformer.onnx_export import export_restorer_onnx
    from codeformer.pipeline import load_pipeline

    output = Path(args.output_path or f"{Path(args.model).stem}.onnx")
    ensure_writable_folder(output.parent)
    pipeline = load_pipeline(args.model, detector=None, device="cpu", precision="fp32", weights_dir=args.weights_dir)
    export_restorer_onnx(pipeline.restorer, output, opset=args.opset)
    logger.info("wrote %s (%.1f MB)", output, output.stat().st_size / 1e6)
    return EXIT_OK


# ------------------------------------------------------------------------------------ the commands


@dataclass(frozen=True)
class Command:
    """One subcommand: its flags, what it runs, and how it is described."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str
    tune_runtime: bool = True  # runs torch networks: apply the process-wide CPU settings


COMMANDS: dict[str, Command] = {
    "restore": Command(add_restore_arguments, run_restore,
                       "Restore faces in aligned face crops, whole pictures, folders or videos."),
    "colorize": Command(add_colorize_arguments, run_colorize,
                        "Colorize black-and-white or faded aligned 512x512 faces."),
    "inpaint": Command(add_inpaint_arguments, run_inpaint,
                       "Fill the regions painted pure white (255, 255, 255) in aligned 512x512 faces; every other "
                       "pixel is kept exactly."),
    "vqgan": Command(add_vqgan_arguments, run_vqgan,
                     "Reconstruct aligned 512x512 faces through the VQGAN (encoder, codebook, generator), e.g. to "
                     "see what the codebook can represent."),
    "crop": Command(add_crop_arguments, run_crop,
                    "Crop and align the faces of whole photos the FFHQ way (dlib 68-point landmarks), ready for "
                    "--has_aligned, colorization and inpainting.", tune_runtime=False),
    "download": Command(add_download_arguments, run_download,
                        "Download the pretrained files into the weights root, or check them.", tune_runtime=False),
    "export": Command(add_export_arguments, run_export,
                      "Export a restorer to ONNX: inputs `input` (N x 3 x 512 x 512, RGB in [-1, 1]) and `weight` "
                      "(the fidelity weight, live in the graph), output `output`.", tune_runtime=False),
    "ui": Command(add_ui_arguments, run_ui,
                  "Start the web app (Restore, Video, Colorize, Inpaint) in the browser, on this machine."),
}


def _run_command(name: str, args: argparse.Namespace, tune_runtime: bool) -> int:
    configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    _tune_runtime(args, tune_runtime and COMMANDS[name].tune_runtime)
    return _run_guarded(lambda: COMMANDS[name].run(args))


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that parse alone but not together: a usage error (exit 2) before anything loads."""
    model = getattr(args, "model", None)
    if getattr(args, "fidelity_weight", None) is not None and model in MODELS and not MODELS[model].supports_fidelity:
        parser.error(f"argument -w/--fidelity_weight: {model} has no fidelity control; leave -w out")
    if getattr(args, "ray", None):
        for flag in ("report", "save_frames"):
            if getattr(args, flag, False):
                parser.error(f"argument --{flag}: not available with --ray yet; run without --ray for it")
    else:
        for flag in ("ray_workers", "ray_worker_cpus", "ray_segments"):
            if getattr(args, flag, None) is not None:
                parser.error(f"argument --{flag}: only with --ray")


# Options whose value is a path: a path that starts with "-" (a file named "-x.jpg") is still their value.
_PATH_OPTIONS = frozenset({"-i", "--input_path", "--test_path", "--in_dir", "-o", "--output_path", "--out_dir",
                           "--save_root", "--reference_face", "--weights_dir", "--ckpt_path", "--bg_upsampler"})


def _attach_dash_paths(argv: Sequence[str]) -> list[str]:
    """``-i -x.jpg`` -> ``-i=-x.jpg`` when ``-x.jpg`` exists, so argparse does not take it for an option."""
    joined: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        following = items[index + 1] if index + 1 < len(items) else None
        if item in _PATH_OPTIONS and following is not None and following.startswith("-") and os.path.lexists(following):
            joined.append(f"{item}={following}")
            index += 2
            continue
        joined.append(item)
        index += 1
    return joined


def _command_main(name: str, argv: Sequence[str] | None, prog: str | None, tune_runtime: bool) -> int:
    command = COMMANDS[name]
    parser = _new_parser(prog, command.description)
    command.add_arguments(parser)
    args = parser.parse_args(_attach_dash_paths(sys.argv[1:] if argv is None else argv))
    _check_combinations(parser, args)
    return _run_command(name, args, tune_runtime)


def restore_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``inference_codeformer.py``. ``tune_runtime``: apply the process-wide CPU settings (entry points
    do; library callers and tests running in-process keep their process as it is)."""
    return _command_main("restore", argv, prog, tune_runtime)


def colorize_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``inference_colorization.py``."""
    return _command_main("colorize", argv, prog, tune_runtime)


def inpaint_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``inference_inpainting.py``."""
    return _command_main("inpaint", argv, prog, tune_runtime)


def vqgan_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``scripts/inference_vqgan.py``."""
    return _command_main("vqgan", argv, prog, tune_runtime)


def crop_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``scripts/crop_align_face.py``."""
    return _command_main("crop", argv, prog, False)


def download_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``scripts/download_pretrained_models.py``."""
    return _command_main("download", argv, prog, False)


def build_parser(prog: str = "codeformer") -> argparse.ArgumentParser:
    """The ``codeformer`` console script's parser: one subcommand per entry point."""
    parser = _new_parser(prog, "Blind face restoration with CodeFormer. Without a command, `restore` is meant.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.description.split(":")[0].split(";")[0],
                                  description=command.description, allow_abbrev=False,
                                  formatter_class=_HelpFormatter)
        command.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``codeformer`` console script: ``codeformer COMMAND ...``; ``codeformer -i ...`` means ``restore``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["restore", *argv]  # the reference's habit: flags straight after the program name
    parser = build_parser()
    args = parser.parse_args(_attach_dash_paths(argv))
    _check_combinations(parser, args)
    return _run_command(args.command, args, tune_runtime=True)
