"""What the page asks for, in the library's terms: widget values mapped onto the option objects.

The page's widgets (and the ``/restore`` API, whose parameters are the same) send sliders as floats,
face numbers as text, "0" for "no minimum"; :func:`page_request` reads them into a
:class:`~codeformer.options.LoadOptions` (what to load, from the server's own settings) and a
:class:`~codeformer.options.RestoreOptions`, which check every value. A problem is an
:class:`~codeformer.errors.OptionError` naming the library option; :func:`phrase` words it with the
page's label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from codeformer.errors import CodeFormerError, OptionError
from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT
from codeformer.imageio import DEFAULT_MAX_PIXELS, PixelLimitError
from codeformer.options import LoadOptions, RestoreOptions
from codeformer.registry import (
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    DEFAULT_UPSAMPLER,
    available_upsamplers,
    model_spec,
    whole_picture_models,
)
from codeformer.weights import MissingWeightsError

logger = logging.getLogger(__name__)

__all__ = ["MAX_UPSCALE", "PageRequest", "PhrasedError", "out_of_memory", "page_request", "phrase", "phrase_failure",
           "restoration_models", "supports_fidelity"]

MAX_UPSCALE = 4
# The page's names for the library options an OptionError can name.
OPTION_LABELS = {"fidelity_weight": "Fidelity", "upscale": "Upscale", "grayscale": "Keep gray faces",
                 "face_index": "Only these faces", "min_face_size": "Minimum face size", "blend": "Blend"}
PIXEL_LIMIT_OPTION = "codeformer ui --max_pixels"  # toasts show text as it is: no markdown


def restoration_models() -> list[str]:
    """The models the Restore tab offers: those whose task is restoration."""
    return whole_picture_models()


def supports_fidelity(model: str) -> bool:
    """Whether the model has a fidelity weight (CodeFormer does, GFPGAN does not)."""
    return model_spec(model, "restorer").supports_fidelity


def background_upsampler() -> str:
    """The upsampler the page's "Background enhance" box turns on."""
    return DEFAULT_UPSAMPLER if DEFAULT_UPSAMPLER in available_upsamplers() else available_upsamplers()[0]


@dataclass(frozen=True)
class PageRequest:
    """One press of a picture tab's button: what to load, what to do, and whether the pictures are aligned faces."""

    load: LoadOptions
    restore: RestoreOptions
    aligned: bool = False


def _face_numbers(text: str) -> tuple[int, ...] | None:
    text = str(text or "").strip()
    if text and not all(part.strip().isdigit() for part in text.split(",")):
        raise OptionError("face_index", text, "face numbers from 0, separated by commas, e.g. 0, 2")
    return tuple(int(part) for part in text.replace(" ", "").split(",") if part) or None


def page_request(
    base: LoadOptions,
    *,
    fidelity_weight: float | None = DEFAULT_FIDELITY_WEIGHT,
    upscale: float = RestoreOptions.upscale,
    has_aligned: bool = False,
    background_enhance: bool = False,
    face_upsample: bool = False,
    detector: str = DEFAULT_DETECTOR,
    model: str = DEFAULT_MODEL,
    only_center_face: bool = False,
    draw_box: bool = False,
    grayscale: str = RestoreOptions.grayscale,
    largest_face: bool = False,
    face_index: str = "",
    min_face_size: float = 0.0,
    blend: float = RestoreOptions.blend,
    reference_face: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> PageRequest:
    """The options the Restore and Video tabs' widgets (and the ``/restore`` API) describe.

    ``base`` holds the server's device, precision and weights root. The slider's weight is ignored
    for models without fidelity control (the page always sends it); ``face_index`` is text such as
    ``"0, 2"``; a ``min_face_size`` of 0 means no minimum; ``reference_face``: an uploaded photo of
    the one person to restore.
    """
    steps = float(upscale)
    if not steps.is_integer() or not 1 <= steps <= MAX_UPSCALE:
        raise OptionError("upscale", upscale, f"must be a whole number from 1 to {MAX_UPSCALE}")
    minimum = float(min_face_size or 0)
    if minimum < 0:
        raise OptionError("min_face_size", minimum, "must be 0 (no minimum) or a number of pixels")
    load = replace(base, model=model, detector=detector,
                   bg_upsampler=background_upsampler() if background_enhance else None,
                   face_upsample=bool(face_upsample))
    weight = fidelity_weight if fidelity_weight is not None and load.supports_fidelity else None
    restore = RestoreOptions(fidelity_weight=None if weight is None else float(weight), upscale=int(steps),
                             only_center_face=bool(only_center_face), largest_face=bool(largest_face),
                             face_index=_face_numbers(face_index), min_face_size=minimum or None,
                             draw_box=bool(draw_box), grayscale=grayscale, max_pixels=max_pixels,  # type: ignore[arg-type]
                             blend=float(blend), reference_face=reference_face or None)
    return PageRequest(load, restore, bool(has_aligned))


def aligned_request(base: LoadOptions, model: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PageRequest:
    """The Colorize and Inpaint tabs: aligned faces through ``model``, nothing else to choose."""
    return PageRequest(replace(base, model=model, detector=None), RestoreOptions(max_pixels=max_pixels), True)


class PhrasedError(CodeFormerError):
    """A failure already worded as the page shows it (by the restoration process), possibly several lines."""


def phrase(error: CodeFormerError) -> str:
    """A library error as the page says it: options by their labels, the pixel limit by its flag."""
    if isinstance(error, PhrasedError):
        return str(error)
    if isinstance(error, PixelLimitError):
        return error.phrased(PIXEL_LIMIT_OPTION)
    if isinstance(error, MissingWeightsError):
        return str(error)  # every missing file, one per line, and how to fetch them
    if isinstance(error, OptionError) and error.option in OPTION_LABELS:
        return error.phrased(OPTION_LABELS[error.option])
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def out_of_memory(error: BaseException) -> bool:
    """An allocation failure: Python's, the GPU's, or torch's CPU allocator (a plain RuntimeError)."""
    import torch

    return (isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError))
            or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error)))


def phrase_failure(error: BaseException) -> str:
    """What the page says of any failure, in the server's process or the restoration process: a library error
    in the page's words, an allocation failure, or a pointer to the log (which gets the traceback)."""
    if isinstance(error, CodeFormerError):
        return phrase(error)
    if out_of_memory(error):
        return "out of memory: try a smaller upscale or a smaller picture"
    logger.error("web app request failed", exc_info=error)
    return f"something went wrong ({type(error).__name__}); the app's log has the details"
