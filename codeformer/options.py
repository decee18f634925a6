"""What a job asks for, spelled once: typed, frozen option objects, each checked where it is made.

- :class:`LoadOptions`: what loading needs (model, detector, device, precision, upsampler ...);
  :func:`codeformer.load_pipeline` takes it.
- :class:`RestoreOptions`: what one restore call needs (fidelity weight, upscale, which faces ...);
  :meth:`codeformer.Pipeline.restore` takes it.
- :class:`VideoOptions`: how a video is restored and written (smoothing, frame rate, H.264 quality).

Every front end (the command line, the web app, the Ray workers) only maps its own inputs onto
these objects, and every rule about a value lives here: an invalid value raises
:class:`~codeformer.errors.OptionError` at construction, one message per problem, carrying the
library keyword so that each front end names it its own way (``-w``, "Fidelity" ...). What can only
be known on the machine that loads (is there a CUDA GPU? does it compute bfloat16?) is checked when
loading, by :mod:`codeformer.device` and :mod:`codeformer.precision`.

Example::

    from codeformer import LoadOptions, RestoreOptions, load_pipeline
    pipe = load_pipeline(LoadOptions("codeformer", detector="dlib"))
    result = pipe.restore("photo.jpg", RestoreOptions(fidelity_weight=0.7, upscale=2))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from codeformer.color import GRAY_MODES, GrayMode
from codeformer.device import DEVICE_CHOICES
from codeformer.errors import OptionError
from codeformer.face.selection import DEFAULT_REFERENCE_DISTANCE, FaceSelection
from codeformer.imageio import DEFAULT_MAX_PIXELS
from codeformer.precision import PRECISION_CHOICES
from codeformer.fidelity import (
    DEFAULT_FIDELITY_WEIGHT,
    NoFidelityControlError,
    check_fidelity_weight,
    fidelity_weight_for,
)
from codeformer.registry import (
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    ModelSpec,
    model_spec,
    names,
)

__all__ = [
    "DEFAULT_FIDELITY_WEIGHT",
    "DEFAULT_TILE",
    "LoadOptions",
    "NoFidelityControlError",
    "ReferenceFace",
    "RestoreOptions",
    "VideoOptions",
    "check_fidelity_weight",
    "check_fidelity_for",
    "with_keywords",
]

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_TILE = 400  # upsampler tile side: the reference's --bg_tile


# ------------------------------------------------------------------------------------------ the rules


def check_fidelity_for(model: str, supports_fidelity: bool, value: float | None) -> float | None:
    """``value`` checked for a model: refused when the model has no fidelity control."""
    return fidelity_weight_for(model, value, default=DEFAULT_FIDELITY_WEIGHT if supports_fidelity else None) \
        if value is not None else None


def _whole_number(option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise OptionError(option, value, f"must be a whole number >= {minimum}")
    return int(value)


def _positive(option: str, value: Any, reason: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise OptionError(option, value, reason)
    return float(value)


def _restorer_choice(model: PathLike) -> tuple[ModelSpec | None, Path | None]:
    """A registry restorer's spec, or (None, file) for a checkpoint file; anything else is refused."""
    if isinstance(model, str) and model in names("restorer"):
        return model_spec(model, "restorer"), None
    path = Path(model).expanduser()
    if path.is_file():
        return None, path
    model_spec(str(model), "restorer")  # raises UnknownModelError, listing the names
    raise AssertionError("unreachable")


def _upsampler_ok(value: PathLike | None) -> None:
    if value is None or (isinstance(value, str) and value in names("upsampler")):
        return
    if not Path(value).expanduser().is_file():
        model_spec(str(value), "upsampler")  # raises UnknownModelError, listing the names


# ------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class LoadOptions:
    """What :func:`codeformer.load_pipeline` loads, and how.

    Names are checked against :mod:`codeformer.registry` here, before anything is loaded or
    downloaded, so a typo costs nothing.
    """

    model: PathLike = DEFAULT_MODEL  # a restorer name (available_models()) or a face restoration checkpoint file
    detector: str | None = DEFAULT_DETECTOR  # None: aligned faces only, nothing for detection is loaded
    device: str = "auto"  # auto (CUDA, else MPS, else CPU), cpu, cuda[:N], mps
    precision: str = "fp32"  # fp32 (exact), auto, bf16, fp16: see codeformer.precision
    parse: bool = True  # blend faces with the ParseNet mask (else the square soft mask alone)
    bg_upsampler: PathLike | None = None  # an upsampler name or a model file spandrel can load
    face_upsample: bool = False  # restored faces through the upsampler too (the default one if none is given)
    bg_tile: int = DEFAULT_TILE  # upsampler tile side, 0 = whole picture
    upsampler_half: bool | None = None  # None: fp16 on CUDA; False: always fp32
    weights_dir: PathLike | None = None  # weights root (default $CODEFORMER_WEIGHTS_DIR, else ./weights)
    batch_size: int | None = None  # faces per forward; None: 1 on the CPU, 4 on GPUs
    compile: bool = False  # torch.compile the generator
    checkpoint: PathLike | None = None  # a file to load for `model` instead of its registry file
    template: str | None = None  # an ONNX model's crop template (ffhq_512, arcface_128); None: known from the file
    progress: bool = False  # progress bars inside long steps (upsampler tiles, the faces of a picture)

    def __post_init__(self) -> None:
        _restorer_choice(self.model)
        if self.detector is not None:
            model_spec(self.detector, "detector")
        _upsampler_ok(self.bg_upsampler)
        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().is_file():
            raise OptionError("checkpoint", self.checkpoint, "no such file")
        kind, _, index = str(self.device).strip().lower().partition(":")
        if kind not in DEVICE_CHOICES or (index and (kind != "cuda" or not index.isdigit())):
            raise OptionError("device", self.device,
                              f"unknown device; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:<index>)")
        if str(self.precision).strip().lower() not in PRECISION_CHOICES:
            raise OptionError("precision", self.precision,
                              f"unknown precision; choose one of {', '.join(PRECISION_CHOICES)}")
        if self.batch_size is not None:
            _whole_number("batch_size", self.batch_size, 1)
        _whole_number("bg_tile", self.bg_tile, 0)
        if self.template is not None:
            from codeformer.face.alignment import CROP_TEMPLATES

            if self.template not in CROP_TEMPLATES:
                raise OptionError("template", self.template, f"choose one of {', '.join(CROP_TEMPLATES)}")

    @property
    def spec(self) -> ModelSpec | None:
        """The registry entry of :attr:`model`, or None for a checkpoint file."""
        return _restorer_choice(self.model)[0]

    @property
    def task(self) -> str:
        """What the model does to a face: restore, colorize, inpaint or reconstruct (files: restore)."""
        spec = self.spec
        return (spec.task if spec is not None else None) or "restore"

    @property
    def whole_pictures(self) -> bool:
        """Whether this loads what whole pictures need: a restoration model and a detector."""
        return self.task == "restore" and self.detector is not None

    @property
    def supports_fidelity(self) -> bool:
        """Whether the model takes a fidelity weight; a checkpoint file is only known once loaded (True)."""
        spec = self.spec
        return spec.supports_fidelity if spec is not None else True

    @property
    def model_name(self) -> str:
        """The model's name for messages and default folders: the registry name, or the file's stem."""
        return self.model if self.spec is not None else Path(self.model).stem  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ restoring


@dataclass(frozen=True, eq=False)
class ReferenceFace:
    """A reference person, resolved: the identity embedding of the face in their photo."""

    embedding: np.ndarray  # (128,) float: dlib's face-recognition embedding
    source: str  # where it came from, for messages


ReferenceInput = Union[ReferenceFace, PathLike, np.ndarray]


@dataclass(frozen=True)
class RestoreOptions:
    """What one restore call does with the faces of a picture (the networks are the pipeline's)."""

    fidelity_weight: float | None = None  # CodeFormer's w: 0 = best quality, 1 = most faithful; None: the model's default
    upscale: int = 2  # whole pictures come back at input size x upscale
    only_center_face: bool = False  # only the face nearest the centre
    largest_face: bool = False  # only the largest face
    face_index: tuple[int, ...] | None = None  # only these faces: left to right from 0 (a video: by track)
    min_face_size: float | None = None  # only faces whose box is at least this many pixels on its short side
    reference_face: ReferenceInput | None = None  # only the faces of the person in this photo (path or array)
    reference_distance: float = DEFAULT_REFERENCE_DISTANCE  # how close counts as that person
    draw_box: bool = False  # outline the detected faces
    grayscale: GrayMode = "auto"  # restored faces stay gray in gray pictures: detected, or forced on/off
    measure_identity: bool = False  # give each face its identity distance input -> restored
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refuse pictures and outputs larger than this (None: no limit)
    blend: float = 1.0  # the restored face mixed with the unrestored one: 1 = restored only, 0 = unchanged

    def __post_init__(self) -> None:
        set_value = object.__setattr__  # frozen: normalise through the back door, once, here
        set_value(self, "fidelity_weight", check_fidelity_weight(self.fidelity_weight))
        set_value(self, "upscale", _whole_number("upscale", self.upscale, 1))
        if self.grayscale not in GRAY_MODES:
            raise OptionError("grayscale", self.grayscale, f"choose one of {', '.join(GRAY_MODES)}")
        if self.face_index is not None:
            numbers = tuple(self.face_index)
            if not numbers or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0
                                  for i in numbers):
                raise OptionError("face_index", ",".join(map(str, numbers)), "face numbers are whole numbers from 0")
            set_value(self, "face_index", tuple(int(i) for i in numbers))
        if self.min_face_size is not None:
            set_value(self, "min_face_size", _positive("min_face_size", self.min_face_size,
                                                       "must be a number of pixels > 0"))
        set_value(self, "reference_distance", _positive("reference_distance", self.reference_distance,
                                                        "must be > 0"))
        if self.max_pixels is not None:
            if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, (int, np.integer)) \
                    or self.max_pixels < 1:
                raise OptionError("max_pixels", self.max_pixels,
                                  "must be a whole number of pixels >= 1, or None for no limit")
            set_value(self, "max_pixels", int(self.max_pixels))
        if isinstance(self.blend, bool) or not isinstance(self.blend, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(self.blend) and 0.0 <= self.blend <= 1.0):
            raise OptionError("blend", self.blend, "must be a number from 0 (the face unchanged) to 1 (restored)")
        set_value(self, "blend", float(self.blend))
        for flag in ("only_center_face", "largest_face", "draw_box", "measure_identity"):
            set_value(self, flag, bool(getattr(self, flag)))

    @property
    def needs_reference(self) -> bool:
        """A reference photo is given and not yet turned into an embedding (:meth:`Pipeline.prepare`)."""
        return self.reference_face is not None and not isinstance(self.reference_face, ReferenceFace)

    @property
    def selection(self) -> FaceSelection:
        """Which faces to restore, as :mod:`codeformer.face.selection` takes it (reference resolved)."""
        if self.needs_reference:
            raise ValueError("the reference face is not resolved yet: pass the options through Pipeline.prepare")
        reference = self.reference_face.embedding if isinstance(self.reference_face, ReferenceFace) else None
        return FaceSelection(only_center_face=self.only_center_face, largest_face=self.largest_face,
                             face_index=self.face_index, min_face_size=self.min_face_size, reference=reference,
                             reference_distance=self.reference_distance)


# ------------------------------------------------------------------------------------------ video


@dataclass(frozen=True)
class VideoOptions:
    """How a video's frames are restored and written."""

    temporal_smoothing: bool = True  # faces tracked across frames, landmarks smoothed (False: frame by frame)
    fps: float | None = None  # output frame rate (None: the input's timing)
    crf: int = 18  # H.264 quality, 0 (lossless) .. 51; 18 is visually transparent
    preset: str = "medium"  # x264 speed/size preset

    def __post_init__(self) -> None:
        from codeformer.video.stages import CRF_MAX, CRF_MIN, X264_PRESETS  # PyAV: only when videos are asked for

        if self.fps is not None:
            object.__setattr__(self, "fps", _positive("fps", self.fps, "the frame rate must be a number > 0"))
            if not math.isfinite(self.fps):
                raise OptionError("fps", self.fps, "the frame rate must be a number > 0")
        if isinstance(self.crf, bool) or not isinstance(self.crf, (int, np.integer)) \
                or not CRF_MIN <= self.crf <= CRF_MAX:
            raise OptionError("crf", self.crf, f"must be a whole number from {CRF_MIN} to {CRF_MAX}")
        if self.preset not in X264_PRESETS:
            raise OptionError("preset", self.preset, f"unknown preset; use one of {', '.join(X264_PRESETS)}")


# ------------------------------------------------------------------------------------------ helpers


def with_keywords(options: Any, cls: type, keywords: dict[str, Any]) -> Any:
    """``options`` (an instance of ``cls``, or None for its defaults) with ``keywords`` replacing fields.

    Lets a function take either an options object or the same values as keywords, the keywords
    being checked exactly like the object's fields.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(sorted(known))}")
    if options is None:
        return cls(**keywords)
    if not isinstance(options, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(options).__name__}")
    return replace(options, **keywords) if keywords else options

