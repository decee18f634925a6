"""Command line: parse the flags (:mod:`codeformer.flags`), map them onto the library's objects, run, report.

``inference_codeformer.py``, ``inference_colorization.py``, ``inference_inpainting.py``, the
``scripts/`` and the ``codeformer`` console script (subcommands ``restore``, ``colorize``,
``inpaint``, ``vqgan``, ``crop``, ``download``, ``export``, ``ui``) are thin wrappers around the
``*_main`` functions here. A command's flags become a :class:`~codeformer.jobs.Job` (or a
:class:`~codeformer.jobs.CropJob`, a download, the web app) and the jobs layer does the rest; this
module only words the outcome, naming the library's options by their flags.

Exit codes: 0 everything worked, 1 something failed (per-file failures included), 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from codeformer import __version__, flags
from codeformer.errors import CodeFormerError, OptionError
from codeformer.imageio import PixelLimitError
from codeformer.jobs.loop import describe_failure, ensure_writable_folder

logger = logging.getLogger("codeformer")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The command line's name for each library option an OptionError can name.
OPTION_FLAGS = {
    "device": "--device", "precision": "--precision", "fidelity_weight": "-w", "bg_tile": "--bg_tile",
    "batch_size": "--batch_size", "upscale": "-s", "grayscale": "--grayscale", "max_pixels": "--max_pixels",
    "face_index": "--face_index", "min_face_size": "--min_face_size", "reference_distance": "--reference_distance",
    "fps": "--save_video_fps", "crf": "--video_crf", "preset": "--video_preset", "extension": "--ext",
    "checkpoint": "--ckpt_path", "model": "--model", "detector": "--detection_model", "blend": "--blend",
    "template": "--template",
}
# Flag (argparse dest) -> option field, per option object; a command fills the fields of the flags it has.
LOAD_FLAGS = {"model": "model", "detection_model": "detector", "device": "device", "precision": "precision",
              "bg_upsampler": "bg_upsampler", "face_upsample": "face_upsample", "bg_tile": "bg_tile",
              "weights_dir": "weights_dir", "batch_size": "batch_size", "compile": "compile",
              "ckpt_path": "checkpoint", "template": "template"}
RESTORE_FLAGS = {"fidelity_weight": "fidelity_weight", "upscale": "upscale", "only_center_face": "only_center_face",
                 "largest_face": "largest_face", "face_index": "face_index", "min_face_size": "min_face_size",
                 "reference_face": "reference_face", "reference_distance": "reference_distance",
                 "draw_box": "draw_box", "grayscale": "grayscale", "report": "measure_identity",
                 "max_pixels": "max_pixels", "blend": "blend"}
VIDEO_FLAGS = {"save_video_fps": "fps", "video_crf": "crf", "video_preset": "preset"}
OUTPUT_FLAGS = {"output_path": "folder", "suffix": "suffix", "ext": "extension", "skip_existing": "skip_existing",
                "report": "report", "save_frames": "save_frames"}
RAY_FLAGS = {"ray": "address", "ray_workers": "workers", "ray_worker_cpus": "worker_cpus",
             "ray_segments": "segments"}


# ----------------------------------------------------------------------------------------- logging


class _TqdmLogHandler(logging.Handler):
    """Log lines printed above any active progress bar instead of through it, ``error:``/``warning:`` first."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{'error' if record.levelno >= logging.ERROR else 'warning'}: {message}"
            tqdm.write(message, file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Route the package's log records to stderr, one plain line each."""
    for handler in list(logger.handlers):
        if isinstance(handler, _TqdmLogHandler):
            logger.removeHandler(handler)
    logger.addHandler(_TqdmLogHandler())
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def phrase_error(error: CodeFormerError) -> str:
    """A library error as the command line says it: options are named by their flags."""
    if isinstance(error, OptionError) and error.option in OPTION_FLAGS:
        return error.phrased(OPTION_FLAGS[error.option])
    if isinstance(error, PixelLimitError):
        return error.phrased("--max_pixels")
    return str(error)


def describe_error(error: BaseException) -> str:
    """One line for a failed input, with the library's options named by their flags."""
    return phrase_error(error) if isinstance(error, CodeFormerError) else describe_failure(error)


# ------------------------------------------------------------------------------------------ mapping


def _fields(args: argparse.Namespace, table: dict[str, str]) -> dict[str, Any]:
    """The option fields a command's flags give (flags the command does not have keep the option's default)."""
    given = vars(args)
    return {field: given[flag] for flag, field in table.items() if flag in given}


def _job(args: argparse.Namespace, tuned: bool):
    """The :class:`~codeformer.jobs.Job` a restore, colorize, inpaint or vqgan command line describes."""
    from codeformer.jobs import Job, OutputOptions, RayOptions
    from codeformer.options import LoadOptions, RestoreOptions, VideoOptions

    quiet = args.quiet
    load = LoadOptions(**_fields(args, LOAD_FLAGS), parse=not vars(args).get("no_parse", False),
                       upsampler_half=False if vars(args).get("fp32") else None, progress=not quiet)
    video = VideoOptions(**_fields(args, VIDEO_FLAGS), temporal_smoothing=not vars(args).get("no_temporal_smoothing"))
    ray = RayOptions(**_fields(args, RAY_FLAGS), runtime_tuning=tuned) if vars(args).get("ray") else None
    return Job(args.input_path, load, RestoreOptions(**_fields(args, RESTORE_FLAGS)), video,
               OutputOptions(**_fields(args, OUTPUT_FLAGS)), aligned=vars(args).get("has_aligned", False), ray=ray,
               progress=not quiet)


def _crop_job(args: argparse.Namespace, tuned: bool):
    from codeformer.jobs import CropJob

    return CropJob(args.input_path, args.output_path, only_keep_largest=args.only_keep_largest,
                   enable_padding=args.enable_padding, skip_existing=args.skip_existing, max_pixels=args.max_pixels,
                   weights_dir=args.weights_dir, progress=not args.quiet)


def _as_parsed(args: argparse.Namespace, tuned: bool) -> argparse.Namespace:
    return args


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that parse alone but not together: a usage error (exit 2) before anything loads."""
    from codeformer.registry import MODELS

    model = vars(args).get("model")
    if vars(args).get("fidelity_weight") is not None and model in MODELS and not MODELS[model].supports_fidelity:
        parser.error(f"argument -w/--fidelity_weight: {model} has no fidelity control; leave -w out")
    if not vars(args).get("ray"):
        for flag in RAY_FLAGS:
            if vars(args).get(flag) is not None:
                parser.error(f"argument --{flag}: only with --ray")


# ------------------------------------------------------------------------------------------ commands


def run_job_command(job) -> int:
    """``restore`` / ``colorize`` / ``inpaint`` / ``vqgan``: the flags as a job, run in this process or on Ray."""
    from codeformer.jobs import run_job

    return run_job(job, describe=describe_error).exit_code


def run_crop(job) -> int:
    """``scripts/crop_align_face.py`` / ``codeformer crop``: FFHQ-style aligned 512x512 faces from whole photos."""
    from codeformer.jobs import crop_faces

    return crop_faces(job, describe=describe_error).exit_code


def run_download(args: argparse.Namespace) -> int:
    """``scripts/download_pretrained_models.py`` / ``codeformer download``: fetch or verify pretrained files."""
    from codeformer.jobs import fetch_weights

    outcomes = fetch_weights(args.targets, weights_dir=args.weights_dir, verify=args.verify, progress=not args.quiet)
    for outcome in outcomes:
        if args.verify:
            where = f" ({outcome.path})" if outcome.path else ""
            print(f"{'ok' if outcome.ok else 'BAD':4} {outcome.key}: {outcome.detail}{where}")
        elif outcome.ok:
            print(f"ok   {outcome.key}: {outcome.path}")
        elif not outcome.detail.endswith("(see above)"):
            logger.error("%s", outcome.detail)
    failed = sum(not outcome.ok for outcome in outcomes)
    if failed:
        logger.error("%d of %d files %s", failed, len(outcomes), "failed the check" if args.verify else "missing")
    return EXIT_FAILED if failed else EXIT_OK


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


@dataclass(frozen=True)
class Command:
    """One subcommand: its flags, what they make (an invalid value is a usage error), how that runs."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    make: Callable[[argparse.Namespace, bool], Any]  # (parsed flags, runtime tuned) -> what run takes
    run: Callable[[Any], int]
    description: str
    tune_runtime: bool = True  # runs torch networks: apply the process-wide CPU settings


COMMANDS: dict[str, Command] = {
    "restore": Command(flags.add_restore_arguments, _job, run_job_command,
                       "Restore faces in aligned face crops, whole pictures, folders or videos."),
    "colorize": Command(flags.add_colorize_arguments, _job, run_job_command,
                        "Colorize black-and-white or faded aligned 512x512 faces."),
    "inpaint": Command(flags.add_inpaint_arguments, _job, run_job_command,
                       "Fill the regions painted pure white (255, 255, 255) in aligned 512x512 faces; every other "
                       "pixel is kept exactly."),
    "vqgan": Command(flags.add_vqgan_arguments, _job, run_job_command,
                     "Reconstruct aligned 512x512 faces through the VQGAN (encoder, codebook, generator), e.g. to "
                     "see what the codebook can represent."),
    "crop": Command(flags.add_crop_arguments, _crop_job, run_crop,
                    "Crop and align the faces of whole photos the FFHQ way (dlib 68-point landmarks), ready for "
                    "--has_aligned, colorization and inpainting.", tune_runtime=False),
    "download": Command(flags.add_download_arguments, _as_parsed, run_download,
                        "Download the pretrained files into the weights root, or check them.", tune_runtime=False),
    "export": Command(flags.add_export_arguments, _as_parsed, run_export,
                      "Export a restorer to ONNX: inputs `input` (N x 3 x 512 x 512, RGB in [-1, 1]) and `weight` "
                      "(the fidelity weight, live in the graph), output `output`.", tune_runtime=False),
    "ui": Command(flags.add_ui_arguments, _as_parsed, run_ui,
                  "Start the web app (Restore, Video, Colorize, Inpaint) in the browser, on this machine."),
}


def _tune_runtime(args: argparse.Namespace, enabled: bool) -> bool:
    """Process-wide CPU settings that speed inference up ~1.5x for more resident memory (--low_memory: off)."""
    if not enabled or vars(args).get("low_memory"):
        return False
    from codeformer.precision import configure_cpu_runtime

    logger.debug("runtime: %s", ", ".join(configure_cpu_runtime()) or "unchanged")
    return True


def _command_main(name: str, argv: Sequence[str] | None, prog: str | None, tune_runtime: bool) -> int:
    """Parse ``argv`` with command ``name``'s own parser (its usage in its errors), then run it guarded."""
    command = COMMANDS[name]
    parser = flags.new_parser(prog, command.description)
    command.add_arguments(parser)
    args = parser.parse_args(flags.attach_dash_paths(sys.argv[1:] if argv is None else argv))
    _check_usage(parser, args)
    configure_logging(vars(args).get("verbose", False), vars(args).get("quiet", False))
    tuned = _tune_runtime(args, tune_runtime and command.tune_runtime)
    try:
        request = command.make(args, tuned)
    except OptionError as error:
        parser.error(phrase_error(error))
    try:
        return command.run(request)
    except CodeFormerError as error:
        logger.error("%s", phrase_error(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        logger.error("interrupted; finished outputs are kept, nothing half-written is left")
        return EXIT_INTERRUPTED


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
    """The ``codeformer`` console script's parser: one subcommand per entry point (for help and tests)."""
    parser = flags.new_parser(prog, "Blind face restoration with CodeFormer. Without a command, `restore` is meant.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.description.split(":")[0].split(";")[0],
                                  description=command.description, allow_abbrev=False,
                                  formatter_class=flags.HelpFormatter)
        command.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``codeformer`` console script: ``codeformer COMMAND ...``; ``codeformer -i ...`` means ``restore``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "--version"):
        build_parser().parse_args(argv)  # prints and exits
    if argv and argv[0] in COMMANDS:
        name, rest = argv[0], argv[1:]
    else:
        name, rest = "restore", argv  # the reference's habit: flags straight after the program name
    # The command's own parser: its errors show its own usage, not the top-level one.
    return _command_main(name, rest, f"codeformer {name}", tune_runtime=True)
