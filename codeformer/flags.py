"""The command line's flags: the reference's names, each command's set, and how each value is read.

Every default comes from the option object the flag fills (:mod:`codeformer.options`,
:class:`codeformer.jobs.Job`), so a default is stated once; every range check is the library's
rule, phrased as an argparse error (exit code 2) before anything loads. :mod:`codeformer.cli` maps
the parsed flags onto the option objects and runs them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Sequence

from codeformer import __version__
from codeformer.color import GRAY_MODES
from codeformer.device import DEVICE_CHOICES
from codeformer.errors import OptionError
from codeformer.face.alignment import CROP_TEMPLATES
from codeformer.fidelity import check_fidelity_weight
from codeformer.jobs.crop import CropJob
from codeformer.jobs.job import EXTENSIONS, OutputOptions
from codeformer.options import LoadOptions, RestoreOptions, VideoOptions
from codeformer.precision import PRECISION_CHOICES
from codeformer.registry import available_detectors, available_models, available_upsamplers, whole_picture_models
from codeformer.weights import WEIGHT_GROUPS

__all__ = ["HelpFormatter", "attach_dash_paths", "new_parser"]

WEIGHTS_DIR_HELP = "weights root (default: $CODEFORMER_WEIGHTS_DIR, else ./weights)"
DEVICE_HELP = "where the networks run (default: auto = cuda, else mps, else cpu)"


# ------------------------------------------------------------------------------------------ value types


def _checked(rule: Callable[[float], object]) -> Callable[[str], float]:
    """A number read from text and checked by a library ``rule`` (which raises OptionError)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            rule(value)
        except OptionError as error:
            raise argparse.ArgumentTypeError(f"{text} {error.reason}") from None
        return value

    return parse


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


def _positive(value: float) -> None:
    if not value > 0:
        raise OptionError("value", value, "must be greater than 0")


def _unit_interval(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise OptionError("value", value, "must be from 0 to 1")


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
    """A model name among ``choices()`` (from the registry), or an existing checkpoint file."""

    def parse(text: str) -> str:
        if text in choices() or Path(text).expanduser().is_file():
            return text
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a model ({', '.join(choices())}) nor an existing checkpoint file"
        )

    return parse


# ------------------------------------------------------------------------------------------ flag groups


def _add_io(parser: argparse.ArgumentParser, *, default_input: str, output_help: str) -> None:
    parser.add_argument("-i", "--input_path", "--test_path", dest="input_path", default=default_input,
                        help="input picture or folder")
    parser.add_argument("-o", "--output_path", default=None, help=output_help)
    parser.add_argument("--suffix", default=None, help="suffix added to output file names")


def _add_runtime(parser: argparse.ArgumentParser, *, torch_networks: bool = True) -> None:
    """Device, batching, weights, resuming, logging; ``torch_networks=False`` (dlib only): no device flags."""
    if torch_networks:
        parser.add_argument("--device", default=LoadOptions.device, choices=DEVICE_CHOICES, help=DEVICE_HELP)
        parser.add_argument("--batch_size", type=_int_at_least(1), default=None,
                            help="faces restored together in one forward pass (default: 1 on CPU, 4 on GPU)")
        parser.add_argument("--low_memory", action="store_true",
                            help="return freed memory to the system at once: less resident memory, slower on CPU")
    parser.add_argument("--weights_dir", default=None, help=WEIGHTS_DIR_HELP)
    parser.add_argument("--max_pixels", type=_int_at_least(1), default=RestoreOptions.max_pixels,
                        help="refuse pictures, and outputs, with more pixels than this (checked before decoding; "
                             "default: 150 megapixels)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="skip inputs whose result is already in the output folder (resume a batch)")
    _add_verbosity(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s (codeformer {__version__})")


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=LoadOptions.precision,
                        help="CodeFormer arithmetic: fp32 (exact, default); bf16 / fp16 run the image generator in "
                             "half precision while the code prediction stays fp32; auto picks the fastest safe "
                             "one for the device (bf16 on CPUs with AVX512-BF16/AMX and recent GPUs)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the generator with torch.compile (slow first call; falls back if unavailable)")


def _add_ray(parser: argparse.ArgumentParser, *, video: bool = False) -> None:
    """``--ray``: run on a Ray cluster (see :mod:`codeformer.jobs.ray`); inputs and -o may then be fsspec URLs."""
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


# ------------------------------------------------------------------------------------------ commands


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    _add_io(parser, default_input="./inputs/whole_imgs",
            output_help="output folder (default: results/<input name>_<w>, as the reference)")
    parser.add_argument("--model", type=_model_or_file(whole_picture_models), default=LoadOptions.model,
                        help=f"face restorer: {', '.join(whole_picture_models())}, a face restoration checkpoint "
                             "file spandrel can identify (GFPGAN, RestoreFormer, CodeFormer), or an ONNX file "
                             "(ours, or facefusion's codeformer, gfpgan, gpen_bfr, restoreformer_plus_plus)")
    parser.add_argument("--template", choices=tuple(CROP_TEMPLATES), default=None,
                        help="an ONNX model's alignment template, for files this program does not know by name")
    parser.add_argument("-w", "--fidelity_weight", "--w", dest="fidelity_weight", type=_checked(check_fidelity_weight),
                        default=None, help="CodeFormer only: balance quality (0) and fidelity to the input (1) "
                                           "(default: 0.5)")
    parser.add_argument("-s", "--upscale", type=_int_at_least(1), default=RestoreOptions.upscale,
                        help="final upscaling of whole pictures: the output is exactly input size x s")
    parser.add_argument("--blend", type=_checked(_unit_interval), default=RestoreOptions.blend,
                        help="how much of the restored face is pasted back, mixed with the unrestored face: "
                             "1 = restored only, 0.5 = half and half")
    parser.add_argument("--has_aligned", action="store_true", help="inputs are aligned 512x512 face crops")
    parser.add_argument("--only_center_face", action="store_true", help="restore only the face nearest the centre")
    parser.add_argument("--largest_face", action="store_true", help="restore only the largest face")
    parser.add_argument("--face_index", type=_face_numbers, default=None, metavar="N[,N...]",
                        help="restore only these faces: numbered left to right from 0 in a picture, by first "
                             "appearance in a video (e.g. 0,2)")
    parser.add_argument("--min_face_size", type=_checked(_positive), default=None, metavar="PX",
                        help="restore only faces whose box is at least PX pixels on its short side")
    parser.add_argument("--reference_face", default=None, metavar="PATH",
                        help="restore only the faces of the person in this photo (compared by a face embedding)")
    parser.add_argument("--reference_distance", type=_checked(_positive), default=RestoreOptions.reference_distance,
                        help="how close a face must be to --reference_face to count as that person")
    parser.add_argument("--report", action="store_true",
                        help="write <out>/report.json: every face, restored or why not, and how far restoration "
                             "moved its identity")
    parser.add_argument("--no_temporal_smoothing", action="store_true",
                        help="videos: restore every frame on its own (default: faces are tracked and their "
                             "landmarks smoothed over time, so they do not flicker)")
    parser.add_argument("--draw_box", action="store_true", help="outline detected faces in the final picture")
    parser.add_argument("--detection_model", default=LoadOptions.detector, choices=available_detectors(),
                        help="face detector")
    parser.add_argument("--bg_upsampler", type=_upsampler, default=None,
                        help=f"background upsampler: {', '.join(available_upsamplers())}, or a path to a model "
                             "file spandrel can load")
    parser.add_argument("--face_upsample", action="store_true",
                        help="also run restored faces through the upsampler before pasting them back")
    parser.add_argument("--bg_tile", type=_int_at_least(0), default=LoadOptions.bg_tile,
                        help="tile size for the upsampler, 0 = whole picture at once")
    parser.add_argument("--fp32", action="store_true",
                        help="run the upsampler in full precision on CUDA (if fp16 gives black output)")
    parser.add_argument("--ext", choices=EXTENSIONS, default=OutputOptions.extension,
                        help="format of the final pictures: png (default, as the reference), jpg, or auto (the "
                             "input's); restored and cropped faces stay png")
    parser.add_argument("--grayscale", choices=GRAY_MODES, default=RestoreOptions.grayscale,
                        help="treat pictures as black-and-white: detected (auto) or forced")
    parser.add_argument("--no_parse", action="store_true",
                        help="blend faces with the square soft mask alone, without face parsing")
    parser.add_argument("--save_video_fps", type=_checked(_positive), default=None,
                        help="frame rate of the output video (default: the input's)")
    parser.add_argument("--video_crf", type=_int_at_least(0), default=VideoOptions.crf,
                        help="H.264 quality of the output video (lower is better, 18 is visually lossless)")
    parser.add_argument("--video_preset", default=VideoOptions.preset,
                        help="H.264 speed/size preset (ultrafast ... veryslow)")
    parser.add_argument("--save_frames", action="store_true",
                        help="for videos, also save cropped_faces/, restored_faces/ and final_results/ per frame")
    _add_precision(parser)
    _add_runtime(parser)
    _add_ray(parser, video=True)


def _add_aligned_task(parser: argparse.ArgumentParser, *, model: str, default_input: str) -> None:
    """Colorization and inpainting: aligned faces through one fixed model."""
    _add_io(parser, default_input=default_input,
            output_help="output folder (default: results/<input folder name>, as the reference)")
    _add_precision(parser)
    _add_runtime(parser)
    _add_ray(parser)
    parser.set_defaults(model=model)


def add_colorize_arguments(parser: argparse.ArgumentParser) -> None:
    _add_aligned_task(parser, model="codeformer_colorization", default_input="./inputs/gray_faces")


def add_inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    _add_aligned_task(parser, model="codeformer_inpainting", default_input="./inputs/masked_faces")


def add_vqgan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input_path", "--test_path", dest="input_path", default="./inputs/cropped_faces",
                        help="input picture or folder of aligned faces")
    parser.add_argument("-o", "--output_path", "--save_root", dest="output_path", default=None,
                        help="output folder (default: results/vqgan_rec, as the reference)")
    parser.add_argument("--suffix", default=None, help="suffix added to output file names")
    parser.add_argument("--ckpt_path", default=None,
                        help="VQGAN checkpoint (default: CodeFormer/vqgan_code1024.pth in the weights root)")
    parser.add_argument("--codebook_size", type=_int_at_least(1), default=None,
                        help="accepted for compatibility: the codebook size is read from the checkpoint")
    _add_runtime(parser)
    parser.set_defaults(model="vqgan")


def add_crop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input_path", "--in_dir", dest="input_path", default="./inputs/whole_imgs",
                        help="input picture or folder")
    parser.add_argument("-o", "--output_path", "--out_dir", dest="output_path", default=CropJob.output,
                        help="output folder")
    parser.add_argument("--only_keep_largest", action="store_true",
                        help="keep only the largest face of each picture, saved as <name>.png "
                             "(default: every face, saved as <name>_00.png, <name>_01.png, ... in detection order)")
    parser.add_argument("--enable_padding", action="store_true",
                        help="fill the part of a crop outside the photo with blurred mirrored content (as FFHQ) "
                             "instead of black (as the reference script)")
    _add_runtime(parser, torch_networks=False)


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help=f"a group ({', '.join(WEIGHT_GROUPS)}, all) or a file path such as "
                             "CodeFormer/codeformer.pth")
    parser.add_argument("--weights_dir", default=None, help=WEIGHTS_DIR_HELP)
    parser.add_argument("--verify", action="store_true",
                        help="sha256-check the files already there instead of downloading")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=_int_at_least(1), default=None,
                        help="port to listen on (default: 7860, or the next free one)")
    parser.add_argument("--share", action="store_true",
                        help="also open a public link through Gradio's share servers (needs internet)")
    parser.add_argument("--device", default=LoadOptions.device, choices=DEVICE_CHOICES, help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=LoadOptions.precision,
                        help="CodeFormer arithmetic: fp32 (exact), auto, bf16, fp16 (see `restore --help`)")
    parser.add_argument("--weights_dir", default=None, help=WEIGHTS_DIR_HELP)
    parser.add_argument("--max_pixels", type=_int_at_least(1), default=RestoreOptions.max_pixels,
                        help="largest picture, and largest result, in pixels; bigger ones are refused with a message")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=("onnx",), help="what to export to")
    parser.add_argument("-o", "--output_path", default=None,
                        help="the file to write (default: <model>.onnx in the current folder)")
    parser.add_argument("--model", type=_model_or_file(available_models), default=LoadOptions.model,
                        help="the restorer to export: a name from the model table or a checkpoint file")
    parser.add_argument("--opset", type=_int_at_least(14), default=17, help="ONNX opset")
    parser.add_argument("--weights_dir", default=None, help=WEIGHTS_DIR_HELP)
    _add_verbosity(parser)


# ------------------------------------------------------------------------------------------ parsers


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something: not None/False, not already in the help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def new_parser(prog: str | None, description: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: a shortened flag must never silently mean another one (--w is not --weights_dir).
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=HelpFormatter)


# Options whose value is a path: a path that starts with "-" (a file named "-x.jpg") is still their value.
_PATH_OPTIONS = frozenset({"-i", "--input_path", "--test_path", "--in_dir", "-o", "--output_path", "--out_dir",
                           "--save_root", "--reference_face", "--weights_dir", "--ckpt_path", "--bg_upsampler"})


def attach_dash_paths(argv: Sequence[str]) -> list[str]:
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
