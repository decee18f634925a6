"""Command line: argument parsing and dispatch for every entry point.

``inference_codeformer.py``, ``inference_colorization.py``, ``inference_inpainting.py``,
``scripts/download_pretrained_models.py`` and the ``codeformer`` console script are thin wrappers
around the ``*_main`` functions here. Flags keep the reference repository's names. All logic lives in
the library; this module parses, validates, wires models together and reports.

Exit codes: 0 everything worked, 1 something failed (per-file failures included), 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from codeformer import __version__
from codeformer.batch import Batch, BatchReport, ensure_writable_folder, output_stems, run_batch, with_suffix_name
from codeformer.errors import CodeFormerError
from codeformer.imageio import IMAGE_EXTENSIONS, is_image_path, list_images, read_image, write_image

logger = logging.getLogger("codeformer")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RESTORATION_CHECKPOINT = "CodeFormer/codeformer.pth"
COLORIZATION_CHECKPOINT = "CodeFormer/codeformer_colorization.pth"
INPAINTING_CHECKPOINT = "CodeFormer/codeformer_inpainting.pth"
VQGAN_CHECKPOINT = "CodeFormer/vqgan_code1024.pth"


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


def _add_runtime_arguments(parser: argparse.ArgumentParser, *, torch_networks: bool = True) -> None:
    """Device, batching, weights, resuming, logging; ``torch_networks=False`` (dlib only): no device flags."""
    if torch_networks:
        parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                            help="where the networks run (default: auto = cuda, else mps, else cpu)")
        parser.add_argument("--batch_size", type=_int_at_least(1), default=4,
                            help="faces restored together in one forward pass (default: 4)")
        parser.add_argument("--low_memory", action="store_true",
                            help="return freed memory to the system at once: less resident memory, slower on CPU")
    parser.add_argument("--weights_dir", default=None,
                        help="weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)")
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
    logger.debug("runtime: %s", ", ".join(settings) or "unchanged")


def _new_parser(prog: str | None, description: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: a shortened flag must never silently mean another one (--w is not --weights_dir).
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=_HelpFormatter)


# --------------------------------------------------------------------------------------- inputs


def collect_images(input_path: str) -> list[Path]:
    """The pictures named by ``--input_path``: one file, or a folder's pictures sorted by name."""
    path = Path(input_path)
    if path.is_dir():
        images = list_images(path)
        if not images:
            kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
            raise CodeFormerError(f"no pictures ({kinds}) in folder {path}")
        return images
    if path.is_file():
        if not is_image_path(path):
            kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
            raise CodeFormerError(f"{path} is not a picture this command reads ({kinds})")
        return [path]
    raise CodeFormerError(f"input path {path} does not exist")


def _input_name(input_path: str) -> str:
    """The input's name for default output folders (a trailing slash is ignored, as the reference does)."""
    return Path(input_path.rstrip("/\\") or ".").resolve().name


def _finish(report: BatchReport, out_root: Path, verb: str) -> int:
    logger.info("%s; results in %s", report.summary(verb), out_root)
    return report.exit_code


def _run_guarded(body: Callable[[], int]) -> int:
    """Run a command body: one line and exit 1 for a user error, 130 when interrupted, no tracebacks."""
    try:
        return body()
    except CodeFormerError as error:
        logger.error("%s", error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        logger.error("interrupted; finished outputs are kept, nothing half-written is left")
        return EXIT_INTERRUPTED


def _load_codeformer(path: Path, device, args: argparse.Namespace):
    from codeformer.restorer import FaceRestorer

    restorer = FaceRestorer.from_file(path, device=device, precision=args.precision, compile=args.compile)
    logger.info("network: %s (%s)", path.name, restorer.describe())
    return restorer


def _load_vqgan(path: Path, device, _args: argparse.Namespace):
    from codeformer.archs import build_vqgan
    from codeformer.weights import load_state_dict

    vqgan = build_vqgan(load_state_dict(path, map_location=device), source=str(path)).to(device)
    logger.info("network: %s (%s, fp32)", path.name, device)
    return vqgan


def _load_network(job: "_AlignedJob", args: argparse.Namespace):
    """The job's network: ``--ckpt_path`` if given, else its registry file (downloaded on first use)."""
    from codeformer.device import resolve_device
    from codeformer.weights import weight_path

    device = resolve_device(args.device)
    if hasattr(args, "precision"):  # a precision the device cannot run fails before any download
        from codeformer.precision import resolve_precision

        resolve_precision(args.precision, device)
    path = Path(args.ckpt_path) if getattr(args, "ckpt_path", None) else weight_path(job.checkpoint, args.weights_dir)
    return job.loader(path, device, args)


# --------------------------------------------------------------------------------- aligned faces


@dataclass(frozen=True)
class _AlignedJob:
    """How one aligned-face command drives the shared loop."""

    checkpoint: str
    verb: str  # for the summary: "restored 3, skipped 0, failed 1"
    progress_label: str  # for the progress bar
    warn_on_resize: bool
    needs_paint_mask: bool
    process: Callable[[object, list[np.ndarray], list[np.ndarray | None], argparse.Namespace], list[np.ndarray]]
    loader: Callable[[Path, object, argparse.Namespace], object] = _load_codeformer


def _run_aligned(args: argparse.Namespace, job: _AlignedJob, out_dir: Path, out_root: Path) -> int:
    from codeformer.aligned import paint_mask_of, prepare_aligned_face

    inputs = collect_images(args.input_path)
    ensure_writable_folder(out_dir)
    network = _load_network(job, args)
    stems = output_stems(inputs)

    def target(path: Path) -> Path:
        return out_dir / with_suffix_name(stems[path], args.suffix)

    def load(path: Path):
        picture = read_image(path)
        crop = prepare_aligned_face(picture, name=path.name, warn_on_resize=job.warn_on_resize)
        mask = paint_mask_of(picture) if job.needs_paint_mask else None
        return picture, crop, mask

    def process(items: list) -> list:
        outputs = job.process(network, [crop for _, crop, _ in items], [mask for _, _, mask in items], args)
        return [picture.with_alpha(out) for (picture, _, _), out in zip(items, outputs)]

    def save(path: Path, result: np.ndarray) -> None:
        write_image(target(path), result)

    batch = Batch(load=load, process=process, save=save, chunk_size=args.batch_size,
                  is_done=(lambda path: target(path).is_file()) if args.skip_existing else None)
    report = run_batch(inputs, batch, desc=job.progress_label, unit="face", progress=not args.quiet)
    return _finish(report, out_root, job.verb)


def _restore_aligned_faces(restorer, crops, _masks, args) -> list[np.ndarray]:
    from codeformer.aligned import restore_aligned

    return restore_aligned(restorer, crops, w=args.fidelity_weight, gray=args.grayscale, batch_size=args.batch_size)


def _colorize_faces(restorer, crops, _masks, args) -> list[np.ndarray]:
    from codeformer.aligned import colorize_aligned

    return colorize_aligned(restorer, crops, batch_size=args.batch_size)


def _inpaint_faces(restorer, crops, masks, args) -> list[np.ndarray]:
    from codeformer.aligned import inpaint_aligned

    return inpaint_aligned(restorer, crops, masks, batch_size=args.batch_size)


# ------------------------------------------------------------------------------ inference_codeformer


def build_restore_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _new_parser(prog, "Restore faces in aligned face crops, whole pictures, folders or videos.")
    _add_io_arguments(parser, default_input="./inputs/whole_imgs",
                      output_help="output folder (default: results/<input name>_<w>, as the reference)")
    parser.add_argument("-w", "--fidelity_weight", "--w", dest="fidelity_weight", type=_fidelity_weight,
                        default=0.5, help="balance quality (0) and fidelity to the input (1)")
    parser.add_argument("-s", "--upscale", type=_int_at_least(1), default=2,
                        help="final upscaling of whole pictures: the output is exactly input size x s")
    parser.add_argument("--has_aligned", action="store_true", help="inputs are aligned 512x512 face crops")
    parser.add_argument("--only_center_face", action="store_true", help="restore only the face nearest the centre")
    parser.add_argument("--draw_box", action="store_true", help="outline detected faces in the final picture")
    parser.add_argument("--detection_model", default="retinaface_resnet50",
                        help="face detector: retinaface_resnet50, retinaface_mobile0.25 or dlib")
    parser.add_argument("--bg_upsampler", default=None,
                        help="background upsampler: realesrgan, or a path to a model file spandrel can load")
    parser.add_argument("--face_upsample", action="store_true",
                        help="also run restored faces through the upsampler before pasting them back")
    parser.add_argument("--bg_tile", type=_int_at_least(0), default=400,
                        help="tile size for the upsampler, 0 = whole picture at once")
    parser.add_argument("--fp32", action="store_true",
                        help="run the upsampler in full precision on CUDA (if fp16 gives black output)")
    parser.add_argument("--grayscale", choices=("auto", "on", "off"), default="auto",
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
    return parser


def restore_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``inference_codeformer.py``: aligned faces, whole pictures, folders, videos.

    ``tune_runtime``: apply the process-wide CPU settings (entry points do; library callers and tests
    running in-process keep their process as it is).
    """
    parser = build_restore_parser(prog)
    args = parser.parse_args(argv)
    if args.bg_upsampler is not None and args.bg_upsampler.lower() == "none":
        args.bg_upsampler = None  # the reference's default spelling
    configure_logging(args.verbose, args.quiet)
    _tune_runtime(args, tune_runtime)
    return _run_guarded(lambda: _restore(args))


def _restore(args: argparse.Namespace) -> int:
    w = args.fidelity_weight
    input_path = Path(args.input_path)
    from codeformer.video import is_video_path

    if input_path.is_file() and is_video_path(input_path):
        out_root = Path(args.output_path or f"results/{input_path.stem}_{w}")
        from codeformer.runs import restore_video_file

        return restore_video_file(args, input_path, out_root)
    if input_path.is_file():
        default_root = f"results/test_img_{w}"  # the reference's name for a single picture
    else:
        default_root = f"results/{_input_name(args.input_path)}_{w}"
    out_root = Path(args.output_path or default_root)
    if args.has_aligned:
        job = _AlignedJob(RESTORATION_CHECKPOINT, "restored", "restoring", warn_on_resize=False, needs_paint_mask=False,
                          process=_restore_aligned_faces)
        return _run_aligned(args, job, out_root / "restored_faces", out_root)
    from codeformer.runs import restore_picture_files

    report = restore_picture_files(args, collect_images(args.input_path), out_root)
    return _finish(report, out_root, "restored")


# ---------------------------------------------------------------- colorization / inpainting


def _aligned_command_main(argv: Sequence[str] | None, *, prog: str | None, description: str, default_input: str,
                          default_single: str, job: _AlignedJob, tune_runtime: bool) -> int:
    parser = _new_parser(prog, description)
    _add_io_arguments(parser, default_input=default_input,
                      output_help="output folder (default: results/<input folder name>, as the reference)")
    _add_precision_arguments(parser)
    _add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    _tune_runtime(args, tune_runtime)

    def body() -> int:
        single = Path(args.input_path).is_file()
        out_root = Path(args.output_path or (default_single if single else f"results/{_input_name(args.input_path)}"))
        return _run_aligned(args, job, out_root, out_root)

    return _run_guarded(body)


def colorize_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``inference_colorization.py``: colorize black-and-white or faded aligned faces."""
    job = _AlignedJob(COLORIZATION_CHECKPOINT, "colorized", "colorizing", warn_on_resize=True, needs_paint_mask=False,
                      process=_colorize_faces)
    return _aligned_command_main(argv, prog=prog, job=job, tune_runtime=tune_runtime,
                                 default_input="./inputs/gray_faces",
                                 default_single="results/test_colorization_img",
                                 description="Colorize black-and-white or faded aligned 512x512 faces.")


def inpaint_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``inference_inpainting.py``: fill regions painted pure white in aligned faces."""
    job = _AlignedJob(INPAINTING_CHECKPOINT, "inpainted", "inpainting", warn_on_resize=True, needs_paint_mask=True,
                      process=_inpaint_faces)
    return _aligned_command_main(argv, prog=prog, job=job, tune_runtime=tune_runtime,
                                 default_input="./inputs/masked_faces",
                                 default_single="results/test_inpainting_img",
                                 description="Fill the regions painted pure white (255, 255, 255) in aligned "
                                             "512x512 faces; every other pixel is kept exactly.")


def _reconstruct_faces(vqgan, crops, _masks, args) -> list[np.ndarray]:
    from codeformer.aligned import reconstruct_aligned

    return reconstruct_aligned(vqgan, crops, batch_size=args.batch_size)


def vqgan_main(argv: Sequence[str] | None = None, prog: str | None = None, *, tune_runtime: bool = False) -> int:
    """``scripts/inference_vqgan.py``: reconstruct aligned faces through the VQGAN alone."""
    parser = _new_parser(prog, "Reconstruct aligned 512x512 faces through the VQGAN (encoder, codebook, "
                               "generator), e.g. to see what the codebook can represent.")
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
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    _tune_runtime(args, tune_runtime)
    job = _AlignedJob(VQGAN_CHECKPOINT, "reconstructed", "reconstructing", warn_on_resize=True,
                      needs_paint_mask=False, process=_reconstruct_faces, loader=_load_vqgan)
    out_root = Path(args.output_path)
    return _run_guarded(lambda: _run_aligned(args, job, out_root, out_root))


# ---------------------------------------------------------------------------------- face cropping


def crop_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``scripts/crop_align_face.py``: FFHQ-style aligned 512x512 faces from whole photos."""
    parser = _new_parser(prog, "Crop and align the faces of whole photos the FFHQ way (dlib 68-point landmarks), "
                               "ready for --has_aligned, colorization and inpainting.")
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
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)

    def body() -> int:
        from codeformer.face.ffhq_align import crop_align_faces, load_dlib_models

        inputs = collect_images(args.input_path)
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

        batch = Batch(load=read_image, process=process, save=save,
                      is_done=(lambda path: first_output(path).is_file()) if args.skip_existing else None)
        report = run_batch(inputs, batch, desc="cropping", unit="image", progress=not args.quiet)
        with_faces = report.done - counts["faceless"]
        logger.info("%d face%s from %d picture%s (%d without a face), skipped %d, failed %d; results in %s",
                    counts["faces"], "" if counts["faces"] == 1 else "s", with_faces, "" if with_faces == 1 else "s",
                    counts["faceless"], report.skipped, report.failed, out_dir)
        return report.exit_code

    return _run_guarded(body)


# --------------------------------------------------------------------------------------- weights


def download_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``scripts/download_pretrained_models.py``: fetch or verify pretrained files."""
    from codeformer.weights import WEIGHT_GROUPS, group_entries, verify_weight, weight_entry, weight_path

    parser = _new_parser(prog, "Download the pretrained files into the weights root, or check them.")
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help=f"a group ({', '.join(WEIGHT_GROUPS)}, all) or a file path such as "
                             "CodeFormer/codeformer.pth")
    parser.add_argument("--weights_dir", default=None,
                        help="weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)")
    parser.add_argument("--verify", action="store_true",
                        help="sha256-check the files already there instead of downloading")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    configure_logging(quiet=args.quiet)

    def body() -> int:
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

    return _run_guarded(body)


# ------------------------------------------------------------------------------- console script


def main(argv: Sequence[str] | None = None) -> int:
    """The ``codeformer`` console script: ``codeformer [restore] ...``, ``codeformer colorize ...``,
    ``codeformer inpaint ...``, ``codeformer vqgan ...``, ``codeformer crop ...``, ``codeformer download ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"restore": restore_main, "colorize": colorize_main, "inpaint": inpaint_main,
                "vqgan": vqgan_main, "crop": crop_main, "download": download_main}
    if argv and argv[0] in commands:
        name = argv.pop(0)
        if name in ("download", "crop"):  # no network inference: nothing to tune
            return commands[name](argv, prog=f"codeformer {name}")
        return commands[name](argv, prog=f"codeformer {name}", tune_runtime=True)
    return restore_main(argv, prog="codeformer", tune_runtime=True)
